//! The event store itself: append and read, expected versions, event ids, units of work
//! (commit, rollback, drop, cancellation), snapshots, upcasting and decode errors on read,
//! global positions.

use eventfold_core::{
    Aggregate, CodecError, CommandMetadata, DecodeErrorKind, Headers, NewEvent, Upcasters,
};
use uuid::Uuid;

use super::{Tally, TallyCommand, TallyEvent, added, append_err, append_ok, stream};
use crate::error::{ExecuteError, ExpectedVersion, StoreError};
use crate::repository::Repository;
use crate::store::{CommandRecord, EventStore, Snapshot, UnitOfWork};

/// Every metadata field survives an append and a read.
pub async fn append_and_read_round_trip_keeps_all_metadata<S: EventStore>(store: S) {
    let id = stream("meta");
    let mut headers = Headers::new();
    headers.insert("traceparent".into(), "00-abc-def-01".into());
    let correlation = Uuid::now_v7();
    let cause = Uuid::now_v7();
    let meta = CommandMetadata::new()
        .correlation_id(correlation)
        .causation_id(cause)
        .tenant("acme")
        .header("traceparent", "00-abc-def-01");
    let first = NewEvent::encode(&TallyEvent::Added { n: 7 }, "svc-a", &meta).expect("encodes");
    let second =
        NewEvent::encode(&TallyEvent::Reset, "svc-a", &CommandMetadata::new()).expect("encodes");
    let result = store
        .append(
            &id,
            ExpectedVersion::NoStream,
            vec![first.clone(), second.clone()],
        )
        .await
        .expect("append");
    assert_eq!((result.previous_version, result.version), (0, 2));
    assert_eq!(result.positions.len(), 2);
    let read = store.read_stream(&id, 1, u64::MAX).await.expect("read");
    assert_eq!(read.len(), 2);
    let expected_first = first.into_recorded(id.clone(), 1, result.positions[0]);
    let expected_second = second.into_recorded(id.clone(), 2, result.positions[1]);
    assert_eq!(
        read[0], expected_first,
        "first event differs after a round trip"
    );
    assert_eq!(
        read[1], expected_second,
        "second event differs after a round trip"
    );
    assert_eq!(read[0].headers, headers);
    assert_eq!(read[0].correlation_id, correlation);
    assert_eq!(read[0].causation_id, Some(cause));
    assert_eq!(read[0].tenant_id.as_deref(), Some("acme"));
    assert_eq!(read[0].source, "svc-a");
    assert_eq!(
        read[0].event_id.get_version_num(),
        7,
        "event ids are UUID v7"
    );
    assert_eq!(store.stream_version(&id).await.expect("version"), 2);
}

/// NoStream, Exact and Any behave as documented; a conflict names the actual version.
pub async fn expected_version_rules<S: EventStore>(store: S) {
    let id = stream("rules");
    // Exact(3) on a missing stream must not create a gap.
    let err = append_err(&store, &id, ExpectedVersion::Exact(3), vec![added(1)]).await;
    assert!(
        matches!(
            err,
            StoreError::VersionConflict {
                actual: Some(0),
                ..
            }
        ),
        "expected a conflict at version 0, got {err:?}"
    );
    append_ok(&store, &id, ExpectedVersion::Exact(0), vec![added(1)]).await;
    let err = append_err(&store, &id, ExpectedVersion::NoStream, vec![added(1)]).await;
    assert!(
        matches!(
            err,
            StoreError::VersionConflict {
                actual: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("tally-rules"),
        "the error names the stream: {err}"
    );
    let err = append_err(&store, &id, ExpectedVersion::Exact(5), vec![added(1)]).await;
    assert!(
        matches!(
            err,
            StoreError::VersionConflict {
                expected: ExpectedVersion::Exact(5),
                actual: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
    append_ok(
        &store,
        &id,
        ExpectedVersion::Exact(1),
        vec![added(1), added(2)],
    )
    .await;
    append_ok(&store, &id, ExpectedVersion::Any, vec![added(3)]).await;
    assert_eq!(store.stream_version(&id).await.expect("version"), 4);
    let versions: Vec<u64> = store
        .read_stream(&id, 1, u64::MAX)
        .await
        .expect("read")
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    let other = stream("rules-any");
    append_ok(&store, &other, ExpectedVersion::Any, vec![added(1)]).await;
    assert_eq!(store.stream_version(&other).await.expect("version"), 1);
}

/// An empty append is a typed error.
pub async fn empty_append_is_refused<S: EventStore>(store: S) {
    let id = stream("empty");
    let err = append_err(&store, &id, ExpectedVersion::Any, vec![]).await;
    assert!(matches!(err, StoreError::EmptyAppend { .. }), "{err:?}");
    assert!(err.to_string().contains("tally-empty"));
    let mut bad = added(1);
    bad.schema_version = 0;
    let err = append_err(&store, &id, ExpectedVersion::Any, vec![bad]).await;
    assert!(matches!(err, StoreError::InvalidEvent { .. }), "{err:?}");
    assert_eq!(store.stream_version(&id).await.expect("version"), 0);
}

/// A payload of [`MAX_PAYLOAD_LEN`](crate::MAX_PAYLOAD_LEN) bytes is stored and read back whole;
/// one byte more is refused before any statement, with an error naming the stream, the event
/// and the size, for an event and for an outbox message alike, and the stream goes on.
pub async fn payloads_at_the_limit_are_stored_and_past_it_refused<S: EventStore>(store: S) {
    let id = stream("payload-limit");
    let limit = crate::MAX_PAYLOAD_LEN;
    let at_limit = NewEvent::raw("tally.blob", 1, vec![b'x'; limit]);
    append_ok(&store, &id, ExpectedVersion::NoStream, vec![at_limit]).await;
    let read = store.read_stream(&id, 1, 1).await.expect("read");
    assert_eq!(
        read[0].payload.len(),
        limit,
        "the payload at the limit, whole"
    );
    assert!(read[0].payload.iter().all(|b| *b == b'x'));

    let past = NewEvent::raw("tally.blob", 1, vec![b'x'; limit + 1]);
    let past_id = past.event_id;
    let err = append_err(&store, &id, ExpectedVersion::Exact(1), vec![past]).await;
    match &err {
        StoreError::InvalidEvent {
            stream_id,
            event_id,
            reason,
            ..
        } => {
            assert_eq!((stream_id, *event_id), (&id, past_id));
            assert!(reason.contains(&(limit + 1).to_string()), "{reason}");
        }
        other => panic!("expected InvalidEvent, got {other:?}"),
    }
    assert!(!err.is_retriable(), "a payload too large is not transient");

    let mut uow = store.begin().await.expect("begin");
    let message =
        eventfold_core::OutboxMessage::new("blobs", "k", "blob.sent", vec![b'y'; limit + 1]);
    let err = uow.enqueue(vec![message]).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::InvalidMessage { reason, .. } if reason.contains("payload")),
        "{err:?}"
    );
    uow.rollback().await.expect("rollback");

    // The stream goes on.
    append_ok(&store, &id, ExpectedVersion::Exact(1), vec![added(2)]).await;
    assert_eq!(store.stream_version(&id).await.expect("version"), 2);
}

/// A duplicate event id fails the whole append, naming the id; nothing of it is stored.
pub async fn duplicate_event_id_is_refused_and_nothing_is_written<S: EventStore>(store: S) {
    let a = stream("dup-a");
    let b = stream("dup-b");
    let event = added(1);
    let dup_id = event.event_id;
    append_ok(&store, &a, ExpectedVersion::NoStream, vec![event.clone()]).await;
    let err = append_err(&store, &b, ExpectedVersion::NoStream, vec![added(2), event]).await;
    match err {
        StoreError::DuplicateEventId {
            event_id,
            stream_id,
        } => {
            assert_eq!(event_id, dup_id);
            assert_eq!(stream_id, b);
        }
        other => panic!("expected DuplicateEventId, got {other:?}"),
    }
    assert_eq!(
        store.stream_version(&b).await.expect("version"),
        0,
        "half an append was written"
    );
}

/// A large append (more events than one SQLite statement writes) keeps its events in order:
/// versions 1..n, the positions it returned, increasing; a duplicate id deep inside a large
/// append is named and nothing of the append is stored.
pub async fn large_append_keeps_order_and_names_a_late_duplicate<S: EventStore>(store: S) {
    let id = stream("large");
    let events: Vec<NewEvent> = (1..=150).map(added).collect();
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let result = store
        .append(&id, ExpectedVersion::NoStream, events)
        .await
        .expect("a large append");
    assert_eq!((result.previous_version, result.version), (0, 150));
    assert!(
        result.positions.windows(2).all(|w| w[0] < w[1]),
        "positions not increasing"
    );
    let stored = store.read_stream(&id, 1, 1000).await.expect("read");
    assert_eq!(stored.iter().map(|e| e.event_id).collect::<Vec<_>>(), ids);
    assert_eq!(
        stored.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        (1..=150).collect::<Vec<u64>>()
    );
    assert_eq!(
        stored.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        result.positions
    );

    let other = stream("large-dup");
    let mut events: Vec<NewEvent> = (1..=150).map(added).collect();
    events[129].event_id = ids[7];
    match store
        .append(&other, ExpectedVersion::NoStream, events)
        .await
    {
        Err(StoreError::DuplicateEventId {
            event_id,
            stream_id,
        }) => {
            assert_eq!((event_id, stream_id), (ids[7], other.clone()));
        }
        result => panic!("expected DuplicateEventId, got {result:?}"),
    }
    assert_eq!(store.stream_version(&other).await.expect("version"), 0);
}

/// Reading from a version with a limit.
pub async fn read_stream_from_version_with_limit<S: EventStore>(store: S) {
    let id = stream("paged");
    append_ok(
        &store,
        &id,
        ExpectedVersion::NoStream,
        (1..=10).map(added).collect(),
    )
    .await;
    let page = store.read_stream(&id, 4, 3).await.expect("read");
    let versions: Vec<u64> = page.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, vec![4, 5, 6]);
    assert_eq!(
        page[0].source,
        store.source(),
        "an event without a source gets the store's"
    );
    assert!(
        store
            .read_stream(&id, 11, 10)
            .await
            .expect("read")
            .is_empty()
    );
    assert!(
        store
            .read_stream(&stream("missing"), 1, 10)
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        store
            .stream_version(&stream("missing"))
            .await
            .expect("version"),
        0
    );
}

/// A unit of work reads what it wrote before committing; others do not.
pub async fn unit_of_work_sees_its_own_writes<S: EventStore>(store: S) {
    let id = stream("own");
    let mut uow = store.begin().await.expect("begin");
    uow.append(&id, ExpectedVersion::NoStream, vec![added(1)])
        .await
        .expect("append");
    uow.append(&id, ExpectedVersion::Exact(1), vec![added(2)])
        .await
        .expect("second append");
    assert_eq!(uow.stream_version(&id).await.expect("version"), 2);
    assert_eq!(uow.read_stream(&id, 1, 100).await.expect("read").len(), 2);
    uow.commit().await.expect("commit");
    assert_eq!(store.stream_version(&id).await.expect("version"), 2);
}

/// A caller cancelled while its unit of work is starting (a timeout, an aborted task) leaves
/// no connection behind inside a transaction that nobody owns: every later unit of work on
/// every pooled connection starts, and what it commits is visible to other connections.
pub async fn cancelled_begin_leaves_the_store_usable<S: EventStore>(store: S) {
    // Abort tasks at many different points of `begin`, so that some land between the
    // database's `BEGIN` and the moment the unit of work exists.
    for i in 0..400u32 {
        let s = store.clone();
        let task = tokio::spawn(async move {
            let uow = s.begin().await;
            drop(uow);
        });
        let at = std::time::Duration::from_micros(u64::from(i % 50) * 8);
        let started = std::time::Instant::now();
        while started.elapsed() < at {
            tokio::task::yield_now().await;
        }
        task.abort();
        let _ = task.await;
    }
    // Then many concurrent units of work, enough to use every pooled connection.
    let mut tasks = Vec::new();
    for t in 0..16 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..4 {
                let id = stream(&format!("after-cancel-{t}-{n}"));
                let mut uow = s
                    .begin()
                    .await
                    .expect("a unit of work starts after cancellations");
                uow.append(&id, ExpectedVersion::NoStream, vec![added(1)])
                    .await
                    .expect("append");
                uow.commit().await.expect("commit");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    for t in 0..16 {
        for n in 0..4 {
            let id = stream(&format!("after-cancel-{t}-{n}"));
            assert_eq!(
                store.stream_version(&id).await.expect("version"),
                1,
                "{id:?} committed and visible"
            );
        }
    }
}

/// Rolling back drops events, snapshots and command records together.
pub async fn rollback_leaves_nothing_behind<S: EventStore>(store: S) {
    let id = stream("rolled");
    let command_id = Uuid::now_v7();
    let mut uow = store.begin().await.expect("begin");
    uow.append(&id, ExpectedVersion::NoStream, vec![added(1), added(2)])
        .await
        .expect("append");
    uow.save_snapshot(Snapshot {
        stream_id: id.clone(),
        version: 2,
        snapshot_version: 1,
        state: b"{}".to_vec(),
        taken_at: eventfold_core::metadata::now_micros(),
    })
    .await
    .expect("snapshot");
    let recorded = uow
        .record_command(CommandRecord {
            command_id,
            stream_id: id.clone(),
            version_before: 0,
            version_after: 2,
            recorded_at: eventfold_core::metadata::now_micros(),
        })
        .await
        .expect("record");
    assert!(recorded);
    uow.rollback().await.expect("rollback");
    assert_eq!(store.stream_version(&id).await.expect("version"), 0);
    assert!(
        store
            .read_stream(&id, 1, 10)
            .await
            .expect("read")
            .is_empty()
    );
    assert!(store.load_snapshot(&id).await.expect("snapshot").is_none());
    assert!(
        store
            .find_command(command_id)
            .await
            .expect("command")
            .is_none()
    );
    // The stream can still be created afterwards.
    append_ok(&store, &id, ExpectedVersion::NoStream, vec![added(3)]).await;
}

/// Dropping a unit of work without committing rolls it back.
pub async fn dropped_unit_of_work_rolls_back<S: EventStore>(store: S) {
    let id = stream("dropped");
    {
        let mut uow = store.begin().await.expect("begin");
        uow.append(&id, ExpectedVersion::NoStream, vec![added(1)])
            .await
            .expect("append");
    }
    // Give a pooled connection time to be returned and rolled back.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(store.stream_version(&id).await.expect("version"), 0);
    append_ok(&store, &id, ExpectedVersion::NoStream, vec![added(1)]).await;
}

/// The latest snapshot wins; an older one does not replace a newer one.
pub async fn snapshots_keep_the_latest<S: EventStore>(store: S) {
    let id = stream("snap");
    let snap = |version: u64| Snapshot {
        stream_id: id.clone(),
        version,
        snapshot_version: 3,
        state: format!("state-{version}").into_bytes(),
        taken_at: eventfold_core::metadata::now_micros(),
    };
    assert!(store.load_snapshot(&id).await.expect("load").is_none());
    for version in [5, 10, 7] {
        let mut uow = store.begin().await.expect("begin");
        uow.save_snapshot(snap(version)).await.expect("save");
        uow.commit().await.expect("commit");
    }
    let latest = store
        .load_snapshot(&id)
        .await
        .expect("load")
        .expect("a snapshot");
    assert_eq!(latest.version, 10);
    assert_eq!(latest.snapshot_version, 3);
    assert_eq!(latest.state, b"state-10");
}

/// With snapshots on, loading gives the same state as a full replay, and snapshots are taken.
pub async fn repository_snapshot_plus_tail_equals_full_replay<S: EventStore>(store: S) {
    let with = Repository::<Tally, _>::new(store.clone()).with_snapshots(3);
    let without = Repository::<Tally, _>::new(store.clone());
    for n in 1..=10 {
        with.execute("s", &TallyCommand::Add(n), CommandMetadata::new())
            .await
            .expect("execute");
    }
    let snapshot = store
        .load_snapshot(&stream("s"))
        .await
        .expect("load")
        .expect("snapshot taken");
    assert_eq!(
        snapshot.version, 9,
        "a snapshot every 3 events, the last at 9"
    );
    let from_snapshot = with.load("s").await.expect("load");
    let replayed = without.load("s").await.expect("load");
    assert_eq!(from_snapshot.version, 10);
    assert_eq!(from_snapshot.state, replayed.state);
    assert_eq!(replayed.state.total, 55);
}

/// A snapshot written by another state shape (`SNAPSHOT_VERSION`) or that does not decode is
/// ignored, and the stream is replayed.
pub async fn snapshot_with_another_version_is_ignored<S: EventStore>(store: S) {
    let repo = Repository::<Tally, _>::new(store.clone()).with_snapshots(100);
    repo.execute(
        "sv",
        &TallyCommand::AddMany(vec![1, 2, 3]),
        CommandMetadata::new(),
    )
    .await
    .expect("execute");
    let mut uow = store.begin().await.expect("begin");
    uow.save_snapshot(Snapshot {
        stream_id: stream("sv"),
        version: 3,
        snapshot_version: Tally::SNAPSHOT_VERSION + 1,
        state: br#"{"total":999,"applied":3}"#.to_vec(),
        taken_at: eventfold_core::metadata::now_micros(),
    })
    .await
    .expect("save");
    uow.commit().await.expect("commit");
    assert_eq!(repo.load("sv").await.expect("load").state.total, 6);
}

/// Old payloads are upcast when read; history is not rewritten.
pub async fn upcasting_on_read<S: EventStore>(store: S) {
    let id = stream("old");
    append_ok(
        &store,
        &id,
        ExpectedVersion::NoStream,
        vec![
            NewEvent::raw("tally.added", 1, br#"{"amount":4}"#.to_vec()),
            NewEvent::raw("tally.plus", 1, br#"{"amount":5}"#.to_vec()),
            added(6),
        ],
    )
    .await;
    let upcasters = Upcasters::new()
        .json("tally.added", 1, |mut v| {
            let amount = v["amount"].take();
            Ok(serde_json::json!({ "n": amount }))
        })
        .rename("tally.plus", 1, "tally.added", 1);
    let repo = Repository::<Tally, _>::new(store.clone()).with_upcasters(upcasters);
    let loaded = repo.load("old").await.expect("load with upcasters");
    assert_eq!(loaded.state.total, 15);
    let stored = store.read_stream(&id, 1, 1).await.expect("read");
    assert_eq!(stored[0].schema_version, 1, "the stored event is unchanged");
    assert_eq!(stored[0].payload, br#"{"amount":4}"#);
}

/// Unknown types, newer schemas and bad payloads are typed errors naming stream and event.
pub async fn decode_errors_name_stream_and_event<S: EventStore>(store: S) {
    let repo = Repository::<Tally, _>::new(store.clone());
    type Case = (&'static str, NewEvent, fn(&DecodeErrorKind) -> bool);
    let cases: [Case; 4] = [
        (
            "unknown",
            NewEvent::raw("tally.exploded", 1, b"{}".to_vec()),
            |k| matches!(k, DecodeErrorKind::UnknownEventType { event_type } if event_type == "tally.exploded"),
        ),
        (
            "newer",
            NewEvent::raw("tally.added", 3, br#"{"n":1}"#.to_vec()),
            |k| {
                matches!(
                    k,
                    DecodeErrorKind::SchemaTooNew {
                        stored: 3,
                        known: 2,
                        ..
                    }
                )
            },
        ),
        (
            "older",
            NewEvent::raw("tally.added", 1, br#"{"amount":1}"#.to_vec()),
            |k| {
                matches!(
                    k,
                    DecodeErrorKind::MissingUpcaster {
                        stored: 1,
                        known: 2,
                        ..
                    }
                )
            },
        ),
        (
            "garbled",
            NewEvent::raw("tally.added", 2, b"not json".to_vec()),
            |k| matches!(k, DecodeErrorKind::Payload(CodecError::Decode { .. })),
        ),
    ];
    for (name, event, check) in cases {
        let id = stream(name);
        let event_id = event.event_id;
        append_ok(
            &store,
            &id,
            ExpectedVersion::NoStream,
            vec![added(1), event],
        )
        .await;
        let err = repo.load(name).await.expect_err("loading must fail");
        match &err {
            StoreError::Decode(e) => {
                assert_eq!(e.stream_id, id);
                assert_eq!(e.event_id, event_id);
                assert_eq!(e.stream_version, 2);
                assert!(check(&e.kind), "{name}: unexpected kind {:?}", e.kind);
                let message = err.to_string();
                assert!(
                    message.contains(&event_id.to_string()) && message.contains(&id.to_string()),
                    "{message}"
                );
            }
            other => panic!("{name}: expected a decode error, got {other:?}"),
        }
        // A command on that stream fails the same way and writes nothing.
        let err = repo
            .execute(name, &TallyCommand::Add(1), CommandMetadata::new())
            .await
            .expect_err("must fail");
        assert!(
            matches!(err, ExecuteError::Store(StoreError::Decode(_))),
            "{err:?}"
        );
        assert_eq!(store.stream_version(&id).await.expect("version"), 2);
    }
}

/// Global positions grow with every append, across streams.
pub async fn global_positions_increase<S: EventStore>(store: S) {
    let mut last = 0;
    for i in 0..5 {
        let id = stream(&format!("pos-{}", i % 2));
        let result = store
            .append(&id, ExpectedVersion::Any, vec![added(1), added(2)])
            .await
            .expect("append");
        for p in result.positions {
            assert!(p > last, "position {p} after {last}");
            last = p;
        }
    }
}
