//! Embedded migrations: their checksums, the bookkeeping table `{prefix}migrations`, and the run
//! that applies the pending ones in one transaction, written once for both SQL backends (the
//! dialect supplies the table's DDL, the start of the write transaction and PostgreSQL's lock).

use chrono::{DateTime, Utc};
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Type};

use super::db_err;
use super::dialect::Dialect;
use crate::error::StoreError;
use crate::naming::Naming;

/// One embedded migration; `sql` uses placeholders such as `{events}`, `{snapshots}`,
/// `{commands}`, `{sagas}` (one per table, see [`Migration::render`]), `{prefix}` and `{schema}`
/// that are replaced with validated names.
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    pub fn render(&self, naming: &Naming) -> String {
        self.sql
            .replace("{events}", &naming.table("events"))
            .replace("{snapshots}", &naming.table("snapshots"))
            .replace("{commands}", &naming.table("commands"))
            .replace("{outbox_dead}", &naming.table("outbox_dead"))
            .replace("{inbox_dead}", &naming.table("inbox_dead"))
            .replace("{inbox}", &naming.table("inbox"))
            .replace("{outbox_leases}", &naming.table("outbox_leases"))
            .replace("{outbox_relays}", &naming.table("outbox_relays"))
            .replace("{outbox_floor}", &naming.table("outbox_floor"))
            .replace("{outbox}", &naming.table("outbox"))
            .replace("{projections}", &naming.table("projections"))
            .replace(
                "{projection_checkpoints}",
                &naming.table("projection_checkpoints"),
            )
            .replace("{projection_dead}", &naming.table("projection_dead"))
            .replace("{saga_timers}", &naming.table("saga_timers"))
            .replace("{saga_requests}", &naming.table("saga_requests"))
            .replace("{sagas}", &naming.table("sagas"))
            .replace("{sent}", &naming.table("sent"))
            .replace("{prefix}", naming.prefix())
            .replace("{schema}", naming.schema().unwrap_or(""))
    }

    /// FNV-1a of the template: the same for every prefix, different when the text changes.
    pub fn checksum(&self) -> i64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.sql.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        i64::from_ne_bytes(hash.to_ne_bytes())
    }
}

/// Fails unless `migrations` have exactly the `(version, checksum)` pairs `pinned`: the test of
/// each backend that an applied migration was not edited.
#[cfg(test)]
pub(crate) fn assert_checksums(migrations: &[Migration], pinned: &[(i64, i64)]) {
    let actual: Vec<(i64, i64)> = migrations
        .iter()
        .map(|m| (m.version, m.checksum()))
        .collect();
    assert_eq!(actual, pinned);
}

/// Checks applied migrations against the embedded ones and returns those still to apply.
pub(crate) fn pending<'m>(
    migrations: &'m [Migration],
    applied: &[(i64, i64)],
    table: &str,
) -> Result<Vec<&'m Migration>, StoreError> {
    for (version, checksum) in applied {
        match migrations.iter().find(|m| m.version == *version) {
            Some(m) if m.checksum() != *checksum => {
                return Err(StoreError::Migration {
                    table: table.to_owned(),
                    version: *version,
                    name: m.name.to_owned(),
                    reason: "was applied with different SQL (checksum mismatch)".to_owned(),
                });
            }
            Some(_) => {}
            None => {
                return Err(StoreError::Migration {
                    table: table.to_owned(),
                    version: *version,
                    name: "?".to_owned(),
                    reason: "is applied in the database but unknown to this eventfold version (the database is newer than the code)".to_owned(),
                });
            }
        }
    }
    Ok(migrations
        .iter()
        .filter(|m| !applied.iter().any(|(v, _)| *v == m.version))
        .collect())
}

/// Every migration recorded in `{prefix}migrations`, in order (the same statement on every SQL
/// backend).
pub(crate) async fn applied_migrations<DB>(
    pool: &sqlx::Pool<DB>,
    naming: &Naming,
) -> Result<Vec<crate::admin::AppliedMigration>, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'r> (i64, String): sqlx::FromRow<'r, DB::Row>,
{
    let table = naming.table("migrations");
    let select = format!("SELECT version, name FROM {table} ORDER BY version");
    let rows: Vec<(i64, String)> = sqlx::query_as::<DB, (i64, String)>(&select)
        .fetch_all(pool)
        .await
        .map_err(db_err("reading applied migrations", &table))?;
    Ok(rows
        .into_iter()
        .map(|(version, name)| crate::admin::AppliedMigration { version, name })
        .collect())
}

/// Applies the migrations that are not applied yet, in one write transaction, and records each in
/// `{prefix}migrations`; refuses a database whose applied migrations differ from `migrations`
/// ([`pending`]). On PostgreSQL concurrent callers (several instances starting at once) are
/// serialized by a transaction-scoped advisory lock ([`Dialect::before_migrations`]).
pub(crate) async fn migrate<D: Dialect>(
    pool: &sqlx::Pool<D::DB>,
    naming: &Naming,
    migrations: &[Migration],
) -> Result<(), StoreError>
where
    for<'c> &'c mut <D::DB as Database>::Connection: Executor<'c, Database = D::DB>,
    for<'q> <D::DB as Database>::Arguments<'q>: IntoArguments<'q, D::DB>,
    for<'r> (i64, i64): FromRow<'r, <D::DB as Database>::Row>,
    for<'q> i64: Encode<'q, D::DB> + Type<D::DB>,
    for<'q> &'q str: Encode<'q, D::DB> + Type<D::DB>,
    for<'q> DateTime<Utc>: Encode<'q, D::DB> + Type<D::DB>,
{
    let table = naming.table("migrations");
    let mut tx = super::begin_owned(pool, D::BEGIN_WRITE)
        .await
        .map_err(db_err("starting the migration transaction", &table))?;
    D::before_migrations(&mut tx, naming, &table).await?;
    sqlx::query(&D::migration_table(&table))
        .execute(&mut *tx)
        .await
        .map_err(db_err("creating the migration table", &table))?;
    let select_applied = format!("SELECT version, checksum FROM {table} ORDER BY version");
    let applied: Vec<(i64, i64)> = sqlx::query_as(&select_applied)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err("reading applied migrations", &table))?;
    let record = D::record_migration(&table);
    for migration in pending(migrations, &applied, &table)? {
        let rendered = migration.render(naming);
        sqlx::Executor::execute(&mut *tx, rendered.as_str())
            .await
            .map_err(|e| StoreError::Migration {
                table: table.clone(),
                version: migration.version,
                name: migration.name.to_owned(),
                reason: e.to_string(),
            })?;
        let mut query = sqlx::query(&record)
            .bind(migration.version)
            .bind(migration.name)
            .bind(migration.checksum());
        if D::RECORDS_APPLIED_AT {
            query = query.bind(Utc::now());
        }
        query
            .execute(&mut *tx)
            .await
            .map_err(db_err("recording a migration", &table))?;
    }
    tx.commit()
        .await
        .map_err(db_err("committing migrations", &table))
}
