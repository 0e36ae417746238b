//! The saga store ([`SagaStore`]): instances registered once per business key (also under
//! concurrency) and committed or rolled back with their unit of work; updates, lookups, listing
//! and counts; timers stored, moved and deleted; claims of due timers on the database's clock,
//! by type, oldest first, leased, exclusive between concurrent claimers, with leases that grow
//! with the claims; participants' request outcomes recorded once; operators' timer requests.
//!
//! Times are taken from [`SagaStore::database_now`], so the rules hold whatever the precision of
//! the backend's clock (SQLite's is the millisecond).

use std::collections::HashSet;
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

/// Registering is idempotent on `(saga_type, business_key)`: a second registration of the key
/// returns the first owner's id and writes nothing; another key (or another type) gets a row of
/// its own; the store sets the times from the database's clock; a rolled-back registration
/// leaves nothing, and the key is free again.
pub async fn registering_a_saga_is_idempotent_on_its_key<S: SagaStore>(store: S) {
    let correlation = Uuid::now_v7();
    let first = record("order", "o-1", correlation);
    let duplicate = record("order", "o-1", Uuid::now_v7());
    let second = record("order", "o-2", correlation);
    let other_type = record("payment", "o-1", correlation);

    let before = db_now(&store).await;
    let mut uow = store.begin().await.expect("begin");
    assert_eq!(register(&store, &mut uow, &first).await, first.saga_id);
    assert_eq!(
        store
            .register_saga(&mut uow, &duplicate)
            .await
            .expect("register the key again"),
        first.saga_id,
        "the key's owner, seen in the same unit of work"
    );
    assert_eq!(
        register(&store, &mut uow, &second).await,
        second.saga_id,
        "another key, another instance"
    );
    assert_eq!(
        register(&store, &mut uow, &other_type).await,
        other_type.saga_id,
        "keys are unique per saga type"
    );
    uow.commit().await.expect("commit");
    let after = db_now(&store).await;

    let stored = store
        .saga(first.saga_id)
        .await
        .expect("saga")
        .expect("the first registration is stored");
    assert_eq!(
        (
            stored.saga_type.as_str(),
            stored.business_key.as_str(),
            stored.status.as_str(),
            stored.detail.as_deref(),
            stored.correlation_id,
            stored.definition_version,
            stored.version,
        ),
        ("order", "o-1", "running", None, correlation, 1, 1)
    );
    assert_eq!(stored.started_at, stored.updated_at, "both set on insert");
    assert!(
        before <= stored.started_at && stored.started_at <= after,
        "started_at {} is on the database's clock, between {before} and {after}",
        stored.started_at
    );
    assert_eq!(
        store.saga(duplicate.saga_id).await.expect("saga"),
        None,
        "the duplicate wrote nothing"
    );
    assert_eq!(owner_of(&store, "order", "o-1").await, Some(first.saga_id));
    assert_eq!(
        owner_of(&store, "payment", "o-1").await,
        Some(other_type.saga_id)
    );
    assert_eq!(by_key(&store, "order", "o-9").await, None);

    let mut uow = store.begin().await.expect("begin");
    assert_eq!(
        store
            .register_saga(&mut uow, &duplicate)
            .await
            .expect("register a committed key"),
        first.saga_id,
        "the committed owner"
    );
    uow.commit().await.expect("commit");
    assert_eq!(store.saga(duplicate.saga_id).await.expect("saga"), None);

    let rolled_back = record("order", "o-3", correlation);
    let mut uow = store.begin().await.expect("begin");
    assert_eq!(
        register(&store, &mut uow, &rolled_back).await,
        rolled_back.saga_id
    );
    uow.rollback().await.expect("rollback");
    assert_eq!(
        store.saga(rolled_back.saga_id).await.expect("saga"),
        None,
        "a rolled-back registration leaves no row"
    );
    assert_eq!(by_key(&store, "order", "o-3").await, None);
    let retried = record("order", "o-3", correlation);
    let mut uow = store.begin().await.expect("begin");
    assert_eq!(
        register(&store, &mut uow, &retried).await,
        retried.saga_id,
        "the key is free again after the rollback"
    );
    uow.commit().await.expect("commit");
    assert_eq!(
        listed(&store, &SagaFilter::default()).await.len(),
        4,
        "order/o-1, order/o-2, payment/o-1, order/o-3"
    );
}

/// Sixteen units of work register the same key at once, each with an id of its own: they all
/// get the same owner, exactly one of them registered it, and only its row exists.
pub async fn concurrent_registrations_agree_on_one_owner<S: SagaStore>(store: S) {
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mine = record("order", "contended", Uuid::now_v7());
            let mut uow = store.begin().await.expect("begin");
            let owner = store
                .register_saga(&mut uow, &mine)
                .await
                .expect("a concurrent registration succeeds");
            // Hold the transaction a little, so that the others wait for it.
            tokio::time::sleep(Duration::from_millis(2)).await;
            uow.commit().await.expect("commit");
            (mine.saga_id, owner)
        }));
    }
    let mut owners = HashSet::new();
    let mut registered = 0;
    for task in tasks {
        let (mine, owner) = task.await.expect("task");
        owners.insert(owner);
        registered += usize::from(mine == owner);
    }
    assert_eq!(owners.len(), 1, "every registration agrees on one owner");
    assert_eq!(registered, 1, "exactly one registration inserted");
    let owner = owners.into_iter().next().expect("an owner");
    assert_eq!(owner_of(&store, "order", "contended").await, Some(owner));
    assert_eq!(
        listed(&store, &SagaFilter::default()).await.len(),
        1,
        "one row for the key"
    );
}

/// An update sets status, detail, definition version and version (and `updated_at`) by id,
/// commits with its unit of work, and is `false` for an unknown instance; listing filters by
/// type, status and correlation id, most recently updated first, within the limit (0: 100);
/// counts are per type and status.
pub async fn sagas_are_updated_listed_and_counted<S: SagaStore>(store: S) {
    let x = Uuid::now_v7();
    let y = Uuid::now_v7();
    let a = record("order", "k1", x);
    let b = record("order", "k2", y);
    let c = record("payment", "k1", x);
    register_all(&store, &[&a, &b, &c]).await;
    let registered = store.saga(a.saga_id).await.expect("saga").expect("stored");

    let mut changed = a.clone();
    changed.status = "completed".to_owned();
    changed.detail = Some("all steps done".to_owned());
    changed.definition_version = 2;
    changed.version = 7;
    let mut uow = store.begin().await.expect("begin");
    assert!(store.update_saga(&mut uow, &changed).await.expect("update"));
    uow.rollback().await.expect("rollback");
    assert_eq!(
        store.saga(a.saga_id).await.expect("saga").as_ref(),
        Some(&registered),
        "a rolled-back update changes nothing"
    );

    let mut uow = store.begin().await.expect("begin");
    assert!(store.update_saga(&mut uow, &changed).await.expect("update"));
    assert!(
        !store
            .update_saga(&mut uow, &record("order", "unknown", x))
            .await
            .expect("update unknown"),
        "an unknown instance is not updated"
    );
    uow.commit().await.expect("commit");
    let updated = store.saga(a.saga_id).await.expect("saga").expect("stored");
    assert_eq!(
        (
            updated.status.as_str(),
            updated.detail.as_deref(),
            updated.definition_version,
            updated.version,
        ),
        ("completed", Some("all steps done"), 2, 7)
    );
    assert_eq!(
        (
            updated.saga_type.as_str(),
            updated.business_key.as_str(),
            updated.correlation_id,
            updated.started_at,
        ),
        ("order", "k1", x, registered.started_at),
        "the identity and the start stay"
    );
    assert!(
        updated.updated_at > registered.updated_at,
        "updated_at moves: {} after {}",
        updated.updated_at,
        registered.updated_at
    );

    let list = |filter: SagaFilter| {
        let store = store.clone();
        async move { keys(&listed(&store, &filter).await) }
    };
    assert_eq!(
        list(SagaFilter::default()).await,
        vec![key("order", "k1"), key("payment", "k1"), key("order", "k2")],
        "most recently updated first"
    );
    assert_eq!(
        list(SagaFilter {
            saga_type: Some("order".to_owned()),
            ..SagaFilter::default()
        })
        .await,
        vec![key("order", "k1"), key("order", "k2")]
    );
    assert_eq!(
        list(SagaFilter {
            status: Some("running".to_owned()),
            ..SagaFilter::default()
        })
        .await,
        vec![key("payment", "k1"), key("order", "k2")]
    );
    assert_eq!(
        list(SagaFilter {
            correlation_id: Some(x),
            ..SagaFilter::default()
        })
        .await,
        vec![key("order", "k1"), key("payment", "k1")]
    );
    assert_eq!(
        list(SagaFilter {
            saga_type: Some("order".to_owned()),
            status: Some("running".to_owned()),
            correlation_id: Some(y),
            limit: 0,
        })
        .await,
        vec![key("order", "k2")],
        "filters combine"
    );
    assert_eq!(
        list(SagaFilter {
            saga_type: Some("shipping".to_owned()),
            ..SagaFilter::default()
        })
        .await,
        Vec::<(String, String)>::new()
    );
    assert_eq!(
        list(SagaFilter {
            limit: 2,
            ..SagaFilter::default()
        })
        .await,
        vec![key("order", "k1"), key("payment", "k1")],
        "the limit keeps the most recent"
    );
    let all = listed(&store, &SagaFilter::default()).await;
    assert_eq!(all[0], updated, "listing returns whole rows");

    let mut more = Vec::new();
    let mut uow = store.begin().await.expect("begin");
    for i in 0..101 {
        let r = record("bulk", &format!("b-{i}"), y);
        register(&store, &mut uow, &r).await;
        more.push(r);
    }
    uow.commit().await.expect("commit");
    assert_eq!(
        listed(
            &store,
            &SagaFilter {
                saga_type: Some("bulk".to_owned()),
                ..SagaFilter::default()
            }
        )
        .await
        .len(),
        100,
        "limit 0 is the default of 100"
    );
    assert_eq!(
        store.count_sagas().await.expect("count"),
        vec![
            ("bulk".to_owned(), "running".to_owned(), 101),
            ("order".to_owned(), "completed".to_owned(), 1),
            ("order".to_owned(), "running".to_owned(), 1),
            ("payment".to_owned(), "running".to_owned(), 1),
        ],
        "counts per type and status"
    );
}

/// Timers are stored with their unit of work, listed soonest first; storing a timer again
/// moves its deadline; deleting one is `true` once, then `false`; deleting all of an instance's
/// returns how many there were and leaves the other instances' timers alone.
pub async fn timers_are_stored_moved_and_deleted<S: SagaStore>(store: S) {
    let saga = record("order", "t-1", Uuid::now_v7());
    let other = record("order", "t-2", Uuid::now_v7());
    register_all(&store, &[&saga, &other]).await;
    let now = db_now(&store).await;
    let reserve = timer(&saga, "reserve", 1, "timeout", now + TimeDelta::seconds(60));
    let pay = timer(&saga, "pay", 1, "timeout", now + TimeDelta::seconds(30));
    let backoff = timer(
        &saga,
        "reserve",
        2,
        "retry_backoff",
        now + TimeDelta::seconds(90),
    );
    let others = timer(
        &other,
        "reserve",
        1,
        "timeout",
        now + TimeDelta::seconds(10),
    );

    let mut uow = store.begin().await.expect("begin");
    store
        .put_saga_timers(&mut uow, std::slice::from_ref(&reserve))
        .await
        .expect("put");
    uow.rollback().await.expect("rollback");
    assert!(
        timers_of(&store, saga.saga_id).await.is_empty(),
        "a rolled-back timer is not stored"
    );

    let mut uow = store.begin().await.expect("begin");
    store
        .put_saga_timers(&mut uow, &[reserve.clone(), pay.clone(), backoff.clone()])
        .await
        .expect("put");
    store
        .put_saga_timers(&mut uow, std::slice::from_ref(&others))
        .await
        .expect("put");
    uow.commit().await.expect("commit");
    assert_eq!(
        timers_of(&store, saga.saga_id).await,
        vec![pay.clone(), reserve.clone(), backoff.clone()],
        "soonest first, as stored"
    );

    let mut moved = reserve.clone();
    moved.due_at = now + TimeDelta::seconds(5);
    put_committed(&store, std::slice::from_ref(&moved)).await;
    assert_eq!(
        timers_of(&store, saga.saga_id).await,
        vec![moved.clone(), pay.clone(), backoff.clone()],
        "the same identity gets the new deadline, no second timer"
    );

    let mut uow = store.begin().await.expect("begin");
    assert!(
        store
            .delete_saga_timer(&mut uow, saga.saga_id, "pay", 1, "timeout")
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_saga_timer(&mut uow, saga.saga_id, "pay", 1, "timeout")
            .await
            .expect("delete again"),
        "a deleted timer is not there (seen in the same unit of work)"
    );
    assert!(
        !store
            .delete_saga_timer(&mut uow, saga.saga_id, "reserve", 7, "timeout")
            .await
            .expect("delete unknown")
    );
    uow.commit().await.expect("commit");
    let mut uow = store.begin().await.expect("begin");
    assert!(
        !store
            .delete_saga_timer(&mut uow, saga.saga_id, "pay", 1, "timeout")
            .await
            .expect("delete a committed deletion"),
        "the second firing loses"
    );
    assert!(
        store
            .delete_saga_timer(&mut uow, saga.saga_id, "reserve", 2, "retry_backoff")
            .await
            .expect("delete")
    );
    uow.rollback().await.expect("rollback");
    assert_eq!(
        idents(&timers_of(&store, saga.saga_id).await),
        vec![
            ("reserve".to_owned(), 1, "timeout".to_owned()),
            ("reserve".to_owned(), 2, "retry_backoff".to_owned()),
        ],
        "a rolled-back deletion keeps the timer"
    );

    let mut uow = store.begin().await.expect("begin");
    store
        .put_saga_timers(&mut uow, std::slice::from_ref(&pay))
        .await
        .expect("put");
    assert_eq!(
        store
            .delete_all_saga_timers(&mut uow, saga.saga_id)
            .await
            .expect("delete all"),
        3,
        "the committed timers and the one stored in this unit of work"
    );
    assert_eq!(
        store
            .delete_all_saga_timers(&mut uow, saga.saga_id)
            .await
            .expect("delete all again"),
        0
    );
    uow.commit().await.expect("commit");
    assert!(timers_of(&store, saga.saga_id).await.is_empty());
    assert_eq!(
        timers_of(&store, other.saga_id).await,
        vec![others],
        "another instance's timers stay"
    );
}

/// A claim returns the due timers (on the database's clock) of the listed types only, oldest
/// deadline first, at most `limit`, each with the deadline it had; claimed timers are leased
/// (not claimed again), timers in the future are not due, an empty type list claims nothing.
pub async fn due_timers_are_claimed_oldest_first_by_type<S: SagaStore>(store: S) {
    let order = record("order", "c-1", Uuid::now_v7());
    let payment = record("payment", "c-1", Uuid::now_v7());
    register_all(&store, &[&order, &payment]).await;
    let now = db_now(&store).await;
    let ago = |s| now - TimeDelta::seconds(s);
    let a = timer(&order, "a", 1, "timeout", ago(30));
    let b = timer(&order, "b", 1, "timeout", ago(20));
    let c = timer(&order, "c", 1, "retry_backoff", ago(10));
    let future = timer(&order, "d", 1, "timeout", now + TimeDelta::hours(1));
    let paid = timer(&payment, "e", 1, "timeout", ago(40));
    let mut uow = store.begin().await.expect("begin");
    store
        .put_saga_timers(
            &mut uow,
            &[
                c.clone(),
                future.clone(),
                a.clone(),
                paid.clone(),
                b.clone(),
            ],
        )
        .await
        .expect("put");
    uow.commit().await.expect("commit");

    let types = |t: &[&str]| t.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
    let lease = Duration::from_secs(60);
    assert!(
        store
            .claim_due_timers(&[], 10, lease)
            .await
            .expect("claim no types")
            .is_empty(),
        "an empty type list claims nothing"
    );
    assert!(
        claim(&store, &types(&["shipping"]), 10, lease)
            .await
            .is_empty(),
        "no timers of that type"
    );
    assert_eq!(
        claim(&store, &types(&["order"]), 2, lease).await,
        vec![a.clone(), b.clone()],
        "oldest first, within the limit, with their deadlines"
    );
    assert_eq!(
        claim(&store, &types(&["order"]), 10, lease).await,
        vec![c.clone()],
        "claimed timers are leased; the future one is not due"
    );
    assert_eq!(
        claim(&store, &types(&["order", "payment"]), 10, lease).await,
        vec![paid.clone()],
        "several types"
    );
    assert!(
        claim(&store, &types(&["order", "payment"]), 10, lease)
            .await
            .is_empty(),
        "nothing is due any more"
    );
    let after = db_now(&store).await;
    let stored = timers_of(&store, order.saga_id).await;
    let leased = stored
        .iter()
        .find(|t| t.step == "a")
        .expect("a claimed timer stays until it is deleted");
    assert!(
        now + TimeDelta::seconds(60) <= leased.due_at
            && leased.due_at <= after + TimeDelta::seconds(60),
        "a claim moves the deadline one lease ahead: {} (claimed between {now} and {after})",
        leased.due_at
    );
    assert_eq!(
        stored.iter().find(|t| t.step == "d").map(|t| t.due_at),
        Some(future.due_at),
        "an unclaimed timer keeps its deadline"
    );
}

/// A claimed timer is not claimed again while its lease runs, and comes due again (with the
/// leased deadline) when the lease has expired: a crashed scheduler's claim is not lost.
pub async fn a_claim_expires_after_its_lease<S: SagaStore>(store: S) {
    let saga = record("order", "l-1", Uuid::now_v7());
    let (_, due, types) = with_due_timer(&store, &saga).await;
    let lease = Duration::from_millis(300);

    assert_eq!(claim(&store, &types, 10, lease).await, vec![due.clone()]);
    assert!(claim(&store, &types, 10, lease).await.is_empty(), "leased");
    let leased_until = timers_of(&store, saga.saga_id).await[0].due_at;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let early = claim(&store, &types, 10, lease).await;
    let checked_at = db_now(&store).await;
    assert!(
        early.is_empty() || checked_at >= leased_until,
        "claimed again at {checked_at}, before its lease ran out at {leased_until}"
    );
    let wait = (leased_until - db_now(&store).await)
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(100)).await;
    let again = claim(&store, &types, 10, lease).await;
    assert_eq!(
        idents(&again),
        idents(std::slice::from_ref(&due)),
        "due again once the lease expired"
    );
    assert_eq!(
        again[0].due_at, leased_until,
        "returned with the leased deadline, not the first one"
    );
}

/// A claimed timer given back ([`SagaStore::release_saga_timers`], a scheduler that stops) is
/// due again at once, with the deadline it had and its claim count restored; a timer stored
/// again since its claim is left alone.
pub async fn a_released_claim_is_due_again_at_once<S: SagaStore>(store: S) {
    let saga = record("order", "r-1", Uuid::now_v7());
    register_all(&store, &[&saga]).await;
    let now = db_now(&store).await;
    let due = timer(&saga, "reserve", 1, "timeout", now - TimeDelta::seconds(1));
    let moved = timer(&saga, "pay", 1, "timeout", now - TimeDelta::seconds(2));
    put_committed(&store, &[due.clone(), moved.clone()]).await;
    let types = vec!["order".to_owned()];
    let lease = Duration::from_secs(60);
    let claimed = claim(&store, &types, 10, lease).await;
    assert_eq!(claimed.len(), 2);
    // `moved` is stored again (a new deadline) after the claim: the release leaves it.
    let later = timer(&saga, "pay", 1, "timeout", now + TimeDelta::seconds(3600));
    put_committed(&store, std::slice::from_ref(&later)).await;
    let released = store.release_saga_timers(&claimed).await.expect("release");
    assert_eq!(released, 1, "only the timer still claimed is released");
    let again = claim(&store, &types, 10, lease).await;
    assert_eq!(
        idents(&again),
        idents(std::slice::from_ref(&due)),
        "the released timer is due again at once, not after its 60 s lease"
    );
    assert_eq!(again[0].due_at, due.due_at, "with the deadline it had");
    let stored = timers_of(&store, saga.saga_id).await;
    assert_eq!(
        stored.iter().find(|t| t.step == "pay").map(|t| t.due_at),
        Some(later.due_at),
        "the timer stored again keeps its new deadline"
    );
}

/// Every claim of a timer lengthens its next lease (a timer whose firing keeps failing yields
/// to the others): after three claims its deadline is three leases ahead; storing it again
/// starts over at one lease.
pub async fn leases_grow_with_the_claims<S: SagaStore>(store: S) {
    let saga = record("order", "g-1", Uuid::now_v7());
    let (now, due, types) = with_due_timer(&store, &saga).await;
    let lease = Duration::from_millis(200);
    let leases = |n: i32| TimeDelta::milliseconds(200 * i64::from(n));
    // Backend clocks may be as coarse as a millisecond.
    let slack = TimeDelta::milliseconds(2);

    for claims in 1..=3 {
        // Wait until the previous lease (claims - 1 leases) has expired.
        let mut claimed = Vec::new();
        let mut before = now;
        for _ in 0..200 {
            before = db_now(&store).await;
            claimed = claim(&store, &types, 10, lease).await;
            if !claimed.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = db_now(&store).await;
        assert_eq!(claimed.len(), 1, "claim {claims} of the timer");
        let until = timers_of(&store, saga.saga_id).await[0].due_at;
        assert!(
            before + leases(claims) - slack <= until && until <= after + leases(claims) + slack,
            "claim {claims} moves the deadline {claims} lease(s) ahead: {until}, claimed \
             between {before} and {after}"
        );
    }

    put_committed(&store, std::slice::from_ref(&due)).await;
    let claimed = claim(&store, &types, 10, lease).await;
    let after = db_now(&store).await;
    assert_eq!(
        claimed,
        vec![due.clone()],
        "stored again: due at its new deadline"
    );
    let stored = timers_of(&store, saga.saga_id).await;
    assert!(
        stored[0].due_at <= after + leases(1) + slack,
        "storing a timer again resets its claims: one lease ahead, not four ({} > {} + 200ms)",
        stored[0].due_at,
        after
    );
}

/// Eight schedulers claim 200 due timers at once, in batches, until nothing is left: every
/// timer is claimed exactly once.
pub async fn concurrent_claims_are_exclusive<S: SagaStore>(store: S) {
    let saga = record("order", "x-1", Uuid::now_v7());
    register_all(&store, &[&saga]).await;
    let now = db_now(&store).await;
    let timers: Vec<SagaTimer> = (0..200)
        .map(|i| {
            timer(
                &saga,
                &format!("step-{i:03}"),
                1,
                "timeout",
                now - TimeDelta::milliseconds(1000 - i),
            )
        })
        .collect();
    put_committed(&store, &timers).await;

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let types = vec!["order".to_owned()];
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_due_timers(&types, 7, Duration::from_secs(3600))
                    .await
                    .expect("a concurrent claim succeeds");
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch.into_iter().map(|t| t.step));
                assert!(
                    mine.len() <= 200,
                    "one claimer claimed more timers than there are: leased timers come again"
                );
            }
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.expect("task"));
    }
    let distinct: HashSet<&String> = claimed.iter().collect();
    assert_eq!(
        distinct.len(),
        claimed.len(),
        "no timer is claimed twice ({} claims of {} timers)",
        claimed.len(),
        distinct.len()
    );
    assert_eq!(claimed.len(), 200, "every timer is claimed");
    assert!(
        claim(&store, &["order".to_owned()], 10, Duration::from_secs(3600))
            .await
            .is_empty()
    );
}

/// A participant's outcome is recorded once per request key, visible in its unit of work,
/// committed or rolled back with it; a second record is `false` and keeps the first outcome;
/// participants are independent.
pub async fn request_outcomes_are_recorded_once<S: SagaStore>(store: S) {
    let outcome = serde_json::json!({"reserved": true, "items": ["a", "b"], "total": 42});
    let other = serde_json::json!({"reserved": false});
    let mut uow = store.begin().await.expect("begin");
    assert_eq!(
        find_outcome(&store, &mut uow, "inventory", "r-1").await,
        None
    );
    assert!(
        store
            .record_request_outcome(&mut uow, "inventory", "r-1", &outcome)
            .await
            .expect("record")
    );
    assert_eq!(
        find_outcome(&store, &mut uow, "inventory", "r-1").await,
        Some(outcome.clone()),
        "seen in its unit of work"
    );
    assert!(
        !store
            .record_request_outcome(&mut uow, "inventory", "r-1", &other)
            .await
            .expect("record again"),
        "recorded already"
    );
    uow.rollback().await.expect("rollback");

    let mut uow = store.begin().await.expect("begin");
    assert_eq!(
        find_outcome(&store, &mut uow, "inventory", "r-1").await,
        None,
        "a rolled-back outcome is gone"
    );
    assert!(
        store
            .record_request_outcome(&mut uow, "inventory", "r-1", &outcome)
            .await
            .expect("record after the rollback")
    );
    uow.commit().await.expect("commit");

    let mut uow = store.begin().await.expect("begin");
    assert!(
        !store
            .record_request_outcome(&mut uow, "inventory", "r-1", &other)
            .await
            .expect("record a committed key"),
        "a redelivery finds the committed outcome"
    );
    assert_eq!(
        find_outcome(&store, &mut uow, "inventory", "r-1").await,
        Some(outcome.clone()),
        "the first outcome stays"
    );
    assert!(
        store
            .record_request_outcome(&mut uow, "billing", "r-1", &other)
            .await
            .expect("record"),
        "participants are independent"
    );
    assert_eq!(
        find_outcome(&store, &mut uow, "inventory", "r-2").await,
        None
    );
    uow.commit().await.expect("commit");
    let mut uow = store.begin().await.expect("begin");
    assert_eq!(
        find_outcome(&store, &mut uow, "billing", "r-1").await,
        Some(other)
    );
    uow.rollback().await.expect("rollback");
}

/// An operator's timer request (`sagas retry`) is stored for a registered instance, under its
/// saga type, and comes due like any timer; it is refused for an unknown instance.
pub async fn timer_requests_need_a_registered_saga<S: SagaStore>(store: S) {
    let saga = record("order", "r-1", Uuid::now_v7());
    let now = db_now(&store).await;
    let retry = timer(&saga, "", 0, "retry_parked", now - TimeDelta::seconds(1));
    assert!(
        !store.request_saga_timer(&retry).await.expect("request"),
        "no such instance"
    );
    assert!(timers_of(&store, saga.saga_id).await.is_empty());

    register_all(&store, &[&saga]).await;
    assert!(store.request_saga_timer(&retry).await.expect("request"));
    assert_eq!(timers_of(&store, saga.saga_id).await, vec![retry.clone()]);
    assert!(
        store
            .request_saga_timer(&retry)
            .await
            .expect("request again"),
        "asking again stores it again"
    );
    assert_eq!(timers_of(&store, saga.saga_id).await.len(), 1);
    assert_eq!(
        claim(&store, &["order".to_owned()], 10, Duration::from_secs(60)).await,
        vec![retry],
        "the orchestrator of the type claims it"
    );
}

/// `lock_saga` returns the instance (as the unit of work sees it, also one it just registered;
/// `None` for an unknown id) and holds it until the unit of work ends: a second unit of work that
/// locks the same instance waits for the first to commit, then sees its update.
pub async fn locking_a_saga_serialises_units_of_work<S: SagaStore>(store: S) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let saga = record("order", "lock-1", Uuid::now_v7());
    let mut uow = store.begin().await.expect("begin");
    assert!(
        store
            .lock_saga(&mut uow, Uuid::now_v7())
            .await
            .expect("lock an unknown saga")
            .is_none(),
        "an unknown saga locks nothing"
    );
    register(&store, &mut uow, &saga).await;
    let seen = store
        .lock_saga(&mut uow, saga.saga_id)
        .await
        .expect("lock")
        .expect("the unit of work sees the saga it registered");
    assert_eq!(seen.business_key, "lock-1");
    uow.commit().await.expect("commit");

    let mut first = store.begin().await.expect("begin");
    store
        .lock_saga(&mut first, saga.saga_id)
        .await
        .expect("lock")
        .expect("registered");
    let done = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (store, done, saga_id) = (store.clone(), done.clone(), saga.saga_id);
        tokio::spawn(async move {
            let mut second = store.begin().await.expect("begin");
            let row = store
                .lock_saga(&mut second, saga_id)
                .await
                .expect("lock")
                .expect("registered");
            done.store(true, Ordering::SeqCst);
            second.rollback().await.expect("rollback");
            row
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !done.load(Ordering::SeqCst),
        "a second unit of work locked the saga while the first held it"
    );
    let mut update = seen.clone();
    update.status = "compensating".into();
    update.version = 3;
    assert!(
        store
            .update_saga(&mut first, &update)
            .await
            .expect("update")
    );
    first.commit().await.expect("commit");
    let row = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
        .await
        .expect("the second unit of work got the lock after the commit")
        .expect("the waiter");
    assert_eq!(
        (row.status.as_str(), row.version),
        ("compensating", 3),
        "the second lock sees the first unit of work's update"
    );
}
