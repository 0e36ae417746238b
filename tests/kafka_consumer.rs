//! The consumer reading a real Kafka-protocol broker (tansu, started by `scripts/test.sh`)
//! through `KafkaSource` in a consumer group: every published message takes effect exactly once
//! in the PostgreSQL store (duplicates published by the relay are skipped by the inbox), the
//! offsets are committed, and a second consumer of the group resumes after them.
//!
//! The broker is `KAFKA_BOOTSTRAP` (default 127.0.0.1:9092); an unreachable broker fails the
//! test, it never skips it.
#![cfg(feature = "kafka")]
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::Ledger;
use eventfold::outbox::kafka::KafkaPublisher;
use eventfold::outbox::{
    Consumer, ConsumerReport, KafkaSource, MessageSource, OutboxMessage, Publisher,
};
use uuid::Uuid;

const PARTITIONS: i32 = 3;

fn payment(topic: &str, i: u32) -> OutboxMessage {
    OutboxMessage::new(
        topic,
        format!("p-{}", i % 17),
        "payment.captured",
        format!(r#"{{"n":{i}}}"#).into_bytes(),
    )
}

async fn publish(publisher: &KafkaPublisher, messages: &[OutboxMessage]) {
    for result in publisher.publish(messages).await {
        result.unwrap_or_else(|e| panic!("publishing: {e}"));
    }
}

/// A new topic `eventfold.test.{name}.{uuid}` of `partitions` partitions on `brokers`, and the
/// publisher that created it.
async fn new_topic(brokers: &str, name: &str, partitions: i32) -> (String, KafkaPublisher) {
    let topic = format!("eventfold.test.{name}.{}", Uuid::now_v7().simple());
    let publisher = KafkaPublisher::new(brokers).expect("a Kafka publisher");
    publisher
        .create_topics(&[(&topic, partitions)])
        .await
        .unwrap_or_else(|e| panic!("creating topic {topic}: {e}"));
    (topic, publisher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_consumer_takes_every_message_once_and_the_group_resumes() {
    let brokers = common::kafka_bootstrap();
    let (topic, publisher) = new_topic(&brokers, "payments", PARTITIONS).await;
    let group = format!("eventfold-test-ledger-{}", Uuid::now_v7().simple());

    let messages: Vec<_> = (0..200).map(|i| payment(&topic, i)).collect();
    publish(&publisher, &messages).await;
    publish(&publisher, &messages[..30]).await; // the relay published some twice

    let (store, _db) = common::postgres().await;
    let source = KafkaSource::new(&brokers, &group, &[&topic]).expect("a Kafka source");
    let handler = Ledger::default();
    let mut consumer = Consumer::new("ledger", store.clone(), source, handler);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut total = ConsumerReport::default();
    while total.handled + total.duplicates < 230 {
        assert!(
            Instant::now() < deadline,
            "230 records consumed from {topic} within 60 s: {total:?}"
        );
        let report = consumer
            .run_once(Duration::from_millis(500))
            .await
            .unwrap_or_else(|e| panic!("consuming {topic}: {e}"));
        total.handled += report.handled;
        total.duplicates += report.duplicates;
        total.parked += report.parked;
    }
    assert_eq!(
        (total.handled, total.duplicates, total.parked),
        (200, 30, 0),
        "every message handled once, the 30 republished ones skipped as duplicates"
    );
    let done = common::effects(&store).await;
    let unique: HashSet<_> = done.iter().copied().collect();
    let expected: HashSet<_> = messages.iter().map(|m| m.id).collect();
    assert_eq!(done.len(), 200, "every message took effect");
    assert_eq!(unique, expected, "and only once");
    drop(consumer); // leaves the group

    // A second consumer of the group: it resumes after the committed offsets, so it gets only
    // what is published now.
    let later: Vec<_> = (200..205).map(|i| payment(&topic, i)).collect();
    publish(&publisher, &later).await;
    let mut second = KafkaSource::new(&brokers, &group, &[&topic]).expect("a Kafka source");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut received = Vec::new();
    while received.len() < later.len() && Instant::now() < deadline {
        let records = second
            .poll(100, Duration::from_millis(500))
            .await
            .unwrap_or_else(|e| panic!("polling {topic}: {e}"));
        for record in &records {
            second.commit(record).await.expect("commit");
        }
        received.extend(records.into_iter().map(|r| r.message_id));
    }
    // Nothing more comes.
    let extra = second
        .poll(100, Duration::from_secs(1))
        .await
        .unwrap_or_else(|e| panic!("polling {topic}: {e}"));
    received.extend(extra.into_iter().map(|r| r.message_id));
    let later_ids: Vec<_> = later.iter().map(|m| m.id).collect();
    assert_eq!(
        received.iter().copied().collect::<HashSet<_>>(),
        later_ids.iter().copied().collect::<HashSet<_>>(),
        "the second consumer of the group got exactly the 5 new messages, nothing committed before"
    );
    assert_eq!(received.len(), 5, "each once");
    assert_eq!(common::effects(&store).await.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_reports_a_record_without_ce_id() {
    use eventfold::outbox::kafka::rdkafka::producer::FutureRecord;

    let brokers = common::kafka_bootstrap();
    let (topic, publisher) = new_topic(&brokers, "noid", 1).await;
    let good = payment(&topic, 1);
    publish(&publisher, std::slice::from_ref(&good)).await;
    publisher
        .producer()
        .send(
            FutureRecord::to(&topic).key("p-1").payload("{}"),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("producing: {e}"));
    let after = payment(&topic, 2);
    publish(&publisher, std::slice::from_ref(&after)).await;

    let group = format!("eventfold-test-noid-{}", Uuid::now_v7().simple());
    let mut source = KafkaSource::new(&brokers, &group, &[&topic]).expect("a Kafka source");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ids = Vec::new();
    let mut errors = Vec::new();
    while ids.len() < 2 && Instant::now() < deadline {
        match source.poll(100, Duration::from_millis(500)).await {
            Ok(records) => ids.extend(records.into_iter().map(|r| r.message_id)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert_eq!(ids, vec![good.id, after.id]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(&format!("{topic}/0@1")) && errors[0].contains("ce_id"),
        "the error names the record: {}",
        errors[0]
    );
}

/// `KafkaSource::commit_records` commits the offsets of several partitions in one request (the
/// consumer acknowledges a batch that way): a second source of the group resumes after each
/// committed partition's offset and reads again only the partition left uncommitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_commits_several_partitions_offsets_in_one_call() {
    let brokers = common::kafka_bootstrap();
    let (topic, publisher) = new_topic(&brokers, "commitall", PARTITIONS).await;
    let messages: Vec<_> = (0..60).map(|i| payment(&topic, i)).collect();
    publish(&publisher, &messages).await;

    let group = format!("eventfold-test-commitall-{}", Uuid::now_v7().simple());
    let mut first = KafkaSource::new(&brokers, &group, &[&topic]).expect("a Kafka source");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records = Vec::new();
    while records.len() < messages.len() {
        assert!(
            Instant::now() < deadline,
            "60 records polled from {topic} within 60 s: {}",
            records.len()
        );
        records.extend(
            first
                .poll(100, Duration::from_millis(500))
                .await
                .unwrap_or_else(|e| panic!("polling {topic}: {e}")),
        );
    }
    let mut partitions: Vec<u32> = records.iter().map(|r| r.partition).collect();
    partitions.sort_unstable();
    partitions.dedup();
    assert!(
        partitions.len() >= 2,
        "the 17 keys spread over several partitions: {partitions:?}"
    );
    // Commit every partition but the last one: for each, its middle record, then its last one
    // (the later of two records of a partition wins).
    let (kept, committed) = partitions.split_last().expect("partitions");
    let mut to_commit = Vec::new();
    for partition in committed {
        let of: Vec<_> = records
            .iter()
            .filter(|r| r.partition == *partition)
            .collect();
        to_commit.push(of[of.len() / 2]);
        to_commit.push(*of.last().expect("records of the partition"));
    }
    first
        .commit_records(&to_commit)
        .await
        .unwrap_or_else(|e| panic!("committing {topic}: {e}"));
    drop(first); // leaves the group

    let mut second = KafkaSource::new(&brokers, &group, &[&topic]).expect("a Kafka source");
    let expected: HashSet<_> = records
        .iter()
        .filter(|r| r.partition == *kept)
        .map(|r| r.message_id)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut again = Vec::new();
    while again.len() < expected.len() && Instant::now() < deadline {
        again.extend(
            second
                .poll(100, Duration::from_millis(500))
                .await
                .unwrap_or_else(|e| panic!("polling {topic}: {e}")),
        );
    }
    again.extend(
        second
            .poll(100, Duration::from_secs(1))
            .await
            .unwrap_or_else(|e| panic!("polling {topic}: {e}")),
    );
    assert!(
        again.iter().all(|r| r.partition == *kept),
        "only the uncommitted partition {kept} is read again: {:?}",
        again
            .iter()
            .map(|r| (r.partition, r.offset))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        again.iter().map(|r| r.message_id).collect::<HashSet<_>>(),
        expected,
        "all of partition {kept} is read again"
    );
    assert_eq!(again.len(), expected.len(), "each once");
}

/// A source reading a partition while several producers write to it gets every offset, in
/// order, with no gap: the broker must never serve a record beyond one it has numbered but not
/// yet stored. tansu's in-memory storage (`memory://`) does: a produce raises the partition's
/// high watermark before it stores its batch, and a fetch in between returns the next stored
/// batch, so a consumer moves past the missing offsets for good (the command the
/// `saga_crash` test once lost). `scripts/setup.sh` therefore runs the shared broker on tansu's
/// SQLite storage, whose produce numbers and stores a batch in one transaction (ADR 0035).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_written_by_concurrent_producers_is_read_while_written_without_gaps() {
    use eventfold::outbox::kafka::rdkafka::ClientConfig;

    const PRODUCERS: usize = 8;
    const PER_PRODUCER: u32 = 1500;
    const ROUND: usize = 10;
    let total = PRODUCERS * PER_PRODUCER as usize;
    let brokers = common::kafka_bootstrap();
    let (topic, _admin) = new_topic(&brokers, "gapless", 1).await;

    // The reader first: it joins its group and reads while the producers write.
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &brokers)
        .set(
            "group.id",
            format!("eventfold-test-gapless-{}", Uuid::now_v7().simple()),
        )
        .set("fetch.wait.max.ms", "1");
    let mut source = KafkaSource::from_config(config, &[&topic]).expect("a Kafka source");
    let reader = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut offsets = Vec::with_capacity(total);
        while offsets.len() < total && Instant::now() < deadline {
            let records = source
                .poll(500, Duration::from_millis(100))
                .await
                .unwrap_or_else(|e| panic!("polling: {e}"));
            offsets.extend(records.iter().map(|r| r.offset));
        }
        offsets
    });

    let writers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let brokers = brokers.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                let publisher = KafkaPublisher::new(&brokers).expect("a Kafka publisher");
                let messages: Vec<_> = (0..PER_PRODUCER)
                    .map(|i| payment(&topic, p as u32 * PER_PRODUCER + i))
                    .collect();
                // Small rounds: many produce requests, several in flight at once.
                for round in messages.chunks(ROUND) {
                    publish(&publisher, round).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("a producer task");
    }
    let offsets = reader.await.expect("the reader task");
    let jumps: Vec<(u64, u64)> = offsets
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .take(10)
        .collect();
    assert!(
        jumps.is_empty(),
        "offsets of {topic}/0 not read one after another (a broker serving a batch past one it \
         had numbered but not stored): {jumps:?}"
    );
    assert_eq!(
        offsets,
        (0..total as u64).collect::<Vec<_>>(),
        "every offset of {topic}/0 read once, in order"
    );
}
