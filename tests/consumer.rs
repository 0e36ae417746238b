//! The consumer and its inbox on every backend: a message delivered twice (or redelivered after a
//! crash before the offset commit) takes effect once; a poison message is parked after its
//! attempts and the others go on; the offset is committed only after the handler's transaction.
mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::Ledger;
use eventfold::eventstore::{EventStore, ExpectedVersion, InboxStore, UnitOfWork};
use eventfold::outbox::{Consumer, InProcessBroker, OutboxMessage, Publisher};
use eventfold::{NewEvent, StreamId};

fn payment(i: u32, kind: &str) -> OutboxMessage {
    OutboxMessage::new(
        "payments",
        format!("p-{}", i % 7),
        kind,
        format!(r#"{{"n":{i}}}"#).into_bytes(),
    )
}

/// The consumer `ledger` of the topic `payments`, handling with a [`Ledger`].
fn ledger_consumer<S: InboxStore>(
    store: &S,
    broker: &InProcessBroker,
) -> Consumer<S, eventfold::outbox::InProcessConsumer, Ledger> {
    Consumer::new(
        "ledger",
        store.clone(),
        broker.consumer("ledger", &["payments"]),
        Ledger::default(),
    )
}

async fn exactly_once_effects<S: InboxStore>(store: S) {
    let broker = InProcessBroker::new();
    let messages: Vec<_> = (0..40).map(|i| payment(i, "payment.captured")).collect();
    broker.publish(&messages).await;
    broker.publish(&messages[..10]).await; // the relay published some twice (at-least-once)

    let mut consumer = ledger_consumer(&store, &broker);
    // Crash after handling 25 records, before their offsets are committed: handle them by hand
    // through the inbox, but never acknowledge them to the broker.
    let mut crashed = broker.consumer("ledger", &["payments"]);
    for record in crashed.poll(25, Duration::from_millis(100)).await {
        let mut uow = store.begin().await.unwrap();
        assert!(uow.mark_inbox("ledger", record.message_id).await.unwrap());
        common::note(&mut uow, &record).await.unwrap();
        uow.commit().await.unwrap();
    }
    drop(crashed);

    let mut total = eventfold::outbox::ConsumerReport::default();
    loop {
        let report = consumer.run_once(Duration::from_millis(100)).await.unwrap();
        if report.handled + report.duplicates + report.parked == 0 {
            break;
        }
        total.handled += report.handled;
        total.duplicates += report.duplicates;
    }
    let done = common::effects(&store).await;
    let unique: HashSet<_> = done.iter().collect();
    assert_eq!(done.len(), 40, "every message took effect");
    assert_eq!(unique.len(), 40, "and only once");
    assert_eq!(
        total.handled, 15,
        "the 25 handled before the crash were not handled again"
    );
    assert_eq!(
        total.duplicates, 35,
        "25 redelivered after the crash + 10 published twice"
    );
    // Everything was acknowledged: a new consumer of the group gets nothing.
    let mut after = broker.consumer("ledger", &["payments"]);
    assert!(after.poll(100, Duration::from_millis(50)).await.is_empty());
}

async fn poison_is_parked_others_flow<S: InboxStore>(store: S) {
    let broker = InProcessBroker::new().with_default_partitions(1);
    let messages = vec![
        payment(1, "payment.captured"),
        payment(2, "payment.poison"),
        payment(3, "payment.captured"),
    ];
    broker.publish(&messages).await;
    let mut consumer = ledger_consumer(&store, &broker)
        .max_attempts(3)
        .backoff(Duration::from_millis(1));
    let report = consumer.run_once(Duration::from_millis(100)).await.unwrap();
    assert_eq!((report.handled, report.parked), (2, 1));
    assert_eq!(
        common::effects(&store).await,
        vec![messages[0].id, messages[2].id]
    );
    let parked = store.parked_messages("ledger", 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (parked[0].message_id, parked[0].attempts),
        (messages[1].id, 3)
    );
    assert!(parked[0].error.contains("no amount"), "{}", parked[0].error);
    // Its offset was committed too: the group does not see it again.
    let mut after = broker.consumer("ledger", &["payments"]);
    assert!(after.poll(10, Duration::from_millis(50)).await.is_empty());
}

common::backend_tests!([memory, sqlite, postgres] {
    2 => duplicates_and_crash_redeliveries_take_effect_once: exactly_once_effects,
    2 => poison_message_is_parked_and_the_rest_flows: poison_is_parked_others_flow,
});

#[derive(Debug, Clone, PartialEq, eventfold::Event)]
enum PaymentEvent {
    Captured {
        cents: u64,
    },
    #[event(version = 2)]
    Refunded {
        cents: u64,
        reason: String,
    },
}

/// A consumer decodes the records of another service into its typed events, upcasting older
/// schema versions; an unknown type is an error naming the message.
#[tokio::test]
async fn records_decode_into_typed_events_with_upcasting() {
    use eventfold::eventstore::OutboxRouting;
    use eventfold::eventstore::memory::MemoryStore;
    use eventfold::outbox::Relay;
    use eventfold::{CommandMetadata, Upcasters};

    let store = MemoryStore::new().with_outbox(OutboxRouting::new().default_topic("payments"));
    let stream = StreamId::new("payment", "p-1").unwrap();
    let captured = NewEvent::encode(
        &PaymentEvent::Captured { cents: 500 },
        "pay",
        &CommandMetadata::new(),
    )
    .unwrap();
    let old_refund = NewEvent::raw("payment.refunded", 1, br#"{"cents":200}"#.to_vec());
    let unknown = NewEvent::raw("payment.disputed", 1, b"{}".to_vec());
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![captured, old_refund, unknown],
        )
        .await
        .unwrap();
    let broker = InProcessBroker::new();
    let mut relay = Relay::new(store.clone(), broker.clone());
    for _ in 0..3 {
        relay.run_once().await.unwrap();
    }
    let records = broker
        .consumer("reader", &["payments"])
        .poll(10, Duration::from_millis(100))
        .await;
    assert_eq!(records.len(), 3);
    let upcasters = Upcasters::new().json("payment.refunded", 1, |mut v| {
        v["reason"] = serde_json::json!("unknown (v1)");
        Ok(v)
    });
    assert_eq!(
        records[0].decode::<PaymentEvent>(&upcasters).unwrap(),
        PaymentEvent::Captured { cents: 500 }
    );
    assert_eq!(
        records[1].decode::<PaymentEvent>(&upcasters).unwrap(),
        PaymentEvent::Refunded {
            cents: 200,
            reason: "unknown (v1)".into()
        }
    );
    let err = records[2].decode::<PaymentEvent>(&upcasters).unwrap_err();
    assert_eq!(err.message_id, records[2].message_id);
    assert!(err.to_string().contains("payment.disputed"), "{err}");
}
