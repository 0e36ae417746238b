//! Write coalescing (ADR 0024) on the real backends: appends that share a commit are answered
//! alone. Many callers append at the same moment; some of them fail (a version that does not
//! match, an event id that exists already), and their neighbours in the shared transaction
//! commit exactly what they appended, at the versions they expected, while the failing ones
//! write nothing and get their own error. On PostgreSQL the test also checks that commits were
//! in fact shared (fewer transaction ids than appends).
mod common;

use std::sync::Arc;

use eventfold::eventstore::{EventStore, ExpectedVersion, StoreError};
use eventfold::{NewEvent, StreamId};
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use uuid::Uuid;

const CALLERS: usize = 64;
const ROUNDS: usize = 8;

/// What a caller does in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Appends two events to a new stream, then one more: both must commit.
    Good,
    /// Expects version 5 of a new stream: a version conflict, nothing written.
    WrongVersion,
    /// Appends an event whose id exists already: refused, nothing written.
    DuplicateId,
}

fn event(n: usize) -> NewEvent {
    NewEvent::raw("acct.deposited", 1, format!("{{\"n\":{n}}}").into_bytes())
}

fn stream(round: usize, caller: usize) -> StreamId {
    StreamId::new("acct", format!("r{round}-c{caller}")).expect("stream id")
}

/// Runs `ROUNDS` rounds of `CALLERS` callers started together; `roles` says what each does.
/// Returns the good appends' streams.
async fn rounds<S: EventStore>(
    store: &S,
    first_round: usize,
    existing_id: Uuid,
    roles: fn(usize) -> Role,
) -> Vec<StreamId> {
    let mut good = Vec::new();
    for round in first_round..first_round + ROUNDS {
        let barrier = Arc::new(Barrier::new(CALLERS));
        let mut tasks = JoinSet::new();
        for caller in 0..CALLERS {
            let (store, barrier, role) = (store.clone(), barrier.clone(), roles(caller));
            let stream_id = stream(round, caller);
            if role == Role::Good {
                good.push(stream_id.clone());
            }
            tasks.spawn(async move {
                barrier.wait().await;
                match role {
                    Role::Good => {
                        let first = store
                            .append(
                                &stream_id,
                                ExpectedVersion::NoStream,
                                vec![event(1), event(2)],
                            )
                            .await
                            .unwrap_or_else(|e| panic!("{stream_id}: first append failed: {e}"));
                        assert_eq!(
                            (first.previous_version, first.version),
                            (0, 2),
                            "{stream_id}"
                        );
                        assert_eq!(first.positions.len(), 2, "{stream_id}");
                        assert!(first.positions[0] < first.positions[1], "{stream_id}");
                        let second = store
                            .append(&stream_id, ExpectedVersion::Exact(2), vec![event(3)])
                            .await
                            .unwrap_or_else(|e| panic!("{stream_id}: second append failed: {e}"));
                        assert_eq!(
                            (second.previous_version, second.version),
                            (2, 3),
                            "{stream_id}"
                        );
                    }
                    Role::WrongVersion => {
                        match store
                            .append(&stream_id, ExpectedVersion::Exact(5), vec![event(1)])
                            .await
                        {
                            Err(StoreError::VersionConflict {
                                stream_id: s,
                                actual,
                                ..
                            }) => {
                                assert_eq!(s, stream_id);
                                assert_eq!(actual.unwrap_or(0), 0, "{stream_id}");
                            }
                            other => {
                                panic!("{stream_id}: expected a version conflict, got {other:?}")
                            }
                        }
                    }
                    Role::DuplicateId => {
                        let mut e = event(1);
                        e.event_id = existing_id;
                        match store
                            .append(&stream_id, ExpectedVersion::NoStream, vec![event(0), e])
                            .await
                        {
                            Err(StoreError::DuplicateEventId { event_id, .. }) => {
                                assert_eq!(event_id, existing_id, "{stream_id}");
                            }
                            other => panic!("{stream_id}: expected a duplicate id, got {other:?}"),
                        }
                    }
                }
                (stream_id, role)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (stream_id, role) = done.expect("a caller panicked");
            let stored = store
                .read_stream(&stream_id, 0, 100)
                .await
                .expect("read back");
            let payloads: Vec<String> = stored
                .iter()
                .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
                .collect();
            let versions: Vec<u64> = stored.iter().map(|e| e.stream_version).collect();
            match role {
                Role::Good => {
                    assert_eq!(
                        payloads,
                        [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#],
                        "{stream_id}"
                    );
                    assert_eq!(versions, [1, 2, 3], "{stream_id}");
                }
                Role::WrongVersion | Role::DuplicateId => {
                    assert!(
                        stored.is_empty(),
                        "{stream_id}: a failed append wrote {payloads:?}"
                    );
                }
            }
        }
    }
    good
}

/// Seeds the event whose id the `DuplicateId` callers reuse.
async fn seed<S: EventStore>(store: &S) -> Uuid {
    let seed = event(0);
    let id = seed.event_id;
    store
        .append(
            &StreamId::new("acct", "seed").expect("stream id"),
            ExpectedVersion::NoStream,
            vec![seed],
        )
        .await
        .expect("seed");
    id
}

fn conflicts(caller: usize) -> Role {
    if caller % 4 == 1 {
        Role::WrongVersion
    } else {
        Role::Good
    }
}

fn conflicts_and_duplicates(caller: usize) -> Role {
    match caller % 4 {
        1 => Role::WrongVersion,
        3 => Role::DuplicateId,
        _ => Role::Good,
    }
}

async fn failing_appends_do_not_affect_their_neighbours<S: EventStore>(store: S) -> Vec<StreamId> {
    let existing = seed(&store).await;
    // Conflicts only: a shared transaction answers each append alone.
    let mut good = rounds(&store, 0, existing, conflicts).await;
    // With duplicate ids too: a shared write that fails as a whole is split.
    good.extend(rounds(&store, ROUNDS, existing, conflicts_and_duplicates).await);
    good
}

common::named_backend_tests!(4 => |store| failing_appends_do_not_affect_their_neighbours(store);
    sqlite_failing_appends_do_not_affect_their_neighbours: sqlite_coalescing,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_failing_appends_do_not_affect_their_neighbours_and_share_commits() {
    let (store, db) = common::postgres_coalescing().await;
    let good = failing_appends_do_not_affect_their_neighbours(store).await;
    // Each good stream was written by two appends; with coalescing their transactions (the
    // events' commit keys are their transaction ids for new streams) are shared.
    let ids: Vec<String> = good.iter().map(|s| s.id().to_owned()).collect();
    let (appends, transactions): (i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT (stream_id, stream_version <= 2)), count(DISTINCT commit_key) \
         FROM eventfold_events WHERE stream_type = 'acct' AND stream_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(db.pool())
    .await
    .expect("count transactions");
    assert_eq!(appends, 2 * good.len() as i64);
    assert!(
        transactions * 2 <= appends,
        "{appends} appends took {transactions} transactions: commits were not shared"
    );
}

/// With coalescing on, concurrent stream reads of the store share statements (ADR 0024): many
/// readers at once, each of its own stream, from its own version, with its own limit, each get
/// exactly the events a lone read gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_shared_reads_answer_each_read_alone() {
    let (store, _db) = common::postgres_coalescing().await;
    let streams: Vec<StreamId> = (0..40)
        .map(|k| StreamId::new("reads", format!("s{k}")).expect("stream id"))
        .collect();
    for (k, s) in streams.iter().enumerate() {
        let events = (0..=k % 7).map(|n| event(k * 100 + n)).collect();
        store
            .append(s, ExpectedVersion::NoStream, events)
            .await
            .expect("seed");
    }
    let reads: Vec<(StreamId, u64, u64)> = (0..CALLERS)
        .map(|c| {
            (
                streams[c % 40].clone(),
                (c % 3) as u64 + 1,
                (c % 4) as u64 + 1,
            )
        })
        .collect();
    let payloads = |events: Vec<eventfold::RecordedEvent>| -> Vec<(u64, Vec<u8>)> {
        events
            .into_iter()
            .map(|e| (e.stream_version, e.payload))
            .collect()
    };
    let mut expected = Vec::new();
    for (s, from, max) in &reads {
        expected.push(payloads(
            store.read_stream(s, *from, *max).await.expect("read alone"),
        ));
    }
    assert!(expected.iter().any(|e| e.is_empty()) && expected.iter().any(|e| e.len() > 1));
    for _ in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(CALLERS));
        let mut tasks = JoinSet::new();
        for (c, (s, from, max)) in reads.iter().cloned().enumerate() {
            let (store, barrier) = (store.clone(), Arc::clone(&barrier));
            tasks.spawn(async move {
                barrier.wait().await;
                (
                    c,
                    store.read_stream(&s, from, max).await.expect("shared read"),
                )
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (c, events) = done.expect("reader task");
            assert_eq!(payloads(events), expected[c], "read {c}: {:?}", reads[c]);
        }
    }
}
