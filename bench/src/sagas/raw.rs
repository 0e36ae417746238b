//! The raw baselines of the `sagas` section: autocommit `INSERT`s of one row per transaction on
//! PostgreSQL and on SQLite, by `tasks` tasks on connections of their own: the commit ceiling
//! of this machine, measured in the same run as the sagas.

use super::*;

const RAW_INSERT_PG: &str = "INSERT INTO saga_raw_commits (id, payload) VALUES ($1, $2)";
const RAW_INSERT_LITE: &str = "INSERT INTO saga_raw_commits (id, payload) VALUES (?1, ?2)";
const RAW_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS saga_raw_commits (id uuid PRIMARY KEY, payload text NOT NULL)";
const RAW_TABLE_LITE: &str =
    "CREATE TABLE IF NOT EXISTS saga_raw_commits (id BLOB PRIMARY KEY, payload TEXT NOT NULL)";

/// The window of a raw baseline: a short warm-up, then `seconds`.
fn raw_window(seconds: f64) -> (Instant, Instant) {
    let from = Instant::now() + Duration::from_millis(300);
    (from, from + Duration::from_secs_f64(seconds))
}

/// `tasks` tasks, each on a pooled connection of its own, insert one row per autocommit
/// statement (`$insert`) until the window of `seconds` ends; the commits per second inside it.
/// A macro, not a generic function: sqlx's executor bounds differ per database (ADR 0018).
macro_rules! inserts {
    ($pool:expr, $tasks:expr, $seconds:expr, $insert:expr) => {{
        let (from, to) = raw_window($seconds);
        let mut handles = Vec::with_capacity($tasks);
        for _ in 0..$tasks {
            let mut conn = $pool.acquire().await?;
            handles.push(tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    sqlx::query($insert)
                        .bind(Uuid::now_v7())
                        .bind("x")
                        .execute(&mut *conn)
                        .await?;
                    let now = Instant::now();
                    if now > to {
                        return Ok(n);
                    }
                    n += u64::from(now >= from);
                }
            }));
        }
        raw_rate(handles, $seconds).await
    }};
}

/// Sums the inserts the tasks completed inside the window; commits per second.
async fn raw_rate(handles: Vec<tokio::task::JoinHandle<Result<u64>>>, seconds: f64) -> Result<f64> {
    let mut total = 0;
    for handle in handles {
        total += handle.await??;
    }
    Ok(total as f64 / seconds)
}

/// `tasks` tasks, each on a connection of its own, doing autocommit `INSERT`s of one row.
pub(super) async fn raw_postgres(
    connect: &PgConnectOptions,
    tasks: usize,
    seconds: f64,
) -> Result<f64> {
    let pool = PgPoolOptions::new()
        .max_connections(tasks as u32)
        .connect_with(connect.clone())
        .await?;
    sqlx::query(RAW_TABLE).execute(&pool).await?;
    let rate = inserts!(pool, tasks, seconds, RAW_INSERT_PG);
    sqlx::query("DROP TABLE saga_raw_commits")
        .execute(&pool)
        .await?;
    pool.close().await;
    rate
}

/// The same on a temporary SQLite file opened like `SqliteStore::connect` opens one.
pub(super) async fn raw_sqlite(tasks: usize, seconds: f64) -> Result<f64> {
    sqlite_file::with_temp_file("raw", |path| async move {
        let pool = SqlitePoolOptions::new()
            .max_connections(tasks as u32)
            .connect_with(sqlite_file::store_connect_options(&path)?)
            .await?;
        sqlx::query(RAW_TABLE_LITE).execute(&pool).await?;
        let rate = inserts!(pool, tasks, seconds, RAW_INSERT_LITE);
        pool.close().await;
        rate
    })
    .await
}

/// Hops through the broker on a saga's path, one saga at a time: three commands and three
/// replies, each published by the relay and received by a consumer.
pub(super) const BROKER_HOPS: usize = 6;

/// The floor under the one-at-a-time latency through the broker: a saga's [`BROKER_HOPS`]
/// hops in a row through the same broker with no database, no relay and no inbox. Four fresh
/// topics of [`PARTITIONS`] partitions, each read by a consumer of its own group configured like
/// the variant's (`fetch.wait.max.ms` = `fetch_wait_ms`, or librdkafka's default), as the
/// orders service and the three participants read theirs; a hop is a message produced with the
/// publisher's settings (`raw_producer`: idempotent, `acks=all`, `linger.ms=1`), acknowledged,
/// then received by its topic's consumer, in the saga's order (inventory, orders, payments,
/// orders, shipping, orders). Each round's time (sorted, ms), rounds for `seconds` after one
/// unmeasured round (the consumers joining their groups).
pub(super) async fn raw_broker_hops(
    brokers: &str,
    fetch_wait_ms: Option<u64>,
    seconds: f64,
) -> Result<Vec<f64>> {
    use eventfold_outbox::kafka::rdkafka::Message as _;
    use eventfold_outbox::kafka::rdkafka::consumer::{Consumer as _, StreamConsumer};
    use eventfold_outbox::kafka::rdkafka::producer::FutureRecord;

    let tag = Uuid::now_v7().simple().to_string();
    let topics: Vec<String> = ["orders", "inventory", "payments", "shipping"]
        .iter()
        .map(|name| format!("eventfold.bench.hops.{name}.{tag}"))
        .collect();
    let partitions: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), PARTITIONS)).collect();
    KafkaPublisher::new(brokers)?
        .create_topics(&partitions)
        .await?;
    let producer = crate::relay::raw_producer(brokers)?;
    let mut consumers = Vec::new();
    for topic in &topics {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("bench-hops-{topic}"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        if let Some(ms) = fetch_wait_ms {
            config.set("fetch.wait.max.ms", ms.to_string());
        }
        let consumer: StreamConsumer = config.create()?;
        consumer.subscribe(&[topic.as_str()])?;
        consumers.push(consumer);
    }
    // The topic of each hop: a command to a participant, its reply to the orders service.
    const PATH: [usize; BROKER_HOPS] = [1, 0, 2, 0, 3, 0];
    // One hop: produce to the topic, wait for the acknowledgement, receive that record.
    let hop = |n: u64, to: usize| {
        let (producer, consumer, topic) = (&producer, &consumers[to], &topics[to]);
        async move {
            let key = n.to_string();
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload("hop"),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| format!("raw hop producer: {e}"))?;
            loop {
                let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                    .await
                    .map_err(|_| format!("raw hop consumer: nothing on {topic} within 30 s"))??;
                if message.key() == Some(key.as_bytes()) {
                    return Ok::<(), BoxError>(());
                }
            }
        }
    };
    let mut n = 0u64;
    // Every consumer joins its group before the rounds.
    for to in 0..topics.len() {
        hop(n, to).await?;
        n += 1;
    }
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut rounds = Vec::new();
    while Instant::now() < end {
        let started = Instant::now();
        for to in PATH {
            hop(n, to).await?;
            n += 1;
        }
        rounds.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    rounds.sort_by(f64::total_cmp);
    Ok(rounds)
}
