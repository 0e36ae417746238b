//! The consumer's inbox: a message is marked once per consumer, in the unit of work that handles
//! it; parked (poison) messages are kept per consumer and count as processed.

use uuid::Uuid;

use crate::inbox::{InboxStore, ParkedMessage};
use crate::store::UnitOfWork;

/// The inbox mark commits or rolls back with the unit of work; a second mark of the same message
/// by the same consumer is refused, by another consumer accepted; parking marks too.
pub async fn inbox_marks_a_message_once_per_consumer<S: InboxStore>(store: S) {
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
        .park_message(ParkedMessage {
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

/// `mark_received_all` marks the new messages of a batch, in its order, and answers `false` for
/// one already marked (in this unit of work, in a committed one, by parking) or given twice;
/// the marks commit or roll back with the unit of work, per consumer (what they keep for the
/// trace is checked by the trace contract).
pub async fn inbox_marks_a_batch_once_per_consumer<S: InboxStore>(store: S) {
    use crate::trace::InboxEntry;
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let flow = Uuid::now_v7();
    let entry = |id: Uuid| InboxEntry {
        message_id: id,
        message_type: Some("order.placed".into()),
        topic: Some("orders".into()),
        correlation_id: Some(flow),
        causation_id: None,
        sent_by: Some("orders".into()),
    };
    let mut uow = store.begin().await.expect("begin");
    assert_eq!(
        uow.mark_received_all("billing", &[])
            .await
            .expect("mark none"),
        Vec::<bool>::new()
    );
    assert!(
        uow.mark_received("billing", &entry(ids[1]))
            .await
            .expect("mark one")
    );
    let batch = [
        entry(ids[0]),
        entry(ids[1]),
        entry(ids[2]),
        entry(ids[0]),
        entry(ids[3]),
    ];
    assert_eq!(
        uow.mark_received_all("billing", &batch)
            .await
            .expect("mark a batch"),
        [true, false, true, false, true],
        "new ones in order; one marked before in this unit of work and one given twice are not"
    );
    uow.rollback().await.expect("rollback");

    let mut uow = store.begin().await.expect("begin");
    assert_eq!(
        uow.mark_received_all("billing", &batch[..3])
            .await
            .expect("mark after a rollback"),
        [true, true, true],
        "a rolled-back batch left no mark"
    );
    uow.commit().await.expect("commit");

    store
        .park_message(ParkedMessage {
            consumer: "billing".into(),
            message_id: ids[4],
            topic: "orders".into(),
            partition: 0,
            offset: 7,
            key: "o-1".into(),
            message_type: "order.placed".into(),
            payload: b"{}".to_vec(),
            headers: eventfold_core::Headers::new(),
            attempts: 3,
            error: "poison".into(),
            parked_at: eventfold_core::metadata::now_micros(),
        })
        .await
        .expect("park");
    let mut uow = store.begin().await.expect("begin");
    let all: Vec<InboxEntry> = ids.iter().map(|&id| entry(id)).collect();
    assert_eq!(
        uow.mark_received_all("billing", &all)
            .await
            .expect("mark again"),
        [false, false, false, true, false],
        "committed and parked messages are duplicates"
    );
    assert_eq!(
        uow.mark_received_all("shipping", &all)
            .await
            .expect("another consumer"),
        [true; 5],
        "consumers are independent"
    );
    uow.commit().await.expect("commit");

    // A batch larger than one statement's share (SQLite writes chunks of 32, 16, ...): 40 new
    // ones, one committed before, and the first of them again, in another chunk.
    let mut many: Vec<InboxEntry> = (0..40)
        .map(|_| entry(Uuid::now_v7()))
        .chain([entry(ids[0])])
        .collect();
    many.push(many[0].clone());
    let mut expected = vec![true; 40];
    expected.extend([false, false]);
    let mut uow = store.begin().await.expect("begin");
    assert_eq!(
        uow.mark_received_all("billing", &many)
            .await
            .expect("mark 42"),
        expected,
        "40 new; one committed before and one given twice (across statements) are not"
    );
    uow.commit().await.expect("commit");
}
