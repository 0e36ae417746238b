//! The store, its builder and its migrations.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::watch;

use super::*;
use eventfold_core::{RecordedEvent, StreamId};

use super::batch::{SqliteAppend, SqliteBatchWriter};
use crate::coalesce::{Coalescer, Coalescing};
use crate::error::StoreError;
use crate::sql::dialect::Lite;
use crate::sql::gate::WritePermit;
use crate::sql::{self, Migration, db_err};
use crate::store::LocalWakeup;

/// The embedded migrations, in order ([`crate::sql::migrations::embedded!`]).
pub(super) const MIGRATIONS: &[Migration] = crate::sql::migrations::embedded! {
    retry index: "outbox: retry index for the claim";
    sagas: 6 "0006_sagas.sql";
    trace: 7 "0007_trace.sql";
    last event: 8 "0008_saga_last_event.sql";
};

crate::sql::store::store_type! {
    /// An event store in a SQLite database.
    SqliteStore,
    /// Table names (default prefix `eventfold_`). A schema is not supported on SQLite.
    SqliteStoreBuilder,
    /// Concurrent appends share commits: see [`SqliteStore::with_coalescing`].
    SqlitePool, SqliteBatchWriter {}
}

impl SqliteStore {
    /// A `BEGIN IMMEDIATE` transaction of the store's own (leases, parking, timer claims), started
    /// once this writer's turn through the gate came; the turn ends when the permit is dropped,
    /// after the transaction.
    pub(super) async fn begin_immediate(
        &self,
        operation: &'static str,
        table: &str,
    ) -> Result<(WritePermit, sqlx::Transaction<'static, sqlx::Sqlite>), StoreError> {
        let turn = self.gate.enter(operation, table).await?;
        let tx = sql::begin_owned(&self.pool, Some("BEGIN IMMEDIATE"))
            .await
            .map_err(db_err(operation, table))?;
        Ok((turn, tx))
    }
}

impl SqliteStoreBuilder {
    /// Builds the store, migrating first unless turned off.
    pub async fn build(self) -> Result<SqliteStore, StoreError> {
        if let Some(schema) = self.naming.schema() {
            return Err(StoreError::InvalidIdentifier {
                what: "schema",
                value: schema.to_owned(),
                reason: "SQLite has no schemas; use a table prefix",
            });
        }
        // A pool of one connection queues its writers itself (an in-memory database).
        let gate = if self.pool.options().get_max_connections() > 1 {
            crate::sql::gate::WriteGate::single()
        } else {
            crate::sql::gate::WriteGate::open()
        };
        let store = SqliteStore {
            coalescer: None,
            gate,
            relay: Arc::new(RelaySql::new(&self.naming)),
            routing: self.routing.map(Arc::new),
            appended: Arc::new(watch::channel(0).0),
            sql: Arc::new(Statements::new(&self.naming)),
            pool: self.pool,
            naming: Arc::new(self.naming),
            source: Arc::from(self.source),
        };
        store.configured(self.coalescing, self.migrate).await
    }
}

impl SqliteStore {
    /// Opens (creating if needed) a database at `url` (`sqlite://path.db` or `sqlite::memory:`)
    /// in WAL mode, and migrates it with the default naming.
    ///
    /// An in-memory database lives in one connection, so its pool has exactly one.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(db_err("parsing the connection url", "-"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool = SqlitePoolOptions::new()
            .max_connections(if in_memory { 1 } else { 8 })
            // A connection to a file of this process cannot go stale as a network one can; the
            // ping sqlx sends on every checkout would only cost a hop to its worker thread.
            .test_before_acquire(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await;
        Self::connected(pool).await
    }

    /// Concurrent [`append`](crate::EventStore::append)s (and so [`crate::Repository::execute`] of
    /// commands without an id) share commits: the appends queued while an earlier batch is
    /// being written go to the database together in one `BEGIN IMMEDIATE` transaction, each in
    /// its own savepoint, and commit once (write coalescing, [`crate::coalesce`], ADR 0024). A
    /// lone append is written at once; each append is answered alone (a version conflict fails
    /// only its own append) and only after its commit. Units of work are not affected.
    ///
    /// ```
    /// use eventfold_eventstore::{sqlite::SqliteStore, Coalescing};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), eventfold_eventstore::StoreError> {
    /// let store = SqliteStore::connect("sqlite::memory:")
    ///     .await?
    ///     .with_coalescing(Coalescing::default().max_in_flight(1));
    /// # Ok(()) }
    /// ```
    pub fn with_coalescing(mut self, coalescing: Coalescing) -> Self {
        let mut inner = self.clone();
        inner.coalescer = None;
        self.coalescer = Some(Coalescer::new(
            SqliteBatchWriter { store: inner },
            coalescing,
        ));
        self
    }

    /// No stream read is shared on SQLite (a read costs no round trip, nothing to share): every
    /// one runs on a pooled connection.
    fn shared_read(
        &self,
        _: &StreamId,
        _: u64,
        _: u64,
    ) -> Option<std::future::Ready<Result<Vec<RecordedEvent>, StoreError>>> {
        None
    }

    /// The coalescer again after a setting its writer copies changed.
    fn recoalesce(self) -> Self {
        match self.coalescer.as_ref().map(|c| c.options()) {
            Some(options) => self.with_coalescing(options),
            None => self,
        }
    }
}

crate::sql::store::event_store! {
    SqliteStore, Lite, SqliteConnection, SqliteUnitOfWork, LocalWakeup;
    /// In a `BEGIN IMMEDIATE` transaction of its own, or shared with concurrent appends when
    /// coalescing is on ([`SqliteStore::with_coalescing`]).
    append: |_: &SqliteStore, stream_id: &StreamId, expected, events| -> Result<_, StoreError> {
        Ok(SqliteAppend { stream_id: stream_id.clone(), expected, events })
    },
    alone: crate::store::append_alone, or append_alone if appends_alone;
    /// Writers are serialized (`BEGIN IMMEDIATE`), so the log is in position order and every
    /// committed position up to the highest one is readable.
    read_log: read_log_by_position;
    /// Applies the embedded migrations that are not applied yet, tracked in
    /// `{prefix}migrations` (never the application's `_sqlx_migrations`).
    migrate;
}
