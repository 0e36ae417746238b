//! The `relay` section: how fast one outbox [`Relay`] drains a PostgreSQL backlog to Kafka,
//! next to a raw rdkafka producer sending the same messages, the process's RSS during the drain,
//! and the commit-to-broker-ack latency at a steady offered load.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventfold_core::{NewEvent, StreamId};
use eventfold_eventstore::postgres::PgStore;
use eventfold_eventstore::{EventStore, ExpectedVersion, OutboxRouting, OutboxStore};
use eventfold_outbox::kafka::KafkaPublisher;
use eventfold_outbox::kafka::rdkafka::ClientConfig;
use eventfold_outbox::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use eventfold_outbox::{Delivery, OutboxMessage, PublishError, Publisher, Relay, RelayConfig};
use sqlx::PgPool;
use uuid::Uuid;

use crate::report::met_or_missed;
use crate::{Options, Result, timed};

mod report;

/// Throughput target of the issue: events/s drained by one relay.
const DRAIN_TARGET: f64 = 50_000.0;
/// Latency target: p99 commit-to-ack.
const LATENCY_TARGET_MS: f64 = 25.0;
/// Batch sizes of the drain.
const BATCH_SIZES: [usize; 3] = [500, 1000, 2000];
/// Distinct keys of the backlog.
const KEYS: usize = 10_000;
/// Outbox slots (the store's `OUTBOX_SLOTS`).
const SLOTS: u32 = 256;
/// Partitions of the bench topics.
const PARTITIONS: i32 = 12;
/// Rows per fill statement.
const FILL_CHUNK: usize = 10_000;
/// Payload size of the backlog messages.
const PAYLOAD_BYTES: usize = 100;
/// In-flight bound of the raw producer.
const RAW_IN_FLIGHT: usize = 10_000;
/// Offered load of the latency test (events/s, all writers together).
const LATENCY_RATE: f64 = 2000.0;
/// Writer tasks of the latency test.
const LATENCY_WRITERS: usize = 8;
/// Streams each latency writer cycles over.
const LATENCY_STREAMS_PER_WRITER: usize = 50;
/// Load before the latency tests measure (the same load, not counted): the pool opens its
/// connections and prepares its statements, the producer connects to every partition leader.
const LATENCY_WARMUP: Duration = Duration::from_secs(1);
/// Longest wait for the last acks after the writers stop.
const LATENCY_DRAIN: Duration = Duration::from_secs(15);

const FILL_SQL: &str = "INSERT INTO eventfold_outbox (id, aggregatetype, aggregateid, type, payload, topic, key, headers, slot) \
     SELECT gen_random_uuid(), 'bench', k.key, 'bench.event', $3, $4, k.key, '{}'::jsonb, k.slot \
     FROM UNNEST($1::text[], $2::int4[]) WITH ORDINALITY AS k(key, slot, ord) ORDER BY k.ord";

/// The Kafka bootstrap servers (`KAFKA_BOOTSTRAP`, default 127.0.0.1:9092).
pub(crate) fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn key(i: usize) -> String {
    format!("bench-key-{:05}", i % KEYS)
}

fn payload() -> Vec<u8> {
    let mut p = br#"{"bench":"relay","filler":""#.to_vec();
    while p.len() < PAYLOAD_BYTES - 2 {
        p.push(b'x');
    }
    p.extend_from_slice(br#""}"#);
    p
}

/// One drain of the backlog by the relay, and the raw producer beside it.
pub(crate) struct Drain {
    batch_size: usize,
    rows: u64,
    fill_s: f64,
    relay_s: f64,
    /// Time spent in `publish` (Kafka); the rest of `relay_s` is claim/delete in PostgreSQL.
    publish_s: f64,
    rounds: u64,
    raw_s: f64,
    rss_before_kib: u64,
    rss_max_kib: u64,
    rss_after_kib: u64,
}

impl Drain {
    fn relay_rate(&self) -> f64 {
        self.rows as f64 / self.relay_s
    }
    fn raw_rate(&self) -> f64 {
        self.rows as f64 / self.raw_s
    }
}

#[derive(Default)]
pub(crate) struct Latency {
    seconds: f64,
    appended: usize,
    acked: usize,
    /// Sorted, ms.
    ms: Vec<f64>,
    /// Commit to the start of the `publish` call that carried the event (sorted, ms): the
    /// relay's wake-up and claim; the rest of `ms` is the broker round trip.
    to_publish_ms: Vec<f64>,
    /// Per message, `publish` call → its batch acknowledged (sorted, ms).
    in_publish_ms: Vec<f64>,
}

pub(crate) struct RelayResults {
    rows: u64,
    drains: Vec<Drain>,
    latency: Latency,
    /// The raw producer's send-to-ack latency at the same offered load (sorted, ms).
    raw_latency_ms: Vec<f64>,
    /// The same while the latency test's writers append (no relay): the floor on this machine
    /// under the same database load (sorted, ms).
    loaded_raw_latency_ms: Vec<f64>,
}

/// The resident set size of this process (KiB), from `/proc/self/status` (0 when unknown).
fn rss_kib() -> u64 {
    crate::global_log::rss_kib().unwrap_or(0)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The p50, p90, p99 and max cells of a latency row (`sorted` in ms), the p99 followed by
/// `verdict` when given.
fn spread(sorted: &[f64], verdict: Option<&str>) -> String {
    let p99 = match verdict {
        Some(v) => format!("{:.1} ({v})", percentile(sorted, 0.99)),
        None => format!("{:.1}", percentile(sorted, 0.99)),
    };
    format!(
        "{:.1} | {:.1} | {p99} | {:.1}",
        percentile(sorted, 0.50),
        percentile(sorted, 0.90),
        sorted.last().copied().unwrap_or(f64::NAN)
    )
}

async fn fill(pool: &PgPool, topic: &str, rows: u64) -> Result<f64> {
    let started = Instant::now();
    let keys: Vec<String> = (0..FILL_CHUNK).map(key).collect();
    let slots: Vec<i32> = keys
        .iter()
        .map(|k| OutboxMessage::slot_of(k, SLOTS) as i32)
        .collect();
    let payload = payload();
    let mut left = rows as usize;
    while left > 0 {
        let n = left.min(FILL_CHUNK);
        sqlx::query(FILL_SQL)
            .bind(&keys[..n])
            .bind(&slots[..n])
            .bind(&payload)
            .bind(topic)
            .execute(pool)
            .await
            .map_err(|e| format!("filling the outbox: {e}"))?;
        left -= n;
    }
    sqlx::query("ANALYZE eventfold_outbox")
        .execute(pool)
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

/// The producer of the raw baseline, configured like `KafkaPublisher::from_config`.
pub(crate) fn raw_producer(brokers: &str) -> Result<FutureProducer> {
    let producer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "1")
        .set("compression.type", "none")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "30000")
        .create::<FutureProducer>()?;
    Ok(producer)
}

/// Sends `rows` messages (same keys and payloads as the backlog) with at most
/// [`RAW_IN_FLIGHT`] unacknowledged; the seconds it took.
async fn raw_send(producer: &FutureProducer, topic: &str, rows: u64) -> Result<f64> {
    let payload = payload();
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    let started = Instant::now();
    let mut in_flight = VecDeque::with_capacity(RAW_IN_FLIGHT);
    for i in 0..rows as usize {
        if in_flight.len() >= RAW_IN_FLIGHT {
            let delivery: eventfold_outbox::kafka::rdkafka::producer::DeliveryFuture =
                in_flight.pop_front().ok_or("empty in-flight queue")?;
            delivery
                .await
                .map_err(|_| "raw producer: delivery canceled")?
                .map_err(|(e, _)| format!("raw producer: {e}"))?;
        }
        let record = FutureRecord::to(topic)
            .key(keys[i % KEYS].as_str())
            .payload(payload.as_slice());
        match producer.send_result(record) {
            Ok(delivery) => in_flight.push_back(delivery),
            Err((e, _)) => return Err(format!("raw producer enqueue: {e}").into()),
        }
    }
    while let Some(delivery) = in_flight.pop_front() {
        delivery
            .await
            .map_err(|_| "raw producer: delivery canceled")?
            .map_err(|(e, _)| format!("raw producer: {e}"))?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The floor under the relay's latency: the raw producer sends one message per tick at
/// `LATENCY_RATE` (keys and payloads as in the backlog) and measures each send-to-ack time.
async fn raw_latency(
    producer: &FutureProducer,
    publisher: &KafkaPublisher,
    seconds: f64,
    load: Option<&PgStore>,
) -> Result<Vec<f64>> {
    let topic = format!("eventfold.bench.rawlatency.{}", Uuid::now_v7().simple());
    publisher
        .create_topics(&[(topic.as_str(), PARTITIONS)])
        .await?;
    let writers = load.map(|store| spawn_writers(store, seconds));
    let payload = payload();
    let period = Duration::from_secs_f64(1.0 / LATENCY_RATE);
    let mut ticker = tokio::time::interval(period);
    let measured_from = Instant::now() + LATENCY_WARMUP;
    let end = measured_from + Duration::from_secs_f64(seconds);
    let mut waiting = Vec::new();
    let mut i = 0usize;
    while Instant::now() < end {
        ticker.tick().await;
        let k = key(i);
        let record = FutureRecord::to(&topic)
            .key(k.as_str())
            .payload(payload.as_slice());
        i += 1;
        let sent = Instant::now();
        match producer.send_result(record) {
            Ok(delivery) => waiting.push(tokio::spawn(async move {
                delivery
                    .await
                    .map_err(|_| "raw producer: delivery canceled".to_owned())?
                    .map_err(|(e, _)| format!("raw producer: {e}"))?;
                // Sends of the warm-up are delivered but not counted.
                Ok::<Option<f64>, String>(
                    (sent >= measured_from).then(|| sent.elapsed().as_secs_f64() * 1000.0),
                )
            })),
            Err((e, _)) => return Err(format!("raw producer enqueue: {e}").into()),
        }
    }
    let mut ms = Vec::with_capacity(waiting.len());
    for task in waiting {
        ms.extend(task.await??);
    }
    for writer in writers.into_iter().flatten() {
        writer.await??;
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

async fn drain(
    pool: &PgPool,
    store: &PgStore,
    publisher: &KafkaPublisher,
    producer: &FutureProducer,
    batch_size: usize,
    rows: u64,
) -> Result<Drain> {
    let tag = Uuid::now_v7().simple();
    let topic = format!("eventfold.bench.relay.b{batch_size}.{tag}");
    let raw_topic = format!("eventfold.bench.raw.b{batch_size}.{tag}");
    publisher
        .create_topics(&[
            (topic.as_str(), PARTITIONS),
            (raw_topic.as_str(), PARTITIONS),
        ])
        .await?;
    eprintln!("relay: filling the outbox with {rows} rows (batch size {batch_size})");
    let fill_s = fill(pool, &topic, rows).await?;
    let pending = store.outbox_status().await?.pending;
    if pending != rows {
        return Err(format!("outbox holds {pending} rows after the fill, expected {rows}").into());
    }
    eprintln!("relay: filled in {fill_s:.1} s; draining");
    let rss_before_kib = rss_kib();
    let mut rss_max_kib = rss_before_kib;
    let timed = Timed {
        inner: publisher.clone(),
        nanos: Arc::default(),
        calls: Arc::default(),
        delivered: Arc::default(),
        target: rows,
        done: Arc::default(),
    };
    let relay = Relay::new(store.clone(), timed.clone()).with_config(RelayConfig {
        batch_size,
        ..RelayConfig::default()
    });
    let started = Instant::now();
    // `Relay::run`, the production loop, stopped once every row was acknowledged; it then
    // settles the batches in flight and releases its slots.
    let done = timed.done.clone();
    let running = tokio::spawn(relay.run(async move { done.notified().await }));
    tokio::pin!(running);
    let deadline = tokio::time::sleep(Duration::from_secs(600));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            joined = &mut running => {
                joined??;
                break;
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                rss_max_kib = rss_max_kib.max(rss_kib());
            }
            () = &mut deadline => return Err("relay drain did not finish in 600 s".into()),
        }
    }
    let relay_s = started.elapsed().as_secs_f64();
    let publish_s = timed.nanos.load(Ordering::Relaxed) as f64 / 1_000_000_000.0;
    let rounds = timed.calls.load(Ordering::Relaxed);
    let published = timed.delivered.load(Ordering::Relaxed);
    let pending = store.outbox_status().await?.pending;
    if pending > 0 {
        return Err(format!("{pending} rows left in the outbox after the drain").into());
    }
    let rss_after_kib = rss_kib();
    if published < rows {
        return Err(format!("relay published {published} of {rows} rows").into());
    }
    eprintln!(
        "relay: drained in {relay_s:.1} s ({:.0}/s); raw producer",
        rows as f64 / relay_s
    );
    let raw_s = raw_send(producer, &raw_topic, rows).await?;
    eprintln!(
        "relay: raw producer {raw_s:.1} s ({:.0}/s)",
        rows as f64 / raw_s
    );
    Ok(Drain {
        batch_size,
        rows,
        fill_s,
        relay_s,
        publish_s,
        rounds,
        raw_s,
        rss_before_kib,
        rss_max_kib,
        rss_after_kib,
    })
}

/// A publisher that counts calls, acknowledged messages and the time spent in `publish`
/// (summed over calls, which overlap), and signals `done` once `target` messages were
/// acknowledged.
#[derive(Clone)]
struct Timed {
    inner: KafkaPublisher,
    nanos: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
    target: u64,
    done: Arc<tokio::sync::Notify>,
}

impl Publisher for Timed {
    async fn publish(&self, messages: &[OutboxMessage]) -> Vec<Result<Delivery, PublishError>> {
        let started = Instant::now();
        let results = self.inner.publish(messages).await;
        self.nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
        if self.delivered.fetch_add(ok, Ordering::Relaxed) + ok >= self.target {
            self.done.notify_one();
        }
        results
    }
}

/// A publisher that records when each message was acknowledged.
struct AckClock {
    inner: KafkaPublisher,
    /// Per message id: when the `publish` call started, when it returned Ok.
    acks: Arc<Mutex<HashMap<Uuid, (Instant, Instant)>>>,
}

impl Publisher for AckClock {
    async fn publish(&self, messages: &[OutboxMessage]) -> Vec<Result<Delivery, PublishError>> {
        let started = Instant::now();
        let results = self.inner.publish(messages).await;
        let at = Instant::now();
        let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        for (m, r) in messages.iter().zip(&results) {
            if r.is_ok() {
                acks.entry(m.id).or_insert((started, at));
            }
        }
        results
    }
}

type Writer = tokio::task::JoinHandle<Result<timed::Sent>>;

/// The latency tests' load: [`LATENCY_WRITERS`] tasks appending one event per call to `store`
/// at [`LATENCY_RATE`] in total for [`LATENCY_WARMUP`] and then `seconds`; each returns the ids
/// and commit instants of its events after the warm-up.
fn spawn_writers(store: &PgStore, seconds: f64) -> Vec<Writer> {
    let start = Instant::now() + Duration::from_millis(10);
    let measured_from = start + LATENCY_WARMUP;
    let end = measured_from + Duration::from_secs_f64(seconds);
    let store = Arc::new(store.clone());
    let payload = Arc::new(payload());
    timed::paced(
        LATENCY_WRITERS,
        LATENCY_RATE,
        start,
        end,
        move |w, k, tick| {
            let (store, payload) = (store.clone(), payload.clone());
            async move {
                let stream = StreamId::new(
                    "benchrelay",
                    format!("w{w}-s{}", k % LATENCY_STREAMS_PER_WRITER),
                )?;
                let event = NewEvent::raw("bench.relay", 1, payload.to_vec());
                let id = event.event_id;
                store
                    .append(&stream, ExpectedVersion::Any, vec![event])
                    .await?;
                Ok(if tick >= measured_from {
                    vec![(id, Instant::now())]
                } else {
                    Vec::new()
                })
            }
        },
    )
}

async fn latency(pool: &PgPool, publisher: &KafkaPublisher, seconds: f64) -> Result<Latency> {
    let topic = format!("eventfold.bench.latency.{}", Uuid::now_v7().simple());
    publisher
        .create_topics(&[(topic.as_str(), PARTITIONS)])
        .await?;
    let store = PgStore::builder(pool.clone())
        .build()
        .await?
        .with_outbox(OutboxRouting::new().default_topic(topic.clone()));
    let acks = Arc::new(Mutex::new(HashMap::new()));
    let relay = Relay::new(
        store.clone(),
        AckClock {
            inner: publisher.clone(),
            acks: acks.clone(),
        },
    )
    .with_config(RelayConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(relay.run(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let handles = spawn_writers(&store, seconds);
    let (committed, first_error) = timed::join_paced(handles).await;
    let deadline = Instant::now() + LATENCY_DRAIN;
    while Instant::now() < deadline {
        let acked = {
            let acks = acks.lock().unwrap_or_else(|e| e.into_inner());
            committed.keys().filter(|id| acks.contains_key(id)).count()
        };
        if acked == committed.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    relay.await??;
    if let Some(e) = first_error {
        return Err(format!("latency writer failed: {e}").into());
    }
    let acks = acks.lock().unwrap_or_else(|e| e.into_inner());
    let since =
        |later: Instant, at: &Instant| later.saturating_duration_since(*at).as_secs_f64() * 1000.0;
    let mut ms: Vec<f64> = committed
        .iter()
        .filter_map(|(id, at)| acks.get(id).map(|(_, ack)| since(*ack, at)))
        .collect();
    ms.sort_by(f64::total_cmp);
    let mut to_publish_ms: Vec<f64> = committed
        .iter()
        .filter_map(|(id, at)| acks.get(id).map(|(started, _)| since(*started, at)))
        .collect();
    to_publish_ms.sort_by(f64::total_cmp);
    let mut in_publish_ms: Vec<f64> = committed
        .keys()
        .filter_map(|id| acks.get(id).map(|(started, ack)| since(*ack, started)))
        .collect();
    in_publish_ms.sort_by(f64::total_cmp);
    Ok(Latency {
        seconds,
        appended: committed.len(),
        acked: ms.len(),
        ms,
        to_publish_ms,
        in_publish_ms,
    })
}

/// Runs the section.
pub(crate) async fn run(pool: &PgPool, options: &Options) -> Result<RelayResults> {
    let brokers = bootstrap();
    let store = PgStore::builder(pool.clone()).build().await?;
    let publisher = KafkaPublisher::new(&brokers)?;
    let producer = raw_producer(&brokers)?;
    // The latency test runs first, on the fresh database and broker: the drains leave GBs of
    // WAL for the next checkpoint, millions of dead tuples in the outbox and millions of
    // messages in tansu's in-memory storage, a state that a service under a steady 2k/s does
    // not reach, and whose checkpoint and vacuum stalls would be measured instead of the relay.
    // The raw producer baselines are measured right after it, in the same state.
    sqlx::query("CHECKPOINT").execute(pool).await?;
    eprintln!(
        "relay latency: {LATENCY_RATE:.0} events/s for {} s",
        options.relay_latency_seconds
    );
    let latency = latency(pool, &publisher, options.relay_latency_seconds).await?;
    eprintln!("relay latency: raw producer at the same rate");
    let seconds = options.relay_latency_seconds;
    let raw_latency_ms = raw_latency(&producer, &publisher, seconds, None).await?;
    eprintln!("relay latency: raw producer at the same rate beside the writers (no relay)");
    // The writers append to an outbox no relay reads, as in the relay's test; emptied after.
    let load = PgStore::builder(pool.clone())
        .build()
        .await?
        .with_outbox(OutboxRouting::new().default_topic("eventfold.bench.unrelayed"));
    let loaded_raw_latency_ms = raw_latency(&producer, &publisher, seconds, Some(&load)).await?;
    sqlx::query("TRUNCATE eventfold_outbox")
        .execute(pool)
        .await?;
    let mut drains = Vec::new();
    for batch_size in BATCH_SIZES {
        drains.push(
            drain(
                pool,
                &store,
                &publisher,
                &producer,
                batch_size,
                options.relay_rows,
            )
            .await?,
        );
    }
    sqlx::query("TRUNCATE eventfold_outbox")
        .execute(pool)
        .await?;
    Ok(RelayResults {
        rows: options.relay_rows,
        drains,
        latency,
        raw_latency_ms,
        loaded_raw_latency_ms,
    })
}
