//! Participants' request outcomes, recorded once per request key.

use super::find_outcome;
use crate::saga::SagaStore;
use crate::store::UnitOfWork;

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
