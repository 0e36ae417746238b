//! The store, its builder and its migrations.

use std::sync::Arc;
use std::time::Instant;

use eventfold_core::{NewEvent, StreamId};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use super::append::prepare_append;
use super::batch::{PgAppend, PgBatchWriter};
use super::read_batch::{PgRead, PgReadBatcher};
use super::*;
use crate::coalesce::{Coalescer, Coalescing};
use crate::error::{ExpectedVersion, StoreError};
use crate::naming::Naming;
use crate::outbox::OutboxRouting;
use crate::sql::dialect::Pg;
use crate::sql::{self, Migration, db_err};
use crate::store::{AppendResult, EventStore};

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
        name: "outbox: retry index for the claim, autovacuum tuned for a queue table",
        sql: include_str!("migrations/0005_outbox_retry_index.sql"),
    },
    // One row. `floor_seq`: no outbox row has a lower `seq`, but a retried dead letter, whose
    // retry lowers it in the same transaction. `seen_seq`: the sequence's last value, read by the
    // last advance. `bound_seq` / `bound_xid`: every `seq` up to `bound_seq` was taken by a
    // transaction whose id is below `bound_xid`.
    Migration {
        version: 6,
        name: "outbox: a lower bound on seq for the claim (ADR 0017)",
        sql: include_str!("migrations/0006_outbox_floor.sql"),
    },
    Migration {
        version: 7,
        name: "sagas: instances by business key, durable timers, request outcomes",
        sql: include_str!("migrations/0007_sagas.sql"),
    },
    Migration {
        version: 8,
        name: "trace: the inbox keeps what it received, a journal of sent messages, events by correlation (ADR 0022)",
        sql: include_str!("migrations/0008_trace.sql"),
    },
    Migration {
        version: 9,
        name: "sagas: the last event id beside the version, for the orchestrator's state cache (ADR 0029)",
        sql: include_str!("migrations/0009_saga_last_event.sql"),
    },
];

/// An event store in a PostgreSQL database.
#[derive(Clone)]
pub struct PgStore {
    pub(super) relay: Arc<RelaySql>,
    pub(super) routing: Option<Arc<OutboxRouting>>,
    pub(super) appended: Arc<watch::Sender<u64>>,
    /// The payload of this store's NOTIFYs: its wake-ups skip them (`appended` woke them
    /// already), and wake only for other stores' appends.
    pub(super) origin: Arc<str>,
    pub(super) pool: PgPool,
    pub(super) naming: Arc<Naming>,
    pub(super) sql: Arc<Statements>,
    pub(super) source: Arc<str>,
    /// When this store last advanced the outbox floor (ADR 0017).
    pub(super) floor_advanced: Arc<std::sync::Mutex<Option<Instant>>>,
    /// Shared commits of concurrent appends, when on (ADR 0024).
    pub(super) coalescer: Option<Arc<Coalescer<PgBatchWriter>>>,
    /// Shared reads of concurrent stream reads, on with the coalescing (ADR 0024).
    pub(super) reader: Option<Arc<Coalescer<PgReadBatcher>>>,
    /// The queue of this store's writers (ADR 0027).
    pub(super) gate: crate::sql::gate::WriteGate,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("naming", &self.naming)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Builds a [`PgStore`].
#[derive(Debug)]
pub struct PgStoreBuilder {
    pub(super) routing: Option<OutboxRouting>,
    pub(super) pool: PgPool,
    pub(super) naming: Naming,
    pub(super) source: String,
    pub(super) migrate: bool,
    pub(super) coalescing: Option<Coalescing>,
}

impl PgStoreBuilder {
    /// Table names: prefix (default `eventfold_`) and optional schema.
    pub fn naming(mut self, naming: Naming) -> Self {
        self.naming = naming;
        self
    }

    crate::sql::store::builder_settings!(
        "Concurrent appends share commits ([`crate::coalesce`]): see [`PgStore::with_coalescing`]."
    );

    /// Builds the store, migrating first unless turned off.
    pub async fn build(self) -> Result<PgStore, StoreError> {
        let sql = Arc::new(Statements::new(&self.naming));
        let (appended, signals) = watch::channel(0);
        // Tell other processes about appends, outside the writers' transactions: a NOTIFY inside
        // them would serialize their commits on PostgreSQL's notification queue lock.
        let origin: Arc<str> = Arc::from(uuid::Uuid::now_v7().to_string());
        tokio::spawn(notify_pump(
            self.pool.clone(),
            sql.channel.clone(),
            Arc::clone(&origin),
            signals,
        ));
        let store = PgStore {
            coalescer: None,
            reader: None,
            gate: crate::sql::gate::WriteGate::open(),
            relay: Arc::new(RelaySql::new(&self.naming)),
            routing: self.routing.map(Arc::new),
            appended: Arc::new(appended),
            origin,
            sql,
            pool: self.pool,
            naming: Arc::new(self.naming),
            source: Arc::from(self.source),
            floor_advanced: Arc::new(std::sync::Mutex::new(None)),
        };
        store.configured(self.coalescing, self.migrate).await
    }
}

impl PgStore {
    /// Connects to `url` with a pool of 16 connections and migrates with the default naming.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .test_before_acquire(false)
            .connect(url)
            .await
            .map_err(db_err("connecting", "-"))?;
        Self::builder(pool).build().await
    }

    crate::sql::store::store_accessors!(PgStoreBuilder, PgPool);

    /// Concurrent [`append`](EventStore::append)s (and so [`crate::Repository::execute`] of
    /// commands without an id) share commits: the appends queued while earlier ones are being
    /// written go to the database together, in one statement, and commit once (write
    /// coalescing, [`crate::coalesce`], ADR 0024). A lone append is written at once, as
    /// without; each append is answered alone (a version conflict fails only its own append)
    /// and only after its commit. Concurrent [`read_stream`](EventStore::read_stream)s (a
    /// command's read before its append) are shared the same way, one statement for a batch,
    /// unless [`Coalescing::share_reads`] is off. Units of work are not affected.
    ///
    /// ```no_run
    /// use eventfold_eventstore::{postgres::PgStore, Coalescing};
    ///
    /// # async fn f(pool: sqlx::PgPool) -> Result<(), eventfold_eventstore::StoreError> {
    /// let store = PgStore::builder(pool).build().await?.with_coalescing(Coalescing::default());
    /// # Ok(()) }
    /// ```
    pub fn with_coalescing(mut self, coalescing: Coalescing) -> Self {
        let writer = PgBatchWriter {
            pool: self.pool.clone(),
            sql: Arc::clone(&self.sql),
            appended: Arc::clone(&self.appended),
        };
        self.coalescer = Some(Coalescer::new(writer, coalescing));
        let reader = PgReadBatcher {
            pool: self.pool.clone(),
            sql: Arc::clone(&self.sql),
        };
        self.reader = coalescing
            .reads_shared()
            .then(|| Coalescer::new(reader, coalescing));
        self
    }

    /// A stream read of the store: shared with concurrent ones when coalescing is on.
    async fn pooled_read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> Result<Vec<eventfold_core::RecordedEvent>, StoreError> {
        match &self.reader {
            Some(reader) => {
                let read = PgRead {
                    stream_id: stream_id.clone(),
                    from: from_version,
                    max: max_count,
                };
                reader.submit(read).await
            }
            None => {
                read_stream_pooled(
                    &self.pool,
                    &self.sql.read,
                    stream_id,
                    from_version,
                    max_count,
                )
                .await
            }
        }
    }

    /// Nothing to rebuild after a setting changed: the batch writer gets each append prepared
    /// with the store's settings of the moment (see [`EventStore::append`]).
    fn recoalesce(self) -> Self {
        self
    }

    /// Applies the embedded migrations that are not applied yet, tracked in
    /// `{prefix}migrations`. Concurrent callers (several instances starting at once) are
    /// serialized by a transaction-scoped advisory lock.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sql::migrations::migrate::<Pg>(&self.pool, &self.naming, MIGRATIONS).await
    }
}

crate::sql::read::read_helpers!(PgConnection);

impl EventStore for PgStore {
    type UnitOfWork = PgUnitOfWork;
    type Wakeup = PgWakeup;

    /// One statement writes the events and their outbox rows, atomic on its own, so the append
    /// runs without `BEGIN`/`COMMIT`: one round trip. `Any` runs it again when a concurrent
    /// append took the version.
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        match &self.coalescer {
            Some(coalescer) => {
                let routing = self.routing.as_deref();
                let (events, outbox) =
                    prepare_append(stream_id, expected, events, &self.source, routing)?;
                let append = PgAppend {
                    stream_id: stream_id.clone(),
                    expected,
                    events,
                    outbox,
                };
                coalescer.submit(append).await
            }
            None => {
                self.append_in_one_statement(stream_id, expected, events)
                    .await
            }
        }
    }

    crate::sql::store::store_handovers!(
        read_log_below_horizon,
        "Reads below the transaction horizon: events of transactions older than the oldest one \
         still running. See [`crate::log`] and ADR 0007."
    );

    crate::sql::read::store_reads!();
}

crate::sql::store::migration_store!(PgStore, Pg);

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    /// The checksum of every migration file, as recorded in databases migrated before the files
    /// were split out: an edit to an applied migration must fail here, not in production.
    #[test]
    fn migration_checksums_are_pinned() {
        let pinned: &[(i64, i64)] = &[
            (1, -8012900637519374564),
            (2, 8855022832739519439),
            (3, -7784132279243683426),
            (4, 7895556267345499382),
            (5, -4703489205983246130),
            (6, 3611381286601128421),
            (7, 3809940013349938655),
            (8, -2398268184595761891),
            (9, 830892548598800432),
        ];
        crate::sql::migrations::assert_checksums(MIGRATIONS, pinned);
    }
}
