//! What PostgreSQL and SQLite write differently, in one place.
//!
//! The shared statements ([`super::read`], [`super::projections`], [`super::sagas`]) are written
//! once, in PostgreSQL's form (`$1` placeholders); a [`Dialect`] turns them into its backend's
//! form and supplies the pieces that differ: column casts, locking clauses, the snapshot upsert,
//! the database clock, JSON values, and the few behaviours that only one backend has
//! (PostgreSQL's relation locks before a view swap).
//! A difference between the two SQL backends lives here and nowhere else.

use std::future::Future;

use crate::error::StoreError;
use crate::naming::Naming;

/// One SQL backend's way of writing the shared statements.
pub(crate) trait Dialect: Send + Sync + 'static {
    /// The sqlx database of the backend.
    type DB: sqlx::Database;

    /// The backend's name, as the admin trait reports it.
    const BACKEND: &'static str;

    /// Appended to a `SELECT` that locks the row it reads (nothing where the write transaction
    /// is the lock).
    const FOR_UPDATE: &'static str;

    /// Appended to the projection checkpoint's `SELECT ... JOIN`: the projection row shared, the
    /// checkpoint row exclusive.
    const LOCK_CHECKPOINT: &'static str;

    /// Appended to `DROP TABLE`: also drop the views that read the table.
    const DROP_CASCADE: &'static str;

    /// The expression of an event row's commit key (ADR 0007).
    const COMMIT_KEY: &'static str;

    /// The database's clock as a timestamp expression (the saga store's times and deadlines):
    /// the same value everywhere in one statement, and stored in a form that compares in time
    /// order with the timestamps the driver binds.
    const NOW: &'static str;
    /// The statement that starts a write transaction (`None`: the driver's `BEGIN`).
    const BEGIN_WRITE: Option<&'static str>;

    /// Whether [`Dialect::record_migration`] takes the time of the migration as `$4` (the table
    /// has no clock default).
    const RECORDS_APPLIED_AT: bool;

    /// A statement written with `$n` placeholders, in this backend's placeholder form.
    fn placeholders(sql: &str) -> String;

    /// `expr` read as a `BIGINT`.
    fn int8(expr: &str) -> String;

    /// `expr` (a JSON column) read as text.
    fn text(expr: &str) -> String;

    /// `expr` (JSON text) written to a JSON column.
    fn json(expr: &str) -> String;

    /// The text of field `key` (a constant identifier) of the JSON object in column `column`.
    fn json_field(column: &str, key: &str) -> String;

    /// The statement that saves a snapshot unless a newer one is stored: `$1` stream type, `$2`
    /// stream id, `$3` version, `$4` snapshot version, `$5` state, `$6` taken at.
    fn save_snapshot(snapshots: &str) -> String;

    /// The DDL of the migration table `table`: version, name, checksum, applied at.
    fn migration_table(table: &str) -> String;

    /// The statement that records an applied migration: `$1` version, `$2` name, `$3` checksum
    /// (and `$4` the time, see [`Dialect::RECORDS_APPLIED_AT`]).
    fn record_migration(table: &str) -> String;

    /// Runs first in the migrations' transaction: PostgreSQL serializes concurrent migrators
    /// with an advisory lock on the migration table's name and creates the schema.
    fn before_migrations<'a>(
        conn: &'a mut <Self::DB as sqlx::Database>::Connection,
        naming: &'a Naming,
        table: &'a str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a;

    /// The schema the projection tables and views live in.
    fn schema(naming: &Naming) -> Option<&str>;

    /// Whether projections may read beside an open unit of work (a second connection exists).
    fn reads_beside_unit_of_work(pool: &sqlx::Pool<Self::DB>) -> bool;

    /// Locks the existing `relations` (quoted names) before their views are replaced or their
    /// tables dropped; `false` when the locks could not be had in time (nothing changed).
    fn lock_relations<'a>(
        conn: &'a mut <Self::DB as sqlx::Database>::Connection,
        relations: &'a [String],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'a;
}

/// PostgreSQL.
#[cfg(feature = "postgres")]
pub(crate) struct Pg;

#[cfg(feature = "postgres")]
impl Dialect for Pg {
    type DB = sqlx::Postgres;
    const BACKEND: &'static str = "postgres";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const LOCK_CHECKPOINT: &'static str = " FOR SHARE OF p FOR UPDATE OF c";
    const DROP_CASCADE: &'static str = " CASCADE";
    const COMMIT_KEY: &'static str = "commit_key";
    /// The start of the current statement, not of the transaction (`now()`): a deadline that a
    /// transition computes from the clock read with its lock
    /// ([`crate::SagaStore::lock_saga_with_clock`]) does not start from the moment a unit of
    /// work that did other work first began, and a row's `updated_at` is close to its commit
    /// (a lock that waits reads the clock before its wait). Unlike
    /// `clock_timestamp()` it is one value per statement (a new row's `started_at` equals its
    /// `updated_at`) and stable, so the claim's `due_at <= ...` can be an index condition.
    const NOW: &'static str = "statement_timestamp()";
    const BEGIN_WRITE: Option<&'static str> = None;
    const RECORDS_APPLIED_AT: bool = false;

    fn placeholders(sql: &str) -> String {
        sql.to_owned()
    }

    fn int8(expr: &str) -> String {
        format!("{expr}::int8")
    }

    fn text(expr: &str) -> String {
        format!("{expr}::text")
    }

    fn json(expr: &str) -> String {
        format!("{expr}::jsonb")
    }

    fn json_field(column: &str, key: &str) -> String {
        format!("({column}->>'{key}')")
    }

    fn save_snapshot(snapshots: &str) -> String {
        format!(
            "INSERT INTO {snapshots} AS s (stream_type, stream_id, version, snapshot_version, state, taken_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stream_type, stream_id) DO UPDATE SET \
             version = EXCLUDED.version, snapshot_version = EXCLUDED.snapshot_version, state = EXCLUDED.state, \
             taken_at = EXCLUDED.taken_at WHERE s.version <= EXCLUDED.version"
        )
    }

    fn migration_table(table: &str) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (version BIGINT PRIMARY KEY, name TEXT NOT NULL, \
             checksum BIGINT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
    }

    fn record_migration(table: &str) -> String {
        format!("INSERT INTO {table} (version, name, checksum) VALUES ($1, $2, $3)")
    }

    fn before_migrations<'a>(
        conn: &'a mut sqlx::PgConnection,
        naming: &'a Naming,
        table: &'a str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a {
        use super::db_err;
        async move {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(format!("eventfold migrations {table}"))
                .execute(&mut *conn)
                .await
                .map_err(db_err("taking the migration lock", table))?;
            if let Some(schema) = naming.schema() {
                let create_schema = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
                sqlx::query(&create_schema)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_err("creating the schema", table))?;
            }
            Ok(())
        }
    }

    fn schema(naming: &Naming) -> Option<&str> {
        naming.schema()
    }

    fn reads_beside_unit_of_work(_pool: &sqlx::PgPool) -> bool {
        true
    }

    fn lock_relations<'a>(
        conn: &'a mut sqlx::PgConnection,
        relations: &'a [String],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'a {
        crate::postgres::projections::lock_all(conn, relations)
    }
}

/// SQLite.
#[cfg(feature = "sqlite")]
pub(crate) struct Lite;

#[cfg(feature = "sqlite")]
impl Dialect for Lite {
    type DB = sqlx::Sqlite;
    const BACKEND: &'static str = "sqlite";
    // Writers are serialized by `BEGIN IMMEDIATE`: the write transaction is the lock.
    const FOR_UPDATE: &'static str = "";
    const LOCK_CHECKPOINT: &'static str = "";
    const DROP_CASCADE: &'static str = "";
    // Positions are commit order: every event's commit key is 0.
    const COMMIT_KEY: &'static str = "0";
    /// SQLite's clock (the host's, in milliseconds), written as the driver writes a bound
    /// `DateTime<Utc>` (RFC 3339 with `+00:00`, no fraction when it is zero): timestamps are
    /// text here, and text of that one form sorts in time order.
    const NOW: &'static str = "replace(strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), '.000+', '+')";
    // Takes SQLite's single writer up front, so two writers never deadlock on a lock upgrade.
    const BEGIN_WRITE: Option<&'static str> = Some("BEGIN IMMEDIATE");
    const RECORDS_APPLIED_AT: bool = true;

    fn placeholders(sql: &str) -> String {
        let mut out = String::with_capacity(sql.len());
        let mut chars = sql.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                out.push('?');
            } else {
                out.push(c);
            }
        }
        out
    }

    fn int8(expr: &str) -> String {
        expr.to_owned()
    }

    fn text(expr: &str) -> String {
        expr.to_owned()
    }

    fn json(expr: &str) -> String {
        expr.to_owned()
    }

    fn json_field(column: &str, key: &str) -> String {
        format!("json_extract({column}, '$.{key}')")
    }

    fn save_snapshot(snapshots: &str) -> String {
        format!(
            "INSERT INTO {snapshots} (stream_type, stream_id, version, snapshot_version, state, taken_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (stream_type, stream_id) DO UPDATE SET \
             version = excluded.version, snapshot_version = excluded.snapshot_version, state = excluded.state, \
             taken_at = excluded.taken_at WHERE version <= excluded.version"
        )
    }

    fn migration_table(table: &str) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, \
             checksum INTEGER NOT NULL, applied_at TEXT NOT NULL)"
        )
    }

    fn record_migration(table: &str) -> String {
        format!("INSERT INTO {table} (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)")
    }

    fn before_migrations<'a>(
        _conn: &'a mut sqlx::SqliteConnection,
        _naming: &'a Naming,
        _table: &'a str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'a {
        // Writers are serialized by the migrations' `BEGIN IMMEDIATE`; there are no schemas.
        std::future::ready(Ok(()))
    }

    fn schema(_naming: &Naming) -> Option<&str> {
        None
    }

    fn reads_beside_unit_of_work(pool: &sqlx::SqlitePool) -> bool {
        pool.options().get_max_connections() > 1
    }

    fn lock_relations<'a>(
        _conn: &'a mut sqlx::SqliteConnection,
        _relations: &'a [String],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'a {
        std::future::ready(Ok(true))
    }
}
