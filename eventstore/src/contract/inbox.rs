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
