//! Shared starts (`Orchestrator::start` from many callers at once) on every backend: sagas
//! started by different callers at the same moment share units of work and commits, and each
//! business key still has exactly one saga, whose callers all get its id, one of them with
//! `created`. Every saga then runs to its end with each participant's effect once (the batched
//! reply path writes the transitions of a batch together).

mod common;
mod saga_common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use eventfold::eventstore::{InboxStore, OutboxRelayStore, SagaStore};
use eventfold::saga::SagaStatus;
use saga_common::*;
use uuid::Uuid;

/// Business keys, each started by [`CALLERS_PER_KEY`] concurrent callers.
const KEYS: usize = 48;
const CALLERS_PER_KEY: usize = 3;

pub async fn concurrent_starts_share_commits_and_stay_idempotent<
    S: SagaStore + InboxStore + OutboxRelayStore,
>(
    store: S,
) {
    let mut world = World::new(store.clone(), Duration::from_secs(60), 0);
    let mut tasks = Vec::new();
    for caller in 0..KEYS * CALLERS_PER_KEY {
        let orchestrator = world.orchestrator.clone();
        let key = format!("shared-{}", caller % KEYS);
        tasks.push(tokio::spawn(async move {
            let data = Order {
                id: key.clone(),
                cents: 700,
                ..Order::default()
            };
            let started = orchestrator.start(&key, data, None).await.expect("start");
            (key, started)
        }));
    }
    let mut by_key: BTreeMap<String, (BTreeSet<Uuid>, usize)> = BTreeMap::new();
    for task in tasks {
        let (key, started) = task.await.expect("a starting task");
        let entry = by_key.entry(key).or_default();
        entry.0.insert(started.saga_id);
        entry.1 += usize::from(started.created);
    }
    assert_eq!(by_key.len(), KEYS);
    for (key, (owners, created)) in &by_key {
        assert_eq!(
            (owners.len(), *created),
            (1, 1),
            "key {key}: one saga, created once, every caller told its id"
        );
    }
    let ids: Vec<Uuid> = by_key
        .values()
        .flat_map(|(owners, _)| owners.iter().copied())
        .collect();
    for (key, (owners, _)) in &by_key {
        let row = store
            .saga_by_key(SAGA_TYPE, key)
            .await
            .expect("saga by key")
            .expect("a row");
        assert!(
            owners.contains(&row.saga_id),
            "key {key}: the row is the callers' saga"
        );
        assert_eq!(
            history(&store, row.saga_id)
                .await
                .first()
                .map(String::as_str),
            Some("saga.started"),
            "key {key}: the first transition committed with the row"
        );
    }
    assert_eq!(
        store.outbox_status().await.expect("outbox").pending,
        KEYS as u64,
        "one reserve command per saga"
    );

    world
        .pump_until_terminal(&ids, Duration::from_secs(60))
        .await;
    for id in &ids {
        let state = world
            .orchestrator
            .state(*id)
            .await
            .expect("state")
            .expect("saga");
        assert_eq!(state.status, SagaStatus::Completed, "saga {id}");
    }
    let totals = effect_totals(&store, &ids).await;
    for (effect, count) in &totals {
        assert_eq!(*count, KEYS, "{effect}: once per saga");
    }
    assert_eq!(totals.len(), 3, "reserve, charge and ship: {totals:?}");
}

macro_rules! saga_starts_tests {
    ($backend:ident, $fresh:path) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_starts_share_commits_and_stay_idempotent() {
                let (store, _guard) = $fresh().await;
                super::concurrent_starts_share_commits_and_stay_idempotent(store).await;
            }
        }
    };
}

saga_starts_tests!(memory, common::memory);
saga_starts_tests!(sqlite, common::sqlite);
saga_starts_tests!(postgres, common::postgres);
