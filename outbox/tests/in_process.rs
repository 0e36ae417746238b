//! The in-process broker against the `Publisher` contract and Kafka-like behaviour.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventfold_outbox::{
    BrokerError, Delivery, InProcessBroker, OutboxMessage, PublishError, Publisher, Record,
};

fn msg(topic: &str, key: &str, message_type: &str) -> OutboxMessage {
    OutboxMessage::new(topic, key, message_type, message_type.as_bytes().to_vec())
}

fn ok(results: Vec<Result<Delivery, PublishError>>) -> Vec<Delivery> {
    results.into_iter().map(|r| r.expect("delivered")).collect()
}

fn types_of_key(records: &[Record], key: &str) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.key == key)
        .map(|r| r.message_type.clone())
        .collect()
}

const SHORT: Duration = Duration::from_millis(50);

#[tokio::test]
async fn one_result_per_message_in_input_order_and_records_carry_the_message() {
    let broker = InProcessBroker::new();
    let messages = vec![
        msg("orders", "1", "order.placed").header("traceparent", "00-abc-def-01"),
        msg("payments", "2", "payment.captured"),
        msg("orders", "3", "order.placed"),
    ];
    let deliveries = ok(broker.publish(&messages).await);
    assert_eq!(deliveries.len(), 3);
    for (delivery, message) in deliveries.iter().zip(&messages) {
        assert_eq!(delivery.topic, message.topic);
        assert_eq!(delivery.partition, OutboxMessage::slot_of(&message.key, 4));
    }
    assert!(broker.publish(&[]).await.is_empty());

    let records = broker.records("orders");
    let first = records
        .iter()
        .find(|r| r.key == "1")
        .expect("record of key 1");
    assert_eq!(first.message_id, messages[0].id);
    assert_eq!(first.message_type, "order.placed");
    assert_eq!(first.payload, b"order.placed");
    assert_eq!(first.headers, messages[0].headers);
    assert_eq!(first.headers["traceparent"], "00-abc-def-01");
    assert!((chrono::Utc::now() - first.timestamp).num_seconds() < 60);
    assert_eq!(
        (first.topic.as_str(), first.partition, first.offset),
        (
            deliveries[0].topic.as_str(),
            deliveries[0].partition,
            deliveries[0].offset
        )
    );
}

#[tokio::test]
async fn per_key_order_within_and_across_publish_calls() {
    let broker = InProcessBroker::new().with_default_partitions(3);
    let first_call = vec![
        msg("t", "a", "a1"),
        msg("t", "b", "b1"),
        msg("t", "a", "a2"),
        msg("t", "b", "b2"),
        msg("t", "a", "a3"),
    ];
    let second_call = vec![msg("t", "b", "b3"), msg("t", "a", "a4")];
    let mut deliveries = ok(broker.publish(&first_call).await);
    deliveries.extend(ok(broker.publish(&second_call).await));

    // Each key's deliveries are in one partition with increasing offsets, in publish order.
    let all: Vec<_> = first_call.iter().chain(&second_call).collect();
    for key in ["a", "b"] {
        let of_key: Vec<&Delivery> = all
            .iter()
            .zip(&deliveries)
            .filter(|(m, _)| m.key == key)
            .map(|(_, d)| d)
            .collect();
        assert!(of_key.iter().all(|d| d.partition == of_key[0].partition));
        assert!(of_key.windows(2).all(|w| w[0].offset < w[1].offset));
    }

    let records = broker.records("t");
    assert_eq!(types_of_key(&records, "a"), ["a1", "a2", "a3", "a4"]);
    assert_eq!(types_of_key(&records, "b"), ["b1", "b2", "b3"]);

    // A consumer sees the same per-key order.
    let mut consumer = broker.consumer("g", &["t"]);
    let polled = consumer.poll(100, SHORT).await;
    assert_eq!(polled.len(), 7);
    assert_eq!(types_of_key(&polled, "a"), ["a1", "a2", "a3", "a4"]);
    assert_eq!(types_of_key(&polled, "b"), ["b1", "b2", "b3"]);
}

#[tokio::test]
async fn partitions_by_key_hash_with_contiguous_offsets() {
    let broker = InProcessBroker::new().with_default_partitions(8);
    let messages: Vec<_> = (0..64)
        .map(|i| msg("t", &format!("key-{}", i % 16), &format!("m{i}")))
        .collect();
    let deliveries = ok(broker.publish(&messages).await);

    for (message, delivery) in messages.iter().zip(&deliveries) {
        assert_eq!(delivery.partition, OutboxMessage::slot_of(&message.key, 8));
    }
    let records = broker.records("t");
    assert_eq!(records.len(), 64);
    let mut per_partition: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut partition_of_key: HashMap<String, u32> = HashMap::new();
    for record in &records {
        assert_eq!(record.partition, OutboxMessage::slot_of(&record.key, 8));
        per_partition
            .entry(record.partition)
            .or_default()
            .push(record.offset);
        let seen = partition_of_key
            .entry(record.key.clone())
            .or_insert(record.partition);
        assert_eq!(*seen, record.partition, "one key, one partition");
    }
    assert!(per_partition.len() > 1, "16 keys spread over partitions");
    for offsets in per_partition.values() {
        let expected: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(offsets, &expected, "offsets 0, 1, 2, ... per partition");
    }
    // records(): partition by partition, each in offset order.
    let order: Vec<(u32, u64)> = records.iter().map(|r| (r.partition, r.offset)).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
}

#[tokio::test]
async fn topics_are_auto_created_with_the_default_partition_count() {
    let broker = InProcessBroker::new();
    assert!(broker.topics().is_empty());
    ok(broker.publish(&[msg("orders", "1", "x")]).await);
    assert_eq!(broker.topics(), vec![("orders".to_owned(), 4)]);

    let broker = InProcessBroker::new().with_default_partitions(2);
    ok(broker
        .publish(&[msg("b", "1", "x"), msg("a", "2", "y")])
        .await);
    assert_eq!(
        broker.topics(),
        vec![("a".to_owned(), 2), ("b".to_owned(), 2)]
    );

    // An explicitly created topic keeps its own partition count.
    broker.create_topic("wide", 16).expect("created");
    let delivery = ok(broker.publish(&[msg("wide", "k", "x")]).await);
    assert_eq!(delivery[0].partition, OutboxMessage::slot_of("k", 16));
    assert!(broker.topics().contains(&("wide".to_owned(), 16)));
}

#[tokio::test]
async fn strict_topics_refuse_unknown_topics_retriably() {
    let broker = InProcessBroker::new().strict_topics();
    let unknown = msg("orders", "1", "order.placed");
    let results = broker.publish(std::slice::from_ref(&unknown)).await;
    let error = results[0].as_ref().expect_err("unknown topic");
    assert!(error.retriable, "the topic may be created later");
    assert_eq!(error.message_id, unknown.id);
    assert_eq!(error.topic, "orders");
    assert!(error.reason.contains("unknown topic orders"), "{error}");
    assert!(broker.topics().is_empty(), "nothing was auto-created");
    assert!(broker.records("orders").is_empty());

    broker.create_topic("orders", 2).expect("created");
    broker.create_topic("orders", 2).expect("idempotent");
    assert_eq!(
        broker.create_topic("orders", 5),
        Err(BrokerError::PartitionMismatch {
            topic: "orders".into(),
            existing: 2,
            requested: 5
        })
    );
    assert_eq!(
        broker.create_topic("empty", 0),
        Err(BrokerError::NoPartitions {
            topic: "empty".into()
        })
    );
    let delivery = ok(broker.publish(&[msg("orders", "1", "order.placed")]).await);
    assert_eq!(delivery[0].partition, OutboxMessage::slot_of("1", 2));
    assert_eq!(broker.records("orders").len(), 1);
    assert_eq!(broker.topics(), vec![("orders".to_owned(), 2)]);
}

#[tokio::test]
async fn too_large_message_is_refused_for_good_and_blocks_its_key_in_the_call() {
    let broker = InProcessBroker::new().with_max_message_bytes(200);
    let big = OutboxMessage::new("t", "a", "a2", vec![b'x'; 300]);
    let big_size = big.key.len()
        + big.payload.len()
        + big
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    let call = vec![
        msg("t", "a", "a1"),
        big.clone(),
        msg("t", "a", "a3"),
        msg("t", "b", "b1"),
        msg("u", "a", "a4"), // same key on another topic: still after a2
        msg("t", "b", "b2"),
    ];
    let results = broker.publish(&call).await;
    assert_eq!(results.len(), call.len());

    assert!(results[0].is_ok());
    let too_large = results[1].as_ref().expect_err("too large");
    assert!(!too_large.retriable);
    assert_eq!(too_large.message_id, big.id);
    assert_eq!(
        too_large.reason,
        format!("message too large: {big_size} bytes > 200")
    );
    for i in [2, 4] {
        let blocked = results[i].as_ref().expect_err("blocked by a2");
        assert!(blocked.retriable);
        assert_eq!(blocked.message_id, call[i].id);
        assert_eq!(blocked.reason, "an earlier message of key a failed");
    }
    assert!(results[3].is_ok(), "other keys are delivered");
    assert!(results[5].is_ok(), "other keys are delivered");

    let records = broker.records("t");
    assert_eq!(types_of_key(&records, "a"), ["a1"]);
    assert_eq!(types_of_key(&records, "b"), ["b1", "b2"]);
    assert!(broker.records("u").is_empty());

    // The relay parks a2 and retries the blocked ones: they follow a1.
    ok(broker.publish(&[call[2].clone()]).await);
    let records = broker.records("t");
    assert_eq!(types_of_key(&records, "a"), ["a1", "a3"]);
}

#[tokio::test]
async fn outage_fails_everything_retriably_until_recovery() {
    let broker = InProcessBroker::new();
    let before = ok(broker.publish(&[msg("t", "k", "m1")]).await);
    assert_eq!(before[0].offset, 0);

    broker.set_available(false);
    assert!(!broker.is_available());
    let during = vec![msg("t", "k", "m2"), msg("t", "other", "o1")];
    let results = broker.publish(&during).await;
    assert_eq!(results.len(), 2);
    for (result, message) in results.iter().zip(&during) {
        let error = result.as_ref().expect_err("unavailable");
        assert!(error.retriable);
        assert_eq!(error.message_id, message.id);
    }
    assert_eq!(
        broker.records("t").len(),
        1,
        "nothing appended in the outage"
    );

    // Consumers still read what is there.
    let mut consumer = broker.consumer("g", &["t"]);
    assert_eq!(consumer.poll(10, SHORT).await.len(), 1);

    broker.set_available(true);
    let after = ok(broker.publish(&during).await);
    assert_eq!(after[0].partition, before[0].partition);
    assert_eq!(after[0].offset, 1, "the key's offsets continue");
    let records = broker.records("t");
    assert_eq!(types_of_key(&records, "k"), ["m1", "m2"]);
    assert_eq!(types_of_key(&records, "other"), ["o1"]);
}

#[tokio::test]
async fn consumer_groups_are_independent() {
    let broker = InProcessBroker::new();
    let messages: Vec<_> = (0..5).map(|i| msg("t", &format!("k{i}"), "m")).collect();
    ok(broker.publish(&messages).await);

    let mut billing = broker.consumer("billing", &["t"]);
    let got = billing.poll(100, SHORT).await;
    assert_eq!(got.len(), 5);
    for record in &got {
        billing.commit(record);
    }
    drop(billing);

    let mut shipping = broker.consumer("shipping", &["t"]);
    let got_shipping = shipping.poll(100, SHORT).await;
    let ids = |records: &[Record]| {
        records
            .iter()
            .map(|r| r.message_id)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        ids(&got_shipping),
        ids(&got),
        "another group reads everything"
    );
    assert_eq!(
        ids(&got),
        messages.iter().map(|m| m.id).collect::<BTreeSet<_>>()
    );

    let mut billing_again = broker.consumer("billing", &["t"]);
    assert!(billing_again.poll(100, SHORT).await.is_empty());
    for record in &got {
        assert_eq!(
            broker.committed_offset("billing", "t", record.partition),
            Some(
                got.iter()
                    .filter(|r| r.partition == record.partition)
                    .count() as u64
            )
        );
        assert_eq!(
            broker.committed_offset("shipping", "t", record.partition),
            None
        );
    }
}

#[tokio::test]
async fn a_new_consumer_resumes_at_the_committed_offsets_and_gets_uncommitted_records_again() {
    let broker = InProcessBroker::new();
    let messages: Vec<_> = (0..6).map(|i| msg("t", "k", &format!("m{i}"))).collect();
    ok(broker.publish(&messages).await);

    let mut consumer = broker.consumer("g", &["t"]);
    let first = consumer.poll(100, SHORT).await;
    assert_eq!(
        types_of_key(&first, "k"),
        ["m0", "m1", "m2", "m3", "m4", "m5"]
    );
    consumer.commit(&first[2]);
    consumer.commit(&first[0]); // never moves backwards
    let partition = first[0].partition;
    assert_eq!(broker.committed_offset("g", "t", partition), Some(3));
    // The consumer's own position moved past everything it polled.
    assert!(consumer.poll(100, SHORT).await.is_empty());
    drop(consumer); // a crash before committing m3..m5

    let mut restarted = broker.consumer("g", &["t"]);
    let again = restarted.poll(100, SHORT).await;
    assert_eq!(types_of_key(&again, "k"), ["m3", "m4", "m5"]);
    assert_eq!(again[0].offset, 3);
    assert_eq!(
        again[0].message_id, messages[3].id,
        "the same message again"
    );
    for record in &again {
        restarted.commit(record);
    }
    assert_eq!(broker.committed_offset("g", "t", partition), Some(6));
    assert!(
        broker
            .consumer("g", &["t"])
            .poll(100, SHORT)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn poll_respects_max_and_interleaves_partitions() {
    let broker = InProcessBroker::new().with_default_partitions(4);
    let messages: Vec<_> = (0..40)
        .map(|i| msg("t", &format!("k{}", i % 8), "m"))
        .collect();
    ok(broker.publish(&messages).await);
    let partitions_used: BTreeSet<u32> = (0..8)
        .map(|i| OutboxMessage::slot_of(&format!("k{i}"), 4))
        .collect();

    let mut consumer = broker.consumer("g", &["t"]);
    let batch = consumer.poll(partitions_used.len(), SHORT).await;
    assert_eq!(batch.len(), partitions_used.len());
    let batch_partitions: BTreeSet<u32> = batch.iter().map(|r| r.partition).collect();
    assert_eq!(batch_partitions, partitions_used, "no partition starves");

    let mut all = batch;
    loop {
        let next = consumer.poll(7, SHORT).await;
        assert!(next.len() <= 7);
        if next.is_empty() {
            break;
        }
        all.extend(next);
    }
    assert_eq!(all.len(), 40, "every record once");
    let unique: BTreeSet<_> = all.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(unique.len(), 40);
    for partition in partitions_used {
        let offsets: Vec<u64> = all
            .iter()
            .filter(|r| r.partition == partition)
            .map(|r| r.offset)
            .collect();
        let expected: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(offsets, expected, "each partition in offset order");
    }
    assert!(consumer.poll(0, Duration::from_secs(10)).await.is_empty());
}

#[tokio::test]
async fn a_consumer_reads_several_topics_including_ones_created_later() {
    let broker = InProcessBroker::new();
    let mut consumer = broker.consumer("g", &["orders", "payments"]);
    assert_eq!(consumer.group(), "g");
    assert_eq!(consumer.topics(), ["orders", "payments"]);
    ok(broker
        .publish(&[
            msg("orders", "1", "order.placed"),
            msg("payments", "1", "payment.captured"),
            msg("other", "1", "ignored"),
        ])
        .await);
    let records = consumer.poll(10, SHORT).await;
    let topics: BTreeSet<&str> = records.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(topics, BTreeSet::from(["orders", "payments"]));
    assert_eq!(records.len(), 2);
}

/// The CPU time the current thread has used, where Linux tells it.
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime), in clock ticks of 1/100 s.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

#[tokio::test]
async fn poll_waits_for_a_record_published_later_without_busy_looping() {
    let broker = InProcessBroker::new();
    let mut consumer = broker.consumer("g", &["t"]);

    // Nothing comes: poll returns empty after about `wait`.
    let started = Instant::now();
    assert!(
        consumer
            .poll(10, Duration::from_millis(100))
            .await
            .is_empty()
    );
    assert!(started.elapsed() >= Duration::from_millis(90));

    // A record published later wakes the waiting poll long before its timeout.
    let publisher = broker.clone();
    let message = msg("t", "k", "late");
    let id = message.id;
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        publisher.publish(&[message]).await
    });
    let cpu_before = thread_cpu_time();
    let started = Instant::now();
    let records = consumer.poll(10, Duration::from_secs(20)).await;
    let waited = started.elapsed();
    let cpu_after = thread_cpu_time();

    assert_eq!(records.len(), 1);
    assert_eq!(records[0].message_id, id);
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    assert!(
        waited < Duration::from_secs(10),
        "woken by the publish: {waited:?}"
    );
    assert!(task.await.expect("publisher task")[0].is_ok());
    // The runtime is current-thread: the poll ran on this thread. Waiting on a notification
    // costs next to no CPU; a loop that kept checking for 400 ms would cost far more.
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        let used = after.saturating_sub(before);
        assert!(
            used < Duration::from_millis(150),
            "poll used {used:?} of CPU while waiting"
        );
    }
}

#[tokio::test]
async fn an_arc_of_a_publisher_is_a_publisher() {
    async fn relay_once<P: Publisher>(publisher: &P, messages: &[OutboxMessage]) -> usize {
        publisher
            .publish(messages)
            .await
            .iter()
            .filter(|r| r.is_ok())
            .count()
    }
    let broker = Arc::new(InProcessBroker::new());
    let delivered = relay_once(&broker, &[msg("t", "a", "1"), msg("t", "b", "2")]).await;
    assert_eq!(delivered, 2);
    assert_eq!(broker.records("t").len(), 2);
}
