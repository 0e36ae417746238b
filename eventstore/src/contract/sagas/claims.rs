//! Claims of due timers: on the database's clock, by type, oldest first, leased, released,
//! with leases that grow with the claims, exclusive between concurrent claimers.

use std::collections::HashSet;
use std::time::Duration;

use chrono::TimeDelta;
use uuid::Uuid;

use super::{
    claim, db_now, idents, put_committed, record, register_all, timer, timers_of, with_due_timer,
};
use crate::saga::{SagaStore, SagaTimer};
use crate::store::UnitOfWork;

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
