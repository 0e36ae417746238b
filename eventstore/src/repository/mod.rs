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
//! 5. on a version conflict drop the cached state and start again, a bounded number of times;
//!    on a transient database failure ([`StoreError::Transient`]: deadlock, serialization
//!    failure, pool timeout, SQLite busy, and a lost connection when the command has an id)
//!    likewise, after an exponential pause with jitter. Every retry is counted in
//!    `eventfold_repository_retries_total{reason}` (`version_conflict`, `deadlock`, ...).
//!
//! A command without an id needs no transaction around its read: the append itself checks the
//! expected version atomically, so on PostgreSQL such a command costs one read and one
//! single-statement append (and only the append when its state is cached). A command with an id
//! runs in a unit of work, because the command record must commit with the events.
//!
//! [`Repository::execute_in`] does steps 1 to 4 inside a unit of work the application owns, so
//! its own SQL commits in the same transaction.

mod cache;
mod load;
mod retry;
mod snapshots;

use std::marker::PhantomData;
use std::sync::Arc;

use eventfold_core::{
    Aggregate, CommandMetadata, Envelope, NewEvent, StreamId, Upcasters, decode_event,
    metadata::now_micros,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::error::{ExecuteError, ExpectedVersion, StoreError};
use crate::store::{CommandRecord, EventStore, UnitOfWork};
use cache::StateCache;
use load::Source;
use retry::{backoff, count_retry, retriable_transient, transient_backoff};
use snapshots::SnapshotPolicy;

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
    max_transient_attempts: u32,
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
            max_transient_attempts: self.max_transient_attempts,
            snapshots: self.snapshots.clone(),
            cache: self.cache.clone(),
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// A repository with no upcasters, no snapshots, 5 attempts per command on version
    /// conflicts and 5 on transient failures.
    pub fn new(store: S) -> Self {
        Self {
            store,
            upcasters: Upcasters::new(),
            max_attempts: 5,
            max_transient_attempts: 5,
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

    /// How many times a command is tried when the database fails transiently (at least 1;
    /// [`StoreError::Transient`]: a deadlock, a serialization failure, a pool timeout, SQLite
    /// busy, and a lost connection for a command with an id). The pause between attempts grows
    /// exponentially from 10 ms to at most 1 s, half of it random. Each retry is counted in the
    /// metric `eventfold_repository_retries_total{reason}`.
    ///
    /// A command without an id is not retried after a lost connection: its append may have
    /// committed before the connection dropped, so the error is returned.
    pub fn with_max_transient_attempts(mut self, attempts: u32) -> Self {
        self.max_transient_attempts = attempts.max(1);
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
        self.cache = (capacity > 0).then(|| Arc::new(StateCache::new(capacity, A::clone)));
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Loads the current state of an aggregate (default state at version 0 if it has no events).
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        let stream_id = StreamId::new(A::TYPE, id)?;
        self.load_from(&mut Source::Store(&self.store), &stream_id, None)
            .await
    }

    /// Executes a command: load, handle, append; retried on version conflicts and transient
    /// database failures (see [`Repository::with_max_transient_attempts`]).
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
        meta: CommandMetadata,
    ) -> Result<Executed<A>, ExecuteError<A::Error>> {
        let stream_id = StreamId::new(A::TYPE, id)?;
        let span = tracing::debug_span!("eventfold.execute", stream = %stream_id, attempt = tracing::field::Empty);
        async {
            let idempotent = meta.command_id.is_some();
            let (mut attempt, mut transient_attempts) = (0, 0);
            loop {
                attempt += 1;
                tracing::Span::current().record("attempt", attempt);
                let outcome = if idempotent {
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
                    Err(e) => {
                        let Some(kind) = retriable_transient(&e, idempotent) else {
                            return Err(e);
                        };
                        transient_attempts += 1;
                        if transient_attempts >= self.max_transient_attempts {
                            tracing::warn!(stream = %stream_id, attempts = transient_attempts, error = %e, "transient failure, giving up");
                            return Err(e);
                        }
                        if let Some(cache) = &self.cache {
                            cache.evict(&stream_id);
                        }
                        tracing::debug!(stream = %stream_id, attempt, %kind, error = %e, "transient failure, retrying");
                        count_retry(kind.as_str());
                        tokio::time::sleep(transient_backoff(transient_attempts)).await;
                        continue;
                    }
                };
                if let Some(cache) = &self.cache {
                    cache.evict(&stream_id);
                }
                if attempt - transient_attempts >= self.max_attempts {
                    return Err(ExecuteError::Conflict {
                        stream_id,
                        attempts: attempt,
                        source: conflict,
                    });
                }
                tracing::debug!(stream = %stream_id, attempt, "version conflict, retrying");
                count_retry("version_conflict");
                tokio::time::sleep(backoff(attempt - transient_attempts)).await;
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
        let (before, executed) = self
            .decide_and_append(&mut Source::Store(&self.store), stream_id, command, meta)
            .await?;
        let after = executed.version;
        if let Some(snapshot) = self.snapshot_due(stream_id, &executed.state, before, after)? {
            // The events are committed; a snapshot is only an optimisation, so failing to save
            // one is logged, not returned.
            if let Err(e) = self.save_snapshot(snapshot).await {
                tracing::warn!(stream = %stream_id, error = %e, "saving a snapshot failed");
            }
        }
        Ok(executed)
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
        let (before, executed) = self
            .decide_and_append(&mut Source::Uow(&mut *uow), stream_id, command, meta)
            .await?;
        let after = executed.version;
        if let Some(snapshot) = self.snapshot_due(stream_id, &executed.state, before, after)? {
            uow.save_snapshot(snapshot).await?;
        }
        if let Some(command_id) = meta.command_id {
            let recorded = uow
                .record_command(CommandRecord {
                    command_id,
                    stream_id: stream_id.clone(),
                    version_before: before,
                    version_after: after,
                    recorded_at: now_micros(),
                })
                .await?;
            if !recorded {
                return Ok(None);
            }
        }
        Ok(Some(executed))
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
                &mut Source::Uow(&mut *uow),
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
