//! Full buffers: an outbox backlog of 39 MiB of payloads piles up while the broker is down, then
//! drains when it comes back; two more backlogs of the same size follow. The relay claims its
//! batches from the database, so its resident memory (RSS, sampled every 20 ms and printed) does
//! not grow with the volume it has carried: after the third backlog it is within a few MiB of
//! what it was after the first (what stays is connection and allocator buffers, a plateau), and
//! every backlog is delivered whole, in order per key. A second test puts a slow consumer in front
//! of a 117 MiB backlog on the Kafka-protocol broker (see its doc).
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventfold::eventstore::{EventStore, ExpectedVersion, OutboxRouting, OutboxStore, UnitOfWork};
use eventfold::outbox::{
    Delivery, OutboxMessage, PublishError, Publisher, Relay, RelayConfig, headers,
};
use eventfold::{NewEvent, StreamId};
use tokio::sync::watch;

/// One event per stream: a claim takes the first row of each key in its window, so many keys
/// make the window, and `batch_size`, what bounds a claim.
const STREAMS: usize = 10_000;
const EVENTS_PER_STREAM: usize = 1;
const STREAMS_PER_COMMIT: usize = 100;
const PAYLOAD: usize = 4096;
/// How much the RSS may grow from the end of the first backlog to the end of the third (each
/// backlog is 39 MiB: memory that grew with the volume would add about 78 MiB).
const BOUND_MIB: u64 = 24;
const BACKLOGS: usize = 3;

/// A broker that is down until opened, then keeps only each key's versions (not the payloads,
/// which would be the test's own memory).
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    versions: Mutex<HashMap<String, Vec<u64>>>,
}

struct GatePublisher(Arc<Gate>);

impl Publisher for GatePublisher {
    async fn publish(&self, messages: &[OutboxMessage]) -> Vec<Result<Delivery, PublishError>> {
        if !self.0.open.load(Ordering::SeqCst) {
            return messages
                .iter()
                .map(|m| Err(PublishError::new(m, "broker unavailable", true)))
                .collect();
        }
        let mut versions = self.0.versions.lock().unwrap();
        messages
            .iter()
            .map(|m| {
                let list = versions.entry(m.key.clone()).or_default();
                list.push(m.headers[headers::STREAM_VERSION].parse().unwrap());
                Ok(Delivery {
                    topic: m.topic.clone(),
                    partition: 0,
                    offset: list.len() as u64,
                })
            })
            .collect()
    }
}

/// This process's resident memory, in KiB (`VmRSS` of `/proc/self/status`).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Samples the RSS every 20 ms until `stop`; returns the peak.
fn sample(stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !*stop.borrow() {
            peak = peak.max(rss_kib());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak.max(rss_kib())
    })
}

/// Appends backlog `round`: one event of [`PAYLOAD`] bytes to each of [`STREAMS`] new streams.
async fn write_backlog<S: EventStore>(store: &S, round: usize) {
    for chunk in 0..STREAMS / STREAMS_PER_COMMIT {
        let mut uow = store.begin().await.unwrap();
        for s in 0..STREAMS_PER_COMMIT {
            let stream = StreamId::new("blob", format!("b{round}-{chunk}-{s}").as_str()).unwrap();
            let events: Vec<NewEvent> = (0..EVENTS_PER_STREAM)
                .map(|_| NewEvent::raw("blob.stored", 1, vec![b'b'; PAYLOAD]))
                .collect();
            uow.append(&stream, ExpectedVersion::NoStream, events)
                .await
                .unwrap();
        }
        uow.commit().await.unwrap();
    }
}

/// Waits until the outbox is empty, nothing parked.
async fn drained<S: OutboxStore>(store: &S) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let status = store.outbox_status().await.unwrap();
        if status.pending == 0 {
            assert_eq!(status.dead_letters, 0, "nothing parked");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backlog did not drain: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Returns the RSS (KiB) before the outage, after each backlog, and the peak.
async fn relay_memory_stays_bounded(config: RelayConfig) -> (u64, Vec<u64>, u64) {
    let (store, _db) = common::postgres().await;
    let store = store.with_outbox(OutboxRouting::new());
    write_backlog(&store, 1).await;
    let total = STREAMS * EVENTS_PER_STREAM;
    assert_eq!(store.outbox_status().await.unwrap().pending as usize, total);
    let baseline = rss_kib();

    let gate = Arc::new(Gate::default());
    let (stop_relay, relay_stopped) = watch::channel(false);
    let relay = Relay::new(store.clone(), GatePublisher(gate.clone())).with_config(config);
    let relay = tokio::spawn(async move {
        let mut stopped = relay_stopped;
        relay
            .run(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    });
    let (stop_sampling, sampling) = watch::channel(false);
    let sampler = sample(sampling);

    // The outage: every publish fails, retriably, for 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        store.outbox_status().await.unwrap().pending as usize,
        total,
        "nothing left the outbox while the broker was down"
    );
    eprintln!("RSS at the end of the outage: {} MiB", rss_kib() / 1024);
    // The broker is back: the backlog drains; two more follow.
    gate.open.store(true, Ordering::SeqCst);
    drained(&store).await;
    let mut after = vec![rss_kib()];
    for round in 2..=BACKLOGS {
        write_backlog(&store, round).await;
        drained(&store).await;
        after.push(rss_kib());
    }
    stop_sampling.send(true).unwrap();
    let peak = sampler.await.unwrap();
    stop_relay.send(true).unwrap();
    relay.await.unwrap().unwrap();

    let versions = gate.versions.lock().unwrap();
    assert_eq!(versions.len(), STREAMS * BACKLOGS);
    for (key, list) in versions.iter() {
        let mut first = Vec::new();
        for v in list {
            if !first.contains(v) {
                first.push(*v);
            }
        }
        let expected: Vec<u64> = (1..=EVENTS_PER_STREAM as u64).collect();
        assert_eq!(first, expected, "key {key}: every event, in order");
    }
    (baseline, after, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlogs_behind_a_broker_outage_drain_without_memory_growing_with_volume() {
    // An outage longer than the attempts: retried, never parked.
    let config = RelayConfig {
        max_attempts: 1000,
        backoff_max: Duration::from_millis(200),
        ..RelayConfig::default()
    };
    let (batch, in_flight) = (config.batch_size, config.in_flight_batches);
    let (baseline, after, peak) = relay_memory_stays_bounded(config).await;
    let mib = |kib: u64| kib / 1024;
    let backlog = (STREAMS * EVENTS_PER_STREAM * PAYLOAD) as u64 / 1024;
    let grown = after[BACKLOGS - 1].saturating_sub(after[0]);
    eprintln!(
        "relay memory: {BACKLOGS} backlogs of {} MiB (the first behind a 3 s outage); RSS {} MiB before, after each backlog {:?} MiB, peak {} MiB; +{} MiB from the first backlog to the last (bound {BOUND_MIB} MiB); batches of {batch}, {in_flight} in flight",
        mib(backlog),
        mib(baseline),
        after.iter().map(|k| mib(*k)).collect::<Vec<_>>(),
        mib(peak),
        mib(grown),
    );
    assert!(
        mib(grown) < BOUND_MIB,
        "the relay's memory grew by {} MiB over {} more backlogs of {} MiB (bound {BOUND_MIB} MiB)",
        mib(grown),
        BACKLOGS - 1,
        mib(backlog)
    );
    println!(
        "FAULTS fault=broker_outage_backlog component=relay injected=backlogs:{BACKLOGS},backlog_mib:{},outage_secs:3 \
         checked=rss_growth_mib:{},peak_rss_mib:{},lost:0,order_violations:0,parked:0 result=pass",
        mib(backlog),
        mib(grown),
        mib(peak)
    );
}

/// A slow consumer in front of a large backlog: 3 x 5,000 records of 8 KiB (117 MiB) wait on the
/// Kafka-protocol broker, and a group consumer with its inbox in PostgreSQL works through them
/// with a handler that takes 1 ms a record. librdkafka prefetches into a bounded queue, the
/// consumer holds one polled batch at a time, so the RSS of this process (sampled every 20 ms)
/// stays below librdkafka's queue (`queued.max.messages.kbytes`, 64 MiB by default) plus 40 MiB
/// (its fetch buffers, the pool, the allocator) over what it was before, whatever the backlog, and must not grow by
/// [`BOUND_MIB`] or more from the end of the first third to the end of the last; every record
/// takes effect once.
#[cfg(all(feature = "kafka", feature = "postgres"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_before_a_large_backlog_keeps_its_memory_bounded() {
    use eventfold::eventstore::postgres::PgUnitOfWork;
    use eventfold::outbox::{Consumer, Handler, Record};

    const THIRD: usize = 5_000;
    // librdkafka's default `queued.max.messages.kbytes`: what a consumer prefetches at most.
    const PREFETCH_MIB: u64 = 64;
    // What else the process may hold at its peak: librdkafka's fetch buffers, the pool, the
    // allocator (76 MiB over the baseline in all measured on 2026-12-06; a handler that kept
    // every record: 170 MiB).
    const MARGIN_MIB: u64 = 40;
    const RECORD: usize = 8 * 1024;

    /// 1 ms a record, then a small effect event (the record's id as its causation) in the
    /// inbox's transaction.
    struct Slow;
    impl Handler<PgUnitOfWork> for Slow {
        async fn handle(
            &self,
            uow: &mut PgUnitOfWork,
            record: &Record,
        ) -> Result<(), eventfold::BoxError> {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let mut event = NewEvent::raw("ledger.noted", 1, b"{}".to_vec());
            event.causation_id = Some(record.message_id);
            uow.append(
                &StreamId::new("ledger", "all")?,
                ExpectedVersion::Any,
                vec![event],
            )
            .await?;
            Ok(())
        }
    }

    let brokers = common::kafka_bootstrap();
    let run = uuid::Uuid::now_v7().simple().to_string();
    let topic = format!("eventfold.test.slow-consumer.{run}");
    let publisher = common::crash::publisher_one_record_per_batch(&brokers);
    publisher
        .create_topics(&[(topic.as_str(), 2)])
        .await
        .unwrap_or_else(|e| panic!("creating topic {topic}: {e}"));
    for chunk in 0..(3 * THIRD) / 500 {
        let messages: Vec<OutboxMessage> = (0..500)
            .map(|i| {
                OutboxMessage::new(
                    topic.clone(),
                    format!("k{}", (chunk * 500 + i) % 64),
                    "blob.stored",
                    vec![b'b'; RECORD],
                )
            })
            .collect();
        for result in publisher.publish(&messages).await {
            result.unwrap_or_else(|e| panic!("publishing to {topic}: {e:?}"));
        }
    }

    let (store, _db) = common::postgres().await;
    let baseline = rss_kib();
    let source = common::crash::kafka_source(
        &brokers,
        &format!("slow-{run}"),
        &topic,
        Duration::from_secs(10),
        None,
    );
    let consumer = Consumer::new("slow", store.clone(), source, Slow).shared_commits(true);
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(consumer.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let (stop_sampling, sampling) = watch::channel(false);
    let sampler = sample(sampling);
    let effects = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM eventfold_events WHERE stream_type = 'ledger'",
        )
        .fetch_one(store.pool())
        .await
        .expect("count the effects") as usize
    };
    let mut after = Vec::new();
    let mut last = (0, std::time::Instant::now());
    for third in 1..=3 {
        loop {
            let done = effects().await;
            if done >= third * THIRD {
                break;
            }
            if done > last.0 {
                last = (done, std::time::Instant::now());
            }
            assert!(
                last.1.elapsed() < Duration::from_secs(60),
                "the consumer made no progress for 60 s ({done} of {} records)",
                3 * THIRD
            );
            assert!(
                !task.is_finished(),
                "the consumer stopped: {:?}",
                task.await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        after.push(rss_kib());
    }
    stop_sampling.send(true).unwrap();
    let peak = sampler.await.unwrap();
    stop.send(true).unwrap();
    task.await
        .unwrap()
        .expect("the consumer stops without an error");

    let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT causation_id FROM eventfold_events WHERE stream_type = 'ledger'",
    )
    .fetch_all(store.pool())
    .await
    .expect("the effects");
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(ids.len(), 3 * THIRD, "every record took effect");
    assert_eq!(unique.len(), ids.len(), "and only once");
    let mib = |kib: u64| kib / 1024;
    let grown = after[2].saturating_sub(after[0]);
    let backlog = (3 * THIRD * RECORD) as u64 / 1024 / 1024;
    eprintln!(
        "slow consumer: a backlog of {backlog} MiB; RSS {} MiB before, after each third {:?} MiB, peak {} MiB; +{} MiB from the first third to the last (bound {BOUND_MIB} MiB)",
        mib(baseline),
        after.iter().map(|k| mib(*k)).collect::<Vec<_>>(),
        mib(peak),
        mib(grown),
    );
    assert!(
        mib(peak.saturating_sub(baseline)) < PREFETCH_MIB + MARGIN_MIB,
        "the slow consumer's memory rose by {} MiB in front of a {backlog} MiB backlog (bound: \
         librdkafka's {PREFETCH_MIB} MiB queue + {MARGIN_MIB} MiB)",
        mib(peak.saturating_sub(baseline))
    );
    assert!(
        mib(grown) < BOUND_MIB,
        "the slow consumer's memory grew by {} MiB over the last two thirds of a {backlog} MiB backlog (bound {BOUND_MIB} MiB)",
        mib(grown)
    );
    println!(
        "FAULTS fault=slow_consumer component=consumer injected=backlog_mib:{backlog},records:{},handler_ms:1 \
         checked=rss_growth_mib:{},peak_rss_mib:{},lost:0,applied_twice:0 result=pass",
        3 * THIRD,
        mib(grown),
        mib(peak)
    );
}
