//! The store, its builder and its migrations.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::watch;

use super::*;
use eventfold_core::{NewEvent, StreamId};

use super::batch::{SqliteAppend, SqliteBatchWriter};
use crate::coalesce::{Coalescer, Coalescing};
use crate::error::ExpectedVersion;
use crate::error::StoreError;
use crate::naming::Naming;
use crate::outbox::OutboxRouting;
use crate::sql::dialect::Lite;
use crate::sql::gate::WritePermit;
use crate::sql::{self, Migration, db_err};
use crate::store::AppendResult;
use crate::store::{EventStore, LocalWakeup};

/// The embedded migrations, in order. Each file's bytes are its checksum's input: never edit an
/// applied one (a test pins every checksum); add a new file instead.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events, snapshots, commands",
        sql: include_str!("migrations/0001_events_snapshots_commands.sql"),
    },
    Migration {
        version: 2,
        name: "outbox and its dead letters (Debezium Outbox Event Router columns)",
        sql: include_str!("migrations/0002_outbox.sql"),
    },
    Migration {
        version: 3,
        name: "consumer inbox and its parked messages",
        sql: include_str!("migrations/0003_inbox.sql"),
    },
    Migration {
        version: 4,
        name: "projections: state, checkpoints per generation, parked events",
        sql: include_str!("migrations/0004_projections.sql"),
    },
    Migration {
        version: 5,
        name: "outbox: retry index for the claim",
        sql: include_str!("migrations/0005_outbox_retry_index.sql"),
    },
    Migration {
        version: 6,
        name: "sagas: instances by business key, durable timers, request outcomes",
        sql: include_str!("migrations/0006_sagas.sql"),
    },
    Migration {
        version: 7,
        name: "trace: the inbox keeps what it received, a journal of sent messages, events by correlation (ADR 0022)",
        sql: include_str!("migrations/0007_trace.sql"),
    },
    Migration {
        version: 8,
        name: "sagas: the last event id beside the version, for the orchestrator's state cache (ADR 0029)",
        sql: include_str!("migrations/0008_saga_last_event.sql"),
    },
];

/// An event store in a SQLite database.
#[derive(Clone)]
pub struct SqliteStore {
    pub(super) relay: Arc<RelaySql>,
    pub(super) routing: Option<Arc<OutboxRouting>>,
    pub(super) appended: Arc<watch::Sender<u64>>,
    pub(super) pool: SqlitePool,
    pub(super) naming: Arc<Naming>,
    pub(super) sql: Arc<Statements>,
    pub(super) source: Arc<str>,
    /// Shared commits of concurrent appends, when on (ADR 0024).
    pub(super) coalescer: Option<Arc<Coalescer<SqliteBatchWriter>>>,
    /// The queue of this store's writers (ADR 0027).
    pub(super) gate: crate::sql::gate::WriteGate,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("naming", &self.naming)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
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

/// Builds a [`SqliteStore`].
#[derive(Debug)]
pub struct SqliteStoreBuilder {
    pub(super) routing: Option<OutboxRouting>,
    pub(super) pool: SqlitePool,
    pub(super) naming: Naming,
    pub(super) source: String,
    pub(super) migrate: bool,
    pub(super) coalescing: Option<Coalescing>,
}

impl SqliteStoreBuilder {
    /// Table names (default prefix `eventfold_`). A schema is not supported on SQLite.
    pub fn naming(mut self, naming: Naming) -> Self {
        self.naming = naming;
        self
    }

    crate::sql::store::builder_settings!(
        "Concurrent appends share commits: see [`SqliteStore::with_coalescing`]."
    );

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
            .await
            .map_err(db_err("connecting", "-"))?;
        Self::builder(pool).build().await
    }

    crate::sql::store::store_accessors!(SqliteStoreBuilder, SqlitePool);

    /// Concurrent [`append`](EventStore::append)s (and so [`crate::Repository::execute`] of
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

    /// A stream read of the store, on a pooled connection (a SQLite read costs no round trip:
    /// nothing to share).
    async fn pooled_read_stream(
        &self,
        stream_id: &eventfold_core::StreamId,
        from_version: u64,
        max_count: u64,
    ) -> Result<Vec<eventfold_core::RecordedEvent>, StoreError> {
        read_stream_pooled(
            &self.pool,
            &self.sql.read,
            stream_id,
            from_version,
            max_count,
        )
        .await
    }

    /// The coalescer again after a setting its writer copies changed.
    fn recoalesce(self) -> Self {
        match self.coalescer.as_ref().map(|c| c.options()) {
            Some(options) => self.with_coalescing(options),
            None => self,
        }
    }

    /// Applies the embedded migrations that are not applied yet, tracked in
    /// `{prefix}migrations` (never the application's `_sqlx_migrations`).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sql::migrations::migrate::<Lite>(&self.pool, &self.naming, MIGRATIONS).await
    }
}

crate::sql::read::read_helpers!(SqliteConnection);

impl EventStore for SqliteStore {
    type UnitOfWork = SqliteUnitOfWork;
    type Wakeup = LocalWakeup;

    /// In a `BEGIN IMMEDIATE` transaction of its own, or shared with concurrent appends when
    /// coalescing is on ([`SqliteStore::with_coalescing`]).
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        match &self.coalescer {
            Some(coalescer) => {
                let append = SqliteAppend {
                    stream_id: stream_id.clone(),
                    expected,
                    events,
                };
                coalescer.submit(append).await
            }
            None if self.appends_alone(stream_id, &events) => {
                self.append_alone(stream_id, expected, events).await
            }
            None => crate::store::append_alone(self, stream_id, expected, events).await,
        }
    }

    crate::sql::store::store_handovers!(
        read_log_by_position,
        "Writers are serialized (`BEGIN IMMEDIATE`), so the log is in position order and every \
         committed position up to the highest one is readable."
    );

    crate::sql::read::store_reads!();
}

crate::sql::store::migration_store!(SqliteStore, Lite);

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    /// The checksum of every migration file, as recorded in databases migrated before the files
    /// were split out: an edit to an applied migration must fail here, not in production.
    #[test]
    fn migration_checksums_are_pinned() {
        let pinned: &[(i64, i64)] = &[
            (1, -4474177022675687500),
            (2, 8646263417714688872),
            (3, 3393751196757052308),
            (4, -4674574820390121115),
            (5, 8426539364267374710),
            (6, 9106123669770553283),
            (7, -4623411257323787245),
            (8, 6696018751362625118),
        ];
        crate::sql::migrations::assert_checksums(MIGRATIONS, pinned);
    }
}
