//! The in-memory event store: for users' unit tests and for prototypes.
//!
//! It follows the same contract as the SQL backends (the shared contract suite runs against it).
//! Like SQLite, it has one writer at a time: a unit of work takes the store's write lock at its
//! first write and holds it until it commits, rolls back or is dropped, so the global log is in
//! commit order. (A task that holds a unit of work and appends through the store itself waits
//! for itself: finish the unit of work first.) Nothing survives the process.
//!
//! ```
//! use eventfold_core::{NewEvent, StreamId};
//! use eventfold_eventstore::{memory::MemoryStore, EventStore, ExpectedVersion};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventfold_eventstore::StoreError> {
//! let store = MemoryStore::new();
//! let stream = StreamId::new("order", "1").unwrap();
//! store.append(&stream, ExpectedVersion::NoStream, vec![NewEvent::raw("order.placed", 1, b"{}".to_vec())]).await?;
//! let err = store
//!     .append(&stream, ExpectedVersion::NoStream, vec![NewEvent::raw("order.placed", 1, b"{}".to_vec())])
//!     .await
//!     .unwrap_err();
//! assert!(err.is_conflict());
//! assert_eq!(store.stream_version(&stream).await?, 1);
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use eventfold_core::{NewEvent, OutboxMessage, RecordedEvent, StreamId};
use uuid::Uuid;

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, watch};

use crate::error::{ExpectedVersion, StoreError};
use crate::inbox::{InboxStore, ParkedMessage};
use crate::log::{Checkpoint, LogBatch, LogEvent, LogFilter, LogHead};
use crate::outbox::{
    DeadLetter, OUTBOX_SLOTS, OutboxRelayStore, OutboxRouting, OutboxRow, OutboxStatus, fair_share,
};
use crate::projection::{
    BuildState, LockedCheckpoint, ParkedEvent, ProjectionState, ProjectionStore,
};
use crate::store::{
    AppendResult, CommandRecord, EventStore, LocalWakeup, Snapshot, UnitOfWork, fill_source,
    validate_append,
};

#[derive(Default)]
struct State {
    log: BTreeMap<u64, RecordedEvent>,
    streams: HashMap<StreamId, Vec<u64>>,
    snapshots: HashMap<StreamId, Snapshot>,
    commands: HashMap<Uuid, CommandRecord>,
    event_ids: HashSet<Uuid>,
    outbox: Vec<OutboxRow>,
    outbox_seq: u64,
    dead: Vec<DeadLetter>,
    leases: HashMap<u32, (Uuid, std::time::Instant)>,
    relays: HashMap<Uuid, std::time::Instant>,
    inbox: HashSet<(String, Uuid)>,
    parked: Vec<ParkedMessage>,
    projections: BTreeMap<String, MemProjection>,
}

/// A projection's bookkeeping in memory.
#[derive(Debug, Clone)]
struct MemProjection {
    active_generation: u32,
    paused: bool,
    status: String,
    last_error: Option<String>,
    reset_requested: bool,
    updated_at: chrono::DateTime<chrono::Utc>,
    /// generation -> (version, checkpoint, highest position applied)
    generations: BTreeMap<u32, (u32, Checkpoint, u64)>,
    dead: Vec<ParkedEvent>,
}

impl State {
    fn version(&self, stream_id: &StreamId) -> u64 {
        self.streams.get(stream_id).map_or(0, |p| p.len() as u64)
    }

    fn read(&self, stream_id: &StreamId, from_version: u64, max_count: u64) -> Vec<RecordedEvent> {
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

struct Inner {
    state: Mutex<State>,
    next_position: AtomicU64,
    writer: Arc<AsyncMutex<()>>,
    appended: watch::Sender<u64>,
}

/// An event store in memory. Clones share the same data.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
    source: Arc<str>,
    routing: Option<Arc<OutboxRouting>>,
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

    fn lock(&self) -> MutexGuard<'_, State> {
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

struct StagedStream {
    base_version: u64,
    any_only: bool,
    events: Vec<RecordedEvent>,
}

/// A unit of work of the [`MemoryStore`]: changes are staged and applied at commit.
pub struct MemoryUnitOfWork {
    store: MemoryStore,
    write_lock: Option<OwnedMutexGuard<()>>,
    streams: Vec<(StreamId, StagedStream)>,
    snapshots: Vec<Snapshot>,
    commands: Vec<CommandRecord>,
    outbox: Vec<OutboxMessage>,
    inbox: Vec<(String, Uuid)>,
    /// A copy of the projections' bookkeeping, changed by this unit of work (under the write
    /// lock) and put in place at commit.
    projections: Option<BTreeMap<String, MemProjection>>,
}

impl MemoryUnitOfWork {
    async fn lock_writer(&mut self) {
        if self.write_lock.is_none() {
            self.write_lock = Some(self.store.inner.writer.clone().lock_owned().await);
        }
    }

    fn staged(&self, stream_id: &StreamId) -> Option<&StagedStream> {
        self.streams
            .iter()
            .find(|(s, _)| s == stream_id)
            .map(|(_, staged)| staged)
    }
}

impl UnitOfWork for MemoryUnitOfWork {
    async fn append(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream_id, &events)?;
        let mut events = events;
        fill_source(&mut events, &self.store.source);
        self.lock_writer().await;
        let state = self.store.lock();
        let (base_version, staged_count) = match self.staged(stream_id) {
            Some(staged) => (staged.base_version, staged.events.len() as u64),
            None => (state.version(stream_id), 0),
        };
        let current = base_version + staged_count;
        if !expected.matches(current) {
            return Err(StoreError::VersionConflict {
                stream_id: stream_id.clone(),
                expected,
                actual: Some(current),
            });
        }
        let mut seen = HashSet::new();
        for event in &events {
            let staged_dup = self
                .streams
                .iter()
                .any(|(_, s)| s.events.iter().any(|e| e.event_id == event.event_id));
            if state.event_ids.contains(&event.event_id)
                || staged_dup
                || !seen.insert(event.event_id)
            {
                return Err(StoreError::DuplicateEventId {
                    stream_id: stream_id.clone(),
                    event_id: event.event_id,
                });
            }
        }
        drop(state);
        let count = events.len() as u64;
        let first = self
            .store
            .inner
            .next_position
            .fetch_add(count, Ordering::SeqCst);
        let recorded: Vec<_> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                e.into_recorded(stream_id.clone(), current + 1 + i as u64, first + i as u64)
            })
            .collect();
        let positions = recorded.iter().map(|e| e.global_position).collect();
        if let Some(routing) = &self.store.routing {
            self.outbox.extend(routing.messages_for(&recorded));
        }
        let any = expected == ExpectedVersion::Any;
        match self.streams.iter_mut().find(|(s, _)| s == stream_id) {
            Some((_, staged)) => {
                staged.any_only &= any;
                staged.events.extend(recorded);
            }
            None => self.streams.push((
                stream_id.clone(),
                StagedStream {
                    base_version,
                    any_only: any,
                    events: recorded,
                },
            )),
        }
        Ok(AppendResult {
            previous_version: current,
            version: current + count,
            positions,
        })
    }

    async fn read_stream(
        &mut self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = self.store.lock().read(stream_id, from_version, u64::MAX);
        if let Some(staged) = self.staged(stream_id) {
            events.retain(|e| e.stream_version <= staged.base_version);
            events.extend(
                staged
                    .events
                    .iter()
                    .filter(|e| e.stream_version >= from_version)
                    .cloned(),
            );
        }
        events.truncate(usize::try_from(max_count).unwrap_or(usize::MAX));
        Ok(events)
    }

    async fn stream_version(&mut self, stream_id: &StreamId) -> Result<u64, StoreError> {
        Ok(match self.staged(stream_id) {
            Some(staged) => staged.base_version + staged.events.len() as u64,
            None => self.store.lock().version(stream_id),
        })
    }

    async fn load_snapshot(
        &mut self,
        stream_id: &StreamId,
    ) -> Result<Option<Snapshot>, StoreError> {
        if let Some(s) = self
            .snapshots
            .iter()
            .rev()
            .find(|s| &s.stream_id == stream_id)
        {
            return Ok(Some(s.clone()));
        }
        Ok(self.store.lock().snapshots.get(stream_id).cloned())
    }

    async fn save_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        self.lock_writer().await;
        self.snapshots.push(snapshot);
        Ok(())
    }

    async fn find_command(
        &mut self,
        command_id: Uuid,
    ) -> Result<Option<CommandRecord>, StoreError> {
        if let Some(c) = self.commands.iter().find(|c| c.command_id == command_id) {
            return Ok(Some(c.clone()));
        }
        Ok(self.store.lock().commands.get(&command_id).cloned())
    }

    async fn record_command(&mut self, record: CommandRecord) -> Result<bool, StoreError> {
        self.lock_writer().await;
        let exists = self
            .commands
            .iter()
            .any(|c| c.command_id == record.command_id)
            || self.store.lock().commands.contains_key(&record.command_id);
        if exists {
            return Ok(false);
        }
        self.commands.push(record);
        Ok(true)
    }

    async fn mark_inbox(&mut self, consumer: &str, message_id: Uuid) -> Result<bool, StoreError> {
        self.lock_writer().await;
        let key = (consumer.to_owned(), message_id);
        if self.inbox.contains(&key) || self.store.lock().inbox.contains(&key) {
            return Ok(false);
        }
        self.inbox.push(key);
        Ok(true)
    }

    async fn enqueue(&mut self, messages: Vec<OutboxMessage>) -> Result<(), StoreError> {
        self.lock_writer().await;
        self.outbox.extend(messages);
        Ok(())
    }

    async fn commit(self) -> Result<(), StoreError> {
        let mut state = self.store.lock();
        // Check everything first, then apply: a failed commit changes nothing.
        let mut renumber = Vec::new();
        for (stream_id, staged) in &self.streams {
            let now = state.version(stream_id);
            if now != staged.base_version {
                if !staged.any_only {
                    return Err(StoreError::VersionConflict {
                        stream_id: stream_id.clone(),
                        expected: ExpectedVersion::Exact(staged.base_version),
                        actual: Some(now),
                    });
                }
                renumber.push((stream_id.clone(), now));
            }
            if let Some(e) = staged
                .events
                .iter()
                .find(|e| state.event_ids.contains(&e.event_id))
            {
                return Err(StoreError::DuplicateEventId {
                    stream_id: stream_id.clone(),
                    event_id: e.event_id,
                });
            }
        }
        if let Some(c) = self
            .commands
            .iter()
            .find(|c| state.commands.contains_key(&c.command_id))
        {
            return Err(StoreError::VersionConflict {
                stream_id: c.stream_id.clone(),
                expected: ExpectedVersion::Exact(c.version_before),
                actual: None,
            });
        }
        // Appends and outbox messages wake log readers and the relay.
        let appended = !self.streams.is_empty() || !self.outbox.is_empty();
        for (stream_id, staged) in self.streams {
            let base = renumber
                .iter()
                .find(|(s, _)| *s == stream_id)
                .map_or(staged.base_version, |(_, now)| *now);
            for (i, mut event) in staged.events.into_iter().enumerate() {
                event.stream_version = base + 1 + i as u64;
                state.event_ids.insert(event.event_id);
                state
                    .streams
                    .entry(stream_id.clone())
                    .or_default()
                    .push(event.global_position);
                state.log.insert(event.global_position, event);
            }
        }
        for snapshot in self.snapshots {
            let keep_existing = state
                .snapshots
                .get(&snapshot.stream_id)
                .is_some_and(|s| s.version > snapshot.version);
            if !keep_existing {
                state.snapshots.insert(snapshot.stream_id.clone(), snapshot);
            }
        }
        for command in self.commands {
            state.commands.insert(command.command_id, command);
        }
        for mark in self.inbox {
            state.inbox.insert(mark);
        }
        if let Some(projections) = self.projections {
            state.projections = projections;
        }
        let created_at = eventfold_core::metadata::now_micros();
        for message in self.outbox {
            state.outbox_seq += 1;
            let row = OutboxRow {
                seq: state.outbox_seq,
                slot: OutboxMessage::slot_of(&message.key, OUTBOX_SLOTS),
                message,
                created_at,
                attempts: 0,
                last_error: None,
                next_attempt_at: None,
            };
            state.outbox.push(row);
        }
        drop(state);
        if appended {
            self.store.inner.appended.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    async fn rollback(self) -> Result<(), StoreError> {
        Ok(())
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
        let state = self.lock();
        let mut events = Vec::new();
        let mut checkpoint = after;
        let mut reached_end = true;
        for (position, event) in state.log.range(after.position() + 1..) {
            if events.len() >= max_count {
                reached_end = false;
                break;
            }
            checkpoint = Checkpoint::new(0, *position);
            if filter.matches(event) {
                events.push(LogEvent {
                    checkpoint,
                    event: event.clone(),
                });
            }
        }
        Ok(LogBatch {
            events,
            checkpoint,
            reached_end,
            held_back: false,
        })
    }

    async fn log_head(&self) -> Result<LogHead, StoreError> {
        let position = self.lock().log.keys().next_back().copied().unwrap_or(0);
        Ok(LogHead {
            position,
            readable_position: position,
            blocked_by: None,
        })
    }

    async fn wakeup(&self) -> Result<LocalWakeup, StoreError> {
        Ok(LocalWakeup(self.inner.appended.subscribe()))
    }

    fn with_outbox(self, routing: OutboxRouting) -> Self {
        MemoryStore::with_outbox(self, routing)
    }

    async fn outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        let state = self.lock();
        Ok(OutboxStatus {
            pending: state.outbox.len() as u64,
            oldest: state.outbox.first().map(|r| r.created_at),
            dead_letters: state.dead.len() as u64,
            floor_lag: None,
        })
    }

    async fn read_outbox(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        Ok(self.lock().outbox.iter().take(limit).cloned().collect())
    }

    async fn begin(&self) -> Result<MemoryUnitOfWork, StoreError> {
        Ok(MemoryUnitOfWork {
            store: self.clone(),
            write_lock: None,
            streams: Vec::new(),
            snapshots: Vec::new(),
            commands: Vec::new(),
            outbox: Vec::new(),
            inbox: Vec::new(),
            projections: None,
        })
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

impl OutboxRelayStore for MemoryStore {
    async fn lease_slots(
        &self,
        owner: Uuid,
        ttl: std::time::Duration,
    ) -> Result<Vec<u32>, StoreError> {
        let now = std::time::Instant::now();
        let mut state = self.lock();
        state
            .relays
            .retain(|_, seen| now.duration_since(*seen) < ttl);
        state.relays.insert(owner, now);
        let share = fair_share(state.relays.len() as u64);
        let mut mine: Vec<u32> = state
            .leases
            .iter()
            .filter(|(_, (o, expires))| *o == owner && *expires > now)
            .map(|(slot, _)| *slot)
            .collect();
        mine.sort_unstable();
        while mine.len() > share {
            if let Some(slot) = mine.pop() {
                state.leases.remove(&slot);
            }
        }
        for slot in 0..OUTBOX_SLOTS {
            if mine.len() >= share {
                break;
            }
            let free = state
                .leases
                .get(&slot)
                .is_none_or(|(_, expires)| *expires <= now);
            if free {
                mine.push(slot);
            }
        }
        for slot in &mine {
            state.leases.insert(*slot, (owner, now + ttl));
        }
        mine.sort_unstable();
        Ok(mine)
    }

    async fn release_slots(&self, owner: Uuid) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.leases.retain(|_, (o, _)| *o != owner);
        state.relays.remove(&owner);
        Ok(())
    }

    async fn claim_outbox(
        &self,
        slots: &[u32],
        limit: usize,
        in_flight: &[&str],
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let now = eventfold_core::metadata::now_micros();
        let state = self.lock();
        // As in the SQL backends: keys that are in flight, parked or waiting for a retry are
        // left out of the window, so they cannot starve the others; then the first row of
        // each key.
        let blocked: HashSet<&str> = in_flight
            .iter()
            .copied()
            .chain(state.dead.iter().map(|d| d.row.message.key.as_str()))
            .chain(
                state
                    .outbox
                    .iter()
                    .filter(|r| r.next_attempt_at.is_some_and(|at| at > now))
                    .map(|r| r.message.key.as_str()),
            )
            .collect();
        let mut seen = HashSet::new();
        let claimed = state
            .outbox
            .iter()
            .filter(|r| slots.contains(&r.slot) && !blocked.contains(r.message.key.as_str()))
            .take(limit)
            .filter(|r| seen.insert(r.message.key.as_str()))
            .cloned()
            .collect();
        Ok(claimed)
    }

    async fn complete_outbox(&self, owner: Uuid, seqs: &[u64]) -> Result<u64, StoreError> {
        let now = std::time::Instant::now();
        let mut state = self.lock();
        let leased: HashSet<u32> = state
            .leases
            .iter()
            .filter(|(_, (o, expires))| *o == owner && *expires > now)
            .map(|(slot, _)| *slot)
            .collect();
        let before = state.outbox.len();
        state
            .outbox
            .retain(|r| !(seqs.contains(&r.seq) && leased.contains(&r.slot)));
        Ok((before - state.outbox.len()) as u64)
    }

    async fn fail_outbox(
        &self,
        seq: u64,
        error: &str,
        retry_after: std::time::Duration,
    ) -> Result<(), StoreError> {
        let retry_at = eventfold_core::metadata::now_micros()
            + chrono::Duration::from_std(retry_after).unwrap_or(chrono::Duration::MAX);
        let mut state = self.lock();
        if let Some(row) = state.outbox.iter_mut().find(|r| r.seq == seq) {
            row.attempts += 1;
            row.last_error = Some(error.to_owned());
            row.next_attempt_at = Some(retry_at);
        }
        Ok(())
    }

    async fn park_outbox(&self, seq: u64, error: &str) -> Result<(), StoreError> {
        let mut state = self.lock();
        if let Some(index) = state.outbox.iter().position(|r| r.seq == seq) {
            let mut row = state.outbox.remove(index);
            row.attempts += 1;
            row.last_error = Some(error.to_owned());
            state.dead.push(DeadLetter {
                row,
                error: error.to_owned(),
                parked_at: eventfold_core::metadata::now_micros(),
            });
            state.dead.sort_by_key(|d| d.row.seq);
        }
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self.lock().dead.iter().take(limit).cloned().collect())
    }

    async fn retry_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let Some(index) = state.dead.iter().position(|d| d.row.seq == seq) else {
            return Ok(false);
        };
        let mut row = state.dead.remove(index).row;
        row.attempts = 0;
        row.last_error = None;
        row.next_attempt_at = None;
        let at = state.outbox.partition_point(|r| r.seq < row.seq);
        state.outbox.insert(at, row);
        Ok(true)
    }

    async fn skip_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let before = state.dead.len();
        state.dead.retain(|d| d.row.seq != seq);
        Ok(state.dead.len() < before)
    }
}

impl InboxStore for MemoryStore {
    async fn park_message(&self, mut message: ParkedMessage) -> Result<(), StoreError> {
        let _writer = self.inner.writer.clone().lock_owned().await;
        message.parked_at = eventfold_core::metadata::now_micros();
        let mut state = self.lock();
        state
            .inbox
            .insert((message.consumer.clone(), message.message_id));
        state
            .parked
            .retain(|p| !(p.consumer == message.consumer && p.message_id == message.message_id));
        state.parked.push(message);
        Ok(())
    }

    async fn parked_messages(
        &self,
        consumer: &str,
        limit: usize,
    ) -> Result<Vec<ParkedMessage>, StoreError> {
        Ok(self
            .lock()
            .parked
            .iter()
            .filter(|p| p.consumer == consumer)
            .take(limit)
            .cloned()
            .collect())
    }
}

impl MemProjection {
    fn state(&self, name: &str) -> ProjectionState {
        let (version, checkpoint, position) = self
            .generations
            .get(&self.active_generation)
            .copied()
            .unwrap_or((0, Checkpoint::START, 0));
        let building = self
            .generations
            .range(self.active_generation + 1..)
            .next_back()
            .map(|(g, (v, c, p))| BuildState {
                generation: *g,
                version: *v,
                checkpoint: *c,
                position: *p,
            });
        ProjectionState {
            name: name.to_owned(),
            version,
            generation: self.active_generation,
            checkpoint,
            position,
            paused: self.paused,
            status: self.status.clone(),
            last_error: self.last_error.clone(),
            parked: self
                .dead
                .iter()
                .filter(|d| d.generation == self.active_generation)
                .count() as u64,
            reset_requested: self.reset_requested,
            building,
            updated_at: self.updated_at,
        }
    }
}

impl MemoryUnitOfWork {
    /// The projections' bookkeeping as this unit of work sees it (taking the write lock).
    async fn projections(&mut self) -> &mut BTreeMap<String, MemProjection> {
        self.lock_writer().await;
        if self.projections.is_none() {
            self.projections = Some(self.store.lock().projections.clone());
        }
        self.projections.get_or_insert_with(BTreeMap::new)
    }
}

fn missing_projection(name: &str) -> StoreError {
    StoreError::Corrupt {
        table: "projections".to_owned(),
        reason: format!("projection {name} does not exist"),
    }
}

impl MemoryStore {
    async fn change_projection(&self, name: &str, change: impl FnOnce(&mut MemProjection)) -> bool {
        let _writer = self.inner.writer.clone().lock_owned().await;
        let mut state = self.lock();
        match state.projections.get_mut(name) {
            Some(p) => {
                change(p);
                p.updated_at = eventfold_core::metadata::now_micros();
                true
            }
            None => false,
        }
    }
}

impl ProjectionStore for MemoryStore {
    async fn projection_states(&self) -> Result<Vec<ProjectionState>, StoreError> {
        Ok(self
            .lock()
            .projections
            .iter()
            .map(|(name, p)| p.state(name))
            .collect())
    }

    async fn projection_state(&self, name: &str) -> Result<Option<ProjectionState>, StoreError> {
        Ok(self.lock().projections.get(name).map(|p| p.state(name)))
    }

    async fn set_projection_paused(&self, name: &str, paused: bool) -> Result<bool, StoreError> {
        Ok(self.change_projection(name, |p| p.paused = paused).await)
    }

    async fn request_projection_reset(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .change_projection(name, |p| p.reset_requested = true)
            .await)
    }

    async fn parked_projection_events(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        Ok(self
            .lock()
            .projections
            .get(name)
            .map(|p| {
                p.dead
                    .iter()
                    .filter(|d| d.generation == p.active_generation)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn set_projection_status(
        &self,
        name: &str,
        status: &str,
        last_error: Option<&str>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .change_projection(name, |p| {
                p.status = status.to_owned();
                p.last_error = last_error.map(str::to_owned);
            })
            .await)
    }

    async fn checkpoint_at(&self, position: u64) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self
            .lock()
            .log
            .contains_key(&position)
            .then(|| Checkpoint::new(0, position)))
    }

    fn projection_schema(&self) -> Option<String> {
        None
    }

    fn has_sql_tables(&self) -> bool {
        false
    }

    async fn create_projection(
        &self,
        uow: &mut MemoryUnitOfWork,
        name: &str,
        version: u32,
    ) -> Result<bool, StoreError> {
        let projections = uow.projections().await;
        if projections.contains_key(name) {
            return Ok(false);
        }
        projections.insert(
            name.to_owned(),
            MemProjection {
                active_generation: 1,
                paused: false,
                status: "idle".to_owned(),
                last_error: None,
                reset_requested: false,
                updated_at: eventfold_core::metadata::now_micros(),
                generations: BTreeMap::from([(1, (version, Checkpoint::START, 0))]),
                dead: Vec::new(),
            },
        );
        Ok(true)
    }

    async fn lock_projection(
        &self,
        uow: &mut MemoryUnitOfWork,
        name: &str,
    ) -> Result<Option<ProjectionState>, StoreError> {
        Ok(uow.projections().await.get(name).map(|p| p.state(name)))
    }

    async fn lock_projection_checkpoint(
        &self,
        uow: &mut MemoryUnitOfWork,
        name: &str,
        generation: u32,
    ) -> Result<Option<LockedCheckpoint>, StoreError> {
        Ok(uow.projections().await.get(name).and_then(|p| {
            p.generations
                .get(&generation)
                .map(|(version, checkpoint, position)| LockedCheckpoint {
                    active_generation: p.active_generation,
                    version: *version,
                    checkpoint: *checkpoint,
                    position: *position,
                })
        }))
    }

    async fn save_projection_checkpoint(
        &self,
        uow: &mut MemoryUnitOfWork,
        name: &str,
        generation: u32,
        checkpoint: Checkpoint,
        position: u64,
    ) -> Result<(), StoreError> {
        let p = uow
            .projections()
            .await
            .get_mut(name)
            .ok_or_else(|| missing_projection(name))?;
        match p.generations.get_mut(&generation) {
            Some(slot) => {
                slot.1 = checkpoint;
                slot.2 = position;
            }
            None => return Err(missing_projection(name)),
        }
        p.updated_at = eventfold_core::metadata::now_micros();
        Ok(())
    }

    async fn start_projection_generation(
        &self,
        uow: &mut MemoryUnitOfWork,
        name: &str,
        generation: u32,
        version: u32,
    ) -> Result<(), StoreError> {
        let p = uow
            .projections()
            .await
            .get_mut(name)
            .ok_or_else(|| missing_projection(name))?;
        p.generations
            .insert(generation, (version, Checkpoint::START, 0));
        p.dead.retain(|d| d.generation != generation);
        p.updated_at = eventfold_core::metadata::now_micros();
        Ok(())
    }

    async fn activate_projection_generation(
        &self,
        uow: &mut MemoryUnitOfWork,
        name: &str,
        generation: u32,
    ) -> Result<(), StoreError> {
        let p = uow
            .projections()
            .await
            .get_mut(name)
            .ok_or_else(|| missing_projection(name))?;
        p.active_generation = generation;
        p.reset_requested = false;
        p.updated_at = eventfold_core::metadata::now_micros();
        Ok(())
    }

    async fn remove_projection_generation(
        &self,
        uow: &mut MemoryUnitOfWork,
        name: &str,
        generation: u32,
    ) -> Result<(), StoreError> {
        if let Some(p) = uow.projections().await.get_mut(name) {
            p.generations.remove(&generation);
            p.dead.retain(|d| d.generation != generation);
        }
        Ok(())
    }

    async fn old_projection_generations(
        &self,
        uow: &mut MemoryUnitOfWork,
        name: &str,
    ) -> Result<Vec<u32>, StoreError> {
        Ok(uow
            .projections()
            .await
            .get(name)
            .map(|p| {
                p.generations
                    .range(..p.active_generation)
                    .map(|(g, _)| *g)
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn park_projection_event(
        &self,
        uow: &mut MemoryUnitOfWork,
        mut event: ParkedEvent,
    ) -> Result<(), StoreError> {
        let p = uow
            .projections()
            .await
            .get_mut(&event.projection)
            .ok_or_else(|| missing_projection(&event.projection))?;
        event.parked_at = eventfold_core::metadata::now_micros();
        p.dead
            .retain(|d| !(d.generation == event.generation && d.event_id == event.event_id));
        p.dead.push(event);
        Ok(())
    }

    async fn point_projection_views(
        &self,
        _uow: &mut MemoryUnitOfWork,
        _tables: &[String],
        _generation: u32,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn drop_projection_tables(
        &self,
        _uow: &mut MemoryUnitOfWork,
        _tables: &[String],
        _generation: u32,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }
}
