//! The in-memory store: its state, its constructors and the reading part of [`EventStore`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use eventfold_core::{RecordedEvent, StreamId};
use tokio::sync::{Mutex as AsyncMutex, watch};
use uuid::Uuid;

use super::projections::MemProjection;
use super::sagas::SagaTables;
use super::unit_of_work::MemoryUnitOfWork;
use crate::error::StoreError;
use crate::inbox::ParkedMessage;
use crate::log::{Checkpoint, LogBatch, LogFilter, LogHead};
use crate::outbox::{DeadLetter, OutboxRouting, OutboxRow};
use crate::store::{CommandRecord, EventStore, LocalWakeup, Snapshot};

#[derive(Default)]
pub(super) struct State {
    pub(super) log: BTreeMap<u64, RecordedEvent>,
    pub(super) streams: HashMap<StreamId, Vec<u64>>,
    pub(super) snapshots: HashMap<StreamId, Snapshot>,
    pub(super) commands: HashMap<Uuid, CommandRecord>,
    pub(super) event_ids: HashSet<Uuid>,
    pub(super) outbox: Vec<OutboxRow>,
    pub(super) outbox_seq: u64,
    pub(super) dead: Vec<DeadLetter>,
    pub(super) leases: HashMap<u32, (Uuid, std::time::Instant)>,
    pub(super) relays: HashMap<Uuid, std::time::Instant>,
    pub(super) inbox: HashSet<(String, Uuid)>,
    /// What the inbox keeps of each received message, for the trace.
    pub(super) received: Vec<super::trace::Received>,
    /// The journal of sent messages of flows, for the trace.
    pub(super) sent: Vec<(crate::trace::SentEntry, chrono::DateTime<chrono::Utc>)>,
    pub(super) parked: Vec<ParkedMessage>,
    pub(super) projections: BTreeMap<String, MemProjection>,
    pub(super) sagas: SagaTables,
}

impl State {
    pub(super) fn version(&self, stream_id: &StreamId) -> u64 {
        self.streams.get(stream_id).map_or(0, |p| p.len() as u64)
    }

    pub(super) fn read(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> Vec<RecordedEvent> {
        let Some(positions) = self.streams.get(stream_id) else {
            return Vec::new();
        };
        let skip = from_version.saturating_sub(1) as usize;
        positions
            .iter()
            .skip(skip)
            .take(usize::try_from(max_count).unwrap_or(usize::MAX))
            .filter_map(|p| self.log.get(p).cloned())
            .collect()
    }
}

pub(super) struct Inner {
    pub(super) state: Mutex<State>,
    pub(super) next_position: AtomicU64,
    pub(super) writer: Arc<AsyncMutex<()>>,
    pub(super) appended: watch::Sender<u64>,
}

/// An event store in memory. Clones share the same data.
#[derive(Clone)]
pub struct MemoryStore {
    pub(super) inner: Arc<Inner>,
    pub(super) source: Arc<str>,
    pub(super) routing: Option<Arc<OutboxRouting>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store with source `eventfold`.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                next_position: AtomicU64::new(1),
                writer: Arc::new(AsyncMutex::new(())),
                appended: watch::channel(0).0,
            }),
            source: Arc::from("eventfold"),
            routing: None,
        }
    }

    /// Writes an outbox row for every routed event, in the same unit of work as the append.
    pub fn with_outbox(mut self, routing: OutboxRouting) -> Self {
        self.routing = Some(Arc::new(routing));
        self
    }

    /// Sets the service name recorded as the `source` of new events.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Arc::from(source.into());
        self
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated: every update is
        // computed first and applied without panicking, so a poisoned lock is still consistent.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Number of committed events in the whole store.
    pub fn len(&self) -> usize {
        self.lock().log.len()
    }

    /// Is the store empty?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl EventStore for MemoryStore {
    type UnitOfWork = MemoryUnitOfWork;
    type Wakeup = LocalWakeup;

    async fn read_log(
        &self,
        after: Checkpoint,
        max_count: usize,
        filter: &LogFilter,
    ) -> Result<LogBatch, StoreError> {
        Ok(self.log_batch(after, max_count, filter))
    }

    async fn log_head(&self) -> Result<LogHead, StoreError> {
        Ok(self.head())
    }

    async fn wakeup(&self) -> Result<LocalWakeup, StoreError> {
        Ok(self.subscribe())
    }

    async fn begin(&self) -> Result<MemoryUnitOfWork, StoreError> {
        Ok(MemoryUnitOfWork::new(self.clone()))
    }

    fn source(&self) -> &str {
        &self.source
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self.lock().read(stream_id, from_version, max_count))
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<u64, StoreError> {
        Ok(self.lock().version(stream_id))
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.lock().snapshots.get(stream_id).cloned())
    }

    async fn find_command(&self, command_id: Uuid) -> Result<Option<CommandRecord>, StoreError> {
        Ok(self.lock().commands.get(&command_id).cloned())
    }
}
