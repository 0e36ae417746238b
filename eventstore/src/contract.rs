//! The backend contract suite (feature `test-util`): one definition of the event store's
//! behaviour, run against every backend.
//!
//! Each function takes a fresh, empty store and panics (with a message) when the backend breaks
//! the contract. [`crate::eventstore_contract_tests!`] turns the whole suite into `#[tokio::test]`
//! functions for one backend; a third-party backend can run it too:
//!
//! ```text
//! async fn fresh() -> (MyStore, ()) { (MyStore::new(), ()) }
//! eventfold_eventstore::eventstore_contract_tests!(fresh);
//! ```

use eventfold_core::{
    Aggregate, CodecError, CommandMetadata, DecodeErrorKind, Event, EventTypeInfo, Headers,
    NewEvent, StreamId, Upcasters,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{ExecuteError, ExpectedVersion, StoreError};
use crate::log::{Checkpoint, LogFilter};
use crate::outbox::{OUTBOX_SLOTS, OutboxRelayStore, OutboxRouting};
use crate::repository::Repository;
use crate::store::{CommandRecord, EventStore, Snapshot, UnitOfWork};

/// Runs the whole contract as one `#[tokio::test]` per rule. `$fresh` is an async fn returning
/// `(store, guard)`; the guard (for example a test database) lives until the test ends.
#[macro_export]
macro_rules! eventstore_contract_tests {
    ($fresh:path) => {
        $crate::eventstore_contract_tests!(@tests $fresh;
            append_and_read_round_trip_keeps_all_metadata,
            expected_version_rules,
            empty_append_is_refused,
            duplicate_event_id_is_refused_and_nothing_is_written,
            read_stream_from_version_with_limit,
            unit_of_work_sees_its_own_writes,
            rollback_leaves_nothing_behind,
            dropped_unit_of_work_rolls_back,
            cancelled_begin_leaves_the_store_usable,
            snapshots_keep_the_latest,
            repository_snapshot_plus_tail_equals_full_replay,
            snapshot_with_another_version_is_ignored,
            upcasting_on_read,
            decode_errors_name_stream_and_event,
            idempotent_commands_append_once,
            concurrent_duplicates_of_a_command_append_once,
            command_id_reused_on_another_stream_is_refused,
            repository_reports_conflicts_and_retries,
            rejected_command_writes_nothing,
            global_positions_increase,
            state_cache_survives_writers_it_does_not_know,
            log_reads_every_committed_event_in_order,
            log_filters_skip_over_other_events,
            log_never_shows_rolled_back_events,
            subscription_catches_up_then_follows_live_appends,
            subscription_resumes_from_a_stored_checkpoint,
            outbox_rows_commit_with_their_events_or_not_at_all,
            concurrent_appends_write_outbox_rows_in_version_order,
            relay_claims_one_due_row_per_key_and_parks_what_fails,
            relay_leases_split_the_slots_and_fence_completion,
            inbox_marks_a_message_once_per_consumer,
            projection_checkpoints_commit_with_the_unit_of_work,
        );
    };
    (@tests $fresh:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = $fresh().await;
                $crate::contract::$name(store).await;
            }
        )*
    };
}

/// The events of the contract's test aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TallyEvent {
    /// `tally.added` (version 2: v1 had `amount` instead of `n`).
    Added {
        /// How much.
        n: u64,
    },
    /// `tally.reset`.
    Reset,
}

#[derive(Serialize, Deserialize)]
struct AddedPayload {
    n: u64,
}

impl Event for TallyEvent {
    const CONTENT_TYPE: &'static str = "application/json";

    fn event_type(&self) -> &'static str {
        match self {
            TallyEvent::Added { .. } => "tally.added",
            TallyEvent::Reset => "tally.reset",
        }
    }

    fn schema_version(&self) -> u32 {
        match self {
            TallyEvent::Added { .. } => 2,
            TallyEvent::Reset => 1,
        }
    }

    fn event_types() -> &'static [EventTypeInfo] {
        &[
            EventTypeInfo {
                name: "tally.added",
                version: 2,
                variant: "Added",
            },
            EventTypeInfo {
                name: "tally.reset",
                version: 1,
                variant: "Reset",
            },
        ]
    }

    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        match self {
            TallyEvent::Added { n } => {
                eventfold_core::codec::json::encode("tally.added", &AddedPayload { n: *n })
            }
            TallyEvent::Reset => Ok(b"{}".to_vec()),
        }
    }

    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, CodecError> {
        match event_type {
            "tally.added" => {
                let p: AddedPayload = eventfold_core::codec::json::decode(event_type, payload)?;
                Ok(TallyEvent::Added { n: p.n })
            }
            "tally.reset" => Ok(TallyEvent::Reset),
            other => Err(CodecError::UnknownEventType {
                event_type: other.to_owned(),
            }),
        }
    }
}

/// The contract's test aggregate: a running total with a cap.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// The total.
    pub total: u64,
    /// Events applied.
    pub applied: u64,
}

/// Commands of [`Tally`].
#[derive(Debug, Clone)]
pub enum TallyCommand {
    /// Add `n` (rejected above a total of 1000).
    Add(u64),
    /// Add each of these as its own event.
    AddMany(Vec<u64>),
    /// Reset to zero.
    Reset,
}

/// The domain error of [`Tally`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the total would exceed 1000")]
pub struct OverCap;

impl Aggregate for Tally {
    const TYPE: &'static str = "tally";
    type Command = TallyCommand;
    type Event = TallyEvent;
    type Error = OverCap;

    fn handle(&self, command: &TallyCommand) -> Result<Vec<TallyEvent>, OverCap> {
        match command {
            TallyCommand::Add(n) if self.total + n > 1000 => Err(OverCap),
            TallyCommand::Add(n) => Ok(vec![TallyEvent::Added { n: *n }]),
            TallyCommand::AddMany(ns) => {
                Ok(ns.iter().map(|n| TallyEvent::Added { n: *n }).collect())
            }
            TallyCommand::Reset => Ok(vec![TallyEvent::Reset]),
        }
    }

    fn apply(&mut self, event: &TallyEvent) {
        self.applied += 1;
        match event {
            TallyEvent::Added { n } => self.total += n,
            TallyEvent::Reset => self.total = 0,
        }
    }
}

fn stream(id: &str) -> StreamId {
    StreamId::new("tally", id).expect("valid stream id")
}

fn added(n: u64) -> NewEvent {
    NewEvent::raw("tally.added", 2, format!(r#"{{"n":{n}}}"#).into_bytes())
}

async fn append_ok<S: EventStore>(
    store: &S,
    id: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) {
    store
        .append(id, expected, events)
        .await
        .expect("append should succeed");
}

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
    let err = store
        .append(&id, ExpectedVersion::Exact(3), vec![added(1)])
        .await
        .unwrap_err();
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
    let err = store
        .append(&id, ExpectedVersion::NoStream, vec![added(1)])
        .await
        .unwrap_err();
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
    let err = store
        .append(&id, ExpectedVersion::Exact(5), vec![added(1)])
        .await
        .unwrap_err();
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
    let err = store
        .append(&id, ExpectedVersion::Any, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::EmptyAppend { .. }), "{err:?}");
    assert!(err.to_string().contains("tally-empty"));
    let mut bad = added(1);
    bad.schema_version = 0;
    let err = store
        .append(&id, ExpectedVersion::Any, vec![bad])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidEvent { .. }), "{err:?}");
    assert_eq!(store.stream_version(&id).await.expect("version"), 0);
}

/// A duplicate event id fails the whole append, naming the id; nothing of it is stored.
pub async fn duplicate_event_id_is_refused_and_nothing_is_written<S: EventStore>(store: S) {
    let a = stream("dup-a");
    let b = stream("dup-b");
    let event = added(1);
    let dup_id = event.event_id;
    append_ok(&store, &a, ExpectedVersion::NoStream, vec![event.clone()]).await;
    let err = store
        .append(&b, ExpectedVersion::NoStream, vec![added(2), event])
        .await
        .unwrap_err();
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

/// Executing the same command id twice appends once and returns the first result.
pub async fn idempotent_commands_append_once<S: EventStore>(store: S) {
    let repo = Repository::<Tally, _>::new(store.clone());
    let command_id = Uuid::now_v7();
    let meta = CommandMetadata::new().command_id(command_id);
    let first = repo
        .execute("idem", &TallyCommand::AddMany(vec![1, 2]), meta.clone())
        .await
        .expect("first");
    repo.execute("idem", &TallyCommand::Add(10), CommandMetadata::new())
        .await
        .expect("other");
    let again = repo
        .execute("idem", &TallyCommand::AddMany(vec![1, 2]), meta)
        .await
        .expect("second");
    assert!(!first.deduplicated);
    assert!(again.deduplicated);
    assert_eq!(again.version, first.version);
    assert_eq!(
        again.state, first.state,
        "the state right after the first execution"
    );
    let ids = |e: &[eventfold_core::Envelope<TallyEvent>]| {
        e.iter().map(|e| e.event_id).collect::<Vec<_>>()
    };
    assert_eq!(ids(&again.events), ids(&first.events));
    assert_eq!(again.events[1].payload, TallyEvent::Added { n: 2 });
    assert_eq!(
        store
            .stream_version(&stream("idem"))
            .await
            .expect("version"),
        3
    );
    let record = store
        .find_command(command_id)
        .await
        .expect("find")
        .expect("recorded");
    assert_eq!((record.version_before, record.version_after), (0, 2));
    assert_eq!(
        first.events[0].correlation_id, command_id,
        "correlation defaults to the command id"
    );
    assert_eq!(first.events[0].causation_id, Some(command_id));
}

/// The same command sent by 8 tasks at once is appended once; every task gets its result.
pub async fn concurrent_duplicates_of_a_command_append_once<S: EventStore>(store: S) {
    let repo = Repository::<Tally, _>::new(store.clone()).with_max_attempts(10);
    let meta = CommandMetadata::new().command_id(Uuid::now_v7());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (repo, meta) = (repo.clone(), meta.clone());
        tasks.push(tokio::spawn(async move {
            repo.execute("dup", &TallyCommand::AddMany(vec![3, 4]), meta)
                .await
        }));
    }
    let mut ids = Vec::new();
    let mut fresh = 0;
    for task in tasks {
        let done = task.await.expect("task").expect("every duplicate succeeds");
        fresh += usize::from(!done.deduplicated);
        assert_eq!(done.version, 2);
        assert_eq!(done.state.total, 7);
        ids.push(done.events.iter().map(|e| e.event_id).collect::<Vec<_>>());
    }
    assert_eq!(fresh, 1, "exactly one execution appended");
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "all got the same events"
    );
    assert_eq!(
        store.stream_version(&stream("dup")).await.expect("version"),
        2
    );
}

/// A command id may not be replayed against another stream.
pub async fn command_id_reused_on_another_stream_is_refused<S: EventStore>(store: S) {
    let repo = Repository::<Tally, _>::new(store.clone());
    let meta = CommandMetadata::new().command_id(Uuid::now_v7());
    repo.execute("one", &TallyCommand::Add(1), meta.clone())
        .await
        .expect("first");
    let err = repo
        .execute("two", &TallyCommand::Add(1), meta)
        .await
        .expect_err("reuse");
    assert!(
        matches!(err, ExecuteError::Store(StoreError::CommandIdReused { .. })),
        "{err:?}"
    );
    assert_eq!(
        store.stream_version(&stream("two")).await.expect("version"),
        0
    );
}

/// A stream changed between load and append is a conflict; with attempts left it is retried.
pub async fn repository_reports_conflicts_and_retries<S: EventStore>(store: S) {
    let repo = Repository::<Tally, _>::new(store.clone()).with_max_attempts(1);
    repo.execute("race", &TallyCommand::Add(1), CommandMetadata::new())
        .await
        .expect("first");
    // Two units of work load version 1; the second to append loses.
    let mut a = store.begin().await.expect("begin");
    let outcome_a = repo
        .execute_in(
            &mut a,
            "race",
            &TallyCommand::Add(2),
            CommandMetadata::new(),
        )
        .await;
    assert!(outcome_a.is_ok());
    a.commit().await.expect("commit a");
    let mut b = store.begin().await.expect("begin");
    b.append(&stream("race"), ExpectedVersion::Exact(1), vec![added(3)])
        .await
        .expect_err("stale expected version");
    let _ = b.rollback().await;
    let err = store
        .append(&stream("race"), ExpectedVersion::Exact(1), vec![added(3)])
        .await
        .expect_err("conflict");
    assert!(err.is_conflict());
    assert_eq!(repo.load("race").await.expect("load").state.total, 3);
    let retrying = Repository::<Tally, _>::new(store.clone()).with_max_attempts(5);
    let done = retrying
        .execute("race", &TallyCommand::Add(4), CommandMetadata::new())
        .await
        .expect("retry");
    assert_eq!(done.state.total, 7);
    assert_eq!(done.version, 3);
}

/// A domain error is returned as `Rejected` and nothing is written.
pub async fn rejected_command_writes_nothing<S: EventStore>(store: S) {
    let repo = Repository::<Tally, _>::new(store.clone());
    repo.execute("cap", &TallyCommand::Add(1000), CommandMetadata::new())
        .await
        .expect("fits");
    let err = repo
        .execute(
            "cap",
            &TallyCommand::Add(1),
            CommandMetadata::new().command_id(Uuid::now_v7()),
        )
        .await
        .expect_err("over the cap");
    match err {
        ExecuteError::Rejected { source, stream_id } => {
            assert_eq!(source, OverCap);
            assert_eq!(stream_id, stream("cap"));
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(
        store.stream_version(&stream("cap")).await.expect("version"),
        1
    );
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

/// A cached state made stale by another writer costs a conflict and a reload, never a lost
/// update; with no attempt left the conflict is reported and the next command succeeds.
pub async fn state_cache_survives_writers_it_does_not_know<S: EventStore>(store: S) {
    let cached = Repository::<Tally, _>::new(store.clone()).with_cache(16);
    let other = Repository::<Tally, _>::new(store.clone());
    cached
        .execute("c", &TallyCommand::Add(1), CommandMetadata::new())
        .await
        .expect("first");
    other
        .execute("c", &TallyCommand::Add(10), CommandMetadata::new())
        .await
        .expect("other writer");
    let done = cached
        .execute("c", &TallyCommand::Add(100), CommandMetadata::new())
        .await
        .expect("retried");
    assert_eq!((done.state.total, done.version), (111, 3));
    other
        .execute("c", &TallyCommand::Add(1000 - 111), CommandMetadata::new())
        .await
        .expect("other writer");
    let strict = cached.clone().with_max_attempts(1);
    let err = strict
        .execute("c", &TallyCommand::Reset, CommandMetadata::new())
        .await
        .expect_err("stale cache, one attempt");
    assert!(
        matches!(err, ExecuteError::Conflict { attempts: 1, .. }),
        "{err:?}"
    );
    // The stale entry was dropped: the cap is now enforced from the real state.
    let err = strict
        .execute("c", &TallyCommand::Add(1), CommandMetadata::new())
        .await
        .expect_err("cap");
    assert!(matches!(err, ExecuteError::Rejected { .. }), "{err:?}");
    let done = cached
        .execute("c", &TallyCommand::Reset, CommandMetadata::new())
        .await
        .expect("reset");
    assert_eq!((done.state.total, done.version), (0, 5));
    assert_eq!(other.load("c").await.expect("load").state, done.state);
}

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

/// Outbox rows are written in the same transaction as their events and the application's own
/// messages: a rollback leaves none, a commit leaves all, in stream order, with Debezium columns
/// and CloudEvents headers.
pub async fn outbox_rows_commit_with_their_events_or_not_at_all<S: OutboxRelayStore>(store: S) {
    use eventfold_core::OutboxMessage;
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
    uow.enqueue(vec![OutboxMessage::new(
        "billing",
        "customer-1",
        "billing.requested",
        b"{}".to_vec(),
    )])
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
    uow.enqueue(vec![OutboxMessage::new(
        "billing",
        "customer-1",
        "billing.requested",
        b"{}".to_vec(),
    )])
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

/// A claim holds at most the first due row of each key, in `seq` order; a failed row delays its
/// key, a parked row blocks its key until it is retried (same place) or skipped.
pub async fn relay_claims_one_due_row_per_key_and_parks_what_fails<S: OutboxRelayStore>(store: S) {
    let store = store.with_outbox(OutboxRouting::new());
    let owner = Uuid::now_v7();
    let ttl = std::time::Duration::from_secs(30);
    store
        .append(
            &stream("a"),
            ExpectedVersion::NoStream,
            vec![added(1), added(2), added(3)],
        )
        .await
        .expect("append a");
    store
        .append(
            &stream("b"),
            ExpectedVersion::NoStream,
            vec![added(4), added(5)],
        )
        .await
        .expect("append b");
    let slots = store.lease_slots(owner, ttl).await.expect("lease");
    assert_eq!(
        slots.len(),
        OUTBOX_SLOTS as usize,
        "a lone relay leases every slot"
    );
    let versions = |rows: &[crate::OutboxRow]| {
        rows.iter()
            .map(|r| {
                format!(
                    "{}{}",
                    r.message.key,
                    r.message.headers[eventfold_core::outbox::headers::STREAM_VERSION]
                )
            })
            .collect::<Vec<_>>()
    };
    let first = store.claim_outbox(&slots, 10, &[]).await.expect("claim");
    assert_eq!(
        versions(&first),
        vec!["a1", "b1"],
        "one row per key, oldest first"
    );
    let seqs: Vec<u64> = first.iter().map(|r| r.seq).collect();
    assert_eq!(
        store.complete_outbox(owner, &seqs).await.expect("complete"),
        2
    );

    let second = store.claim_outbox(&slots, 10, &[]).await.expect("claim");
    assert_eq!(versions(&second), vec!["a2", "b2"]);
    // Keys in flight (a row claimed, still being published): they wait, and their rows do
    // not take room in the window (of 1 row here: b2, not a2).
    let (key_a, key_b) = (
        second[0].message.key.as_str(),
        second[1].message.key.as_str(),
    );
    let beside = store
        .claim_outbox(&slots, 1, &[key_a])
        .await
        .expect("claim beside a row in flight");
    assert_eq!(versions(&beside), vec!["b2"], "a3 waits for a2 in flight");
    // Keys in flight that have no row left change nothing.
    let gone = store
        .claim_outbox(&slots, 1, &["no such key", "nor this one"])
        .await
        .expect("claim");
    assert_eq!(versions(&gone), vec!["a2"], "at most `limit` rows");
    assert!(
        store
            .claim_outbox(&slots, 10, &[key_a, key_b])
            .await
            .expect("claim")
            .is_empty(),
        "every key has a row in flight"
    );
    // a2 fails: key a waits (b goes on); its later row a3 is not claimed either.
    store
        .fail_outbox(
            second[0].seq,
            "broker timeout",
            std::time::Duration::from_secs(3600),
        )
        .await
        .expect("fail");
    let third = store.claim_outbox(&slots, 10, &[]).await.expect("claim");
    assert_eq!(versions(&third), vec!["b2"]);
    store
        .complete_outbox(owner, &[third[0].seq])
        .await
        .expect("complete");
    let failed = &store.read_outbox(10).await.expect("read")[0];
    assert_eq!(
        (failed.attempts, failed.last_error.as_deref()),
        (1, Some("broker timeout"))
    );
    assert!(failed.next_attempt_at.is_some());

    // Parked: key a is blocked until an operator acts.
    store
        .park_outbox(second[0].seq, "message too large")
        .await
        .expect("park");
    assert!(
        store
            .claim_outbox(&slots, 10, &[])
            .await
            .expect("claim")
            .is_empty()
    );
    let dead = store.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].row.seq, dead[0].error.as_str()),
        (second[0].seq, "message too large")
    );
    assert_eq!(store.outbox_status().await.expect("status").dead_letters, 1);

    // Retried: it comes back first, in its place.
    assert!(store.retry_dead_letter(second[0].seq).await.expect("retry"));
    assert!(
        !store
            .retry_dead_letter(second[0].seq)
            .await
            .expect("retry again")
    );
    let again = store.claim_outbox(&slots, 10, &[]).await.expect("claim");
    assert_eq!(versions(&again), vec!["a2"]);
    assert_eq!((again[0].seq, again[0].attempts), (second[0].seq, 0));

    // Skipped: the key flows on with its next row.
    store
        .park_outbox(again[0].seq, "still too large")
        .await
        .expect("park");
    assert!(store.skip_dead_letter(again[0].seq).await.expect("skip"));
    let last = store.claim_outbox(&slots, 10, &[]).await.expect("claim");
    assert_eq!(versions(&last), vec!["a3"]);
    assert!(store.dead_letters(10).await.expect("dead").is_empty());
}

/// Live relays split the slots between them; a relay that leaves (or dies) gives its slots to
/// the others; completion only deletes rows of slots the relay still leases.
pub async fn relay_leases_split_the_slots_and_fence_completion<S: OutboxRelayStore>(store: S) {
    let store = store.with_outbox(OutboxRouting::new());
    let ttl = std::time::Duration::from_secs(30);
    let (one, two) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(
        store.lease_slots(one, ttl).await.expect("lease").len(),
        OUTBOX_SLOTS as usize
    );
    assert!(
        store.lease_slots(two, ttl).await.expect("lease").is_empty(),
        "all slots are taken"
    );
    let kept = store.lease_slots(one, ttl).await.expect("lease");
    assert_eq!(
        kept.len(),
        OUTBOX_SLOTS as usize / 2,
        "two live relays: half each"
    );
    let taken = store.lease_slots(two, ttl).await.expect("lease");
    assert_eq!(taken.len(), OUTBOX_SLOTS as usize / 2);
    assert!(
        kept.iter().all(|s| !taken.contains(s)),
        "no slot has two owners"
    );

    store
        .append(&stream("fenced"), ExpectedVersion::NoStream, vec![added(1)])
        .await
        .expect("append");
    let row = store.read_outbox(1).await.expect("read").remove(0);
    let (holder, other) = if kept.contains(&row.slot) {
        (one, two)
    } else {
        (two, one)
    };
    assert_eq!(
        store
            .complete_outbox(other, &[row.seq])
            .await
            .expect("complete"),
        0,
        "not its slot"
    );
    assert_eq!(store.outbox_status().await.expect("status").pending, 1);

    store.release_slots(holder).await.expect("release");
    let all = store.lease_slots(other, ttl).await.expect("lease");
    assert_eq!(
        all.len(),
        OUTBOX_SLOTS as usize,
        "the remaining relay takes over"
    );
    assert_eq!(
        store
            .complete_outbox(other, &[row.seq])
            .await
            .expect("complete"),
        1
    );
    assert_eq!(store.outbox_status().await.expect("status").pending, 0);

    // A lease that expired fences too, even with no other relay around: the row stays.
    store
        .append(&stream("fenced"), ExpectedVersion::Exact(1), vec![added(2)])
        .await
        .expect("append");
    let row = store.read_outbox(1).await.expect("read").remove(0);
    store
        .lease_slots(other, std::time::Duration::from_millis(100))
        .await
        .expect("lease briefly");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        store
            .complete_outbox(other, &[row.seq])
            .await
            .expect("complete"),
        0,
        "the lease expired"
    );
    assert_eq!(store.outbox_status().await.expect("status").pending, 1);
}

/// The inbox mark commits or rolls back with the unit of work; a second mark of the same message
/// by the same consumer is refused, by another consumer accepted; parking marks too.
pub async fn inbox_marks_a_message_once_per_consumer<S: crate::InboxStore>(store: S) {
    let message = Uuid::now_v7();
    let mut uow = store.begin().await.expect("begin");
    assert!(uow.mark_inbox("billing", message).await.expect("mark"));
    assert!(
        !uow.mark_inbox("billing", message)
            .await
            .expect("mark twice in one unit of work")
    );
    uow.rollback().await.expect("rollback");
    let mut uow = store.begin().await.expect("begin");
    assert!(
        uow.mark_inbox("billing", message)
            .await
            .expect("mark after a rollback")
    );
    uow.commit().await.expect("commit");
    let mut uow = store.begin().await.expect("begin");
    assert!(
        !uow.mark_inbox("billing", message).await.expect("duplicate"),
        "a duplicate is recognised"
    );
    assert!(
        uow.mark_inbox("shipping", message)
            .await
            .expect("other consumer"),
        "consumers are independent"
    );
    uow.commit().await.expect("commit");

    let poison = Uuid::now_v7();
    let mut headers = eventfold_core::Headers::new();
    headers.insert("ce_type".into(), "order.placed".into());
    store
        .park_message(crate::ParkedMessage {
            consumer: "billing".into(),
            message_id: poison,
            topic: "orders".into(),
            partition: 2,
            offset: 41,
            key: "o-1".into(),
            message_type: "order.placed".into(),
            payload: b"not what the handler expects".to_vec(),
            headers,
            attempts: 3,
            error: "missing field `total`".into(),
            parked_at: eventfold_core::metadata::now_micros(),
        })
        .await
        .expect("park");
    let parked = store.parked_messages("billing", 10).await.expect("parked");
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (parked[0].message_id, parked[0].offset, parked[0].attempts),
        (poison, 41, 3)
    );
    assert_eq!(parked[0].error, "missing field `total`");
    assert_eq!(parked[0].headers["ce_type"], "order.placed");
    assert!(
        store
            .parked_messages("shipping", 10)
            .await
            .expect("parked")
            .is_empty()
    );
    let mut uow = store.begin().await.expect("begin");
    assert!(
        !uow.mark_inbox("billing", poison).await.expect("mark"),
        "a parked message counts as processed"
    );
    uow.rollback().await.expect("rollback");
}

/// Projection bookkeeping: checkpoints move only when their unit of work commits; generations,
/// builds, pause, reset requests and parked events are kept per projection.
pub async fn projection_checkpoints_commit_with_the_unit_of_work<S: crate::ProjectionStore>(
    store: S,
) {
    let stream = StreamId::new("tally", "p-1").expect("stream id");
    let appended = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![
                NewEvent::raw("tally.reset", 1, b"{}".to_vec()),
                NewEvent::raw("tally.reset", 1, b"{}".to_vec()),
            ],
        )
        .await
        .expect("append");
    // On PostgreSQL a transaction of another database may hold the log back for a moment.
    let mut batch = store
        .read_log(Checkpoint::START, 10, &LogFilter::all())
        .await
        .expect("read");
    for _ in 0..500 {
        if batch.events.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        batch = store
            .read_log(Checkpoint::START, 10, &LogFilter::all())
            .await
            .expect("read");
    }
    assert_eq!(batch.events.len(), 2, "both events are readable");
    let first = batch.events[0].checkpoint;
    assert_eq!(
        store
            .checkpoint_at(appended.positions[0])
            .await
            .expect("checkpoint at"),
        Some(first),
        "the checkpoint after an event is found by its position"
    );
    assert_eq!(store.checkpoint_at(999_999).await.expect("none"), None);
    assert!(
        store
            .projection_state("orders")
            .await
            .expect("state")
            .is_none()
    );

    let mut uow = store.begin().await.expect("begin");
    assert!(
        store
            .create_projection(&mut uow, "orders", 1)
            .await
            .expect("create")
    );
    assert!(
        !store
            .create_projection(&mut uow, "orders", 1)
            .await
            .expect("again")
    );
    uow.commit().await.expect("commit");
    let state = store
        .projection_state("orders")
        .await
        .expect("state")
        .expect("exists");
    assert_eq!(
        (
            state.generation,
            state.version,
            state.checkpoint,
            state.position
        ),
        (1, 1, Checkpoint::START, 0)
    );
    assert!(!state.paused && !state.reset_requested && state.building.is_none());

    // A rolled-back checkpoint does not move.
    let mut uow = store.begin().await.expect("begin");
    let locked = store
        .lock_projection_checkpoint(&mut uow, "orders", 1)
        .await
        .expect("lock")
        .expect("row");
    assert_eq!(
        (locked.active_generation, locked.checkpoint),
        (1, Checkpoint::START)
    );
    store
        .save_projection_checkpoint(&mut uow, "orders", 1, first, appended.positions[0])
        .await
        .expect("save");
    uow.rollback().await.expect("rollback");
    assert_eq!(
        store
            .projection_state("orders")
            .await
            .expect("state")
            .expect("exists")
            .checkpoint,
        Checkpoint::START
    );
    let mut uow = store.begin().await.expect("begin");
    store
        .save_projection_checkpoint(&mut uow, "orders", 1, first, appended.positions[0])
        .await
        .expect("save");
    uow.commit().await.expect("commit");
    let state = store
        .projection_state("orders")
        .await
        .expect("state")
        .expect("exists");
    assert_eq!(
        (state.checkpoint, state.position),
        (first, appended.positions[0])
    );

    // Pause, reset requests, status.
    assert!(
        store
            .set_projection_paused("orders", true)
            .await
            .expect("pause")
    );
    assert!(
        !store
            .set_projection_paused("nope", true)
            .await
            .expect("pause unknown")
    );
    assert!(
        store
            .request_projection_reset("orders")
            .await
            .expect("reset")
    );
    assert!(
        store
            .set_projection_status("orders", "failed", Some("boom"))
            .await
            .expect("status")
    );
    let state = store
        .projection_state("orders")
        .await
        .expect("state")
        .expect("exists");
    assert!(state.paused && state.reset_requested);
    assert_eq!(
        (state.status.as_str(), state.last_error.as_deref()),
        ("failed", Some("boom"))
    );

    // Parking moves the checkpoint in the same unit of work.
    let poison = &batch.events[1];
    let mut uow = store.begin().await.expect("begin");
    store
        .park_projection_event(
            &mut uow,
            crate::ParkedEvent {
                projection: "orders".into(),
                generation: 1,
                event_id: poison.event.event_id,
                global_position: poison.event.global_position,
                stream_id: poison.event.stream_id.to_string(),
                event_type: poison.event.event_type.clone(),
                error: "bad payload".into(),
                parked_at: eventfold_core::metadata::now_micros(),
            },
        )
        .await
        .expect("park");
    store
        .save_projection_checkpoint(
            &mut uow,
            "orders",
            1,
            poison.checkpoint,
            poison.event.global_position,
        )
        .await
        .expect("save");
    uow.commit().await.expect("commit");
    let parked = store
        .parked_projection_events("orders", 10)
        .await
        .expect("parked");
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (parked[0].event_id, parked[0].error.as_str()),
        (poison.event.event_id, "bad payload")
    );
    assert_eq!(
        store
            .projection_state("orders")
            .await
            .expect("state")
            .expect("exists")
            .parked,
        1
    );

    // A build generation, then the switch.
    let mut uow = store.begin().await.expect("begin");
    assert!(
        store
            .lock_projection(&mut uow, "orders")
            .await
            .expect("lock")
            .is_some()
    );
    store
        .start_projection_generation(&mut uow, "orders", 2, 2)
        .await
        .expect("start");
    uow.commit().await.expect("commit");
    let state = store
        .projection_state("orders")
        .await
        .expect("state")
        .expect("exists");
    let building = state.building.expect("a build in progress");
    assert_eq!(
        (building.generation, building.version, building.checkpoint),
        (2, 2, Checkpoint::START)
    );
    let mut uow = store.begin().await.expect("begin");
    let locked = store
        .lock_projection_checkpoint(&mut uow, "orders", 2)
        .await
        .expect("lock")
        .expect("row");
    assert_eq!((locked.active_generation, locked.version), (1, 2));
    store
        .activate_projection_generation(&mut uow, "orders", 2)
        .await
        .expect("activate");
    uow.commit().await.expect("commit");
    let state = store
        .projection_state("orders")
        .await
        .expect("state")
        .expect("exists");
    assert_eq!((state.generation, state.version, state.parked), (2, 2, 0));
    assert!(state.building.is_none() && !state.reset_requested);
    let mut uow = store.begin().await.expect("begin");
    assert_eq!(
        store
            .old_projection_generations(&mut uow, "orders")
            .await
            .expect("old"),
        vec![1]
    );
    store
        .remove_projection_generation(&mut uow, "orders", 1)
        .await
        .expect("remove");
    assert!(
        store
            .old_projection_generations(&mut uow, "orders")
            .await
            .expect("old")
            .is_empty()
    );
    uow.commit().await.expect("commit");
    assert_eq!(store.projection_states().await.expect("states").len(), 1);
}
