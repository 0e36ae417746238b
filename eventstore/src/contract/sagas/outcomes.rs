//! Participants' request outcomes, recorded once per request key.

use super::find_outcome;
use crate::saga::SagaStore;
use crate::store::UnitOfWork;

/// A participant's outcome is recorded once per request key, visible in its unit of work,
/// committed or rolled back with it; a second record is `false` and keeps the first outcome;
/// participants are independent. Several at once (`find_request_outcomes`,
/// `record_request_outcomes`) answer as the calls one by one would.
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
        Some(other.clone())
    );
    uow.rollback().await.expect("rollback");

    // Several at once: found in the order asked (a key asked twice, twice), recorded in
    // order, `false` for a key recorded before (committed or earlier in the same call).
    let third = serde_json::json!({"charged": 7});
    let mut uow = store.begin().await.expect("begin");
    let found = store
        .find_request_outcomes(&mut uow, "inventory", &["r-3", "r-1", "r-2", "r-1"])
        .await
        .expect("find several");
    assert_eq!(
        found,
        [None, Some(outcome.clone()), None, Some(outcome.clone())]
    );
    let first = store
        .record_request_outcomes(
            &mut uow,
            "inventory",
            &[
                ("r-2", &third),
                ("r-1", &other),
                ("r-3", &other),
                ("r-2", &other),
            ],
        )
        .await
        .expect("record several");
    assert_eq!(first, [true, false, true, false]);
    assert!(
        store
            .record_request_outcomes(&mut uow, "inventory", &[])
            .await
            .expect("record none")
            .is_empty()
    );
    uow.commit().await.expect("commit");
    let mut uow = store.begin().await.expect("begin");
    let found = store
        .find_request_outcomes(&mut uow, "inventory", &["r-1", "r-2", "r-3"])
        .await
        .expect("find several");
    assert_eq!(found, [Some(outcome), Some(third), Some(other)]);
    uow.rollback().await.expect("rollback");
}
