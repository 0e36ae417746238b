//! Projections on PostgreSQL (a fresh database per test): exactly-once under concurrent writers
//! with competing runners, a blue/green rebuild while writers append and readers query the
//! views in a loop, and a poison event reported by the status.
#![cfg(feature = "postgres")]
mod common;
mod projection_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use eventfold::StreamId;
use eventfold::eventstore::postgres::PgStore;
use eventfold::eventstore::{EventStore, ExpectedVersion};
use eventfold::projections::{ProjectionOptions, Projections, RebuildMode};
use projection_common::{Ledger, POISON, append_any, deposit, ledger_state, parked_ledger};

const WAIT: Duration = Duration::from_secs(30);

async fn model_equals_fold(store: &PgStore) {
    let expected = projection_common::assert_balances_equal_fold(store, store.pool()).await;
    let (ledger,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM ledger")
        .fetch_one(store.pool())
        .await
        .expect("ledger");
    assert_eq!(ledger, expected.iter().map(|e| e.2).sum::<i64>());
}

/// `writers` tasks appending `per_writer` deposits each (1..=3 events per append) to a few
/// shared accounts; returns the highest position.
fn writers(
    store: &PgStore,
    writers: usize,
    per_writer: usize,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut last = 0;
                for i in 0..per_writer {
                    let account = format!("acct-{}", (w + i) % 7);
                    let stream = StreamId::new("account", format!("{w}-{}", i % 5)).expect("id");
                    let events = (0..1 + i % 3)
                        .map(|k| deposit(&account, (i + k) as i64))
                        .collect();
                    last = last.max(append_any(&store, &stream, events).await);
                }
                last
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_competing_runners_apply_each_event_once() {
    let (store, _db) = common::postgres().await;
    let projections = Projections::new(store.clone())
        .register_with(Ledger::new(1), ProjectionOptions::default().batch_size(25));
    // Three runners compete for the same projection (a zombie, the service, a second instance).
    let runners: Vec<_> = (0..3)
        .map(|_| {
            projections
                .runner()
                .poll_interval(Duration::from_millis(50))
                .start()
        })
        .collect();
    let mut last = 0;
    for w in writers(&store, 8, 60) {
        last = last.max(w.await.expect("writer"));
    }
    for runner in &runners {
        tokio::time::timeout(WAIT, runner.wait_for(last))
            .await
            .expect("in time")
            .expect("wait");
    }
    model_equals_fold(&store).await;
    assert!(parked_ledger(&store).await.is_empty());
    for runner in runners {
        runner.stop().await.expect("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_rebuild_under_writes_never_shows_a_partial_model() {
    let (store, _db) = common::postgres().await;
    for w in writers(&store, 4, 100) {
        w.await.expect("writer");
    }
    let projections = Projections::new(store.clone())
        .register_with(Ledger::new(1), ProjectionOptions::default().batch_size(50));
    let runner = projections
        .runner()
        .poll_interval(Duration::from_millis(50))
        .start();
    let head = store.log_head().await.expect("head").position;
    tokio::time::timeout(WAIT, runner.wait_for(head))
        .await
        .expect("in time")
        .expect("wait");

    // Readers: at every committed state the two views agree (the balances are the sum of the
    // ledger), and the model never shrinks: not empty, not partial, never going back.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (store, stop, reads) = (store.clone(), stop.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let (count, events, sum, total): (i64, i64, i64, i64) = sqlx::query_as(
                    "SELECT (SELECT COUNT(*) FROM ledger), (SELECT COALESCE(SUM(events), 0)::int8 FROM balances), \
                     (SELECT COALESCE(SUM(amount), 0)::int8 FROM ledger), (SELECT COALESCE(SUM(total), 0)::int8 FROM balances)",
                )
                .fetch_one(store.pool())
                .await
                .expect("readers always find the views");
                assert_eq!((count, sum), (events, total), "a consistent model");
                assert!(count >= seen, "the model never goes back ({count} after {seen})");
                assert!(count > 0, "never empty");
                seen = count;
                reads.fetch_add(1, Ordering::Relaxed);
            }
            seen
        }));
    }
    let write_load = writers(&store, 4, 80);
    let report = projections
        .rebuild("ledger", RebuildMode::BlueGreen { drop_old: true }, |_| {})
        .await
        .expect("blue/green rebuild");
    assert_eq!(report.generation, 2);
    assert_eq!(report.dropped, ["\"balances__g1\"", "\"ledger__g1\""]);
    let mut last = 0;
    for w in write_load {
        last = last.max(w.await.expect("writer"));
    }
    tokio::time::timeout(WAIT, runner.wait_for(last))
        .await
        .expect("in time")
        .expect("wait");
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.expect("reader saw only whole models");
    }
    assert!(reads.load(Ordering::Relaxed) > 20, "readers kept querying");
    model_equals_fold(&store).await;
    let state = ledger_state(&store).await;
    assert_eq!(
        (state.generation, state.position),
        (2, last.max(state.position))
    );
    let (old,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM pg_tables WHERE tablename LIKE '%\\_\\_g1'")
            .fetch_one(store.pool())
            .await
            .expect("tables");
    assert_eq!(old, 0, "old generation dropped");
    runner.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_on_postgres_is_parked_and_reported() {
    let (store, _db) = common::postgres().await;
    let stream = StreamId::new("account", "x").expect("id");
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![deposit("a", 1), deposit(POISON, 2), deposit("b", 3)],
        )
        .await
        .expect("append");
    let projections = Projections::new(store.clone()).register_with(
        Ledger::new(1),
        ProjectionOptions::default().retries(2, Duration::from_millis(10)),
    );
    let runner = projections.runner().start();
    tokio::time::timeout(WAIT, runner.wait_for(3))
        .await
        .expect("in time")
        .expect("wait");
    model_equals_fold(&store).await;
    let status = projections.status().await.expect("status");
    assert_eq!(
        (status[0].parked, status[0].position, status[0].lag_events),
        (1, 3, 0)
    );
    let parked = parked_ledger(&store).await;
    assert_eq!((parked.len(), parked[0].global_position), (1, 2));
    runner.stop().await.expect("stop");
}
