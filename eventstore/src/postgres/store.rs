//! The store, its builder and its migrations.

use std::sync::Arc;
use std::time::Instant;

use eventfold_core::{RecordedEvent, StreamId};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use super::append::prepare_append;
use super::batch::{PgAppend, PgBatchWriter};
use super::read_batch::{PgRead, PgReadBatcher};
use super::*;
use crate::coalesce::{Coalescer, Coalescing};
use crate::error::StoreError;
use crate::sql::Migration;
use crate::sql::dialect::Pg;

/// The embedded migrations, in order ([`crate::sql::migrations::embedded!`]).
pub(super) const MIGRATIONS: &[Migration] = crate::sql::migrations::embedded! {
    retry index: "outbox: retry index for the claim, autovacuum tuned for a queue table";
    // One row. `floor_seq`: no outbox row has a lower `seq`, but a retried dead letter, whose
    // retry lowers it in the same transaction. `seen_seq`: the sequence's last value, read by the
    // last advance. `bound_seq` / `bound_xid`: every `seq` up to `bound_seq` was taken by a
    // transaction whose id is below `bound_xid`.
    own: 6 "0006_outbox_floor.sql" "outbox: a lower bound on seq for the claim (ADR 0017)";
    sagas: 7 "0007_sagas.sql";
    trace: 8 "0008_trace.sql";
    last event: 9 "0009_saga_last_event.sql";
};

crate::sql::store::store_type! {
    /// An event store in a PostgreSQL database.
    PgStore,
    /// Table names: prefix (default `eventfold_`) and optional schema.
    PgStoreBuilder,
    /// Concurrent appends share commits ([`crate::coalesce`]): see [`PgStore::with_coalescing`].
    PgPool, PgBatchWriter {
        /// The payload of this store's NOTIFYs: its wake-ups skip them (`appended` woke them
        /// already), and wake only for other stores' appends.
        origin: Arc<str>,
        /// When this store last advanced the outbox floor (ADR 0017).
        floor_advanced: Arc<std::sync::Mutex<Option<Instant>>>,
        /// Shared reads of concurrent stream reads, on with the coalescing (ADR 0024).
        reader: Option<Arc<Coalescer<PgReadBatcher>>>,
    }
}

impl PgStoreBuilder {
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
            .await;
        Self::connected(pool).await
    }

    /// Concurrent [`append`](crate::EventStore::append)s (and so [`crate::Repository::execute`] of
    /// commands without an id) share commits: the appends queued while earlier ones are being
    /// written go to the database together, in one statement, and commit once (write
    /// coalescing, [`crate::coalesce`], ADR 0024). A lone append is written at once, as
    /// without; each append is answered alone (a version conflict fails only its own append)
    /// and only after its commit. Concurrent [`read_stream`](crate::EventStore::read_stream)s (a
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

    /// The stream read shared with concurrent ones, when coalescing shares reads (ADR 0024).
    fn shared_read(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> Option<impl Future<Output = Result<Vec<RecordedEvent>, StoreError>>> {
        let read = PgRead {
            stream_id: stream_id.clone(),
            from: from_version,
            max: max_count,
        };
        Some(self.reader.as_ref()?.submit(read))
    }

    /// Nothing to rebuild after a setting changed: the batch writer gets each append prepared
    /// with the store's settings of the moment (see
    /// [`EventStore::append`](crate::EventStore::append)).
    fn recoalesce(self) -> Self {
        self
    }
}

crate::sql::store::event_store! {
    PgStore, Pg, PgConnection, PgUnitOfWork, PgWakeup;
    /// One statement writes the events and their outbox rows, atomic on its own, so the append
    /// runs without `BEGIN`/`COMMIT`: one round trip. `Any` runs it again when a concurrent
    /// append took the version.
    append: |store: &PgStore, stream_id: &StreamId, expected, events| -> Result<_, StoreError> {
        let routing = store.routing.as_deref();
        let source = &store.source;
        let (events, outbox) = prepare_append(stream_id, expected, events, source, routing)?;
        let stream_id = stream_id.clone();
        Ok(PgAppend { stream_id, expected, events, outbox })
    },
    alone: PgStore::append_in_one_statement;
    /// Reads below the transaction horizon: events of transactions older than the oldest one
    /// still running. See [`crate::log`] and ADR 0007.
    read_log: read_log_below_horizon;
    /// Applies the embedded migrations that are not applied yet, tracked in
    /// `{prefix}migrations`. Concurrent callers (several instances starting at once) are
    /// serialized by a transaction-scoped advisory lock.
    migrate;
}
