//! The saga store ([`SagaStore`]): instances registered once per business key (also under
//! concurrency) and committed or rolled back with their unit of work; updates, lookups, listing
//! and counts; timers stored, moved and deleted; claims of due timers on the database's clock,
//! by type, oldest first, leased, exclusive between concurrent claimers, with leases that grow
//! with the claims; participants' request outcomes recorded once; operators' timer requests.
//!
//! Times are taken from [`SagaStore::database_now`], so the rules hold whatever the precision of
//! the backend's clock (SQLite's is the millisecond).
//!
//! The rules are split by concern: `instances` (registration, updates, listing, counts, locks),
//! `timers` (stored, moved, deleted; operators' requests), `claims` (claims of due timers and
//! their leases) and `outcomes` (participants' request outcomes). They are re-exported here, so
//! every rule keeps its path `contract::sagas::<rule>`; the helpers they share live in this
//! module.

mod claims;
mod instances;
mod outcomes;
mod timers;
mod transitions;

pub use claims::{
    a_claim_expires_after_its_lease, a_released_claim_is_due_again_at_once,
    concurrent_claims_are_exclusive, due_timers_are_claimed_oldest_first_by_type,
    leases_grow_with_the_claims,
};
pub use instances::{
    concurrent_registrations_agree_on_one_owner, locking_a_saga_serialises_units_of_work,
    registering_a_saga_is_idempotent_on_its_key, registering_sagas_at_once_answers_each_in_order,
    sagas_are_updated_listed_and_counted,
};
pub use outcomes::request_outcomes_are_recorded_once;
pub use timers::{timer_requests_need_a_registered_saga, timers_are_stored_moved_and_deleted};
pub use transitions::{
    a_transition_ends_with_its_timers_and_row, a_transition_is_written_at_once,
    transitions_of_several_instances_are_written_at_once,
};

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use crate::saga::{SagaFilter, SagaRecord, SagaStore, SagaTimer};
use crate::store::UnitOfWork;

/// A `running` instance of `saga_type` under `business_key`, correlated by `correlation_id`.
pub(super) fn record(saga_type: &str, business_key: &str, correlation_id: Uuid) -> SagaRecord {
    SagaRecord {
        saga_id: Uuid::now_v7(),
        saga_type: saga_type.to_owned(),
        business_key: business_key.to_owned(),
        status: "running".to_owned(),
        detail: None,
        correlation_id,
        definition_version: 1,
        version: 1,
        // Set by the store.
        started_at: DateTime::<Utc>::UNIX_EPOCH,
        updated_at: DateTime::<Utc>::UNIX_EPOCH,
        last_event_id: None,
    }
}

/// A timer of `saga` due at `due_at`.
fn timer(
    saga: &SagaRecord,
    step: &str,
    attempt: u32,
    kind: &str,
    due_at: DateTime<Utc>,
) -> SagaTimer {
    SagaTimer {
        saga_id: saga.saga_id,
        saga_type: saga.saga_type.clone(),
        step: step.to_owned(),
        attempt,
        kind: kind.to_owned(),
        due_at,
    }
}

/// The database's clock, read in a unit of work of its own.
async fn db_now<S: SagaStore>(store: &S) -> DateTime<Utc> {
    let mut uow = store.begin().await.expect("begin");
    let now = store.database_now(&mut uow).await.expect("database_now");
    uow.rollback().await.expect("rollback");
    now
}

/// Registers and commits `records`, one unit of work each, a few milliseconds apart (so that
/// their `updated_at` differ on every backend's clock).
async fn register_all<S: SagaStore>(store: &S, records: &[&SagaRecord]) {
    for record in records {
        let mut uow = store.begin().await.expect("begin");
        let owner = register(store, &mut uow, record).await;
        assert_eq!(
            owner, record.saga_id,
            "a fresh key is registered by its caller"
        );
        uow.commit().await.expect("commit");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Registers `record` in `uow`: the id of the key's owner.
async fn register<S: SagaStore>(store: &S, uow: &mut S::UnitOfWork, record: &SagaRecord) -> Uuid {
    store.register_saga(uow, record).await.expect("register")
}

/// The instances `filter` lists.
async fn listed<S: SagaStore>(store: &S, filter: &SagaFilter) -> Vec<SagaRecord> {
    store.list_sagas(filter).await.expect("list")
}

/// The instance of `saga_type` registered under `business_key`, if any.
async fn by_key<S: SagaStore>(
    store: &S,
    saga_type: &str,
    business_key: &str,
) -> Option<SagaRecord> {
    store
        .saga_by_key(saga_type, business_key)
        .await
        .expect("by key")
}

/// The id of the instance of `saga_type` registered under `business_key`, if any.
async fn owner_of<S: SagaStore>(store: &S, saga_type: &str, business_key: &str) -> Option<Uuid> {
    by_key(store, saga_type, business_key)
        .await
        .map(|s| s.saga_id)
}

/// Stores `timers` in a unit of work of their own and commits it.
async fn put_committed<S: SagaStore>(store: &S, timers: &[SagaTimer]) {
    let mut uow = store.begin().await.expect("begin");
    store.put_saga_timers(&mut uow, timers).await.expect("put");
    uow.commit().await.expect("commit");
}

/// The due timers of `saga_types` that a claim returns (at most `limit`, leased for `lease`).
async fn claim<S: SagaStore>(
    store: &S,
    saga_types: &[String],
    limit: usize,
    lease: Duration,
) -> Vec<SagaTimer> {
    store
        .claim_due_timers(saga_types, limit, lease)
        .await
        .expect("claim")
}

/// The stored timers of the instance `saga_id`, soonest first.
async fn timers_of<S: SagaStore>(store: &S, saga_id: Uuid) -> Vec<SagaTimer> {
    store.saga_timers(saga_id).await.expect("timers")
}

/// The outcome recorded for `participant`'s `request_key`, as `uow` sees it.
async fn find_outcome<S: SagaStore>(
    store: &S,
    uow: &mut S::UnitOfWork,
    participant: &str,
    request_key: &str,
) -> Option<serde_json::Value> {
    store
        .find_request_outcome(uow, participant, request_key)
        .await
        .expect("find")
}

/// Registers `saga` (an `order` instance) and commits one timer of it (`reserve`, attempt 1,
/// `timeout`) due a second ago on the database's clock; returns that clock's time before the
/// timer, the timer and the saga types to claim (`order`).
async fn with_due_timer<S: SagaStore>(
    store: &S,
    saga: &SagaRecord,
) -> (DateTime<Utc>, SagaTimer, Vec<String>) {
    register_all(store, &[saga]).await;
    let now = db_now(store).await;
    let due = timer(saga, "reserve", 1, "timeout", now - TimeDelta::seconds(1));
    put_committed(store, std::slice::from_ref(&due)).await;
    (now, due, vec![saga.saga_type.clone()])
}

/// `(saga_type, business_key)` of each record, to compare listings.
fn keys(records: &[SagaRecord]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|r| (r.saga_type.clone(), r.business_key.clone()))
        .collect()
}

fn key(saga_type: &str, business_key: &str) -> (String, String) {
    (saga_type.to_owned(), business_key.to_owned())
}

/// `(step, attempt, kind)` of each timer.
fn idents(timers: &[SagaTimer]) -> Vec<(String, u32, String)> {
    timers
        .iter()
        .map(|t| (t.step.clone(), t.attempt, t.kind.clone()))
        .collect()
}
