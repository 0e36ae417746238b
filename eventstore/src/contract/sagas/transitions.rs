//! A transition's two ends: the lock that starts it, with the database's clock
//! ([`SagaStore::lock_saga_with_clock`]), and the write that ends it, timers and the instance's
//! row at once ([`SagaStore::finish_saga_transition`]).

use chrono::TimeDelta;
use uuid::Uuid;

use super::{db_now, put_committed, record, register_all, timer, timers_of};
use crate::saga::{SagaRecord, SagaStore, SagaTimer, SagaTimerId, SagaTransitionWrite};
use crate::store::UnitOfWork;

/// The identity of `timer`.
fn id_of(timer: &SagaTimer) -> SagaTimerId {
    SagaTimerId {
        step: timer.step.clone(),
        attempt: timer.attempt,
        kind: timer.kind.clone(),
    }
}

/// Ends a transition of `record` in a unit of work of its own and commits it.
async fn finish_committed<S: SagaStore>(
    store: &S,
    record: &SagaRecord,
    cancel: &[SagaTimerId],
    put: &[SagaTimer],
    clear: bool,
) -> bool {
    let mut uow = store.begin().await.expect("begin");
    let write = SagaTransitionWrite {
        record,
        cancel,
        put,
        clear,
    };
    let found = store
        .finish_saga_transition(&mut uow, write)
        .await
        .expect("finish a transition");
    uow.commit().await.expect("commit");
    found
}

/// The lock returns the instance's row with the database's clock (`None` for an unknown
/// instance); the end of a transition leaves the timers of before minus the cancelled plus the
/// stored (a timer cancelled and stored again, or stored twice, is there once with its last
/// deadline; cancelling a missing timer is no error) and updates the row; rolled back, it
/// changes nothing; with `clear`, no timer of the instance is left (the stored ones neither) and
/// another instance's timers stay; an unknown instance is `false` and gets no timer.
pub async fn a_transition_ends_with_its_timers_and_row<S: SagaStore>(store: S) {
    let saga = record("order", "f-1", Uuid::now_v7());
    let other = record("order", "f-2", Uuid::now_v7());
    register_all(&store, &[&saga, &other]).await;
    let before = db_now(&store).await;
    let at = |seconds| before + TimeDelta::seconds(seconds);
    let reserve = timer(&saga, "reserve", 1, "timeout", at(60));
    let pay = timer(&saga, "pay", 1, "timeout", at(30));
    let ship = timer(&saga, "ship", 1, "timeout", at(40));
    let others = timer(&other, "reserve", 1, "timeout", at(10));
    put_committed(
        &store,
        &[reserve.clone(), pay.clone(), ship.clone(), others.clone()],
    )
    .await;

    let mut uow = store.begin().await.expect("begin");
    assert!(
        store
            .lock_saga_with_clock(&mut uow, Uuid::now_v7())
            .await
            .expect("lock an unknown instance")
            .is_none(),
        "an unknown instance has no row to lock"
    );
    let (locked, now) = store
        .lock_saga_with_clock(&mut uow, saga.saga_id)
        .await
        .expect("lock")
        .expect("a registered instance");
    uow.rollback().await.expect("rollback");
    assert_eq!(locked.saga_id, saga.saga_id);
    assert_eq!(locked.status, "running");
    assert_eq!(locked.last_event_id, None, "no transition wrote one yet");
    assert!(
        now >= before && now <= db_now(&store).await,
        "the clock is the database's, read with the lock: {before} <= {now}"
    );

    let mut moved_ship = ship.clone();
    moved_ship.due_at = at(5);
    let retry = timer(&saga, "pay", 2, "retry_backoff", at(20));
    let mut retry_later = retry.clone();
    retry_later.due_at = at(25);
    let missing = SagaTimerId {
        step: "refund".to_owned(),
        attempt: 3,
        kind: "timeout".to_owned(),
    };
    let mut after = locked.clone();
    after.status = "compensating".to_owned();
    after.detail = Some("pay failed".to_owned());
    after.definition_version = 2;
    after.version = 7;
    after.last_event_id = Some(Uuid::now_v7());
    let cancel = [id_of(&pay), id_of(&ship), missing];
    let put = [moved_ship.clone(), retry.clone(), retry_later.clone()];

    let mut uow = store.begin().await.expect("begin");
    let write = SagaTransitionWrite {
        record: &after,
        cancel: &cancel,
        put: &put,
        clear: false,
    };
    assert!(
        store
            .finish_saga_transition(&mut uow, write)
            .await
            .expect("finish")
    );
    uow.rollback().await.expect("rollback");
    assert_eq!(
        timers_of(&store, saga.saga_id).await,
        vec![pay.clone(), ship.clone(), reserve.clone()],
        "a rolled-back transition leaves the timers"
    );
    let row = store.saga(saga.saga_id).await.expect("saga").expect("row");
    assert_eq!(
        (row.status.as_str(), row.version),
        ("running", 1),
        "and the row"
    );

    assert!(finish_committed(&store, &after, &cancel, &put, false).await);
    assert_eq!(
        timers_of(&store, saga.saga_id).await,
        vec![moved_ship.clone(), retry_later.clone(), reserve.clone()],
        "before, minus the cancelled, plus the stored (the last deadline of each identity)"
    );
    let row = store.saga(saga.saga_id).await.expect("saga").expect("row");
    assert_eq!(row.status, "compensating");
    assert_eq!(row.detail.as_deref(), Some("pay failed"));
    assert_eq!(row.definition_version, 2);
    assert_eq!(row.version, 7);
    assert_eq!(
        row.last_event_id, after.last_event_id,
        "the last event id is written with the version"
    );
    let mut uow = store.begin().await.expect("begin");
    let (relocked, _) = store
        .lock_saga_with_clock(&mut uow, saga.saga_id)
        .await
        .expect("lock")
        .expect("a registered instance");
    uow.rollback().await.expect("rollback");
    assert_eq!(
        (relocked.version, relocked.last_event_id),
        (7, after.last_event_id),
        "and the lock reads both"
    );
    assert!(
        row.updated_at >= now,
        "updated_at is the database's clock at the transition's end"
    );

    let mut ended = after.clone();
    ended.status = "compensated".to_owned();
    ended.detail = None;
    ended.version = 9;
    ended.last_event_id = Some(Uuid::now_v7());
    let late = timer(&saga, "refund", 1, "timeout", at(90));
    assert!(
        finish_committed(
            &store,
            &ended,
            &[id_of(&reserve)],
            std::slice::from_ref(&late),
            true
        )
        .await
    );
    assert!(
        timers_of(&store, saga.saga_id).await.is_empty(),
        "an ended instance has no timer left"
    );
    assert_eq!(
        timers_of(&store, other.saga_id).await,
        vec![others],
        "another instance's timers stay"
    );
    let row = store.saga(saga.saga_id).await.expect("saga").expect("row");
    assert_eq!(
        (row.status.as_str(), row.version, row.last_event_id),
        ("compensated", 9, ended.last_event_id)
    );

    let unknown = record("order", "f-3", Uuid::now_v7());
    let stray = timer(&unknown, "reserve", 1, "timeout", at(10));
    assert!(
        !finish_committed(&store, &unknown, &[], std::slice::from_ref(&stray), false).await,
        "an unknown instance is not updated"
    );
    assert!(store.saga(unknown.saga_id).await.expect("saga").is_none());
}
