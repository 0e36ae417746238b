//! No lost update under real concurrency: 16 tasks issue commands against the same 10 aggregates
//! on PostgreSQL and on SQLite. Half of the tasks go through `Repository::execute` (with a small
//! retry budget), half load outside the transaction and append with the stale expected version,
//! so conflicts happen on both backends. A quarter of the tasks use a state cache. At the end every aggregate's state equals the fold of
//! exactly the accepted commands, and every refused command got a typed conflict error.
//!
//! Duration: `EVENTFOLD_STRESS_SECS` (default 3).
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventfold::eventstore::contract::{Tally, TallyCommand, TallyEvent};
use eventfold::eventstore::{EventStore, ExecuteError, ExpectedVersion, Repository, StoreError};
use eventfold::{CommandMetadata, NewEvent, StreamId};
use uuid::Uuid;

const TASKS: usize = 16;
const AGGREGATES: u64 = 10;

#[derive(Default)]
struct Ledger {
    /// Accepted event ids and amounts per aggregate.
    accepted: BTreeMap<u64, Vec<(Uuid, u64)>>,
    conflicts: u64,
}

fn duration() -> Duration {
    let secs = std::env::var("EVENTFOLD_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    Duration::from_secs(secs)
}

async fn hammer<S: EventStore>(store: S) {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let deadline = Instant::now() + duration();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let repo = Repository::<Tally, _>::new(store.clone()).with_max_attempts(2);
            // A quarter of the tasks keep a state cache, which goes stale under the others.
            let repo = if task % 4 == 0 {
                repo.with_cache(16)
            } else {
                repo
            };
            let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ (task as u64 + 1);
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let mut done = 0u64;
            while Instant::now() < deadline {
                let aggregate = next() % AGGREGATES;
                let amount = next() % 5 + 1;
                let id = aggregate.to_string();
                let outcome: Result<Uuid, String> = if task % 2 == 0 {
                    match repo
                        .execute(
                            &id,
                            &TallyCommand::AddMany(vec![amount]),
                            CommandMetadata::new(),
                        )
                        .await
                    {
                        Ok(done) => Ok(done.events[0].event_id),
                        Err(ExecuteError::Conflict {
                            attempts: 2,
                            source,
                            ..
                        }) if source.is_conflict() => Err("conflict".into()),
                        Err(other) => panic!("task {task}: unexpected error {other:?}"),
                    }
                } else {
                    let loaded = repo.load(&id).await.expect("load");
                    tokio::task::yield_now().await;
                    let event = NewEvent::encode(
                        &TallyEvent::Added { n: amount },
                        "stress",
                        &CommandMetadata::new(),
                    )
                    .expect("encode");
                    let event_id = event.event_id;
                    let stream = StreamId::new("tally", id.as_str()).expect("stream id");
                    match store
                        .append(&stream, ExpectedVersion::Exact(loaded.version), vec![event])
                        .await
                    {
                        Ok(_) => Ok(event_id),
                        Err(StoreError::VersionConflict { .. }) => Err("conflict".into()),
                        Err(other) => panic!("task {task}: unexpected error {other:?}"),
                    }
                };
                let mut ledger = ledger.lock().expect("ledger");
                match outcome {
                    Ok(event_id) => ledger
                        .accepted
                        .entry(aggregate)
                        .or_default()
                        .push((event_id, amount)),
                    Err(_) => ledger.conflicts += 1,
                }
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("task panicked");
    }
    let ledger = Arc::try_unwrap(ledger)
        .ok()
        .expect("tasks ended")
        .into_inner()
        .expect("ledger");
    let accepted: usize = ledger.accepted.values().map(Vec::len).sum();
    eprintln!(
        "{total} commands: {accepted} accepted, {} conflicts",
        ledger.conflicts
    );
    assert!(
        accepted > 100,
        "too little work was done to show anything ({accepted})"
    );
    assert!(
        ledger.conflicts > 0,
        "no conflicts happened: the test did not exercise concurrency"
    );
    assert_eq!(accepted as u64 + ledger.conflicts, total);

    let repo = Repository::<Tally, _>::new(store.clone());
    for aggregate in 0..AGGREGATES {
        let expected = ledger.accepted.get(&aggregate).cloned().unwrap_or_default();
        let id = aggregate.to_string();
        let loaded = repo.load(&id).await.expect("load");
        let sum: u64 = expected.iter().map(|(_, n)| n).sum();
        assert_eq!(
            loaded.state.total, sum,
            "aggregate {aggregate}: total differs from the accepted commands"
        );
        assert_eq!(
            loaded.state.applied,
            expected.len() as u64,
            "aggregate {aggregate}: event count differs"
        );
        assert_eq!(loaded.version, expected.len() as u64);
        let stream = StreamId::new("tally", id).expect("stream id");
        let stored = store.read_stream(&stream, 1, u64::MAX).await.expect("read");
        let stored_ids: BTreeSet<Uuid> = stored.iter().map(|e| e.event_id).collect();
        let accepted_ids: BTreeSet<Uuid> = expected.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            stored_ids, accepted_ids,
            "aggregate {aggregate}: stored events are not the accepted ones"
        );
        let versions: Vec<u64> = stored.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, (1..=stored.len() as u64).collect::<Vec<_>>());
    }
}

common::named_backend_tests!(4 => |store| hammer(store);
    no_lost_update_on_postgres: postgres,
    no_lost_update_on_sqlite: sqlite,
    no_lost_update_on_postgres_with_coalescing: postgres_coalescing,
    no_lost_update_on_sqlite_with_coalescing: sqlite_coalescing,
    no_lost_update_in_memory: memory,
);

/// A unit of work on SQLite that reads through the store while it is open (a handler loading an
/// aggregate or a saga beside its own transaction) while more writers than the pool has
/// connections wait for the write lock: the read still finds a connection, because the writers
/// queue on the store's write gate without holding one (ADR 0027). Without the gate the waiting
/// writers held every connection inside SQLite's busy handler and the read waited until one of
/// them gave up after the 30 s busy timeout with "database is locked" (the shop failed so in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_read_beside_an_open_unit_of_work_finds_a_connection_while_writers_queue() {
    use eventfold::eventstore::UnitOfWork;
    const WRITERS: usize = 24; // three times the pool of `SqliteStore::connect`
    let (store, _file) = common::sqlite().await;
    let event = || {
        NewEvent::encode(&TallyEvent::Added { n: 1 }, "gate", &CommandMetadata::new())
            .expect("encode")
    };
    let held = StreamId::new("tally", "held").expect("stream id");
    store
        .append(&held, ExpectedVersion::NoStream, vec![event()])
        .await
        .expect("the first event");

    let mut uow = store
        .begin()
        .await
        .expect("a unit of work holds the write lock");
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (store, event) = (store.clone(), event());
            tokio::spawn(async move {
                let stream = StreamId::new("tally", format!("w{i}")).expect("stream id");
                store
                    .append(&stream, ExpectedVersion::NoStream, vec![event])
                    .await
            })
        })
        .collect();
    // Every writer is waiting by now.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let read = tokio::time::timeout(Duration::from_secs(10), store.read_stream(&held, 1, 10))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "a read beside the open unit of work waited 10 s for a connection: \
                 the {WRITERS} waiting writers hold the pool"
            )
        })
        .expect("the read");
    assert_eq!(read.len(), 1);
    uow.append(&held, ExpectedVersion::Exact(1), vec![event()])
        .await
        .expect("the unit of work appends after its read");
    uow.commit().await.expect("commit");

    for (i, writer) in writers.into_iter().enumerate() {
        let appended = tokio::time::timeout(Duration::from_secs(20), writer)
            .await
            .unwrap_or_else(|_| panic!("writer {i} still waits 20 s after the lock was released"))
            .expect("the writer's task");
        appended.unwrap_or_else(|e| panic!("writer {i}: {e}"));
    }
    let held_events = store.read_stream(&held, 1, 10).await.expect("read");
    assert_eq!(held_events.len(), 2);
}
