//! The global log: every committed event once, in position order; filters that skip what they
//! do not match while the checkpoint moves on; rolled-back events never shown; subscriptions
//! that catch up, follow live appends and resume from a stored checkpoint.

use eventfold_core::{NewEvent, StreamId};
use uuid::Uuid;

use super::{added, stream};
use crate::error::ExpectedVersion;
use crate::log::{Checkpoint, LogFilter};
use crate::store::{EventStore, UnitOfWork};

fn tagged(event_type: &str, tenant: Option<&str>) -> NewEvent {
    let mut event = NewEvent::raw(event_type, 1, b"{}".to_vec());
    event.tenant_id = tenant.map(str::to_owned);
    event
}

/// Reads the whole log in batches of `batch`, checking the batch invariants on the way.
async fn read_all<S: EventStore>(
    store: &S,
    filter: &LogFilter,
    batch: usize,
) -> (Vec<eventfold_core::RecordedEvent>, Checkpoint) {
    let mut checkpoint = Checkpoint::START;
    let mut events = Vec::new();
    loop {
        let read = store
            .read_log(checkpoint, batch, filter)
            .await
            .expect("read the log");
        assert!(read.events.len() <= batch);
        for e in &read.events {
            assert!(e.checkpoint > checkpoint, "checkpoints move forward");
            assert!(e.checkpoint <= read.checkpoint);
            checkpoint = e.checkpoint;
        }
        assert!(read.checkpoint >= checkpoint);
        checkpoint = read.checkpoint;
        events.extend(read.events.into_iter().map(|e| e.event));
        if read.reached_end && !read.held_back {
            return (events, checkpoint);
        }
        if read.held_back {
            // On PostgreSQL, a transaction anywhere in the cluster (another test's, say) can
            // hold committed events back for a moment: wait for it like a reader does.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// The log holds every committed event once, in position order, each stream in version order;
/// reading from the end returns nothing; the head is the last position.
pub async fn log_reads_every_committed_event_in_order<S: EventStore>(store: S) {
    let mut expected = Vec::new();
    for round in 0..4 {
        for name in ["a", "b", "c"] {
            let events = vec![added(round), added(round + 10)];
            expected.extend(events.iter().map(|e| e.event_id));
            store
                .append(&stream(name), ExpectedVersion::Any, events)
                .await
                .expect("append");
        }
    }
    let (events, end) = read_all(&store, &LogFilter::all(), 5).await;
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, expected, "every event once, in commit order");
    let positions: Vec<u64> = events.iter().map(|e| e.global_position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions increase: {positions:?}"
    );
    for name in ["a", "b", "c"] {
        let versions: Vec<u64> = events
            .iter()
            .filter(|e| e.stream_id == stream(name))
            .map(|e| e.stream_version)
            .collect();
        assert_eq!(versions, (1..=8).collect::<Vec<_>>());
    }
    let again = store
        .read_log(end, 100, &LogFilter::all())
        .await
        .expect("read");
    assert!(again.events.is_empty() && again.reached_end && !again.held_back);
    let mut head = store.log_head().await.expect("head");
    for _ in 0..400 {
        // Other transactions of a shared PostgreSQL cluster may hold the horizon for a moment.
        if head.readable_position == head.position {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        head = store.log_head().await.expect("head");
    }
    assert_eq!(head.position, *positions.last().expect("events"));
    assert_eq!(head.readable_position, head.position);
    let (a, b) = end.to_parts();
    assert_eq!(Checkpoint::from_parts(a, b).expect("parts"), end);
    assert_eq!(end.to_string().parse::<Checkpoint>().expect("string"), end);
}

/// Filters by event type, stream type and tenant; the checkpoint moves past what they skip.
pub async fn log_filters_skip_over_other_events<S: EventStore>(store: S) {
    let order = StreamId::new("order", "1").expect("stream id");
    store
        .append(
            &order,
            ExpectedVersion::NoStream,
            vec![
                tagged("order.placed", Some("acme")),
                tagged("order.paid", Some("acme")),
            ],
        )
        .await
        .expect("append");
    store
        .append(
            &stream("t"),
            ExpectedVersion::NoStream,
            vec![
                tagged("tally.added", Some("other")),
                tagged("tally.reset", None),
            ],
        )
        .await
        .expect("append");
    let types = |events: Vec<eventfold_core::RecordedEvent>| {
        events.into_iter().map(|e| e.event_type).collect::<Vec<_>>()
    };
    let (by_type, end) = read_all(
        &store,
        &LogFilter::all().event_types(["order.paid", "tally.reset"]),
        1,
    )
    .await;
    assert_eq!(types(by_type), vec!["order.paid", "tally.reset"]);
    let (by_stream, _) = read_all(&store, &LogFilter::all().stream_types(["tally"]), 10).await;
    assert_eq!(types(by_stream), vec!["tally.added", "tally.reset"]);
    let (by_tenant, _) = read_all(&store, &LogFilter::all().tenant("acme"), 10).await;
    assert_eq!(types(by_tenant), vec!["order.placed", "order.paid"]);
    // Read everything first: on PostgreSQL the readable end follows the cluster-wide horizon,
    // which only moves forward, so a later read ends at least where an earlier one did.
    let (all, all_end) = read_all(&store, &LogFilter::all(), 10).await;
    assert_eq!(all.len(), 4);
    let (none, none_end) = read_all(
        &store,
        &LogFilter::all().event_types(["nothing.matches"]),
        10,
    )
    .await;
    assert!(none.is_empty());
    assert!(
        none_end >= end && none_end >= all_end,
        "a filtered read still moves past the events it skipped"
    );
}

/// Events of a rolled-back unit of work never reach the log.
pub async fn log_never_shows_rolled_back_events<S: EventStore>(store: S) {
    store
        .append(&stream("kept"), ExpectedVersion::NoStream, vec![added(1)])
        .await
        .expect("append");
    let mut uow = store.begin().await.expect("begin");
    uow.append(
        &stream("gone"),
        ExpectedVersion::NoStream,
        vec![added(2), added(3)],
    )
    .await
    .expect("append");
    uow.rollback().await.expect("rollback");
    store
        .append(&stream("kept"), ExpectedVersion::Exact(1), vec![added(4)])
        .await
        .expect("append");
    let (events, _) = read_all(&store, &LogFilter::all(), 10).await;
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.stream_id == stream("kept")));
}

/// A subscription returns the past, then waits for and returns new appends, in order.
pub async fn subscription_catches_up_then_follows_live_appends<S: EventStore>(store: S) {
    for i in 0..5 {
        store
            .append(&stream("live"), ExpectedVersion::Exact(i), vec![added(i)])
            .await
            .expect("append");
    }
    let mut subscription = store
        .subscribe(Checkpoint::START, LogFilter::all())
        .batch_size(2);
    let writer = store.clone();
    let appends = tokio::spawn(async move {
        for i in 5..10 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            writer
                .append(&stream("live"), ExpectedVersion::Exact(i), vec![added(i)])
                .await
                .expect("append");
        }
    });
    let started = std::time::Instant::now();
    let mut versions = Vec::new();
    while versions.len() < 10 {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), subscription.next())
            .await
            .expect("a live event arrives within 10 s")
            .expect("read");
        assert!(subscription.checkpoint() >= next.checkpoint);
        versions.push(next.event.stream_version);
    }
    appends.await.expect("writer");
    assert_eq!(versions, (1..=10).collect::<Vec<_>>());
    // The five live events were 20 ms apart: waiting for them took about 100 ms, far below the
    // 500 ms poll interval times five, so the reader was woken rather than polling.
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2400),
        "took {:?}",
        started.elapsed()
    );
}

/// A subscription started from a stored checkpoint continues exactly after it.
pub async fn subscription_resumes_from_a_stored_checkpoint<S: EventStore>(store: S) {
    store
        .append(
            &stream("resume"),
            ExpectedVersion::NoStream,
            (1..=6).map(added).collect(),
        )
        .await
        .expect("append");
    let mut first = store
        .subscribe(Checkpoint::START, LogFilter::all())
        .batch_size(4);
    for _ in 0..3 {
        first.next().await.expect("read");
    }
    let stored = first.checkpoint().to_string();
    drop(first);
    let mut second = store.subscribe(stored.parse().expect("checkpoint"), LogFilter::all());
    let mut versions = Vec::new();
    for _ in 0..3 {
        versions.push(second.next().await.expect("read").event.stream_version);
    }
    assert_eq!(versions, vec![4, 5, 6]);
}
