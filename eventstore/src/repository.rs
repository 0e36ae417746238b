//! The repository: load an aggregate, handle a command, append its events, retry on conflict.
//!
//! [`Repository::execute`] is the whole command path of event sourcing in one call:
//!
//! 1. if the command has an id and it was executed before, return the first result (idempotency);
//! 2. load the state: from the state cache if it is on and holds the aggregate, else the latest
//!    snapshot (if snapshots are on) plus the events after it, upcast and decoded;
//! 3. call the aggregate's pure `handle`;
//! 4. append the events expecting the loaded version (and record the command id in the same
//!    transaction); save a snapshot every N events;
//! 5. on a version conflict drop the cached state and start again, a bounded number of times.
//!
//! A command without an id needs no transaction around its read: the append itself checks the
//! expected version atomically, so on PostgreSQL such a command costs one read and one
//! single-statement append (and only the append when its state is cached). A command with an id
//! runs in a unit of work, because the command record must commit with the events.
//!
//! [`Repository::execute_in`] does steps 1 to 4 inside a unit of work the application owns, so
//! its own SQL commits in the same transaction.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventfold_core::{
    Aggregate, BoxError, CommandMetadata, Envelope, NewEvent, StreamId, Upcasters, decode_event,
    metadata::now_micros,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::error::{ExecuteError, ExpectedVersion, StoreError};
use crate::store::{CommandRecord, EventStore, Snapshot, UnitOfWork};
use eventfold_core::RecordedEvent;

/// What an executed command produced.
#[derive(Debug)]
pub struct Executed<A: Aggregate> {
    /// The aggregate's stream.
    pub stream_id: StreamId,
    /// The stream version after the command.
    pub version: u64,
    /// The events the command appended (for a deduplicated command: those of the first run).
    pub events: Vec<Envelope<A::Event>>,
    /// The state after the command.
    pub state: A,
    /// `true` when the command id had been executed before and nothing was appended now.
    pub deduplicated: bool,
}

/// A loaded aggregate.
#[derive(Debug)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The stream version it reflects (0: no events).
    pub version: u64,
}

type EncodeState<A> = fn(&A) -> Result<Vec<u8>, BoxError>;
type DecodeState<A> = fn(&[u8]) -> Result<A, BoxError>;

struct SnapshotPolicy<A> {
    every: u64,
    encode: EncodeState<A>,
    decode: DecodeState<A>,
}

impl<A> Clone for SnapshotPolicy<A> {
    fn clone(&self) -> Self {
        Self {
            every: self.every,
            encode: self.encode,
            decode: self.decode,
        }
    }
}

/// A bounded cache of aggregate states with their versions. A stale entry is harmless: the
/// append expects the cached version, fails with a conflict, and the entry is dropped.
struct StateCache<A> {
    capacity: usize,
    clone: fn(&A) -> A,
    entries: Mutex<HashMap<StreamId, (A, u64)>>,
}

impl<A> StateCache<A> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, (A, u64)>> {
        // Entries are replaced whole, so a poisoned map is still consistent.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, stream_id: &StreamId) -> Option<Loaded<A>> {
        self.lock().get(stream_id).map(|(state, version)| Loaded {
            state: (self.clone)(state),
            version: *version,
        })
    }

    fn put(&self, stream_id: &StreamId, state: &A, version: u64) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(stream_id) {
            // Evict an arbitrary entry (the map's iteration order is random).
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        entries.insert(stream_id.clone(), ((self.clone)(state), version));
    }

    fn evict(&self, stream_id: &StreamId) {
        self.lock().remove(stream_id);
    }
}

/// Where a load reads from: the store (committed data) or a unit of work.
trait Source: Send {
    fn snapshot(
        &mut self,
        stream_id: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send;
    fn read(
        &mut self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;
}

struct FromStore<'a, S>(&'a S);

impl<S: EventStore> Source for FromStore<'_, S> {
    fn snapshot(
        &mut self,
        stream_id: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send {
        self.0.load_snapshot(stream_id)
    }
    fn read(
        &mut self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.0.read_stream(stream_id, from_version, max_count)
    }
}

struct FromUow<'a, U>(&'a mut U);

impl<U: UnitOfWork> Source for FromUow<'_, U> {
    fn snapshot(
        &mut self,
        stream_id: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send {
        self.0.load_snapshot(stream_id)
    }
    fn read(
        &mut self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.0.read_stream(stream_id, from_version, max_count)
    }
}

/// Loads and executes commands on aggregates of type `A` stored in `S`.
///
/// ```
/// # use eventfold_core::{Aggregate, Event, EventTypeInfo, CodecError, CommandMetadata};
/// # #[derive(Debug, Clone, PartialEq)]
/// # enum E { Added(u32) }
/// # impl Event for E {
/// #     const CONTENT_TYPE: &'static str = "application/json";
/// #     fn event_type(&self) -> &'static str { "sum.added" }
/// #     fn schema_version(&self) -> u32 { 1 }
/// #     fn event_types() -> &'static [EventTypeInfo] { &[EventTypeInfo { name: "sum.added", version: 1, variant: "Added" }] }
/// #     fn encode(&self) -> Result<Vec<u8>, CodecError> { let E::Added(n) = self; Ok(n.to_string().into_bytes()) }
/// #     fn decode(_: &str, p: &[u8]) -> Result<Self, CodecError> { Ok(E::Added(std::str::from_utf8(p).unwrap().parse().unwrap())) }
/// # }
/// # #[derive(Default, Debug, serde::Serialize, serde::Deserialize)]
/// # struct Sum { total: u64 }
/// # #[derive(Debug, thiserror::Error)] #[error("no")] struct No;
/// # impl Aggregate for Sum {
/// #     const TYPE: &'static str = "sum";
/// #     type Command = u32; type Event = E; type Error = No;
/// #     fn handle(&self, n: &u32) -> Result<Vec<E>, No> { Ok(vec![E::Added(*n)]) }
/// #     fn apply(&mut self, e: &E) { let E::Added(n) = e; self.total += u64::from(*n); }
/// # }
/// use eventfold_eventstore::{memory::MemoryStore, Repository};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let repo = Repository::<Sum, _>::new(MemoryStore::new())
///     .with_snapshots(100)
///     .with_max_attempts(3);
/// repo.execute("s-1", &2, CommandMetadata::new()).await?;
/// let done = repo.execute("s-1", &3, CommandMetadata::new()).await?;
/// assert_eq!((done.state.total, done.version), (5, 2));
/// assert_eq!(repo.load("s-1").await?.state.total, 5);
/// # Ok(())
/// # }
/// ```
pub struct Repository<A: Aggregate, S: EventStore> {
    store: S,
    upcasters: Upcasters,
    max_attempts: u32,
    snapshots: Option<SnapshotPolicy<A>>,
    cache: Option<Arc<StateCache<A>>>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate, S: EventStore> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            upcasters: self.upcasters.clone(),
            max_attempts: self.max_attempts,
            snapshots: self.snapshots.clone(),
            cache: self.cache.clone(),
            _aggregate: PhantomData,
        }
    }
}

/// Events read per query while loading a stream.
const PAGE: u64 = 1000;

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// A repository with no upcasters, no snapshots and 5 attempts per command.
    pub fn new(store: S) -> Self {
        Self {
            store,
            upcasters: Upcasters::new(),
            max_attempts: 5,
            snapshots: None,
            cache: None,
            _aggregate: PhantomData,
        }
    }

    /// Upcasters applied to stored events when they are loaded.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// How many times a command is tried when its stream changes concurrently (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Saves a snapshot of the state (as JSON) each time the stream version crosses a multiple
    /// of `every`, in the same transaction as the events. Loading then starts from the latest
    /// snapshot and applies only the events after it. `every = 0` turns snapshots off.
    pub fn with_snapshots(mut self, every: u64) -> Self
    where
        A: Serialize + DeserializeOwned,
    {
        self.snapshots = (every > 0).then_some(SnapshotPolicy {
            every,
            encode: |state| Ok(serde_json::to_vec(state)?),
            decode: |bytes| Ok(serde_json::from_slice(bytes)?),
        });
        self
    }

    /// Keeps the state and version of up to `capacity` aggregates in memory (clones share the
    /// cache), so a command on a cached aggregate reads nothing before its append. Safe with
    /// several instances writing the same streams: a stale entry makes the append conflict, the
    /// entry is dropped and the command retried from the store. `capacity = 0` turns it off.
    pub fn with_cache(mut self, capacity: usize) -> Self
    where
        A: Clone,
    {
        self.cache = (capacity > 0).then(|| {
            Arc::new(StateCache {
                capacity,
                clone: A::clone,
                entries: Mutex::new(HashMap::new()),
            })
        });
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Loads the current state of an aggregate (default state at version 0 if it has no events).
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        let stream_id = StreamId::new(A::TYPE, id)?;
        self.load_from(&mut FromStore(&self.store), &stream_id, None)
            .await
    }

    /// Executes a command: load, handle, append; retried on version conflicts.
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
        meta: CommandMetadata,
    ) -> Result<Executed<A>, ExecuteError<A::Error>> {
        let stream_id = StreamId::new(A::TYPE, id)?;
        let span = tracing::debug_span!("eventfold.execute", stream = %stream_id, attempt = tracing::field::Empty);
        async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                tracing::Span::current().record("attempt", attempt);
                let outcome = if meta.command_id.is_some() {
                    self.execute_in_new_unit(&stream_id, command, &meta).await
                } else {
                    self.execute_direct(&stream_id, command, &meta)
                        .await
                        .map(Some)
                };
                let conflict = match outcome {
                    Ok(Some(done)) => {
                        if let Some(cache) = &self.cache {
                            cache.put(&stream_id, &done.state, done.version);
                        }
                        return Ok(done);
                    }
                    // A concurrent execution recorded the same command id: go again to return
                    // its result.
                    Ok(None) => continue,
                    Err(ExecuteError::Conflict { source, .. }) => source,
                    Err(e) => return Err(e),
                };
                if let Some(cache) = &self.cache {
                    cache.evict(&stream_id);
                }
                if attempt >= self.max_attempts {
                    return Err(ExecuteError::Conflict {
                        stream_id,
                        attempts: attempt,
                        source: conflict,
                    });
                }
                tracing::debug!(stream = %stream_id, attempt, "version conflict, retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
        .instrument(span)
        .await
    }

    /// A command with an id: everything in one unit of work, so the command record commits with
    /// the events. `Ok(None)`: the id was recorded concurrently.
    async fn execute_in_new_unit(
        &self,
        stream_id: &StreamId,
        command: &A::Command,
        meta: &CommandMetadata,
    ) -> Result<Option<Executed<A>>, ExecuteError<A::Error>> {
        let mut uow = self.store.begin().await?;
        match self.execute_once(&mut uow, stream_id, command, meta).await {
            Ok(Some(done)) => match uow.commit().await {
                Ok(()) => Ok(Some(done)),
                Err(e) if e.is_conflict() => Err(ExecuteError::Conflict {
                    stream_id: stream_id.clone(),
                    attempts: 1,
                    source: e,
                }),
                Err(e) => Err(e.into()),
            },
            Ok(None) => {
                uow.rollback().await?;
                Ok(None)
            }
            Err(e) => {
                // The transaction may already be aborted; rolling back is best effort and the
                // command's error is the one worth reporting.
                let _ = uow.rollback().await;
                Err(e)
            }
        }
    }

    /// A command without an id: read, decide, and one atomic append with the expected version.
    async fn execute_direct(
        &self,
        stream_id: &StreamId,
        command: &A::Command,
        meta: &CommandMetadata,
    ) -> Result<Executed<A>, ExecuteError<A::Error>> {
        let cached = self.cache.as_ref().and_then(|cache| cache.get(stream_id));
        let Loaded { mut state, version } = match cached {
            Some(loaded) => loaded,
            None => {
                self.load_from(&mut FromStore(&self.store), stream_id, None)
                    .await?
            }
        };
        let events = state
            .handle(command)
            .map_err(|source| ExecuteError::Rejected {
                stream_id: stream_id.clone(),
                source,
            })?;
        if events.is_empty() {
            return Ok(Executed {
                stream_id: stream_id.clone(),
                version,
                events: Vec::new(),
                state,
                deduplicated: false,
            });
        }
        let encoded = self.encode(stream_id, &events, meta)?;
        let appended = self
            .store
            .append(stream_id, ExpectedVersion::Exact(version), encoded.clone())
            .await
            .map_err(|e| conflict_or_store(stream_id, e))?;
        let envelopes = apply_all(
            &mut state,
            stream_id,
            version,
            events,
            encoded,
            appended.positions,
        );
        if let Some(snapshot) = self.snapshot_due(stream_id, &state, version, appended.version)? {
            // The events are committed; a snapshot is only an optimisation, so failing to save
            // one is logged, not returned.
            if let Err(e) = self.save_snapshot(snapshot).await {
                tracing::warn!(stream = %stream_id, error = %e, "saving a snapshot failed");
            }
        }
        Ok(Executed {
            stream_id: stream_id.clone(),
            version: appended.version,
            events: envelopes,
            state,
            deduplicated: false,
        })
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let mut uow = self.store.begin().await?;
        uow.save_snapshot(snapshot).await?;
        uow.commit().await
    }

    fn encode(
        &self,
        stream_id: &StreamId,
        events: &[A::Event],
        meta: &CommandMetadata,
    ) -> Result<Vec<NewEvent>, StoreError> {
        events
            .iter()
            .map(|e| NewEvent::encode(e, self.store.source(), meta))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| StoreError::Encode {
                stream_id: stream_id.clone(),
                source,
            })
    }

    /// The snapshot to save when an append moved the stream from `before` to `after` across a
    /// multiple of the snapshot interval.
    fn snapshot_due(
        &self,
        stream_id: &StreamId,
        state: &A,
        before: u64,
        after: u64,
    ) -> Result<Option<Snapshot>, StoreError> {
        let Some(policy) = &self.snapshots else {
            return Ok(None);
        };
        if after / policy.every <= before / policy.every {
            return Ok(None);
        }
        let bytes = (policy.encode)(state).map_err(|source| StoreError::Snapshot {
            stream_id: stream_id.clone(),
            version: after,
            source,
        })?;
        Ok(Some(Snapshot {
            stream_id: stream_id.clone(),
            version: after,
            snapshot_version: A::SNAPSHOT_VERSION,
            state: bytes,
            taken_at: now_micros(),
        }))
    }

    /// Executes a command inside a unit of work the caller owns (and commits).
    ///
    /// A version conflict is returned as [`ExecuteError::Conflict`] without retrying: the caller
    /// owns the transaction and decides.
    pub async fn execute_in(
        &self,
        uow: &mut S::UnitOfWork,
        id: &str,
        command: &A::Command,
        meta: CommandMetadata,
    ) -> Result<Executed<A>, ExecuteError<A::Error>> {
        let stream_id = StreamId::new(A::TYPE, id)?;
        // The caller may or may not commit: forget what the cache knows about this stream.
        if let Some(cache) = &self.cache {
            cache.evict(&stream_id);
        }
        match self.execute_once(uow, &stream_id, command, &meta).await? {
            Some(done) => Ok(done),
            None => Err(ExecuteError::Conflict {
                stream_id: stream_id.clone(),
                attempts: 1,
                source: StoreError::VersionConflict {
                    stream_id,
                    expected: ExpectedVersion::Any,
                    actual: None,
                },
            }),
        }
    }

    /// One attempt. `Ok(None)`: the command id was recorded concurrently.
    async fn execute_once(
        &self,
        uow: &mut S::UnitOfWork,
        stream_id: &StreamId,
        command: &A::Command,
        meta: &CommandMetadata,
    ) -> Result<Option<Executed<A>>, ExecuteError<A::Error>> {
        if let Some(command_id) = meta.command_id {
            if let Some(record) = uow.find_command(command_id).await? {
                return self.replay_command(uow, stream_id, record).await.map(Some);
            }
        }
        let cached = self.cache.as_ref().and_then(|cache| cache.get(stream_id));
        let Loaded { mut state, version } = match cached {
            Some(loaded) => loaded,
            None => {
                self.load_from(&mut FromUow(&mut *uow), stream_id, None)
                    .await?
            }
        };
        let events = state
            .handle(command)
            .map_err(|source| ExecuteError::Rejected {
                stream_id: stream_id.clone(),
                source,
            })?;
        let mut envelopes = Vec::new();
        let mut new_version = version;
        if !events.is_empty() {
            let encoded = self.encode(stream_id, &events, meta)?;
            let appended = uow
                .append(stream_id, ExpectedVersion::Exact(version), encoded.clone())
                .await
                .map_err(|e| conflict_or_store(stream_id, e))?;
            new_version = appended.version;
            envelopes = apply_all(
                &mut state,
                stream_id,
                version,
                events,
                encoded,
                appended.positions,
            );
            if let Some(snapshot) = self.snapshot_due(stream_id, &state, version, new_version)? {
                uow.save_snapshot(snapshot).await?;
            }
        }
        if let Some(command_id) = meta.command_id {
            let recorded = uow
                .record_command(CommandRecord {
                    command_id,
                    stream_id: stream_id.clone(),
                    version_before: version,
                    version_after: new_version,
                    recorded_at: now_micros(),
                })
                .await?;
            if !recorded {
                return Ok(None);
            }
        }
        Ok(Some(Executed {
            stream_id: stream_id.clone(),
            version: new_version,
            events: envelopes,
            state,
            deduplicated: false,
        }))
    }

    /// The result of a command executed before: its events and the state right after it.
    async fn replay_command(
        &self,
        uow: &mut S::UnitOfWork,
        stream_id: &StreamId,
        record: CommandRecord,
    ) -> Result<Executed<A>, ExecuteError<A::Error>> {
        if &record.stream_id != stream_id {
            return Err(StoreError::CommandIdReused {
                command_id: record.command_id,
                stream_id: stream_id.clone(),
                recorded: record.stream_id,
            }
            .into());
        }
        let loaded = self
            .load_from(
                &mut FromUow(&mut *uow),
                stream_id,
                Some(record.version_before),
            )
            .await?;
        let mut state = loaded.state;
        let mut events = Vec::new();
        let raw = uow
            .read_stream(
                stream_id,
                record.version_before + 1,
                record.version_after - record.version_before,
            )
            .await?;
        for recorded in raw {
            let envelope = decode_event::<A::Event>(recorded, &self.upcasters)?;
            state.apply(&envelope.payload);
            events.push(envelope);
        }
        Ok(Executed {
            stream_id: stream_id.clone(),
            version: record.version_after,
            events,
            state,
            deduplicated: true,
        })
    }

    /// Loads the state from the latest usable snapshot and the events after it, up to
    /// `up_to` (inclusive) when given.
    async fn load_from(
        &self,
        source: &mut impl Source,
        stream_id: &StreamId,
        up_to: Option<u64>,
    ) -> Result<Loaded<A>, StoreError> {
        let mut state = A::default();
        let mut version = 0;
        if let Some(policy) = &self.snapshots {
            if let Some(snapshot) = source.snapshot(stream_id).await? {
                let usable = snapshot.snapshot_version == A::SNAPSHOT_VERSION
                    && up_to.is_none_or(|limit| snapshot.version <= limit);
                if usable {
                    match (policy.decode)(&snapshot.state) {
                        Ok(restored) => {
                            state = restored;
                            version = snapshot.version;
                        }
                        Err(e) => tracing::warn!(
                            stream = %stream_id,
                            version = snapshot.version,
                            error = %e,
                            "snapshot does not decode, replaying the stream instead"
                        ),
                    }
                }
            }
        }
        loop {
            let want = up_to.map_or(PAGE, |limit| PAGE.min(limit.saturating_sub(version)));
            if want == 0 {
                break;
            }
            let page = source.read(stream_id, version + 1, want).await?;
            let got = page.len() as u64;
            for recorded in page {
                if recorded.stream_version != version + 1 {
                    return Err(StoreError::Corrupt {
                        table: "events".to_owned(),
                        reason: format!(
                            "stream {stream_id} jumps from version {version} to {} (event {})",
                            recorded.stream_version, recorded.event_id
                        ),
                    });
                }
                version = recorded.stream_version;
                let envelope = decode_event::<A::Event>(recorded, &self.upcasters)?;
                state.apply(&envelope.payload);
            }
            if got < want {
                break;
            }
        }
        Ok(Loaded { state, version })
    }
}

/// A version conflict becomes [`ExecuteError::Conflict`], anything else a store error.
fn conflict_or_store<E: std::error::Error + 'static>(
    stream_id: &StreamId,
    e: StoreError,
) -> ExecuteError<E> {
    if e.is_conflict() {
        ExecuteError::Conflict {
            stream_id: stream_id.clone(),
            attempts: 1,
            source: e,
        }
    } else {
        ExecuteError::Store(e)
    }
}

/// Applies appended events to the state and wraps them in envelopes.
fn apply_all<A: Aggregate>(
    state: &mut A,
    stream_id: &StreamId,
    version: u64,
    events: Vec<A::Event>,
    encoded: Vec<NewEvent>,
    positions: Vec<u64>,
) -> Vec<Envelope<A::Event>> {
    let mut envelopes = Vec::with_capacity(events.len());
    for (i, ((event, new), position)) in events.into_iter().zip(encoded).zip(positions).enumerate()
    {
        state.apply(&event);
        envelopes.push(
            new.into_recorded(stream_id.clone(), version + 1 + i as u64, position)
                .with_payload(event),
        );
    }
    envelopes
}

/// A short random pause before retry `attempt` (1, 2, ...): up to 2^attempt ms, at most 100 ms.
fn backoff(attempt: u32) -> Duration {
    let cap_ms = (1u64 << attempt.min(7)).min(100);
    let random = RandomState::new().build_hasher().finish();
    Duration::from_micros(random % (cap_ms * 1000 + 1))
}
