//! A transition's two ends: the lock that starts it, with the database's clock
//! ([`SagaStore::lock_saga_with_clock`]), and the write that ends it, timers and the instance's
//! row at once ([`SagaStore::finish_saga_transition`]), also with its events and commands
//! ([`SagaStore::write_saga_transition`]).

use chrono::TimeDelta;
use uuid::Uuid;

use super::{db_now, put_committed, record, register_all, timer, timers_of};
use crate::error::StoreError;
use crate::outbox::OutboxRelayStore;
use crate::saga::{SagaRecord, SagaStore, SagaTimer, SagaTimerId, SagaTransitionWrite};
use crate::store::{UnitOfWork, Wakeup};

/// The identity of `timer`.
fn id_of(timer: &SagaTimer) -> SagaTimerId {
    SagaTimerId {
        step: timer.step.clone(),
        attempt: timer.attempt,
        kind: timer.kind.clone(),
    }
}

/// Ends a transition of `record` in a unit of work of its own and commits it.
async fn finish_committed<S: SagaStore>(
    store: &S,
    record: &SagaRecord,
    cancel: &[SagaTimerId],
    put: &[SagaTimer],
    clear: bool,
) -> bool {
    let mut uow = store.begin().await.expect("begin");
    let write = SagaTransitionWrite {
        record,
        cancel,
        put,
        clear,
    };
    let found = store
        .finish_saga_transition(&mut uow, write)
        .await
        .expect("finish a transition");
    uow.commit().await.expect("commit");
    found
}

/// The lock returns the instance's row with the database's clock (`None` for an unknown
/// instance); the end of a transition leaves the timers of before minus the cancelled plus the
/// stored (a timer cancelled and stored again, or stored twice, is there once with its last
/// deadline; cancelling a missing timer is no error) and updates the row; rolled back, it
/// changes nothing; with `clear`, no timer of the instance is left (the stored ones neither) and
/// another instance's timers stay; an unknown instance is `false` and gets no timer.
pub async fn a_transition_ends_with_its_timers_and_row<S: SagaStore>(store: S) {
    let saga = record("order", "f-1", Uuid::now_v7());
    let other = record("order", "f-2", Uuid::now_v7());
    register_all(&store, &[&saga, &other]).await;
    let before = db_now(&store).await;
    let at = |seconds| before + TimeDelta::seconds(seconds);
    let reserve = timer(&saga, "reserve", 1, "timeout", at(60));
    let pay = timer(&saga, "pay", 1, "timeout", at(30));
    let ship = timer(&saga, "ship", 1, "timeout", at(40));
    let others = timer(&other, "reserve", 1, "timeout", at(10));
    put_committed(
        &store,
        &[reserve.clone(), pay.clone(), ship.clone(), others.clone()],
    )
    .await;

    let mut uow = store.begin().await.expect("begin");
    assert!(
        store
            .lock_saga_with_clock(&mut uow, Uuid::now_v7())
            .await
            .expect("lock an unknown instance")
            .is_none(),
        "an unknown instance has no row to lock"
    );
    let (locked, now) = store
        .lock_saga_with_clock(&mut uow, saga.saga_id)
        .await
        .expect("lock")
        .expect("a registered instance");
    uow.rollback().await.expect("rollback");
    assert_eq!(locked.saga_id, saga.saga_id);
    assert_eq!(locked.status, "running");
    assert_eq!(locked.last_event_id, None, "no transition wrote one yet");
    assert!(
        now >= before && now <= db_now(&store).await,
        "the clock is the database's, read with the lock: {before} <= {now}"
    );

    let mut moved_ship = ship.clone();
    moved_ship.due_at = at(5);
    let retry = timer(&saga, "pay", 2, "retry_backoff", at(20));
    let mut retry_later = retry.clone();
    retry_later.due_at = at(25);
    let missing = SagaTimerId {
        step: "refund".to_owned(),
        attempt: 3,
        kind: "timeout".to_owned(),
    };
    let mut after = locked.clone();
    after.status = "compensating".to_owned();
    after.detail = Some("pay failed".to_owned());
    after.definition_version = 2;
    after.version = 7;
    after.last_event_id = Some(Uuid::now_v7());
    let cancel = [id_of(&pay), id_of(&ship), missing];
    let put = [moved_ship.clone(), retry.clone(), retry_later.clone()];

    let mut uow = store.begin().await.expect("begin");
    let write = SagaTransitionWrite {
        record: &after,
        cancel: &cancel,
        put: &put,
        clear: false,
    };
    assert!(
        store
            .finish_saga_transition(&mut uow, write)
            .await
            .expect("finish")
    );
    uow.rollback().await.expect("rollback");
    assert_eq!(
        timers_of(&store, saga.saga_id).await,
        vec![pay.clone(), ship.clone(), reserve.clone()],
        "a rolled-back transition leaves the timers"
    );
    let row = store.saga(saga.saga_id).await.expect("saga").expect("row");
    assert_eq!(
        (row.status.as_str(), row.version),
        ("running", 1),
        "and the row"
    );

    assert!(finish_committed(&store, &after, &cancel, &put, false).await);
    assert_eq!(
        timers_of(&store, saga.saga_id).await,
        vec![moved_ship.clone(), retry_later.clone(), reserve.clone()],
        "before, minus the cancelled, plus the stored (the last deadline of each identity)"
    );
    let row = store.saga(saga.saga_id).await.expect("saga").expect("row");
    assert_eq!(row.status, "compensating");
    assert_eq!(row.detail.as_deref(), Some("pay failed"));
    assert_eq!(row.definition_version, 2);
    assert_eq!(row.version, 7);
    assert_eq!(
        row.last_event_id, after.last_event_id,
        "the last event id is written with the version"
    );
    let mut uow = store.begin().await.expect("begin");
    let (relocked, _) = store
        .lock_saga_with_clock(&mut uow, saga.saga_id)
        .await
        .expect("lock")
        .expect("a registered instance");
    uow.rollback().await.expect("rollback");
    assert_eq!(
        (relocked.version, relocked.last_event_id),
        (7, after.last_event_id),
        "and the lock reads both"
    );
    assert!(
        row.updated_at >= now,
        "updated_at is the database's clock at the transition's end"
    );

    let mut ended = after.clone();
    ended.status = "compensated".to_owned();
    ended.detail = None;
    ended.version = 9;
    ended.last_event_id = Some(Uuid::now_v7());
    let late = timer(&saga, "refund", 1, "timeout", at(90));
    assert!(
        finish_committed(
            &store,
            &ended,
            &[id_of(&reserve)],
            std::slice::from_ref(&late),
            true
        )
        .await
    );
    assert!(
        timers_of(&store, saga.saga_id).await.is_empty(),
        "an ended instance has no timer left"
    );
    assert_eq!(
        timers_of(&store, other.saga_id).await,
        vec![others],
        "another instance's timers stay"
    );
    let row = store.saga(saga.saga_id).await.expect("saga").expect("row");
    assert_eq!(
        (row.status.as_str(), row.version, row.last_event_id),
        ("compensated", 9, ended.last_event_id)
    );

    let unknown = record("order", "f-3", Uuid::now_v7());
    let stray = timer(&unknown, "reserve", 1, "timeout", at(10));
    assert!(
        !finish_committed(&store, &unknown, &[], std::slice::from_ref(&stray), false).await,
        "an unknown instance is not updated"
    );
    assert!(store.saga(unknown.saga_id).await.expect("saga").is_none());
}

/// Writes a transition of `record` in a unit of work of its own: the events at `expected` of
/// the instance's stream `saga-{id}`, the messages, and the end. Commits even after an error
/// (what a conflict left must be nothing).
async fn write_committed<S: SagaStore>(
    store: &S,
    record: &SagaRecord,
    expected: u64,
    events: Vec<eventfold_core::NewEvent>,
    messages: Vec<eventfold_core::OutboxMessage>,
    (cancel, put): (&[SagaTimerId], &[SagaTimer]),
) -> Result<bool, StoreError> {
    let stream = eventfold_core::StreamId::new("saga", record.saga_id.to_string()).expect("id");
    let mut uow = store.begin().await.expect("begin");
    let write = SagaTransitionWrite {
        record,
        cancel,
        put,
        clear: false,
    };
    let written = store
        .write_saga_transition(&mut uow, &stream, expected, events, messages, write)
        .await;
    uow.commit().await.expect("commit");
    written
}

/// A transition's events, commands, timers and row are written together: the events at the
/// expected version, the commands in the outbox, the timers of before minus the cancelled plus
/// the stored, the row with its version and last event id. On a version conflict none of it is
/// written, even when the unit of work then commits; an unknown instance is `false`; without
/// events, the commands and the end are written alone. The commit wakes the store's wake-ups.
pub async fn a_transition_is_written_at_once<S: SagaStore + OutboxRelayStore>(store: S) {
    let saga = record("order", "w-1", Uuid::now_v7());
    register_all(&store, &[&saga]).await;
    let stream = eventfold_core::StreamId::new("saga", saga.saga_id.to_string()).expect("id");
    let now = db_now(&store).await;
    let timeout = timer(&saga, "reserve", 1, "timeout", now + TimeDelta::seconds(60));
    let charge_timeout = timer(&saga, "charge", 1, "timeout", now + TimeDelta::seconds(30));
    put_committed(&store, std::slice::from_ref(&timeout)).await;
    let event = |t: &str| eventfold_core::NewEvent::raw(t, 1, b"{}".to_vec());
    let command =
        |t: &str| eventfold_core::OutboxMessage::new("payments.commands", "w-1", t, b"{}".to_vec());
    let outbox_types = |rows: Vec<crate::outbox::OutboxRow>| -> Vec<String> {
        rows.into_iter().map(|r| r.message.message_type).collect()
    };

    let (succeeded, started) = (event("saga.step_succeeded"), event("saga.step_started"));
    let mut after = saga.clone();
    after.version = 2;
    after.last_event_id = Some(started.event_id);
    let mut wakeup = store.wakeup().await.expect("a wake-up");
    let before = std::time::Instant::now();
    let written = write_committed(
        &store,
        &after,
        0,
        vec![succeeded, started],
        vec![command("payment.charge")],
        (&[id_of(&timeout)], std::slice::from_ref(&charge_timeout)),
    )
    .await
    .expect("write a transition");
    assert!(written, "a registered instance");
    wakeup.wait(std::time::Duration::from_secs(30)).await;
    assert!(
        before.elapsed() < std::time::Duration::from_secs(10),
        "the commit wakes the store's wake-ups (the relay claims the commands at once)"
    );
    assert_eq!(
        store.read_stream(&stream, 1, 10).await.expect("read").len(),
        2
    );
    assert_eq!(
        outbox_types(store.read_outbox(10).await.expect("outbox")),
        ["payment.charge"]
    );
    assert_eq!(
        timers_of(&store, saga.saga_id).await,
        vec![charge_timeout.clone()]
    );
    let row = store.saga(saga.saga_id).await.expect("saga").expect("row");
    assert_eq!((row.version, row.last_event_id), (2, after.last_event_id));

    // A stale version: nothing of it, though the unit of work commits.
    let mut stale = after.clone();
    stale.version = 3;
    stale.status = "compensating".to_owned();
    stale.last_event_id = Some(Uuid::now_v7());
    let err = write_committed(
        &store,
        &stale,
        1,
        vec![event("saga.step_failed")],
        vec![command("payment.refund")],
        (
            &[id_of(&charge_timeout)],
            &[timer(
                &saga,
                "refund",
                1,
                "timeout",
                now + TimeDelta::seconds(90),
            )],
        ),
    )
    .await
    .expect_err("a stale version");
    assert!(err.is_conflict(), "{err}");
    assert_eq!(
        store.read_stream(&stream, 1, 10).await.expect("read").len(),
        2
    );
    assert_eq!(
        outbox_types(store.read_outbox(10).await.expect("outbox")),
        ["payment.charge"],
        "no command of the conflict"
    );
    assert_eq!(
        timers_of(&store, saga.saga_id).await,
        vec![charge_timeout.clone()],
        "no timer of the conflict"
    );
    let row = store.saga(saga.saga_id).await.expect("saga").expect("row");
    assert_eq!(
        (row.status.as_str(), row.version, row.last_event_id),
        ("running", 2, after.last_event_id),
        "the row as before the conflict"
    );

    // An unknown instance.
    let unknown = record("order", "w-2", Uuid::now_v7());
    let mut uow = store.begin().await.expect("begin");
    let unknown_stream =
        eventfold_core::StreamId::new("saga", unknown.saga_id.to_string()).expect("id");
    let write = SagaTransitionWrite {
        record: &unknown,
        cancel: &[],
        put: &[],
        clear: false,
    };
    assert!(
        !store
            .write_saga_transition(
                &mut uow,
                &unknown_stream,
                0,
                vec![event("saga.started")],
                Vec::new(),
                write
            )
            .await
            .expect("write for an unknown instance"),
        "an unknown instance is not updated"
    );
    uow.rollback().await.expect("rollback");

    // No events: the command and the end alone.
    let mut cancelled = after.clone();
    cancelled.detail = Some("cancelled".to_owned());
    assert!(
        write_committed(
            &store,
            &cancelled,
            2,
            Vec::new(),
            vec![command("payment.void")],
            (&[id_of(&charge_timeout)], &[]),
        )
        .await
        .expect("write without events")
    );
    assert_eq!(
        outbox_types(store.read_outbox(10).await.expect("outbox")),
        ["payment.charge", "payment.void"]
    );
    assert!(timers_of(&store, saga.saga_id).await.is_empty());
    let row = store.saga(saga.saga_id).await.expect("saga").expect("row");
    assert_eq!(row.detail.as_deref(), Some("cancelled"));
}

/// The transitions of several instances written in one call
/// ([`SagaStore::write_saga_transitions`]) leave what writing them one after the other leaves:
/// each instance's events at its version, the commands in the outbox in order (a command of a
/// flow journaled, so the trace shows it sent), the timers of each instance (cancelled, stored,
/// or all gone when it ended; another instance's untouched), and each row. A version conflict
/// is the error of the transition that met it, naming its stream; an unknown instance is
/// `false` at its place.
pub async fn transitions_of_several_instances_are_written_at_once<S>(store: S)
where
    S: SagaStore + OutboxRelayStore + crate::trace::TraceStore,
{
    use eventfold_core::outbox::headers;
    use eventfold_core::{NewEvent, OutboxMessage, StreamId};

    use crate::saga::SagaTransitionItem;

    let flow = Uuid::now_v7();
    let (a, b, c) = (
        record("order", "m-1", flow),
        record("order", "m-2", Uuid::now_v7()),
        record("order", "m-3", Uuid::now_v7()),
    );
    let bystander = record("order", "m-4", Uuid::now_v7());
    register_all(&store, &[&a, &b, &c, &bystander]).await;
    let stream = |r: &SagaRecord| StreamId::new("saga", r.saga_id.to_string()).expect("id");
    let now = db_now(&store).await;
    let due = |s: i64| now + TimeDelta::seconds(s);
    let (a_reserve, a_charge) = (
        timer(&a, "reserve", 1, "timeout", due(60)),
        timer(&a, "charge", 1, "timeout", due(30)),
    );
    let b_ship = timer(&b, "ship", 1, "timeout", due(45));
    let (c_void, kept) = (
        timer(&c, "void", 2, "retry_backoff", due(5)),
        timer(&bystander, "reserve", 1, "timeout", due(20)),
    );
    put_committed(&store, &[a_reserve.clone(), c_void.clone(), kept.clone()]).await;
    let event = |t: &str| NewEvent::raw(t, 1, b"{}".to_vec());
    let charge = OutboxMessage::new("payments.commands", "m-1", "payment.charge", b"{}".to_vec());
    let charge = OutboxMessage {
        headers: [
            (headers::CORRELATION_ID.to_owned(), flow.to_string()),
            (headers::SOURCE.to_owned(), "orders".to_owned()),
        ]
        .into_iter()
        .chain(charge.headers)
        .collect(),
        ..charge
    };
    let void = OutboxMessage::new("payments.commands", "m-3", "payment.void", b"{}".to_vec());
    let outbox_types = |rows: Vec<crate::outbox::OutboxRow>| -> Vec<String> {
        rows.into_iter().map(|r| r.message.message_type).collect()
    };

    let (a_events, b_events, c_events) = (
        vec![event("saga.step_succeeded"), event("saga.step_started")],
        vec![event("saga.step_started")],
        vec![event("saga.completed")],
    );
    let after = |r: &SagaRecord, status: &str, last: &NewEvent, version: u64| SagaRecord {
        status: status.to_owned(),
        version,
        last_event_id: Some(last.event_id),
        ..r.clone()
    };
    let a_after = after(&a, "running", &a_events[1], 2);
    let b_after = after(&b, "running", &b_events[0], 1);
    let c_after = after(&c, "completed", &c_events[0], 1);
    let item = |r: &SagaRecord, events: &Vec<NewEvent>, messages: Vec<OutboxMessage>| {
        (stream(r), events.clone(), messages)
    };
    let (a_cancel, a_put, b_put) = ([id_of(&a_reserve)], [a_charge.clone()], [b_ship.clone()]);
    let writes = [
        (
            item(&a, &a_events, vec![charge.clone()]),
            SagaTransitionWrite {
                record: &a_after,
                cancel: &a_cancel,
                put: &a_put,
                clear: false,
            },
        ),
        (
            item(&b, &b_events, Vec::new()),
            SagaTransitionWrite {
                record: &b_after,
                cancel: &[],
                put: &b_put,
                clear: false,
            },
        ),
        (
            item(&c, &c_events, vec![void]),
            SagaTransitionWrite {
                record: &c_after,
                cancel: &[],
                put: &[],
                clear: true,
            },
        ),
    ];
    let items = |expected: [u64; 3]| -> Vec<SagaTransitionItem<'_>> {
        writes
            .iter()
            .zip(expected)
            .map(
                |(((stream_id, events, messages), write), expected)| SagaTransitionItem {
                    stream_id: stream_id.clone(),
                    expected,
                    events: events.clone(),
                    messages: messages.clone(),
                    write: *write,
                },
            )
            .collect()
    };

    // A conflict in the middle: the error names its stream.
    let mut uow = store.begin().await.expect("begin");
    let err = store
        .write_saga_transitions(&mut uow, items([0, 3, 0]))
        .await
        .expect_err("a stale version");
    match &err {
        StoreError::VersionConflict { stream_id, .. } => assert_eq!(stream_id, &stream(&b)),
        other => panic!("expected a version conflict, got {other}"),
    }
    uow.rollback().await.expect("rollback");

    let mut uow = store.begin().await.expect("begin");
    let written = store
        .write_saga_transitions(&mut uow, items([0, 0, 0]))
        .await
        .expect("write the transitions");
    uow.commit().await.expect("commit");
    assert_eq!(written, [true, true, true]);
    for (r, events) in [(&a, &a_events), (&b, &b_events), (&c, &c_events)] {
        let stored = store.read_stream(&stream(r), 1, 10).await.expect("read");
        let ids: Vec<(Uuid, u64)> = stored
            .iter()
            .map(|e| (e.event_id, e.stream_version))
            .collect();
        let expected: Vec<(Uuid, u64)> = events
            .iter()
            .zip(1..)
            .map(|(e, v)| (e.event_id, v))
            .collect();
        assert_eq!(ids, expected, "the events of {}", r.business_key);
    }
    assert_eq!(
        outbox_types(store.read_outbox(10).await.expect("outbox")),
        ["payment.charge", "payment.void"]
    );
    assert_eq!(timers_of(&store, a.saga_id).await, vec![a_charge]);
    assert_eq!(timers_of(&store, b.saga_id).await, vec![b_ship]);
    assert!(timers_of(&store, c.saga_id).await.is_empty(), "c ended");
    assert_eq!(timers_of(&store, bystander.saga_id).await, vec![kept]);
    for expected in [&a_after, &b_after, &c_after] {
        let row = store
            .saga(expected.saga_id)
            .await
            .expect("saga")
            .expect("row");
        assert_eq!(
            (row.status.as_str(), row.version, row.last_event_id),
            (
                expected.status.as_str(),
                expected.version,
                expected.last_event_id
            ),
            "the row of {}",
            expected.business_key
        );
    }
    let trace = store.trace(flow).await.expect("trace");
    assert!(
        trace
            .iter()
            .any(|r| r.kind == eventfold_core::trace::TraceKind::Sent && r.id == charge.id),
        "the command of the flow is journaled: {trace:?}"
    );

    // An unknown instance: `false` at its place.
    let unknown = record("order", "m-5", Uuid::now_v7());
    let mut uow = store.begin().await.expect("begin");
    let mut b_next = b_after.clone();
    b_next.version = 2;
    let next = vec![event("saga.step_succeeded")];
    let unknown_events = vec![event("saga.started")];
    let written = store
        .write_saga_transitions(
            &mut uow,
            vec![
                SagaTransitionItem {
                    stream_id: stream(&b),
                    expected: 1,
                    events: next.clone(),
                    messages: Vec::new(),
                    write: SagaTransitionWrite {
                        record: &b_next,
                        cancel: &[],
                        put: &[],
                        clear: false,
                    },
                },
                SagaTransitionItem {
                    stream_id: stream(&unknown),
                    expected: 0,
                    events: unknown_events,
                    messages: Vec::new(),
                    write: SagaTransitionWrite {
                        record: &unknown,
                        cancel: &[],
                        put: &[],
                        clear: false,
                    },
                },
            ],
        )
        .await
        .expect("write with an unknown instance");
    assert_eq!(written, [true, false]);
    uow.rollback().await.expect("rollback");
}
