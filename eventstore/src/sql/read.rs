//! Reading streams, snapshots and commands, and saving snapshots and commands: the statements
//! are built once over a [`Dialect`]; the code that runs them is stamped for each backend by
//! the macros below and by those of [`super::unit_of_work`].
//!
//! Why macros and not functions generic over `sqlx::Database`: such a function needs, beside
//! the dialect, an `Executor` bound on `&mut DB::Connection` for every lifetime, an
//! `Encode + Type` bound for each bound value's type and a `FromRow` bound for each row type,
//! repeated on every function (Rust does not carry a trait's where-clauses to its users). The
//! macros stamp one body for the concrete connection types instead, and every statement they
//! run still comes from the dialect.

use super::EVENT_COLUMNS;
use super::dialect::Dialect;
use crate::naming::Naming;

/// The stream, snapshot and command statements of one naming.
pub(crate) struct ReadSql {
    pub events: String,
    pub snapshots: String,
    pub commands: String,
    pub max_version: String,
    pub read_stream: String,
    pub load_snapshot: String,
    pub save_snapshot: String,
    pub find_command: String,
    pub record_command: String,
}

impl ReadSql {
    pub(crate) fn new<D: Dialect>(naming: &Naming) -> Self {
        let events = naming.table("events");
        let snapshots = naming.table("snapshots");
        let commands = naming.table("commands");
        let p = D::placeholders;
        Self {
            max_version: p(&format!(
                "SELECT {} FROM {events} WHERE stream_type = $1 AND stream_id = $2",
                D::int8("COALESCE(MAX(stream_version), 0)")
            )),
            read_stream: p(&format!(
                "SELECT {EVENT_COLUMNS}, {} FROM {events} WHERE stream_type = $1 AND stream_id = $2 \
                 AND stream_version >= $3 ORDER BY stream_version LIMIT $4",
                D::text("headers")
            )),
            load_snapshot: p(&format!(
                "SELECT version, snapshot_version, state, taken_at FROM {snapshots} WHERE stream_type = $1 AND stream_id = $2"
            )),
            save_snapshot: D::save_snapshot(&snapshots),
            find_command: p(&format!(
                "SELECT stream_type, stream_id, version_before, version_after, recorded_at FROM {commands} WHERE command_id = $1"
            )),
            record_command: p(&format!(
                "INSERT INTO {commands} (command_id, stream_type, stream_id, version_before, version_after, recorded_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (command_id) DO NOTHING"
            )),
            events,
            snapshots,
            commands,
        }
    }
}

/// Stamps `read_stream_on`, `version_on`, `snapshot_on` and `command_on` for a connection type:
/// reads on one connection (a pooled one or a unit of work's), with the statements of a
/// [`ReadSql`].
macro_rules! read_helpers {
    ($conn:ty) => {
        pub(super) async fn read_stream_on(
            conn: &mut $conn,
            sql: &$crate::sql::read::ReadSql,
            stream_id: &eventfold_core::StreamId,
            from_version: u64,
            max_count: u64,
        ) -> Result<Vec<eventfold_core::RecordedEvent>, $crate::error::StoreError> {
            use $crate::sql::{db_err, recorded, to_i64};
            let rows: Vec<$crate::sql::EventRow> = sqlx::query_as(&sql.read_stream)
                .bind(stream_id.stream_type())
                .bind(stream_id.id())
                .bind(to_i64(from_version.max(1), stream_id)?)
                .bind(i64::try_from(max_count).unwrap_or(i64::MAX))
                .fetch_all(conn)
                .await
                .map_err(db_err("reading a stream", &sql.events))?;
            rows.into_iter()
                .map(|row| recorded(stream_id, row, &sql.events))
                .collect()
        }

        /// [`read_stream_on`] on a connection of `pool`.
        pub(super) async fn read_stream_pooled<DB: sqlx::Database<Connection = $conn>>(
            pool: &sqlx::Pool<DB>,
            sql: &$crate::sql::read::ReadSql,
            stream_id: &eventfold_core::StreamId,
            from_version: u64,
            max_count: u64,
        ) -> Result<Vec<eventfold_core::RecordedEvent>, $crate::error::StoreError> {
            let mut conn = $crate::sql::acquire(pool, &sql.events).await?;
            read_stream_on(&mut conn, sql, stream_id, from_version, max_count).await
        }

        pub(super) async fn version_on(
            conn: &mut $conn,
            sql: &$crate::sql::read::ReadSql,
            stream_id: &eventfold_core::StreamId,
        ) -> Result<u64, $crate::error::StoreError> {
            use $crate::sql::{db_err, to_u64};
            let (v,): (i64,) = sqlx::query_as(&sql.max_version)
                .bind(stream_id.stream_type())
                .bind(stream_id.id())
                .fetch_one(conn)
                .await
                .map_err(db_err("reading a stream version", &sql.events))?;
            to_u64(v, &sql.events, "stream version")
        }

        pub(super) async fn snapshot_on(
            conn: &mut $conn,
            sql: &$crate::sql::read::ReadSql,
            stream_id: &eventfold_core::StreamId,
        ) -> Result<Option<$crate::store::Snapshot>, $crate::error::StoreError> {
            use $crate::sql::{SnapshotRow, db_err, snapshot};
            let row: Option<SnapshotRow> = sqlx::query_as(&sql.load_snapshot)
                .bind(stream_id.stream_type())
                .bind(stream_id.id())
                .fetch_optional(conn)
                .await
                .map_err(db_err("loading a snapshot", &sql.snapshots))?;
            row.map(|row| snapshot(stream_id, row, &sql.snapshots))
                .transpose()
        }

        pub(super) async fn command_on(
            conn: &mut $conn,
            sql: &$crate::sql::read::ReadSql,
            command_id: uuid::Uuid,
        ) -> Result<Option<$crate::store::CommandRecord>, $crate::error::StoreError> {
            use $crate::sql::{CommandRow, command, db_err};
            let row: Option<CommandRow> = sqlx::query_as(&sql.find_command)
                .bind(command_id)
                .fetch_optional(conn)
                .await
                .map_err(db_err("looking up a command", &sql.commands))?;
            row.map(|row| command(command_id, row, &sql.commands))
                .transpose()
        }
    };
}
pub(crate) use read_helpers;

/// Stamps the stream, snapshot and command reads of [`EventStore`](crate::store::EventStore)
/// (`$receiver` `&`, with `$on` `pool`) and of [`UnitOfWork`](crate::store::UnitOfWork) (`&mut`,
/// `transaction`) inside the impl: each runs `read_stream_on` & co. (in scope) with the
/// statements of the `ReadSql` named `read` in its field `sql`, on the connection
/// [`read_connection!`] takes from it.
macro_rules! stream_reads {
    ($on:ident, $($receiver:tt)+) => {
        async fn read_stream(
            $($receiver)+ self,
            stream_id: &eventfold_core::StreamId,
            from_version: u64,
            max_count: u64,
        ) -> Result<Vec<eventfold_core::RecordedEvent>, $crate::error::StoreError> {
            $crate::sql::read::read_stream_via!($on, self, stream_id, from_version, max_count)
        }

        async fn stream_version(
            $($receiver)+ self,
            stream_id: &eventfold_core::StreamId,
        ) -> Result<u64, $crate::error::StoreError> {
            let mut conn = $crate::sql::read::read_connection!($on, self, events);
            version_on(&mut conn, &self.sql.read, stream_id).await
        }

        async fn load_snapshot(
            $($receiver)+ self,
            stream_id: &eventfold_core::StreamId,
        ) -> Result<Option<$crate::store::Snapshot>, $crate::error::StoreError> {
            let mut conn = $crate::sql::read::read_connection!($on, self, snapshots);
            snapshot_on(&mut conn, &self.sql.read, stream_id).await
        }

        async fn find_command(
            $($receiver)+ self,
            command_id: uuid::Uuid,
        ) -> Result<Option<$crate::store::CommandRecord>, $crate::error::StoreError> {
            let mut conn = $crate::sql::read::read_connection!($on, self, commands);
            command_on(&mut conn, &self.sql.read, command_id).await
        }
    };
}
pub(crate) use stream_reads;

/// A stream read of [`stream_reads!`]: a store's goes through its `pooled_read_stream` (which
/// may share the read with concurrent ones, ADR 0024), a unit of work's runs on its transaction.
macro_rules! read_stream_via {
    (pool, $this:expr, $stream:expr, $from:expr, $max:expr) => {
        $this.pooled_read_stream($stream, $from, $max).await
    };
    (transaction, $this:expr, $stream:expr, $from:expr, $max:expr) => {
        read_stream_on(&mut *$this.tx, &$this.sql.read, $stream, $from, $max).await
    };
}
pub(crate) use read_stream_via;

/// The connection a read of [`stream_reads!`] runs on: a store's pooled one (`pool`; failing to
/// get one names the read's table `$table` of its `ReadSql`), or a unit of work's transaction
/// (`transaction`).
macro_rules! read_connection {
    (pool, $this:expr, $table:ident) => {
        $crate::sql::acquire(&$this.pool, &$this.sql.read.$table).await?
    };
    (transaction, $this:expr, $table:ident) => {
        &mut *$this.tx
    };
}
pub(crate) use read_connection;

/// Stamps the reading methods of a store (inside its `impl EventStore`): [`stream_reads!`] on
/// its field `pool`, and `source` from its field `source`.
macro_rules! store_reads {
    () => {
        $crate::sql::read::stream_reads!(pool, &);

        fn source(&self) -> &str {
            &self.source
        }
    };
}
pub(crate) use store_reads;
