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

/// The embedded migrations of a backend, in order (a `&'static [Migration]`), read from the
/// `migrations/` folder beside the calling file. Each file's bytes are its checksum's input:
/// never edit an applied one (a test pins every checksum, [`PINNED`]); add a new file instead.
///
/// Both backends have the first four, the retry index of the claim (named `$retry` on each),
/// then the sagas, the trace and the sagas' last event id, at the versions given with their
/// files; a backend's `own` migrations (PostgreSQL's outbox floor) come between the two.
macro_rules! embedded {
    (
        retry index: $retry:literal;
        $(own: $($version:literal $file:literal $name:literal;)+)?
        sagas: $sagas:literal $sagas_file:literal;
        trace: $trace:literal $trace_file:literal;
        last event: $last:literal $last_file:literal;
    ) => {
        &[
            $crate::sql::migrations::embedded!(@ 1 "0001_events_snapshots_commands.sql"
                "events, snapshots, commands"),
            $crate::sql::migrations::embedded!(@ 2 "0002_outbox.sql"
                "outbox and its dead letters (Debezium Outbox Event Router columns)"),
            $crate::sql::migrations::embedded!(@ 3 "0003_inbox.sql"
                "consumer inbox and its parked messages"),
            $crate::sql::migrations::embedded!(@ 4 "0004_projections.sql"
                "projections: state, checkpoints per generation, parked events"),
            $crate::sql::migrations::embedded!(@ 5 "0005_outbox_retry_index.sql" $retry),
            $($($crate::sql::migrations::embedded!(@ $version $file $name),)+)?
            $crate::sql::migrations::embedded!(@ $sagas $sagas_file
                "sagas: instances by business key, durable timers, request outcomes"),
            $crate::sql::migrations::embedded!(@ $trace $trace_file
                "trace: the inbox keeps what it received, a journal of sent messages, events by correlation (ADR 0022)"),
            $crate::sql::migrations::embedded!(@ $last $last_file
                "sagas: the last event id beside the version, for the orchestrator's state cache (ADR 0029)"),
        ]
    };
    (@ $version:literal $file:literal $name:expr) => {
        $crate::sql::Migration {
            version: $version,
            name: $name,
            // Relative to the file that calls `embedded!` (the backend's `store.rs`).
            sql: include_str!(concat!("migrations/", $file)),
        }
    };
}
pub(crate) use embedded;

/// The checksum of every migration file of both backends, as recorded in databases migrated
/// before the files were split out: an edit to an applied migration must fail its backend's test
/// ([`assert_pinned`]), not production. By version: PostgreSQL's, then SQLite's (which has no
/// version 9: PostgreSQL's outbox floor is its version 6).
#[cfg(test)]
pub(crate) const PINNED: &[(i64, i64, Option<i64>)] = &[
    (1, -8012900637519374564, Some(-4474177022675687500)),
    (2, 8855022832739519439, Some(8646263417714688872)),
    (3, -7784132279243683426, Some(3393751196757052308)),
    (4, 7895556267345499382, Some(-4674574820390121115)),
    (5, -4703489205983246130, Some(8426539364267374710)),
    (6, 3611381286601128421, Some(9106123669770553283)),
    (7, 3809940013349938655, Some(-4623411257323787245)),
    (8, -2398268184595761891, Some(6696018751362625118)),
    (9, 830892548598800432, None),
];

/// Fails unless the migrations of the backend of dialect `D` have exactly its checksums of
/// [`PINNED`].
#[cfg(test)]
pub(crate) fn assert_pinned<D: Dialect>(migrations: &[Migration]) {
    let pinned: Vec<(i64, i64)> = PINNED
        .iter()
        .filter_map(|&(version, postgres, sqlite)| {
            if D::BACKEND == "sqlite" {
                sqlite.map(|checksum| (version, checksum))
            } else {
                Some((version, postgres))
            }
        })
        .collect();
    assert_checksums(migrations, &pinned);
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
