//! The relay publishing a PostgreSQL outbox to a real Kafka-protocol broker (tansu, started by
//! `scripts/test.sh`) with the rdkafka publisher: every committed event is delivered in order
//! per key with its CloudEvents headers; a message larger than the producer's limit is parked as
//! a dead letter while its key waits and other keys flow, and skipping it resumes the key.
//!
//! The broker is `KAFKA_BOOTSTRAP` (default 127.0.0.1:9092); an unreachable broker fails the
//! tests, it never skips them.
#![cfg(feature = "kafka")]
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use eventfold::eventstore::{
    EventStore, ExpectedVersion, OutboxRelayStore, OutboxRouting, OutboxStore,
};
use eventfold::outbox::kafka::KafkaPublisher;
use eventfold::outbox::kafka::rdkafka::ClientConfig;
use eventfold::outbox::kafka::rdkafka::message::Message;
use eventfold::outbox::kafka_source::message_headers;
use eventfold::outbox::{Publisher, Relay, RelayConfig, headers};
use eventfold::{NewEvent, StreamId};
use uuid::Uuid;

const PARTITIONS: i32 = 3;

fn unique_topic(name: &str) -> String {
    format!("eventfold.test.{name}.{}", Uuid::now_v7().simple())
}

async fn create_topic(publisher: &KafkaPublisher, topic: &str) {
    // Twice: creating a topic that exists is fine.
    for _ in 0..2 {
        publisher
            .create_topics(&[(topic, PARTITIONS)])
            .await
            .unwrap_or_else(|e| panic!("creating topic {topic}: {e}"));
    }
}

fn config() -> RelayConfig {
    RelayConfig {
        batch_size: 100,
        max_attempts: 20,
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(100),
        ..RelayConfig::default()
    }
}

/// A consumed record.
#[derive(Debug, Clone)]
struct Consumed {
    key: String,
    partition: i32,
    headers: BTreeMap<String, String>,
    payload_len: usize,
}

impl Consumed {
    fn id(&self) -> Uuid {
        self.headers
            .get(headers::ID)
            .and_then(|id| id.parse().ok())
            .expect("a ce_id header")
    }

    fn version(&self) -> u64 {
        self.headers
            .get(headers::STREAM_VERSION)
            .and_then(|v| v.parse().ok())
            .expect("a ce_streamversion header")
    }
}

/// Reads `topic` from the beginning with a new consumer group until every id of `expected` was
/// seen (at most 60 s), then `grace` longer; returns the records in consumption order.
async fn consume(
    brokers: &str,
    topic: &str,
    expected: &HashSet<Uuid>,
    grace: Duration,
) -> Vec<Consumed> {
    let consumer = common::consumer_from_start(
        brokers,
        format!("eventfold-test-{}", Uuid::now_v7().simple()),
        topic,
        PARTITIONS,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = HashSet::new();
    let mut records = Vec::new();
    let mut grace_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let until = match grace_until {
            Some(until) => until,
            None if expected.is_subset(&seen) => *grace_until.insert(now + grace),
            None => deadline,
        };
        if now >= until {
            break;
        }
        let Some(message) = common::recv_before(&consumer, until, topic).await else {
            continue;
        };
        let record_headers = message_headers(&message);
        let record = Consumed {
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            partition: message.partition(),
            headers: record_headers,
            payload_len: message.payload().map_or(0, <[u8]>::len),
        };
        seen.insert(record.id());
        records.push(record);
    }
    let missing = expected.difference(&seen).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} published events were not consumed from {topic} within 60 s",
        expected.len()
    );
    records
}

/// Runs relay rounds until `done` says so (at most 60 s).
async fn relay_until<S, P, F>(relay: &mut Relay<S, P>, store: &S, what: &str, done: F)
where
    S: OutboxRelayStore,
    P: Publisher,
    F: Fn(&eventfold::eventstore::OutboxStatus) -> bool,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = store.outbox_status().await.expect("outbox status");
        if done(&status) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} within 60 s: {status:?}");
        relay.run_once().await.expect("relay round");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A Kafka publisher on `brokers` with these librdkafka `settings`.
fn publisher_with(brokers: &str, settings: &[(&str, &str)]) -> KafkaPublisher {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in settings {
        config.set(*key, *value);
    }
    KafkaPublisher::from_config(config).expect("a Kafka publisher")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_relay_delivers_every_event_in_order_per_key() {
    let brokers = common::kafka_bootstrap();
    let topic = unique_topic("orders");
    let publisher = KafkaPublisher::new(&brokers).expect("a Kafka publisher");
    create_topic(&publisher, &topic).await;

    let (store, _db) = common::postgres().await;
    let store = store.with_outbox(OutboxRouting::new().default_topic(topic.clone()));
    let mut appended: HashMap<Uuid, (String, u64)> = HashMap::new();
    let mut versions: HashMap<String, u64> = HashMap::new();
    for batch in 0..100u64 {
        let key = format!("order-{}", batch % 20);
        let version = versions.entry(key.clone()).or_insert(0);
        let events: Vec<NewEvent> = (0..5)
            .map(|i| NewEvent::raw("order.noted", 1, format!("{{\"i\":{i}}}").into_bytes()))
            .collect();
        for (i, event) in events.iter().enumerate() {
            appended.insert(event.event_id, (key.clone(), *version + i as u64 + 1));
        }
        let stream = StreamId::new("order", key.as_str()).expect("a stream id");
        store
            .append(&stream, ExpectedVersion::Exact(*version), events)
            .await
            .expect("append");
        *version += 5;
    }
    assert_eq!(appended.len(), 500);

    let mut relay = Relay::new(store.clone(), publisher).with_config(config());
    relay_until(&mut relay, &store, "the outbox drains", |s| s.pending == 0).await;
    assert_eq!(
        store.outbox_status().await.expect("status").dead_letters,
        0,
        "nothing was parked"
    );

    let expected: HashSet<Uuid> = appended.keys().copied().collect();
    let records = consume(&brokers, &topic, &expected, Duration::ZERO).await;
    let mut first_seen = HashSet::new();
    let mut last_version: BTreeMap<String, u64> = BTreeMap::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    for record in &records {
        for header in [headers::ID, headers::TYPE, headers::SOURCE] {
            assert!(
                record.headers.contains_key(header),
                "header {header} missing: {:?}",
                record.headers
            );
        }
        assert_eq!(record.headers[headers::TYPE], "order.noted");
        assert!(record.payload_len > 0);
        let id = record.id();
        if !first_seen.insert(id) {
            continue; // at-least-once: a duplicate is allowed, a gap or reordering is not
        }
        let (key, version) = &appended[&id];
        assert_eq!(&record.key, key, "the record key is the aggregate id");
        assert_eq!(record.version(), *version);
        common::assert_one_partition(&mut partition_of, &record.key, record.partition);
        let last = last_version.entry(record.key.clone()).or_insert(0);
        assert_eq!(
            record.version(),
            *last + 1,
            "key {} delivered version {} after {last}",
            record.key,
            record.version()
        );
        *last = record.version();
    }
    assert_eq!(first_seen.len(), 500);
    assert!(last_version.values().all(|v| *v == 25));
    eprintln!(
        "500 events over 20 keys delivered to {topic} in order per key ({} records, {} partitions used)",
        records.len(),
        partition_of.values().collect::<HashSet<_>>().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_relay_parks_a_too_large_message_and_its_key_waits() {
    let brokers = common::kafka_bootstrap();
    let topic = unique_topic("sizes");
    let publisher = publisher_with(&brokers, &[("message.max.bytes", "10000")]);
    create_topic(&publisher, &topic).await;

    let (store, _db) = common::postgres().await;
    let store = store.with_outbox(OutboxRouting::new().default_topic(topic.clone()));
    let small = || NewEvent::raw("order.noted", 1, b"{}".to_vec());
    let big_events = vec![
        small(),
        NewEvent::raw("order.noted", 1, vec![b'x'; 20_000]),
        small(),
    ];
    let big_ids: Vec<Uuid> = big_events.iter().map(|e| e.event_id).collect();
    let other_events = vec![small(), small()];
    let other_ids: Vec<Uuid> = other_events.iter().map(|e| e.event_id).collect();
    let big = StreamId::new("order", "big").expect("a stream id");
    let other = StreamId::new("order", "other").expect("a stream id");
    store
        .append(&big, ExpectedVersion::NoStream, big_events)
        .await
        .expect("append");
    store
        .append(&other, ExpectedVersion::NoStream, other_events)
        .await
        .expect("append");

    let mut relay = Relay::new(store.clone(), publisher).with_config(config());
    relay_until(
        &mut relay,
        &store,
        "the large message is parked and everything else but its key's next event is published",
        |s| s.dead_letters == 1 && s.pending == 1,
    )
    .await;
    // A few more rounds: the key stays blocked behind its dead letter.
    for _ in 0..3 {
        relay.run_once().await.expect("relay round");
    }
    let dead = store.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].row.message.id, big_ids[1]);
    eprintln!("dead letter: {}", dead[0].error);
    let error = dead[0].error.to_lowercase();
    assert!(
        error.contains("too large") || error.contains("size"),
        "the dead letter names the size: {}",
        dead[0].error
    );
    let waiting = store.read_outbox(10).await.expect("read outbox");
    assert_eq!(waiting.len(), 1);
    assert_eq!(
        waiting[0].message.id, big_ids[2],
        "the key's next event waits"
    );

    let first: HashSet<Uuid> = [big_ids[0], other_ids[0], other_ids[1]].into();
    let records = consume(&brokers, &topic, &first, Duration::from_secs(2)).await;
    let ids: HashSet<Uuid> = records.iter().map(Consumed::id).collect();
    assert_eq!(
        ids, first,
        "other keys flow; the blocked key's later event is not published"
    );

    // The operator skips the dead letter: the key resumes.
    assert!(store.skip_dead_letter(dead[0].row.seq).await.expect("skip"));
    relay_until(&mut relay, &store, "the key resumes", |s| {
        s.pending == 0 && s.dead_letters == 0
    })
    .await;
    let all: HashSet<Uuid> = [big_ids[0], big_ids[2], other_ids[0], other_ids[1]].into();
    let records = consume(&brokers, &topic, &all, Duration::from_secs(1)).await;
    let ids: HashSet<Uuid> = records.iter().map(Consumed::id).collect();
    assert_eq!(
        ids, all,
        "the skipped event is never published, the next one is"
    );
    let big_versions: Vec<u64> = records
        .iter()
        .filter(|r| r.key == "big")
        .map(Consumed::version)
        .collect();
    assert_eq!(big_versions, vec![1, 3]);
}

/// Issue 18: a broker without topic auto-creation and a topic nobody created yet. The relay's
/// rows are retried, not parked (Kafka's unknown topic or partition is retriable, as in Kafka's
/// own clients); once the topic exists every row is delivered in order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_relay_waits_for_a_topic_created_later_instead_of_parking() {
    let brokers = common::kafka_bootstrap();
    let topic = unique_topic("later");
    let publisher = publisher_with(
        &brokers,
        &[
            // librdkafka waits this long for an unknown topic to appear before failing a message.
            ("topic.metadata.propagation.max.ms", "300"),
            ("message.timeout.ms", "5000"),
        ],
    );
    let (store, _db) = common::postgres().await;
    let store = store.with_outbox(OutboxRouting::new().default_topic(topic.clone()));
    let mut expected = HashSet::new();
    for key in ["k-1", "k-2"] {
        let stream = StreamId::new("order", key).unwrap();
        for version in 0..3 {
            let event = NewEvent::raw("order.noted", 1, b"{}".to_vec());
            expected.insert(event.event_id);
            store
                .append(&stream, ExpectedVersion::Exact(version), vec![event])
                .await
                .expect("append");
        }
    }
    let mut relay = Relay::new(store.clone(), publisher.clone()).with_config(config());
    let mut retried = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while retried < 4 {
        assert!(Instant::now() < deadline, "no retried round within 30 s");
        let report = relay.run_once().await.expect("relay round");
        assert_eq!(report.published, 0, "the topic does not exist yet");
        assert_eq!(report.parked, 0, "an unknown topic is not parked");
        retried += report.retried;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = store.outbox_status().await.expect("outbox status");
    assert_eq!((status.pending, status.dead_letters), (6, 0), "{status:?}");

    create_topic(&publisher, &topic).await;
    relay_until(
        &mut relay,
        &store,
        "the outbox drains once the topic exists",
        |s| s.pending == 0,
    )
    .await;
    assert_eq!(store.outbox_status().await.unwrap().dead_letters, 0);
    let records = consume(&brokers, &topic, &expected, Duration::from_millis(200)).await;
    let mut last: HashMap<String, u64> = HashMap::new();
    for record in records.iter().filter(|r| expected.contains(&r.id())) {
        let previous = last
            .insert(record.key.clone(), record.version())
            .unwrap_or(0);
        assert!(
            record.version() > previous,
            "key {} in order: {} after {previous}",
            record.key,
            record.version()
        );
    }
}

/// Broker errors injected with librdkafka's mock cluster (three brokers, in this process): the
/// produce requests fail with retriable errors (not leader, timeouts, not enough replicas), which
/// librdkafka retries itself, and one broker goes down for longer than the message timeout (the
/// relay gets retriable failures and publishes those rows again once it is back), while the relay publishes 1,200 events of 30 keys. Every
/// event is delivered, each key's first deliveries in version order, nothing parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_relay_rides_out_broker_errors_injected_by_the_mock_cluster() {
    mock_cluster_outage(&[2]).await;
}

/// The whole mock cluster (its three brokers) stopped for longer than the message timeout in
/// the middle of the run and started again **with its data** (the mock keeps its partitions'
/// logs while its brokers are down): what was published before the outage is still there, what
/// waited in the outbox follows, every event delivered, each key's first deliveries in version
/// order, nothing parked. (tansu here keeps its log in memory only, which a restart loses: see
/// `tests/kafka_outage.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_relay_rides_out_a_whole_cluster_restart_with_its_data() {
    mock_cluster_outage(&[1, 2, 3]).await;
}

/// The mock-cluster run of the two tests above, with the brokers `down` taken down for 5 s after
/// the first relay rounds (produce errors injected before it).
async fn mock_cluster_outage(down: &[i32]) {
    use eventfold::outbox::kafka::rdkafka::mocking::MockCluster;
    use eventfold::outbox::kafka::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let mock = MockCluster::new(3).expect("a librdkafka mock cluster");
    let brokers = mock.bootstrap_servers();
    let topic = unique_topic("mocked");
    mock.create_topic(&topic, PARTITIONS, 3)
        .expect("a topic on the mock cluster");
    // Each broker leads one partition, so that broker 2 going down stops one partition.
    for partition in 0..PARTITIONS {
        mock.partition_leader(&topic, partition, Some(partition % 3 + 1))
            .expect("a partition leader");
    }
    let mut producer_config = ClientConfig::new();
    producer_config
        .set("bootstrap.servers", &brokers)
        .set("retry.backoff.ms", "10");
    // A message a down broker holds fails after 3 s (retriable), not the default 30 s.
    let publisher = KafkaPublisher::from_config(producer_config)
        .and_then(|p| p.with_message_timeout(Duration::from_secs(3)))
        .expect("a Kafka publisher");
    let started = Instant::now();

    let (store, _db) = common::postgres().await;
    let store = store.with_outbox(OutboxRouting::new().default_topic(topic.clone()));
    let keys = 30;
    let per_key = 40;
    let mut expected = HashSet::new();
    for round in 0..per_key / 10 {
        for k in 0..keys {
            let stream = StreamId::new("order", format!("m-{k}").as_str()).expect("a stream id");
            let events: Vec<NewEvent> = (0..10)
                .map(|_| NewEvent::raw("order.noted", 1, b"{}".to_vec()))
                .collect();
            expected.extend(events.iter().map(|e| e.event_id));
            store
                .append(&stream, ExpectedVersion::Exact(round * 10), events)
                .await
                .expect("append");
        }
    }

    // Errors the broker answers produce requests with, in turn, then a broker outage.
    let errors = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
    ];
    let injected: Vec<RDKafkaRespErr> = errors.iter().cycle().take(40).copied().collect();
    mock.request_errors(RDKafkaApiKey::Produce, &injected);
    let mut relay = Relay::new(store.clone(), publisher).with_config(config());
    for _ in 0..3 {
        relay.run_once().await.expect("relay round");
    }
    let before_outage =
        expected.len() as u64 - store.outbox_status().await.expect("outbox status").pending;
    assert!(
        before_outage > 0,
        "some events were published before the outage"
    );
    // Longer than the message timeout: what waits for a down broker fails (retriable) and is
    // published again once it is back.
    for broker in down {
        mock.broker_down(*broker).expect("broker down");
    }
    let outage = Instant::now();
    let mut timed_out = 0;
    while outage.elapsed() < Duration::from_secs(5) {
        timed_out += relay.run_once().await.expect("relay round").retried;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for broker in down {
        mock.broker_up(*broker).expect("broker up");
    }
    relay_until(&mut relay, &store, "the outbox drains", |s| s.pending == 0).await;
    let status = store.outbox_status().await.expect("outbox status");
    assert_eq!(
        status.dead_letters, 0,
        "nothing parked: every error was retriable"
    );
    let relayed = started.elapsed();
    assert!(
        timed_out > 0,
        "the outage made some publications fail (it lasted longer than the message timeout)"
    );

    let records = consume(&brokers, &topic, &expected, Duration::from_millis(500)).await;
    let mut first: HashMap<String, Vec<u64>> = HashMap::new();
    let mut seen = HashSet::new();
    for record in &records {
        if seen.insert(record.id()) {
            first
                .entry(record.key.clone())
                .or_default()
                .push(record.version());
        }
    }
    assert_eq!(seen, expected, "every event delivered");
    for (key, versions) in &first {
        let in_order: Vec<u64> = (1..=per_key).collect();
        assert_eq!(
            versions, &in_order,
            "key {key}: first deliveries in version order"
        );
    }
    let fault = if down.len() == 3 {
        "cluster_restart_with_data"
    } else {
        "broker_errors"
    };
    println!(
        "FAULTS fault={fault} component=kafka_relay injected=produce_errors:{},brokers_down:{},down_secs:5,failed_publishes:{timed_out} \
         checked=events:{},published_before_outage:{before_outage},lost:0,order_violations:0,parked:0 result=pass",
        injected.len(),
        down.len(),
        expected.len()
    );
    eprintln!(
        "mock cluster: {} produce errors injected ({} kinds) and brokers {down:?} down for 5 s ({timed_out} publications failed retriably meanwhile); {} events of {keys} keys delivered ({} records, {before_outage} of them published before the outage), in order per key; relayed in {relayed:?}, consumed by {:?}",
        injected.len(),
        errors.len(),
        expected.len(),
        records.len(),
        started.elapsed()
    );
}
