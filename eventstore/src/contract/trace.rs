//! The trace of a flow: everything a store recorded with one correlation id comes back, and
//! nothing else (other flows, messages without a correlation, rolled-back writes).

use std::time::Duration;

use eventfold_core::outbox::headers;
use eventfold_core::trace::{TraceKind, TraceRecord};
use eventfold_core::{Headers, NewEvent, OutboxMessage, StreamId};
use uuid::Uuid;

use crate::error::ExpectedVersion;
use crate::inbox::{InboxStore, ParkedMessage};
use crate::outbox::{OutboxRelayStore, OutboxRouting};
use crate::saga::{SagaStore, SagaTimer};
use crate::store::UnitOfWork;
use crate::trace::{InboxEntry, TraceStore};

/// The headers of a message of flow `flow` caused by `cause`, sent by `source`.
fn flow_headers(flow: Uuid, cause: Uuid, source: &str) -> Headers {
    let mut h = Headers::new();
    h.insert(headers::CORRELATION_ID.into(), flow.to_string());
    h.insert(headers::CAUSATION_ID.into(), cause.to_string());
    h.insert(headers::SOURCE.into(), source.into());
    h
}

fn event_of(flow: Uuid, causation: Option<Uuid>, event_type: &str) -> NewEvent {
    let mut e = NewEvent::raw(event_type, 1, b"{}".to_vec());
    e.correlation_id = flow;
    e.causation_id = causation;
    e.source = "orders".into();
    e
}

fn find(records: &[TraceRecord], kind: TraceKind, id: Uuid) -> &TraceRecord {
    records
        .iter()
        .find(|r| r.kind == kind && r.id == id)
        .unwrap_or_else(|| panic!("no {kind:?} record {id} in the trace: {records:#?}"))
}

/// Events, sent messages (journaled when they carry a correlation id), received messages (the
/// inbox keeps their metadata), parked messages, dead letters and pending saga timers of one
/// flow are read back with their causation, service and subject; other flows, messages without
/// a correlation id and rolled-back writes are not.
pub async fn trace_reads_every_record_of_a_flow<S>(store: S)
where
    S: TraceStore + InboxStore + OutboxRelayStore + SagaStore,
{
    // Events are routed to the outbox too: their messages are not journaled (the event is the
    // record), only messages enqueued by the application are.
    let store = store.with_outbox(OutboxRouting::new());
    let flow = Uuid::now_v7();
    let other = Uuid::now_v7();
    let order = StreamId::new("order", "t-1").expect("stream id");

    // The order is placed; it sends a command of the flow and an unrelated message.
    let placed = event_of(flow, None, "order.placed");
    let placed_id = placed.event_id;
    // Its own key: the relay claims one row per key at a time, and the event's row is first.
    let charge = OutboxMessage::new("payments", "pay-1", "payment.charge", b"{}".to_vec());
    let charge = OutboxMessage {
        headers: charge
            .headers
            .into_iter()
            .chain(flow_headers(flow, placed_id, "orders"))
            .collect(),
        ..charge
    };
    let unrelated = OutboxMessage::new("audit", "t-1", "audit.noted", b"{}".to_vec());
    let mut uow = store.begin().await.expect("begin");
    uow.append(&order, ExpectedVersion::NoStream, vec![placed])
        .await
        .expect("append");
    uow.enqueue(vec![charge.clone(), unrelated.clone()])
        .await
        .expect("enqueue");
    uow.append(
        &StreamId::new("order", "t-2").expect("stream id"),
        ExpectedVersion::NoStream,
        vec![event_of(other, None, "order.placed")],
    )
    .await
    .expect("append of another flow");
    uow.commit().await.expect("commit");

    // Rolled back: none of it is part of the trace.
    let mut uow = store.begin().await.expect("begin");
    let ghost = event_of(flow, Some(placed_id), "order.ghost");
    let ghost_id = ghost.event_id;
    uow.append(&order, ExpectedVersion::Exact(1), vec![ghost])
        .await
        .expect("append");
    let ghost_message = OutboxMessage {
        headers: flow_headers(flow, placed_id, "orders"),
        ..OutboxMessage::new("payments", "t-1", "payment.ghost", Vec::new())
    };
    uow.enqueue(vec![ghost_message.clone()])
        .await
        .expect("enqueue");
    let ghost_reply = Uuid::now_v7();
    assert!(
        uow.mark_received(
            "orders-replies",
            &InboxEntry::received(
                ghost_reply,
                "x",
                "replies",
                &flow_headers(flow, placed_id, "payments")
            ),
        )
        .await
        .expect("mark")
    );
    uow.rollback().await.expect("rollback");

    // The reply comes back (marked in a batch, as a consumer with shared commits does): the
    // inbox keeps what it was.
    let reply = Uuid::now_v7();
    let mut uow = store.begin().await.expect("begin");
    assert_eq!(
        uow.mark_received_all(
            "orders-replies",
            &[InboxEntry::received(
                reply,
                "saga.reply",
                "replies",
                &flow_headers(flow, charge.id, "payments")
            )],
        )
        .await
        .expect("mark"),
        [true]
    );
    assert!(
        uow.mark_inbox("orders-replies", Uuid::now_v7())
            .await
            .expect("a mark without metadata")
    );
    uow.commit().await.expect("commit");

    // A poison message of the flow is parked.
    let poison = Uuid::now_v7();
    store
        .park_message(ParkedMessage {
            consumer: "shipping".into(),
            message_id: poison,
            topic: "orders".into(),
            partition: 0,
            offset: 3,
            key: "t-1".into(),
            message_type: "order.ship".into(),
            payload: Vec::new(),
            headers: flow_headers(flow, reply, "orders"),
            attempts: 5,
            error: "carrier unknown".into(),
            parked_at: eventfold_core::metadata::now_micros(),
        })
        .await
        .expect("park");

    // The command is parked by the relay (a dead letter).
    let owner = Uuid::now_v7();
    let slots = store
        .lease_slots(owner, Duration::from_secs(30))
        .await
        .expect("lease");
    let claimed = store.claim_outbox(&slots, 100, &[]).await.expect("claim");
    let row = claimed
        .iter()
        .find(|r| r.message.id == charge.id)
        .expect("the command is claimed");
    store
        .park_outbox(row.seq, "topic payments does not exist")
        .await
        .expect("park the row");

    // A saga of the flow waits on a timer.
    let saga = super::sagas::record("order.place", "t-1", flow);
    let mut uow = store.begin().await.expect("begin");
    store
        .register_saga(&mut uow, &saga)
        .await
        .expect("register");
    let due = store.database_now(&mut uow).await.expect("now") + chrono::Duration::seconds(30);
    store
        .put_saga_timers(
            &mut uow,
            &[SagaTimer {
                saga_id: saga.saga_id,
                saga_type: saga.saga_type.clone(),
                step: "charge".into(),
                attempt: 1,
                kind: "timeout".into(),
                due_at: due,
            }],
        )
        .await
        .expect("timer");
    uow.commit().await.expect("commit");

    let records = store.trace(flow).await.expect("trace");
    let mut kinds: Vec<TraceKind> = records.iter().map(|r| r.kind).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            TraceKind::Event,
            TraceKind::Sent,
            TraceKind::Received,
            TraceKind::Parked,
            TraceKind::DeadLetter,
            TraceKind::Timer
        ],
        "one record of each kind: {records:#?}"
    );
    assert!(
        records.iter().all(|r| r.correlation_id == flow),
        "every record is of the flow"
    );
    assert!(
        records
            .iter()
            .all(|r| ![ghost_id, ghost_message.id, ghost_reply, unrelated.id].contains(&r.id)),
        "rolled-back writes and uncorrelated messages are not traced"
    );
    assert!(
        records.windows(2).all(|w| w[0].at <= w[1].at),
        "records are in time order"
    );

    assert!(
        !records
            .iter()
            .any(|r| r.kind == TraceKind::Sent && r.id == placed_id),
        "the message of a routed event is not journaled: {records:#?}"
    );
    let event = find(&records, TraceKind::Event, placed_id);
    assert_eq!(
        (
            event.name.as_str(),
            event.service.as_str(),
            event.subject.as_str(),
            event.causation_id
        ),
        ("order.placed", "orders", "order-t-1 v1", None)
    );
    let sent = find(&records, TraceKind::Sent, charge.id);
    assert_eq!(
        (
            sent.name.as_str(),
            sent.service.as_str(),
            sent.subject.as_str(),
            sent.causation_id
        ),
        (
            "payment.charge",
            "orders",
            "payments/pay-1",
            Some(placed_id)
        )
    );
    let received = find(&records, TraceKind::Received, reply);
    assert_eq!(
        (
            received.name.as_str(),
            received.causation_id,
            received.from_service.as_deref()
        ),
        ("saga.reply", Some(charge.id), Some("payments"))
    );
    assert_eq!(
        received.service,
        store.source(),
        "received by this store's service"
    );
    assert!(
        received.subject.contains("orders-replies"),
        "the consumer is named: {}",
        received.subject
    );
    let parked = find(&records, TraceKind::Parked, poison);
    assert_eq!(
        (parked.error.as_deref(), parked.causation_id),
        (Some("carrier unknown"), Some(reply))
    );
    assert!(parked.subject.contains("shipping"), "{}", parked.subject);
    let dead = find(&records, TraceKind::DeadLetter, charge.id);
    assert_eq!(dead.error.as_deref(), Some("topic payments does not exist"));
    let timer = records
        .iter()
        .find(|r| r.kind == TraceKind::Timer)
        .expect("a timer");
    assert_eq!(timer.name, "timeout");
    assert!(
        timer.subject.contains(&saga.saga_id.to_string()) && timer.subject.contains("charge"),
        "{}",
        timer.subject
    );

    let others = store.trace(other).await.expect("trace of the other flow");
    assert_eq!(others.len(), 1, "{others:#?}");
    assert_eq!(others[0].kind, TraceKind::Event);
    assert!(
        store
            .trace(Uuid::now_v7())
            .await
            .expect("trace of an unknown flow")
            .is_empty()
    );
}
