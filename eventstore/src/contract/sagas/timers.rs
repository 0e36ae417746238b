//! Saga timers: stored, moved and deleted with their unit of work; operators' timer requests.

use std::time::Duration;

use chrono::TimeDelta;
use uuid::Uuid;

use super::{claim, db_now, idents, put_committed, record, register_all, timer, timers_of};
use crate::saga::SagaStore;
use crate::store::UnitOfWork;

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
