//! The transactional outbox: rows written in the same transaction as their events and the
//! application's own messages, routed by [`OutboxRouting`], in each stream's version order, with
//! Debezium columns and CloudEvents headers.

use eventfold_core::{CommandMetadata, NewEvent, OutboxMessage};
use uuid::Uuid;

use super::{Tally, TallyCommand, added, billing_request, stream};
use crate::error::{ExpectedVersion, StoreError};
use crate::outbox::{OUTBOX_SLOTS, OutboxRelayStore, OutboxRouting};
use crate::repository::Repository;
use crate::store::UnitOfWork;

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
