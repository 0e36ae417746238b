//! The [`Orchestrator`]: runs one saga definition against a store, one transition per input, in
//! one transaction with everything the transition writes.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use eventfold_core::StreamId;
use eventfold_eventstore::{
    SagaRecord, SagaRegistration, SagaStore, SagaTimer, StoreError, UnitOfWork,
};
use uuid::Uuid;

use crate::definition::{SagaData, SagaDefinition};
use crate::machine::{Ignored, Input, TimerKey, TimerKind};
use crate::message::Reply;
use crate::runtime::cache::StateCache;
use crate::runtime::error::RuntimeError;
use crate::runtime::history::{self, saga_stream};
use crate::runtime::starts::StartQueue;
use crate::runtime::transition::Known;
use crate::state::{SagaState, SagaStatus};

/// The timer kind of an operator's request to resume a parked saga (`sagas retry`).
pub const RETRY_PARKED: &str = "retry_parked";

/// What [`Orchestrator::register`] found.
pub(crate) enum Registered<D> {
    /// The business key was started before.
    Taken(Started),
    /// This unit of work inserted the instance: its row with the database's clock of the
    /// insert, and the input of its first transition.
    New {
        locked: Box<(SagaRecord, chrono::DateTime<Utc>)>,
        input: Input<D>,
    },
}

/// What starting a saga did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The instance that owns the business key.
    pub saga_id: Uuid,
    /// `false` when the business key had been started before (nothing was written).
    pub created: bool,
}

/// What one input did to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A transition committed (or, inside a caller's unit of work, was written).
    Transitioned {
        /// The status after it.
        status: SagaStatus,
        /// The stream version after it.
        version: u64,
        /// Saga events appended.
        events: usize,
        /// Commands sent.
        commands: usize,
    },
    /// The machine ignored the input (a duplicate, stale or late input): nothing but the inbox
    /// mark or the timer's deletion was written.
    Ignored(Ignored),
    /// The timer was already fired (or cancelled) by someone else: nothing was written.
    TimerGone,
}

impl Applied {
    /// The status after a transition, `None` when the input was ignored.
    pub fn status(&self) -> Option<&SagaStatus> {
        match self {
            Applied::Transitioned { status, .. } => Some(status),
            _ => None,
        }
    }
}

pub(crate) struct Inner<S, D> {
    pub(crate) store: S,
    pub(crate) definition: SagaDefinition<D>,
    pub(crate) reply_topic: String,
    pub(crate) max_conflict_retries: u32,
    pub(crate) cache: StateCache,
    pub(crate) starts: StartQueue<D>,
}

/// How many instances an orchestrator's state cache keeps by default
/// ([`Orchestrator::with_state_cache`]).
pub const DEFAULT_STATE_CACHE: usize = 4_096;

/// Runs one saga definition against a store that implements [`SagaStore`]. Cheap to clone.
///
/// Per input (a start, a reply, a timer, an operator's retry) it loads the instance (the fold of
/// its stream), asks the pure machine ([`crate::decide`]) with the **database's clock**, and
/// writes in the same unit of work: the saga events at the version it loaded (the optimistic
/// check that serialises concurrent inputs of one instance), the commands to the outbox, the
/// timers, and the instance's row. A reply's inbox mark, a fired timer's deletion and a caller's
/// own writes (for [`start_in`](Self::start_in)) commit with it.
///
/// ```
/// use std::time::Duration;
/// use eventfold_eventstore::memory::MemoryStore;
/// use eventfold_saga::{Command, Saga};
/// use eventfold_saga::runtime::Orchestrator;
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Order { id: String }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let definition = Saga::<Order>::define("order.place", 1)
///     .step("reserve", |s| s
///         .invoke(|o: &Order| Command::new("inventory.commands", "inventory.reserve", &o.id))
///         .timeout(Duration::from_secs(30)))
///     .build()?;
/// let orchestrator = Orchestrator::new(MemoryStore::new(), definition);
/// let first = orchestrator.start("o-1", Order { id: "o-1".into() }, None).await?;
/// let again = orchestrator.start("o-1", Order { id: "o-1".into() }, None).await?;
/// assert!(first.created && !again.created);          // idempotent on the business key
/// assert_eq!(first.saga_id, again.saga_id);
/// # Ok(())
/// # }
/// ```
pub struct Orchestrator<S, D> {
    pub(crate) inner: Arc<Inner<S, D>>,
}

impl<S, D> Clone for Orchestrator<S, D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

/// A timer's kind as stored.
pub(crate) fn kind_name(kind: TimerKind) -> &'static str {
    match kind {
        TimerKind::Timeout => "timeout",
        TimerKind::RetryBackoff => "retry_backoff",
        TimerKind::CompensationTimeout => "compensation_timeout",
        TimerKind::CompensationRetry => "compensation_retry",
    }
}

fn kind_of(name: &str) -> Option<TimerKind> {
    Some(match name {
        "timeout" => TimerKind::Timeout,
        "retry_backoff" => TimerKind::RetryBackoff,
        "compensation_timeout" => TimerKind::CompensationTimeout,
        "compensation_retry" => TimerKind::CompensationRetry,
        _ => return None,
    })
}

/// The status word and detail of a state, as the instance's row keeps them.
pub(crate) fn status_detail(state: &SagaState) -> (String, Option<String>) {
    let detail = match &state.status {
        SagaStatus::Failed { reason } => Some(reason.clone()),
        SagaStatus::CompensationFailed { step, error } => Some(format!("{step}: {error}")),
        SagaStatus::Compensating => state
            .compensation_cause
            .as_ref()
            .map(|(step, reason)| format!("{step}: {reason}")),
        _ => None,
    };
    (state.status.as_str().to_owned(), detail)
}

impl<S: SagaStore, D: SagaData> Orchestrator<S, D> {
    /// An orchestrator of `definition` on `store`. Replies are expected on the topic
    /// `"{saga_type}.replies"` (see [`with_reply_topic`](Self::with_reply_topic)).
    pub fn new(store: S, definition: SagaDefinition<D>) -> Self {
        let reply_topic = format!("{}.replies", definition.saga_type());
        Self {
            inner: Arc::new(Inner {
                store,
                definition,
                reply_topic,
                max_conflict_retries: 8,
                cache: StateCache::new(DEFAULT_STATE_CACHE),
                starts: StartQueue::default(),
            }),
        }
    }

    /// Replies are expected on `topic` (participants find it in each command's
    /// `eventfold_reply_to` header).
    pub fn with_reply_topic(self, topic: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: self.inner.store.clone(),
                definition: self.inner.definition.clone(),
                reply_topic: topic.into(),
                max_conflict_retries: self.inner.max_conflict_retries,
                cache: StateCache::new(self.inner.cache.capacity()),
                starts: StartQueue::default(),
            }),
        }
    }

    /// Keeps the decoded history of at most `capacity` running instances in memory (default
    /// [`DEFAULT_STATE_CACHE`]; 0 turns the cache off), so that the next transition of an
    /// instance this orchestrator (or a clone of it) moved last skips the read of its stream.
    /// An entry is used only when the instance's locked row names the same committed state
    /// (stream version and last event id), so another process's transitions, or a transition
    /// whose unit of work was rolled back, are never missed: they cost a read, as without the
    /// cache (ADR 0029). Terminal instances are not kept; beyond `capacity` instances, or 64 MiB
    /// of event payloads (plus 256 bytes per event), the entry stored longest ago goes, and a
    /// history over 16 MiB is not kept.
    ///
    /// ```
    /// use std::time::Duration;
    /// use eventfold_eventstore::memory::MemoryStore;
    /// use eventfold_saga::{Command, Saga};
    /// use eventfold_saga::runtime::Orchestrator;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let definition = Saga::<String>::define("order.place", 1)
    ///     .step("reserve", |s| s
    ///         .invoke(|o: &String| Command::new("inventory.commands", "inventory.reserve", o))
    ///         .timeout(Duration::from_secs(30)))
    ///     .build()?;
    /// // Every transition reads the instance's stream.
    /// let orchestrator = Orchestrator::new(MemoryStore::new(), definition).with_state_cache(0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_state_cache(self, capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: self.inner.store.clone(),
                definition: self.inner.definition.clone(),
                reply_topic: self.inner.reply_topic.clone(),
                max_conflict_retries: self.inner.max_conflict_retries,
                cache: StateCache::new(capacity),
                starts: StartQueue::default(),
            }),
        }
    }

    /// The topic replies are expected on.
    pub fn reply_topic(&self) -> &str {
        &self.inner.reply_topic
    }

    /// The definition.
    pub fn definition(&self) -> &SagaDefinition<D> {
        &self.inner.definition
    }

    /// The saga type.
    pub fn saga_type(&self) -> &str {
        self.inner.definition.saga_type()
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Starts a saga **inside the caller's unit of work**: it commits (or rolls back) with
    /// whatever else the caller wrote, e.g. the order whose placement starts it. Idempotent on
    /// `business_key`: a key that was started before (committed, or in a concurrent transaction
    /// that commits first) returns that instance with `created: false` and writes nothing.
    /// `correlation_id` defaults to the saga id.
    pub async fn start_in(
        &self,
        uow: &mut S::UnitOfWork,
        business_key: &str,
        data: D,
        correlation_id: Option<Uuid>,
    ) -> Result<Started, RuntimeError> {
        match self
            .register(uow, business_key, data, correlation_id)
            .await?
        {
            Registered::Taken(started) => Ok(started),
            Registered::New { locked, input } => {
                let saga_id = locked.0.saga_id;
                self.apply_locked(uow, *locked, Known::New, input, None)
                    .await?;
                Ok(Started {
                    saga_id,
                    created: true,
                })
            }
        }
    }

    /// Registers a new instance under `business_key`, or finds the one that has it.
    pub(crate) async fn register(
        &self,
        uow: &mut S::UnitOfWork,
        business_key: &str,
        data: D,
        correlation_id: Option<Uuid>,
    ) -> Result<Registered<D>, RuntimeError> {
        let record = self.new_record(business_key, correlation_id);
        // The insert reads the database's clock; the unit of work holds the new row, and the
        // new instance has no events, so its first transition needs neither a lock nor a read.
        let registration = self
            .inner
            .store
            .register_saga_with_clock(uow, &record)
            .await
            .map_err(RuntimeError::store(record.saga_id))?;
        Ok(Self::registered(record, registration, data))
    }

    /// [`register`](Self::register) for several starts at once (`SagaStore::register_sagas_with_clock`:
    /// one statement on PostgreSQL), in the order given (the caller's key order).
    pub(crate) async fn register_all(
        &self,
        uow: &mut S::UnitOfWork,
        starts: Vec<(&str, D, Option<Uuid>)>,
    ) -> Result<Vec<Registered<D>>, RuntimeError> {
        let records: Vec<SagaRecord> = starts
            .iter()
            .map(|(key, _, correlation_id)| self.new_record(key, *correlation_id))
            .collect();
        let first = records.first().map_or(Uuid::nil(), |r| r.saga_id);
        let registrations = self
            .inner
            .store
            .register_sagas_with_clock(uow, &records)
            .await
            .map_err(RuntimeError::store(first))?;
        if registrations.len() != records.len() {
            return Err(RuntimeError::store(first)(StoreError::Corrupt {
                table: self.saga_type().to_owned(),
                reason: format!(
                    "register_sagas_with_clock answered for {} of {} instances",
                    registrations.len(),
                    records.len()
                ),
            }));
        }
        Ok(records
            .into_iter()
            .zip(registrations)
            .zip(starts)
            .map(|((record, registration), (_, data, _))| {
                Self::registered(record, registration, data)
            })
            .collect())
    }

    /// The row of a new instance of this saga type under `business_key`, with a fresh id (the
    /// store sets both times on insert, from the database's clock).
    fn new_record(&self, business_key: &str, correlation_id: Option<Uuid>) -> SagaRecord {
        let saga_id = Uuid::now_v7();
        let now = Utc::now();
        SagaRecord {
            saga_id,
            saga_type: self.saga_type().to_owned(),
            business_key: business_key.to_owned(),
            status: SagaStatus::Running.as_str().to_owned(),
            detail: None,
            correlation_id: correlation_id.unwrap_or(saga_id),
            definition_version: self.inner.definition.version(),
            version: 0,
            started_at: now,
            updated_at: now,
            last_event_id: None,
        }
    }

    /// What registering `record` did: the owner of a taken key, or the new instance with the
    /// input of its first transition.
    fn registered(record: SagaRecord, registration: SagaRegistration, data: D) -> Registered<D> {
        match registration {
            SagaRegistration::Inserted { now } => {
                let input = Input::Start {
                    saga_id: record.saga_id,
                    correlation_id: record.correlation_id,
                    data,
                };
                Registered::New {
                    locked: Box::new((record, now)),
                    input,
                }
            }
            SagaRegistration::Taken { owner } => Registered::Taken(Started {
                saga_id: owner,
                created: false,
            }),
        }
    }

    /// Starts a saga in a unit of work of its own (see [`start_in`](Self::start_in)). Sagas
    /// started at the same moment by different callers share that unit of work and its commit
    /// (see "Shared commits" in the [runtime's docs](crate::runtime)); each caller is answered
    /// after the commit. Needs a Tokio runtime (the batch is written by a task of its own, so a
    /// caller that stops waiting does not stop the others' starts).
    pub async fn start(
        &self,
        business_key: &str,
        data: D,
        correlation_id: Option<Uuid>,
    ) -> Result<Started, RuntimeError> {
        self.start_shared(business_key, data, correlation_id).await
    }

    /// [`start`](Self::start) in a unit of work of its own, whatever else is starting.
    pub(crate) async fn start_alone(
        &self,
        business_key: &str,
        data: D,
        correlation_id: Option<Uuid>,
    ) -> Result<Started, RuntimeError> {
        let mut uow = self.begin(Uuid::nil()).await?;
        match self
            .start_in(&mut uow, business_key, data, correlation_id)
            .await
        {
            Ok(started) => {
                uow.commit()
                    .await
                    .map_err(RuntimeError::store(started.saga_id))?;
                Ok(started)
            }
            Err(e) => {
                let _ = uow.rollback().await;
                Err(e)
            }
        }
    }

    /// Applies a participant's reply inside the caller's unit of work (the consumer's, which
    /// holds the reply's inbox mark). `message_id` becomes the causation id of what it writes.
    /// A [`RuntimeError::Conflict`] means another input of the instance committed first: roll
    /// back and try again.
    pub async fn handle_reply_in(
        &self,
        uow: &mut S::UnitOfWork,
        reply: Reply,
        message_id: Option<Uuid>,
    ) -> Result<Applied, RuntimeError> {
        let saga_id = reply.saga_id;
        self.apply_in(uow, saga_id, Input::Reply(reply), message_id)
            .await
    }

    /// Applies a reply in units of work of its own, retrying conflicts.
    pub async fn handle_reply(
        &self,
        reply: Reply,
        message_id: Option<Uuid>,
    ) -> Result<Applied, RuntimeError> {
        let saga_id = reply.saga_id;
        self.with_retries(saga_id, |this, uow| {
            let reply = reply.clone();
            Box::pin(async move { this.handle_reply_in(uow, reply, message_id).await })
        })
        .await
    }

    /// Fires a claimed timer inside the caller's unit of work: deletes it (fenced: when it is
    /// gone, another firing won and nothing happens) and gives it to the machine.
    pub async fn fire_timer_in(
        &self,
        uow: &mut S::UnitOfWork,
        timer: &SagaTimer,
    ) -> Result<Applied, RuntimeError> {
        let saga_id = timer.saga_id;
        // The instance's lock before the timer's row, in the order every transition takes them;
        // the transition then goes on under this lock.
        let locked = self
            .inner
            .store
            .lock_saga_with_clock(uow, saga_id)
            .await
            .map_err(RuntimeError::store(saga_id))?;
        let deleted = self
            .inner
            .store
            .delete_saga_timer(uow, saga_id, &timer.step, timer.attempt, &timer.kind)
            .await
            .map_err(RuntimeError::store(saga_id))?;
        if !deleted {
            return Ok(Applied::TimerGone);
        }
        let input = if timer.kind == RETRY_PARKED {
            Input::RetryParked
        } else if let Some(kind) = kind_of(&timer.kind) {
            Input::TimerFired(TimerKey {
                step: timer.step.clone(),
                attempt: timer.attempt,
                kind,
            })
        } else {
            tracing::warn!(%saga_id, kind = %timer.kind, "unknown saga timer kind deleted");
            return Ok(Applied::TimerGone);
        };
        let Some(locked) = locked else {
            return Ok(Applied::Ignored(Ignored::NotStarted));
        };
        self.apply_locked(uow, locked, Known::Load, input, None)
            .await
    }

    /// Fires a claimed timer in units of work of its own, retrying conflicts.
    pub async fn fire_timer(&self, timer: &SagaTimer) -> Result<Applied, RuntimeError> {
        self.with_retries(timer.saga_id, |this, uow| {
            let timer = timer.clone();
            Box::pin(async move { this.fire_timer_in(uow, &timer).await })
        })
        .await
    }

    /// Resumes a saga parked on a failing compensation (a fresh round of retries), now. The
    /// CLI's `sagas retry`, which has no definition, stores a `retry_parked` timer instead, which
    /// the scheduler fires.
    pub async fn retry_parked(&self, saga_id: Uuid) -> Result<Applied, RuntimeError> {
        self.with_retries(saga_id, |this, uow| {
            Box::pin(async move { this.apply_in(uow, saga_id, Input::RetryParked, None).await })
        })
        .await
    }

    /// The state of an instance (the fold of its stream), `None` when it does not exist.
    pub async fn state(&self, saga_id: Uuid) -> Result<Option<SagaState>, RuntimeError> {
        let instance = history::load(&self.inner.store, saga_id).await?;
        Ok(instance.map(|i| i.state))
    }

    pub(crate) async fn begin(&self, saga_id: Uuid) -> Result<S::UnitOfWork, RuntimeError> {
        self.inner
            .store
            .begin()
            .await
            .map_err(RuntimeError::store(saga_id))
    }

    /// Runs `step` in a fresh unit of work until it commits, retrying conflicts with a short,
    /// growing, jittered pause.
    async fn with_retries<F>(&self, saga_id: Uuid, step: F) -> Result<Applied, RuntimeError>
    where
        F: for<'a> Fn(
                &'a Self,
                &'a mut S::UnitOfWork,
            )
                -> futures_util::future::BoxFuture<'a, Result<Applied, RuntimeError>>
            + Send
            + Sync,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut uow = self.begin(saga_id).await?;
            let result = step(self, &mut uow).await;
            let outcome = match result {
                Ok(applied) => match uow.commit().await {
                    Ok(()) => return Ok(applied),
                    Err(e) if e.is_conflict() => Err(RuntimeError::store(saga_id)(e)),
                    Err(e) => return Err(RuntimeError::store(saga_id)(e)),
                },
                Err(e) => {
                    let _ = uow.rollback().await;
                    Err(e)
                }
            };
            match outcome {
                Err(e) if e.is_retriable() && attempt < self.inner.max_conflict_retries => {
                    let jitter = u64::from(Uuid::now_v7().as_bytes()[15] % 8);
                    let pause = Duration::from_millis(u64::from(attempt.min(6)) * 2 + jitter);
                    tracing::debug!(%saga_id, attempt, error = %e, "saga transition retried");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(e),
                Ok(applied) => return Ok(applied),
            }
        }
    }

    /// The core: lock, then [`apply_locked`](Self::apply_locked). Not registered: nothing to do
    /// (a reply or timer for another service's saga, or one that never started).
    async fn apply_in(
        &self,
        uow: &mut S::UnitOfWork,
        saga_id: Uuid,
        input: Input<D>,
        cause: Option<Uuid>,
    ) -> Result<Applied, RuntimeError> {
        // The instance's row first: transitions of one instance are serialised on it, so a reply
        // and a timer never deadlock on the rows they both write.
        let Some(locked) = self
            .inner
            .store
            .lock_saga_with_clock(uow, saga_id)
            .await
            .map_err(RuntimeError::store(saga_id))?
        else {
            return Ok(Applied::Ignored(Ignored::NotStarted));
        };
        self.apply_locked(uow, locked, Known::Load, input, cause)
            .await
    }
}

/// The stream of a saga instance, re-exported for tools.
pub fn instance_stream(saga_id: Uuid) -> Result<StreamId, RuntimeError> {
    saga_stream(saga_id)
}
