//! Saga instances: registration once per business key (also under concurrency), updates,
//! listing and counts, and the lock a unit of work holds on an instance.

use std::collections::HashSet;
use std::time::Duration;

use uuid::Uuid;

use super::{by_key, db_now, key, keys, listed, owner_of, record, register, register_all};
use crate::saga::{SagaFilter, SagaRegistration, SagaStore};
use crate::store::UnitOfWork;

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

    // With the clock: the insert's clock when it inserted, the owner when the key was taken.
    let clocked = record("order", "o-4", correlation);
    let before = db_now(&store).await;
    let mut uow = store.begin().await.expect("begin");
    let SagaRegistration::Inserted { now } = store
        .register_saga_with_clock(&mut uow, &clocked)
        .await
        .expect("register with the clock")
    else {
        panic!("a free key is inserted");
    };
    assert_eq!(
        store
            .register_saga_with_clock(&mut uow, &record("order", "o-4", correlation))
            .await
            .expect("register the key again"),
        SagaRegistration::Taken {
            owner: clocked.saga_id
        },
        "the key's owner, seen in the same unit of work"
    );
    uow.commit().await.expect("commit");
    let after = db_now(&store).await;
    assert!(
        before <= now && now <= after,
        "the clock {now} is the database's, between {before} and {after}"
    );
    let stored = store
        .saga(clocked.saga_id)
        .await
        .expect("saga")
        .expect("registered with the clock");
    assert!(
        stored.started_at <= now,
        "started at {} by the clock it returned ({now}) or before",
        stored.started_at
    );
    assert_eq!(stored.last_event_id, None, "no event yet");
    let mut uow = store.begin().await.expect("begin");
    assert_eq!(
        store
            .register_saga_with_clock(&mut uow, &duplicate)
            .await
            .expect("register a committed key"),
        SagaRegistration::Taken {
            owner: first.saga_id
        }
    );
    uow.rollback().await.expect("rollback");

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
        5,
        "order/o-1, order/o-2, payment/o-1, order/o-4, order/o-3"
    );
}

/// Registering several instances at once (`register_sagas_with_clock`) answers each in the
/// order given, as one registration each would: a free key is inserted with the database's
/// clock, a key committed before and a key given earlier in the same call are `Taken` by their
/// owner; nothing of a rolled-back call stays. A concurrent unit of work that registers a key
/// of the call waits for it and agrees on its owner.
pub async fn registering_sagas_at_once_answers_each_in_order<S: SagaStore>(store: S) {
    let correlation = Uuid::now_v7();
    let committed = record("order", "b-2", correlation);
    register_all(&store, &[&committed]).await;
    let (free_a, taken, free_b, again) = (
        record("order", "b-1", correlation),
        record("order", "b-2", correlation),
        record("order", "b-3", correlation),
        record("order", "b-1", correlation),
    );
    let batch = [free_a.clone(), taken, free_b.clone(), again];
    let before = db_now(&store).await;
    let mut uow = store.begin().await.expect("begin");
    let registered = store
        .register_sagas_with_clock(&mut uow, &batch)
        .await
        .expect("register at once");
    // A concurrent registration of a key the call took waits for it, then finds its owner.
    let contender = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut uow = store.begin().await.expect("begin");
            let owner = store
                .register_saga(&mut uow, &record("order", "b-3", Uuid::now_v7()))
                .await
                .expect("a concurrent registration");
            uow.commit().await.expect("commit");
            owner
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    uow.commit().await.expect("commit");
    let after = db_now(&store).await;
    assert_eq!(registered.len(), 4, "one answer per record");
    for (at, free) in [(0, &free_a), (2, &free_b)] {
        let SagaRegistration::Inserted { now } = registered[at] else {
            panic!("record {at} has a free key: {:?}", registered[at]);
        };
        assert!(
            before <= now && now <= after,
            "the clock {now} is the database's, between {before} and {after}"
        );
        assert_eq!(
            owner_of(&store, "order", &free.business_key).await,
            Some(free.saga_id)
        );
    }
    assert_eq!(
        registered[1],
        SagaRegistration::Taken {
            owner: committed.saga_id
        },
        "a key committed before"
    );
    assert_eq!(
        registered[3],
        SagaRegistration::Taken {
            owner: free_a.saga_id
        },
        "a key given earlier in the same call"
    );
    assert_eq!(
        contender.await.expect("task"),
        free_b.saga_id,
        "the concurrent registration agrees on the owner"
    );
    assert_eq!(listed(&store, &SagaFilter::default()).await.len(), 3);

    let mut uow = store.begin().await.expect("begin");
    let rolled_back = record("order", "b-4", correlation);
    let registered = store
        .register_sagas_with_clock(&mut uow, std::slice::from_ref(&rolled_back))
        .await
        .expect("register at once");
    assert!(matches!(
        registered[..],
        [SagaRegistration::Inserted { .. }]
    ));
    uow.rollback().await.expect("rollback");
    assert_eq!(owner_of(&store, "order", "b-4").await, None, "rolled back");
    assert!(
        store
            .register_sagas_with_clock(&mut store.begin().await.expect("begin"), &[])
            .await
            .expect("nothing to register")
            .is_empty()
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

/// `lock_saga` returns the instance (as the unit of work sees it, also one it just registered;
/// `None` for an unknown id) and holds it until the unit of work ends: a second unit of work that
/// locks the same instance waits for the first to commit, then sees its update.
/// `lock_sagas_with_clock` locks several at once (the registered ones, once each, in id order),
/// held the same way.
pub async fn locking_a_saga_serialises_units_of_work<S: SagaStore>(store: S) {
    use std::sync::atomic::Ordering;

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
    let (done, waiter) = lock_in_second(&store, saga.saga_id).await;
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

    // Several at once: the registered ones, in id order, each with the clock; they are held
    // like one lock each.
    let other = record("order", "lock-2", Uuid::now_v7());
    let mut uow = store.begin().await.expect("begin");
    register(&store, &mut uow, &other).await;
    uow.commit().await.expect("commit");
    let mut first = store.begin().await.expect("begin");
    let unknown = Uuid::now_v7();
    let locked = store
        .lock_sagas_with_clock(
            &mut first,
            &[other.saga_id, unknown, saga.saga_id, other.saga_id],
        )
        .await
        .expect("lock several");
    let mut ids = vec![saga.saga_id, other.saga_id];
    ids.sort();
    assert_eq!(
        locked.iter().map(|(r, _)| r.saga_id).collect::<Vec<_>>(),
        ids,
        "the registered ones, once each, in id order"
    );
    assert_eq!(
        locked[ids
            .iter()
            .position(|id| *id == saga.saga_id)
            .expect("locked")]
        .0
        .version,
        3
    );
    let (done, waiter) = lock_in_second(&store, other.saga_id).await;
    assert!(
        !done.load(Ordering::SeqCst),
        "a second unit of work locked a saga the first locked with others"
    );
    first.rollback().await.expect("rollback");
    tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
        .await
        .expect("the second unit of work got the lock after the rollback")
        .expect("the waiter");
}

/// A second unit of work, in a task, that locks `saga_id` (which must be registered), notes
/// that it got the lock, and rolls back; started 200 ms before this returns, so that the flag
/// says whether it waited.
async fn lock_in_second<S: SagaStore>(
    store: &S,
    saga_id: Uuid,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<crate::saga::SagaRecord>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let waiter = {
        let (store, done) = (store.clone(), done.clone());
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
    (done, waiter)
}
