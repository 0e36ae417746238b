//! The saga store: what the store keeps about orchestrated saga instances, beside their events.
//!
//! A saga instance is an event-sourced stream of its transitions (ADR 0020): its history lives in
//! the events table like any other stream. The store keeps three small tables beside it, all
//! written **in the unit of work of the transition** (so they commit with the saga's events, the
//! commands it sends through the outbox and the inbox mark of the reply it consumed):
//!
//! * `{prefix}sagas`: one row per instance ([`SagaRecord`]): type, business key (unique per
//!   type, which makes starting a saga idempotent), status, correlation id, stream version and
//!   times. `sagas list` and the saga-count metrics read it without folding streams.
//! * `{prefix}saga_timers`: the durable timers ([`SagaTimer`]): deadlines of steps, backoffs of
//!   retries, and operator requests (`retry_parked`). Due is decided by **the database's clock**.
//!   A scheduler claims due timers with a lease ([`SagaStore::claim_due_timers`]): a claim moves
//!   the timer's `due_at` past the lease, so several scheduler instances never fire the same
//!   timer at once, a crashed scheduler's claim comes due again, and a timer whose firing keeps
//!   failing goes to the back of the queue (its lease grows with its claims) instead of starving
//!   the others. Firing deletes the timer in the transition's unit of work
//!   ([`SagaStore::delete_saga_timer`] returns `false` when another firing won).
//! * `{prefix}saga_requests`: the outcomes participants recorded per request key
//!   ([`SagaStore::find_request_outcome`], [`SagaStore::record_request_outcome`]), so that a
//!   retried command repeats the stored outcome instead of acting twice.
//!
//! The `eventfold-saga` crate builds the orchestrator, the scheduler and the participant helper
//! on this trait; the listing half needs no application types, which is what the CLI uses.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use eventfold_core::{NewEvent, OutboxMessage, StreamId};

use crate::error::{ExpectedVersion, StoreError};
use crate::store::{EventStore, UnitOfWork};

/// One saga instance's row in `{prefix}sagas`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SagaRecord {
    /// The instance.
    pub saga_id: Uuid,
    /// The saga type (its definition's name).
    pub saga_type: String,
    /// The business key it was started with (unique per saga type).
    pub business_key: String,
    /// The status word: `running`, `compensating`, `compensation_failed`, `completed`,
    /// `compensated` or `failed`.
    pub status: String,
    /// The reason of `failed`, the error of `compensation_failed`, the cause of `compensating`.
    pub detail: Option<String>,
    /// The correlation id of the business flow.
    pub correlation_id: Uuid,
    /// The definition version of the instance's data.
    pub definition_version: u32,
    /// The version of the instance's stream after its last transition.
    pub version: u64,
    /// When it started (set by the store on insert).
    pub started_at: DateTime<Utc>,
    /// When its last transition committed (set by the store).
    pub updated_at: DateTime<Utc>,
    /// The id of the last event of the instance's stream, written with `version` by every
    /// transition (`None` before the first one, and for rows of transitions older than the
    /// column). With `version` it names one committed state of the instance: event ids are new
    /// for every attempt of a transition, so a transition that was rolled back never left its
    /// id here. The orchestrator's state cache checks it (ADR 0029).
    pub last_event_id: Option<Uuid>,
}

/// What [`SagaStore::register_saga_with_clock`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaRegistration {
    /// This call inserted the instance; `now` is the database's clock of the insert. The unit of
    /// work holds the new row (no other transaction sees it before the commit), so the caller
    /// needs no lock to run the instance's first transition.
    Inserted {
        /// The database's clock, as the insert read it.
        now: DateTime<Utc>,
    },
    /// The business key was taken: `owner` is the instance that has it, and nothing was written.
    Taken {
        /// The id of the instance that owns the key.
        owner: Uuid,
    },
}

/// A durable timer of a saga instance, in `{prefix}saga_timers`. `(saga_id, step, attempt,
/// kind)` identifies it; storing it again moves its deadline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SagaTimer {
    /// The instance.
    pub saga_id: Uuid,
    /// The saga type (schedulers claim the types they know).
    pub saga_type: String,
    /// The step (empty for an operator request).
    pub step: String,
    /// The attempt it belongs to (0 for an operator request).
    pub attempt: u32,
    /// What it is for: `timeout`, `retry_backoff`, `compensation_timeout`,
    /// `compensation_retry`, or `retry_parked` (an operator asked to resume a parked saga).
    pub kind: String,
    /// When it falls due, on the database's clock.
    pub due_at: DateTime<Utc>,
}

/// A timer's identity within its instance: `(step, attempt, kind)` of a [`SagaTimer`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SagaTimerId {
    /// The step (empty for an operator request).
    pub step: String,
    /// The attempt it belongs to.
    pub attempt: u32,
    /// What it is for (see [`SagaTimer::kind`]).
    pub kind: String,
}

impl SagaTimerId {
    /// Whether `timer` has this identity.
    pub fn is(&self, timer: &SagaTimer) -> bool {
        self.step == timer.step && self.attempt == timer.attempt && self.kind == timer.kind
    }
}

/// What one transition writes to the saga tables after its events and commands
/// ([`SagaStore::finish_saga_transition`]): the timers it cancels and stores, and the instance's
/// row as the transition left it.
#[derive(Debug, Clone, Copy)]
pub struct SagaTransitionWrite<'a> {
    /// The instance's row after the transition (written as by [`SagaStore::update_saga`]).
    pub record: &'a SagaRecord,
    /// Timers of the instance the transition cancels (gone ones are no error).
    pub cancel: &'a [SagaTimerId],
    /// Timers it stores (one with the identity of a stored or cancelled timer replaces it).
    pub put: &'a [SagaTimer],
    /// The instance ended: every timer of it is deleted (`cancel` and `put` are then moot).
    pub clear: bool,
}

/// One transition of [`SagaStore::write_saga_transitions`]: what
/// [`SagaStore::write_saga_transition`] takes, owned.
#[derive(Debug, Clone)]
pub struct SagaTransitionItem<'a> {
    /// The instance's stream.
    pub stream_id: StreamId,
    /// The stream's version the transition was decided at (its events follow it).
    pub expected: u64,
    /// The transition's events.
    pub events: Vec<NewEvent>,
    /// The commands it sends (outbox rows after the events' own).
    pub messages: Vec<OutboxMessage>,
    /// Its timers and the instance's row.
    pub write: SagaTransitionWrite<'a>,
}

/// Which saga instances to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SagaFilter {
    /// Only this saga type.
    pub saga_type: Option<String>,
    /// Only this status word.
    pub status: Option<String>,
    /// Only this correlation id.
    pub correlation_id: Option<Uuid>,
    /// At most this many (0: the store's default of 100).
    pub limit: usize,
}

/// Saga instances, timers and participant outcomes, per backend. See the [module docs](self).
pub trait SagaStore: EventStore {
    /// The database's clock, as this unit of work sees it: every saga deadline is computed from
    /// it and compared with it, so the clocks of the application hosts do not matter.
    fn database_now(
        &self,
        uow: &mut Self::UnitOfWork,
    ) -> impl Future<Output = Result<DateTime<Utc>, StoreError>> + Send;

    /// Registers a new instance under `(saga_type, business_key)` with status `running`, or finds
    /// the instance that already owns that key. Returns the owner's id: `record.saga_id` when this
    /// call inserted it, another id when the key was taken (the caller then starts nothing). Two
    /// concurrent calls with the same key agree on one owner (the second waits for the first's
    /// transaction on PostgreSQL and SQLite).
    fn register_saga(
        &self,
        uow: &mut Self::UnitOfWork,
        record: &SagaRecord,
    ) -> impl Future<Output = Result<Uuid, StoreError>> + Send;

    /// [`register_saga`](Self::register_saga) and, when this call inserted the instance,
    /// [`database_now`](Self::database_now) in one: a start needs the clock for its first
    /// deadlines and, having inserted the row itself, no lock. The SQL stores read the clock in
    /// the insert's statement (`RETURNING`).
    ///
    /// The default runs the two methods one after the other.
    fn register_saga_with_clock(
        &self,
        uow: &mut Self::UnitOfWork,
        record: &SagaRecord,
    ) -> impl Future<Output = Result<SagaRegistration, StoreError>> + Send {
        async move {
            let owner = self.register_saga(uow, record).await?;
            if owner != record.saga_id {
                return Ok(SagaRegistration::Taken { owner });
            }
            let now = self.database_now(uow).await?;
            Ok(SagaRegistration::Inserted { now })
        }
    }

    /// [`register_saga_with_clock`](Self::register_saga_with_clock) for several instances in
    /// one unit of work, in the order given: what the starts of a moment (`Orchestrator::start`
    /// batches them) register at once. Give the keys in key order, so that two batches with
    /// overlapping keys wait for each other instead of deadlocking. A key given twice is taken
    /// by its first record (the second is `Taken` by it). The default registers each in turn;
    /// PostgreSQL inserts them all with one statement and looks up only the owners of the keys
    /// that were taken.
    fn register_sagas_with_clock(
        &self,
        uow: &mut Self::UnitOfWork,
        records: &[SagaRecord],
    ) -> impl Future<Output = Result<Vec<SagaRegistration>, StoreError>> + Send {
        register_sagas_one_by_one(self, uow, records)
    }

    /// Locks an instance's row until the unit of work ends and returns it (`None` when it is not
    /// registered). Every transition takes this lock first, so the transitions of one instance
    /// run one after the other: a reply and a timer of the same instance never deadlock on the
    /// timer and stream rows they both write (PostgreSQL `SELECT ... FOR UPDATE`; SQLite and
    /// memory have one writer at a time, and this takes it).
    fn lock_saga(
        &self,
        uow: &mut Self::UnitOfWork,
        saga_id: Uuid,
    ) -> impl Future<Output = Result<Option<SagaRecord>, StoreError>> + Send;

    /// [`lock_saga`](Self::lock_saga) and [`database_now`](Self::database_now) in one: the
    /// instance's row, locked until the unit of work ends, with the database's clock as the
    /// lock was asked for (`None` when the instance is not registered). Every transition starts
    /// with it. The SQL stores read both in one statement; on PostgreSQL the clock is the
    /// statement's start, so a lock that waited for another transition gives a clock a little
    /// earlier than the lock (a deadline computed from it is that much earlier, never later).
    ///
    /// The default runs the two methods one after the other.
    fn lock_saga_with_clock(
        &self,
        uow: &mut Self::UnitOfWork,
        saga_id: Uuid,
    ) -> impl Future<Output = Result<Option<(SagaRecord, DateTime<Utc>)>, StoreError>> + Send {
        async move {
            let Some(record) = self.lock_saga(uow, saga_id).await? else {
                return Ok(None);
            };
            let now = self.database_now(uow).await?;
            Ok(Some((record, now)))
        }
    }

    /// Locks the rows of several instances for this unit of work, in the order of their ids (so
    /// that units of work locking overlapping sets wait for each other instead of deadlocking),
    /// each with the database's clock at the lock: the registered ones, in id order. What the
    /// reply consumer takes for a batch of replies at once. The default locks each in turn;
    /// PostgreSQL locks them with one statement.
    fn lock_sagas_with_clock(
        &self,
        uow: &mut Self::UnitOfWork,
        saga_ids: &[Uuid],
    ) -> impl Future<Output = Result<Vec<(SagaRecord, DateTime<Utc>)>, StoreError>> + Send {
        lock_sagas_one_by_one(self, uow, saga_ids)
    }

    /// Updates an instance's status, detail, definition version, stream version and last event
    /// id after a transition (and `updated_at` to the database's clock). `false` when it is not registered.
    fn update_saga(
        &self,
        uow: &mut Self::UnitOfWork,
        record: &SagaRecord,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Ends a transition: cancels and stores its timers (or deletes them all when the instance
    /// ended) and updates the instance's row ([`SagaTransitionWrite`]); `false` when the
    /// instance is not registered. The timers left are those of before, minus `cancel`, plus
    /// `put`; none when `clear`.
    ///
    /// The default runs [`delete_saga_timer`](Self::delete_saga_timer),
    /// [`put_saga_timers`](Self::put_saga_timers) or
    /// [`delete_all_saga_timers`](Self::delete_all_saga_timers), and
    /// [`update_saga`](Self::update_saga) one after the other; PostgreSQL writes it all in one
    /// statement.
    fn finish_saga_transition(
        &self,
        uow: &mut Self::UnitOfWork,
        write: SagaTransitionWrite<'_>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        finish_in_steps(self, uow, write)
    }

    /// All a transition writes after its lock, in one call: its `events` at version `expected`
    /// of `stream_id` and its `messages` ([`UnitOfWork::append_and_enqueue`]; with no events,
    /// the messages alone), then its end ([`finish_saga_transition`](Self::finish_saga_transition)).
    /// `Ok(false)` when the instance is not registered; a version conflict is the append's
    /// error. On any error or `false`, roll the unit of work back.
    ///
    /// The default makes those calls one after the other; PostgreSQL writes it all in one
    /// statement when there are events (the timers and the row only when the events are
    /// written, so a conflict writes nothing).
    fn write_saga_transition(
        &self,
        uow: &mut Self::UnitOfWork,
        stream_id: &StreamId,
        expected: u64,
        events: Vec<NewEvent>,
        messages: Vec<OutboxMessage>,
        write: SagaTransitionWrite<'_>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        write_in_steps(self, uow, stream_id, expected, events, messages, write)
    }

    /// The transitions of several instances (each instance at most once; each locked by this
    /// unit of work) in one call: for each, what
    /// [`write_saga_transition`](Self::write_saga_transition) writes, and whether its instance is
    /// registered, in order. What the reply consumer writes for a batch of replies. A version
    /// conflict is the error of the first transition that met one (naming its stream); on any
    /// error or `false`, roll the unit of work back (some of the others may have been written).
    ///
    /// The default writes them one after the other; PostgreSQL writes transitions with events
    /// in one statement (`UNNEST` of every transition's rows).
    fn write_saga_transitions(
        &self,
        uow: &mut Self::UnitOfWork,
        transitions: Vec<SagaTransitionItem<'_>>,
    ) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send {
        write_transitions_one_by_one(self, uow, transitions)
    }

    /// Stores timers (an existing timer with the same identity gets the new deadline).
    fn put_saga_timers(
        &self,
        uow: &mut Self::UnitOfWork,
        timers: &[SagaTimer],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes one timer; `false` when it is not there (already fired, or cancelled). A firing
    /// deletes its timer in the transition's unit of work and goes on only on `true`.
    fn delete_saga_timer(
        &self,
        uow: &mut Self::UnitOfWork,
        saga_id: Uuid,
        step: &str,
        attempt: u32,
        kind: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes every timer of an instance (when it reached a terminal status).
    fn delete_all_saga_timers(
        &self,
        uow: &mut Self::UnitOfWork,
        saga_id: Uuid,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The outcome a participant recorded for a request key, if any.
    fn find_request_outcome(
        &self,
        uow: &mut Self::UnitOfWork,
        participant: &str,
        request_key: &str,
    ) -> impl Future<Output = Result<Option<serde_json::Value>, StoreError>> + Send;

    /// Records a participant's outcome for a request key; `false` when one was recorded
    /// already (a concurrent delivery won; the caller rolls back).
    fn record_request_outcome(
        &self,
        uow: &mut Self::UnitOfWork,
        participant: &str,
        request_key: &str,
        outcome: &serde_json::Value,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The outcomes a participant recorded for several request keys, in the order of
    /// `request_keys` (`None` where none is recorded): what a participant handling a batch of
    /// commands reads at once. The default asks for each key; PostgreSQL asks once.
    fn find_request_outcomes(
        &self,
        uow: &mut Self::UnitOfWork,
        participant: &str,
        request_keys: &[&str],
    ) -> impl Future<Output = Result<Vec<Option<serde_json::Value>>, StoreError>> + Send {
        find_outcomes_one_by_one(self, uow, participant, request_keys)
    }

    /// Records a participant's outcomes for several request keys, in order; for each, `false`
    /// when one was recorded already (earlier in the same call, or by a concurrent delivery that
    /// won: the caller rolls back).
    /// The default records each; PostgreSQL writes them with one statement.
    fn record_request_outcomes(
        &self,
        uow: &mut Self::UnitOfWork,
        participant: &str,
        outcomes: &[(&str, &serde_json::Value)],
    ) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send {
        record_outcomes_one_by_one(self, uow, participant, outcomes)
    }

    /// Claims up to `limit` timers of the given saga types that are due on the database's
    /// clock, oldest deadline first, in a transaction of its own. Each claimed timer's `due_at`
    /// moves to `now + lease * claims` (capped at 64 leases), so no other scheduler claims it
    /// while this one fires it, and a timer whose firing keeps failing yields to the others.
    /// Returns the timers with the deadline they had when claimed.
    fn claim_due_timers(
        &self,
        saga_types: &[String],
        limit: usize,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<SagaTimer>, StoreError>> + Send;

    /// Gives back timers this scheduler claimed ([`SagaStore::claim_due_timers`]) and will not
    /// fire (it is stopping): each is due again at the deadline it had when claimed (the
    /// `due_at` the claim returned), with its claim count restored, so another scheduler
    /// fires it at once instead of after the lease. A timer stored again since the claim, or
    /// already fired, is left alone. Returns how many were released.
    ///
    /// The default gives nothing back (the timers come due when their leases end); the
    /// memory, SQLite and PostgreSQL stores release them.
    fn release_saga_timers(
        &self,
        timers: &[SagaTimer],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let _ = timers;
        async { Ok(0) }
    }

    /// Stores a timer in a transaction of its own (used by the CLI's `sagas retry`, which has no
    /// definition: the orchestrator that has one fires it). `false` when the instance is not
    /// registered.
    fn request_saga_timer(
        &self,
        timer: &SagaTimer,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// One instance's row.
    fn saga(
        &self,
        saga_id: Uuid,
    ) -> impl Future<Output = Result<Option<SagaRecord>, StoreError>> + Send;

    /// The instance that owns a business key of a saga type.
    fn saga_by_key(
        &self,
        saga_type: &str,
        business_key: &str,
    ) -> impl Future<Output = Result<Option<SagaRecord>, StoreError>> + Send;

    /// Instances that pass `filter`, most recently updated first.
    fn list_sagas(
        &self,
        filter: &SagaFilter,
    ) -> impl Future<Output = Result<Vec<SagaRecord>, StoreError>> + Send;

    /// How many instances there are per `(saga_type, status)` (for metrics and `sagas list`).
    fn count_sagas(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, String, u64)>, StoreError>> + Send;

    /// The pending timers of one instance, soonest first (for `sagas show`).
    fn saga_timers(
        &self,
        saga_id: Uuid,
    ) -> impl Future<Output = Result<Vec<SagaTimer>, StoreError>> + Send;
}

/// [`SagaStore::register_sagas_with_clock`] one record at a time (the trait's default, and
/// SQLite's).
pub(crate) async fn register_sagas_one_by_one<S: SagaStore>(
    store: &S,
    uow: &mut S::UnitOfWork,
    records: &[SagaRecord],
) -> Result<Vec<SagaRegistration>, StoreError> {
    let mut registered = Vec::with_capacity(records.len());
    for record in records {
        registered.push(store.register_saga_with_clock(uow, record).await?);
    }
    Ok(registered)
}

/// [`SagaStore::lock_sagas_with_clock`] one instance at a time, in id order (the trait's
/// default, and SQLite's).
pub(crate) async fn lock_sagas_one_by_one<S: SagaStore>(
    store: &S,
    uow: &mut S::UnitOfWork,
    saga_ids: &[Uuid],
) -> Result<Vec<(SagaRecord, DateTime<Utc>)>, StoreError> {
    let mut ids = saga_ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut locked = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(row) = store.lock_saga_with_clock(uow, id).await? {
            locked.push(row);
        }
    }
    Ok(locked)
}

/// [`SagaStore::find_request_outcomes`] one key at a time (the trait's default, and SQLite's).
pub(crate) async fn find_outcomes_one_by_one<S: SagaStore>(
    store: &S,
    uow: &mut S::UnitOfWork,
    participant: &str,
    request_keys: &[&str],
) -> Result<Vec<Option<serde_json::Value>>, StoreError> {
    let mut found = Vec::with_capacity(request_keys.len());
    for key in request_keys {
        found.push(store.find_request_outcome(uow, participant, key).await?);
    }
    Ok(found)
}

/// [`SagaStore::record_request_outcomes`] one outcome at a time (the trait's default, and
/// SQLite's).
pub(crate) async fn record_outcomes_one_by_one<S: SagaStore>(
    store: &S,
    uow: &mut S::UnitOfWork,
    participant: &str,
    outcomes: &[(&str, &serde_json::Value)],
) -> Result<Vec<bool>, StoreError> {
    let mut first = Vec::with_capacity(outcomes.len());
    for (key, outcome) in outcomes {
        first.push(
            store
                .record_request_outcome(uow, participant, key, outcome)
                .await?,
        );
    }
    Ok(first)
}

/// [`SagaStore::write_saga_transition`] one call after the other (the trait's default, and
/// SQLite's).
pub(crate) async fn write_in_steps<S: SagaStore>(
    store: &S,
    uow: &mut S::UnitOfWork,
    stream_id: &StreamId,
    expected: u64,
    events: Vec<NewEvent>,
    messages: Vec<OutboxMessage>,
    write: SagaTransitionWrite<'_>,
) -> Result<bool, StoreError> {
    if !events.is_empty() {
        uow.append_and_enqueue(
            stream_id,
            ExpectedVersion::Exact(expected),
            events,
            messages,
        )
        .await?;
    } else if !messages.is_empty() {
        uow.enqueue(messages).await?;
    }
    store.finish_saga_transition(uow, write).await
}

/// [`SagaStore::write_saga_transitions`] one transition at a time (the trait's default, and
/// SQLite's).
pub(crate) async fn write_transitions_one_by_one<S: SagaStore>(
    store: &S,
    uow: &mut S::UnitOfWork,
    transitions: Vec<SagaTransitionItem<'_>>,
) -> Result<Vec<bool>, StoreError> {
    let mut registered = Vec::with_capacity(transitions.len());
    for t in transitions {
        registered.push(
            store
                .write_saga_transition(uow, &t.stream_id, t.expected, t.events, t.messages, t.write)
                .await?,
        );
    }
    Ok(registered)
}

/// [`SagaStore::finish_saga_transition`] one statement at a time (the trait's default, and
/// SQLite's, whose statements cost no round trip).
pub(crate) async fn finish_in_steps<S: SagaStore>(
    store: &S,
    uow: &mut S::UnitOfWork,
    write: SagaTransitionWrite<'_>,
) -> Result<bool, StoreError> {
    let saga_id = write.record.saga_id;
    if write.clear {
        store.delete_all_saga_timers(uow, saga_id).await?;
    } else {
        for timer in write.cancel {
            store
                .delete_saga_timer(uow, saga_id, &timer.step, timer.attempt, &timer.kind)
                .await?;
        }
        if !write.put.is_empty() {
            store.put_saga_timers(uow, write.put).await?;
        }
    }
    store.update_saga(uow, write.record).await
}

/// The most leases one claim moves a timer's deadline by ([`SagaStore::claim_due_timers`]).
pub(crate) const MAX_CLAIM_LEASES: u32 = 64;

/// The latest deadline a claim sets (the end of year 9999): SQLite keeps timestamps as text,
/// which sorts in time order only with four-digit years.
pub(crate) fn far_future() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The deadline of a timer claimed at `now` for the `claims`-th time (counting this claim):
/// `now + lease * min(claims, 64)`, at least one lease, at most [`far_future`] (a lease too long
/// to add is "never again", not an error), in microseconds like every stored time.
pub(crate) fn claimed_until(now: DateTime<Utc>, lease: Duration, claims: u32) -> DateTime<Utc> {
    use chrono::SubsecRound;
    let far = far_future();
    lease
        .checked_mul(claims.clamp(1, MAX_CLAIM_LEASES))
        .and_then(|span| chrono::TimeDelta::from_std(span).ok())
        .and_then(|span| now.checked_add_signed(span))
        .map_or(far, |until| until.min(far))
        .trunc_subsecs(6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_lease_longer_up_to_a_cap() {
        let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("a time");
        let lease = Duration::from_millis(300);
        let after = |claims| claimed_until(now, lease, claims) - now;
        assert_eq!(after(0), chrono::TimeDelta::milliseconds(300));
        assert_eq!(after(1), chrono::TimeDelta::milliseconds(300));
        assert_eq!(after(3), chrono::TimeDelta::milliseconds(900));
        assert_eq!(after(64), chrono::TimeDelta::milliseconds(300 * 64));
        assert_eq!(after(1000), chrono::TimeDelta::milliseconds(300 * 64));
        assert_eq!(claimed_until(now, Duration::MAX, 2), far_future());
        assert_eq!(
            claimed_until(now, Duration::from_nanos(1_500), 1) - now,
            chrono::TimeDelta::microseconds(1)
        );
    }
}
