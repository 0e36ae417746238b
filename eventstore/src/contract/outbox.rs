//! The transactional outbox: rows written in the same transaction as their events and the
//! application's own messages, routed by [`OutboxRouting`], in each stream's version order, with
//! Debezium columns and CloudEvents headers.

use eventfold_core::{CommandMetadata, NewEvent, OutboxMessage};
use uuid::Uuid;

use super::{Tally, TallyCommand, added, billing_request, stream};
use crate::error::{ExpectedVersion, StoreError};
use crate::outbox::{OUTBOX_SLOTS, OutboxRelayStore, OutboxRouting};
use crate::repository::Repository;
use crate::store::{UnitOfWork, Wakeup};
use crate::trace::TraceStore;

/// Outbox rows are written in the same transaction as their events and the application's own
/// messages: a rollback leaves none, a commit leaves all, in stream order, with Debezium columns
/// and CloudEvents headers.
pub async fn outbox_rows_commit_with_their_events_or_not_at_all<S: OutboxRelayStore>(store: S) {
    use eventfold_core::outbox::headers;
    let store = store.with_outbox(
        OutboxRouting::new()
            .topic_prefix("shop.")
            .skip_event_type("tally.reset"),
    );
    let repo = Repository::<Tally, _>::new(store.clone());
    let meta = CommandMetadata::new()
        .tenant("acme")
        .header("traceparent", "00-abc-01");

    // Rolled back: neither the events nor the messages.
    let mut uow = store.begin().await.expect("begin");
    repo.execute_in(&mut uow, "o", &TallyCommand::Add(1), meta.clone())
        .await
        .expect("execute");
    uow.enqueue(vec![billing_request("customer-1")])
        .await
        .expect("enqueue");
    uow.rollback().await.expect("rollback");
    let status = store.outbox_status().await.expect("status");
    assert_eq!(
        (status.pending, status.oldest),
        (0, None),
        "a rolled-back transaction left messages"
    );

    // Committed: all of them, in order.
    let mut uow = store.begin().await.expect("begin");
    let first = repo
        .execute_in(
            &mut uow,
            "o",
            &TallyCommand::AddMany(vec![1, 2]),
            meta.clone(),
        )
        .await
        .expect("execute");
    uow.enqueue(vec![billing_request("customer-1")])
        .await
        .expect("enqueue");
    uow.commit().await.expect("commit");
    repo.execute("o", &TallyCommand::Reset, meta.clone())
        .await
        .expect("reset (not routed)");
    repo.execute("o", &TallyCommand::Add(3), meta)
        .await
        .expect("execute");

    let status = store.outbox_status().await.expect("status");
    assert_eq!(status.pending, 4);
    assert!(status.oldest.is_some());
    assert_eq!(status.dead_letters, 0);
    let rows = store.read_outbox(100).await.expect("read");
    assert_eq!(rows.len(), 4);
    assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq));
    let types: Vec<&str> = rows
        .iter()
        .map(|r| r.message.message_type.as_str())
        .collect();
    assert_eq!(
        types,
        vec![
            "tally.added",
            "tally.added",
            "billing.requested",
            "tally.added"
        ]
    );
    let versions: Vec<&str> = rows
        .iter()
        .filter_map(|r| {
            r.message
                .headers
                .get(headers::STREAM_VERSION)
                .map(String::as_str)
        })
        .collect();
    assert_eq!(
        versions,
        vec!["1", "2", "4"],
        "event messages follow the stream's versions"
    );

    let event_row = &rows[0].message;
    let event = &first.events[0];
    assert_eq!(
        event_row.id, event.event_id,
        "the message id is the event id"
    );
    assert_eq!(event_row.topic, "shop.tally");
    assert_eq!(
        (
            event_row.key.as_str(),
            event_row.aggregate_id.as_str(),
            event_row.aggregate_type.as_str()
        ),
        ("o", "o", "tally")
    );
    assert_eq!(event_row.payload, br#"{"n":1}"#);
    let h = &event_row.headers;
    assert_eq!(h[headers::SPECVERSION], "1.0");
    assert_eq!(h[headers::ID], event.event_id.to_string());
    assert_eq!(h[headers::TYPE], "tally.added");
    assert_eq!(h[headers::SOURCE], store.source());
    assert_eq!(h[headers::SUBJECT], "tally-o");
    assert_eq!(h[headers::CORRELATION_ID], event.correlation_id.to_string());
    assert_eq!(h[headers::TENANT_ID], "acme");
    assert_eq!(h[headers::CONTENT_TYPE], "application/json");
    assert_eq!(
        h["traceparent"], "00-abc-01",
        "the event's own headers travel too"
    );
    assert_eq!(rows[0].slot, OutboxMessage::slot_of("o", OUTBOX_SLOTS));
    assert_eq!((rows[0].attempts, rows[0].last_error.as_deref()), (0, None));
    let app = &rows[2].message;
    assert_eq!(
        (app.topic.as_str(), app.key.as_str()),
        ("billing", "customer-1")
    );
}

/// Concurrent `Any` appends to one stream, directly and in units of work, single events and
/// batches: each routed event has exactly one outbox row, carrying the stream version the event
/// got, and the rows of the stream follow its versions in `seq` order (the relay's per-key
/// order); an append refused for its expected version writes no outbox row.
pub async fn concurrent_appends_write_outbox_rows_in_version_order<S: OutboxRelayStore>(store: S) {
    use eventfold_core::outbox::headers;
    let store = store.with_outbox(OutboxRouting::new().skip_event_type("tally.reset"));
    let race = stream("race");
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let store = store.clone();
        let race = race.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..12u64 {
                // A routed event, sometimes followed by one that is not routed.
                let mut events = vec![added(t * 100 + i)];
                if i % 3 == 0 {
                    events.push(NewEvent::raw("tally.reset", 1, b"{}".to_vec()));
                }
                if t % 2 == 0 {
                    store
                        .append(&race, ExpectedVersion::Any, events)
                        .await
                        .expect("an Any append succeeds under contention");
                } else {
                    let mut uow = store.begin().await.expect("begin");
                    uow.append(&race, ExpectedVersion::Any, events)
                        .await
                        .expect("an Any append in a unit of work succeeds under contention");
                    uow.commit().await.expect("commit");
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    let events = store
        .read_stream(&race, 0, u64::MAX)
        .await
        .expect("read the stream");
    assert_eq!(events.len(), 8 * (12 + 4));
    let routed: Vec<(Uuid, String)> = events
        .iter()
        .filter(|e| e.event_type == "tally.added")
        .map(|e| (e.event_id, e.stream_version.to_string()))
        .collect();

    // Refused for its expected version: no event and no outbox row.
    let refused = store
        .append(&race, ExpectedVersion::Exact(3), vec![added(1)])
        .await;
    assert!(
        matches!(refused, Err(StoreError::VersionConflict { .. })),
        "a stale expected version is refused: {refused:?}"
    );

    let rows = store.read_outbox(10_000).await.expect("read the outbox");
    assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq));
    let written: Vec<(Uuid, String)> = rows
        .iter()
        .map(|r| {
            (
                r.message.id,
                r.message
                    .headers
                    .get(headers::STREAM_VERSION)
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        written, routed,
        "one outbox row per routed event, in version order, each with its event's stream version"
    );
}

/// [`UnitOfWork::append_and_enqueue`] writes the events, their outbox rows and then the
/// messages, journals the messages of a flow (not the others), and on a version conflict writes
/// none of it (even when the unit of work then commits); rolled back, nothing stays; with `Any`, or without messages, it appends and
/// enqueues as the two calls do. The commit wakes the store's wake-ups.
pub async fn append_and_enqueue_writes_events_and_messages_together<S>(store: S)
where
    S: OutboxRelayStore + TraceStore,
{
    use eventfold_core::outbox::headers;
    use eventfold_core::trace::TraceKind;
    let store = store.with_outbox(OutboxRouting::new());
    let order = stream("ae-1");
    let flow = Uuid::now_v7();
    let event = |event_type: &str| {
        let mut e = NewEvent::raw(event_type, 1, b"{}".to_vec());
        e.correlation_id = flow;
        e
    };
    let command = |message_type: &str| {
        let mut m = OutboxMessage::new("inventory.commands", "ae-1", message_type, b"{}".to_vec());
        m.headers
            .insert(headers::CORRELATION_ID.into(), flow.to_string());
        m.headers
            .insert(headers::CAUSATION_ID.into(), Uuid::now_v7().to_string());
        m
    };
    let types = |rows: &[crate::outbox::OutboxRow]| -> Vec<String> {
        rows.iter()
            .map(|r| r.message.message_type.clone())
            .collect()
    };
    let sent = |trace: &[eventfold_core::trace::TraceRecord]| -> Vec<Uuid> {
        trace
            .iter()
            .filter(|r| r.kind == TraceKind::Sent)
            .map(|r| r.id)
            .collect()
    };

    let reserve = command("inventory.reserve");
    let untraced = billing_request("ae-1");
    let mut wakeup = store.wakeup().await.expect("a wake-up");
    let before = std::time::Instant::now();
    let mut uow = store.begin().await.expect("begin");
    let result = uow
        .append_and_enqueue(
            &order,
            ExpectedVersion::NoStream,
            vec![event("order.placed"), event("order.priced")],
            vec![reserve.clone(), untraced.clone()],
        )
        .await
        .expect("append and enqueue");
    uow.commit().await.expect("commit");
    wakeup.wait(std::time::Duration::from_secs(30)).await;
    assert!(
        before.elapsed() < std::time::Duration::from_secs(10),
        "the commit wakes the store's wake-ups (the relay claims the messages at once)"
    );
    assert_eq!((result.previous_version, result.version), (0, 2));
    let rows = store.read_outbox(100).await.expect("read");
    assert_eq!(
        types(&rows),
        [
            "order.placed",
            "order.priced",
            "inventory.reserve",
            "billing.requested"
        ],
        "the events' rows, then the messages, in order"
    );
    assert_eq!(rows[2].message.id, reserve.id);
    assert_eq!(
        rows[0]
            .message
            .headers
            .get(headers::STREAM_VERSION)
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        sent(&store.trace(flow).await.expect("trace")),
        [reserve.id],
        "the message of the flow is journaled, the other is not"
    );

    // A conflict: nothing of it, even when the unit of work goes on and commits.
    let lost = command("inventory.lost");
    let mut uow = store.begin().await.expect("begin");
    let err = uow
        .append_and_enqueue(
            &order,
            ExpectedVersion::Exact(1),
            vec![event("order.lost")],
            vec![lost.clone()],
        )
        .await
        .expect_err("a stale version");
    assert!(err.is_conflict(), "{err}");
    uow.commit().await.expect("commit after the conflict");
    // Rolled back: nothing of it.
    let undone = command("inventory.undone");
    let mut uow = store.begin().await.expect("begin");
    uow.append_and_enqueue(
        &order,
        ExpectedVersion::Exact(2),
        vec![event("order.undone")],
        vec![undone.clone()],
    )
    .await
    .expect("append and enqueue");
    uow.rollback().await.expect("rollback");
    assert_eq!(store.read_outbox(100).await.expect("read").len(), 4);
    assert_eq!(
        store
            .read_stream(&order, 1, 10)
            .await
            .expect("read the stream")
            .len(),
        2
    );
    assert_eq!(
        sent(&store.trace(flow).await.expect("trace")),
        [reserve.id],
        "neither the conflict nor the rollback journaled a message"
    );

    // `Any`, and no messages.
    let release = command("inventory.release");
    let mut uow = store.begin().await.expect("begin");
    let any = uow
        .append_and_enqueue(
            &order,
            ExpectedVersion::Any,
            vec![event("order.cancelled")],
            vec![release.clone()],
        )
        .await
        .expect("append and enqueue with Any");
    let none = uow
        .append_and_enqueue(
            &order,
            ExpectedVersion::Exact(3),
            vec![event("order.closed")],
            Vec::new(),
        )
        .await
        .expect("append without messages");
    uow.commit().await.expect("commit");
    assert_eq!((any.version, none.version), (3, 4));
    let rows = store.read_outbox(100).await.expect("read");
    assert_eq!(
        types(&rows[4..]),
        ["order.cancelled", "inventory.release", "order.closed"]
    );
    assert_eq!(
        sent(&store.trace(flow).await.expect("trace")),
        [reserve.id, release.id]
    );
}

/// [`UnitOfWork::append_many`] writes each append as [`UnitOfWork::append`] would, in the order
/// given: results and global positions in that order, the appends of one stream checked in
/// turn, one outbox row per event with its stream version; the first stale expected version
/// fails the call with a conflict naming its stream, and rolled back nothing of it stays.
/// Concurrent calls with `Any` over the same streams all succeed (run again when the database
/// reports a retriable error, a deadlock between units of work writing the same streams in
/// other orders), each stream's versions contiguous. The commit wakes the store's wake-ups.
pub async fn append_many_writes_each_append_in_order<S: OutboxRelayStore>(store: S) {
    use crate::store::StreamAppend;
    use eventfold_core::outbox::headers;
    let store = store.with_outbox(OutboxRouting::new());
    let (a, b, c, d) = (
        stream("am-a"),
        stream("am-b"),
        stream("am-c"),
        stream("am-d"),
    );
    store
        .append(&b, ExpectedVersion::NoStream, vec![added(0)])
        .await
        .expect("seed b");
    let one = |s: &eventfold_core::StreamId, expected, ns: &[u64]| {
        StreamAppend::new(s.clone(), expected, ns.iter().map(|&n| added(n)).collect())
    };

    let mut wakeup = store.wakeup().await.expect("a wake-up");
    let before = std::time::Instant::now();
    let mut uow = store.begin().await.expect("begin");
    assert!(
        uow.append_many(Vec::new())
            .await
            .expect("nothing to append")
            .is_empty()
    );
    let results = uow
        .append_many(vec![
            one(&a, ExpectedVersion::NoStream, &[1, 2]),
            one(&b, ExpectedVersion::Any, &[3]),
            one(&c, ExpectedVersion::NoStream, &[4]),
            one(&a, ExpectedVersion::Exact(2), &[5]),
            one(&b, ExpectedVersion::Exact(2), &[6]),
            one(&d, ExpectedVersion::Any, &[7]),
            one(&a, ExpectedVersion::Any, &[8, 9]),
        ])
        .await
        .expect("append many");
    uow.commit().await.expect("commit");
    wakeup.wait(std::time::Duration::from_secs(30)).await;
    assert!(
        before.elapsed() < std::time::Duration::from_secs(10),
        "the commit wakes the store's wake-ups"
    );
    let versions: Vec<(u64, u64)> = results
        .iter()
        .map(|r| (r.previous_version, r.version))
        .collect();
    assert_eq!(
        versions,
        [(0, 2), (1, 2), (0, 1), (2, 3), (2, 3), (0, 1), (3, 5)],
        "each append's result, in the order given"
    );
    let positions: Vec<u64> = results.iter().flat_map(|r| r.positions.clone()).collect();
    assert_eq!(positions.len(), 9);
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "global positions follow the order of the appends: {positions:?}"
    );
    let payloads = |events: Vec<eventfold_core::RecordedEvent>| -> Vec<String> {
        events
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
            .collect()
    };
    let read = |s: eventfold_core::StreamId| {
        let store = store.clone();
        async move { payloads(store.read_stream(&s, 1, 100).await.expect("read")) }
    };
    let n = |ns: &[u64]| -> Vec<String> { ns.iter().map(|n| format!(r#"{{"n":{n}}}"#)).collect() };
    assert_eq!(read(a.clone()).await, n(&[1, 2, 5, 8, 9]));
    assert_eq!(read(b.clone()).await, n(&[0, 3, 6]));
    assert_eq!(read(c.clone()).await, n(&[4]));
    assert_eq!(read(d.clone()).await, n(&[7]));
    let rows = store.read_outbox(100).await.expect("read the outbox");
    let keyed: Vec<(String, String)> = rows
        .iter()
        .skip(1) // the seed of b
        .map(|r| {
            let version = r.message.headers.get(headers::STREAM_VERSION).cloned();
            (r.message.key.clone(), version.unwrap_or_default())
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("am-a", 1),
        ("am-a", 2),
        ("am-b", 2),
        ("am-c", 1),
        ("am-a", 3),
        ("am-b", 3),
        ("am-d", 1),
        ("am-a", 4),
        ("am-a", 5),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), v.to_string()))
    .collect();
    assert_eq!(
        keyed, expected,
        "one outbox row per event, in the order of the appends, with its stream version"
    );

    // A stale expected version fails the call, naming its stream; rolled back, nothing stays.
    let (e, f) = (stream("am-e"), stream("am-f"));
    let mut uow = store.begin().await.expect("begin");
    let refused = uow
        .append_many(vec![
            one(&e, ExpectedVersion::NoStream, &[10]),
            one(&a, ExpectedVersion::Exact(1), &[11]),
            one(&f, ExpectedVersion::NoStream, &[12]),
        ])
        .await;
    match refused {
        Err(StoreError::VersionConflict { stream_id, .. }) => assert_eq!(stream_id, a),
        other => panic!("a stale expected version is a conflict on its stream: {other:?}"),
    }
    uow.rollback().await.expect("rollback");
    let mut uow = store.begin().await.expect("begin");
    let empty = uow
        .append_many(vec![
            one(&e, ExpectedVersion::NoStream, &[13]),
            one(&f, ExpectedVersion::Any, &[]),
        ])
        .await;
    assert!(
        matches!(&empty, Err(StoreError::EmptyAppend { stream_id }) if *stream_id == f),
        "an empty append is refused, naming its stream: {empty:?}"
    );
    uow.rollback().await.expect("rollback");
    for s in [&e, &f] {
        assert_eq!(store.stream_version(s).await.expect("version"), 0);
    }
    assert_eq!(store.stream_version(&a).await.expect("version"), 5);
    assert_eq!(
        store.read_outbox(100).await.expect("read").len(),
        rows.len(),
        "a failed call leaves no outbox row once rolled back"
    );

    // Concurrent calls with `Any` over the same streams, repeated within a call.
    let shared = [stream("am-x"), stream("am-y"), stream("am-z")];
    let mut tasks = Vec::new();
    for t in 0..6usize {
        let store = store.clone();
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..8usize {
                // Every call takes the three streams in one order first (so that they wait for
                // each other instead of deadlocking), then two of them again.
                let appends: Vec<StreamAppend> = (0..5)
                    .map(|i| {
                        let s = &shared[if i < 3 { i } else { (t + round + i) % 3 }];
                        StreamAppend::new(s.clone(), ExpectedVersion::Any, vec![added(1)])
                    })
                    .collect();
                // Units of work writing the same streams in other orders may deadlock: that
                // is a retriable error, and the unit of work is run again.
                for attempt in 1.. {
                    let mut uow = store.begin().await.expect("begin");
                    let written = match uow.append_many(appends.clone()).await {
                        Ok(_) => uow.commit().await,
                        Err(e) => Err(e),
                    };
                    match written {
                        Ok(()) => break,
                        Err(e) if e.is_retriable() && attempt < 20 => continue,
                        Err(e) => panic!("Any appends succeed under contention: {e:?}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    let mut total = 0;
    for s in &shared {
        let events = store.read_stream(s, 1, 10_000).await.expect("read");
        let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
        assert_eq!(
            versions,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "the versions of {s} are contiguous"
        );
        total += events.len();
    }
    assert_eq!(total, 6 * 8 * 5, "every append of every call was written");
}
