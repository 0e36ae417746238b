//! Crash test of the consumer with its inbox, on PostgreSQL and a real Kafka-protocol broker
//! (tansu, started by `scripts/test.sh`): consumer processes (this test binary, re-executed in
//! child mode, `EVENTFOLD_CONSUMER_CRASH_CHILD`) read one topic in one consumer group, two at a
//! time, and are killed with SIGKILL at random moments and replaced, again and again, while the
//! test publishes records to the topic: [`KEYS`] keys, each with the sequence numbers 1, 2, 3,
//! ... in order (one round of one record per key every [`ROUND_EVERY`], until the last kill).
//! Kills come in rounds of one or two (the survivor too); the replacements join the group once
//! the dead members' sessions have expired.
//!
//! Each child runs `eventfold::outbox::Consumer` over a `KafkaSource` with the inbox in
//! PostgreSQL; its handler applies the record's effect (a row of `consumer_effects`: key,
//! sequence number, message id) through the consumer's unit of work, so that effect and inbox
//! mark commit together. The children cycle through the consumer's options: shared commits with
//! four lanes, one transaction per message, shared commits alone, four lanes alone. Every kill
//! and every replacement makes the group rebalance, so partitions move between processes with
//! batches in flight.
//!
//! When the last children have drained the topic (every partition's committed offset at its end),
//! one checker reads the effects table, which has no unique constraint, so that a second apply is
//! recorded, not refused: every published record has exactly one effect (none lost, none applied
//! twice), and per key the effects were applied in sequence order (by the table's `bigserial`).
//! Nothing may be parked. The redeliveries the inboxes refused (records delivered again after a
//! kill or a rebalance) are counted from the children's `eventfold_consumer_duplicates_total`.
//!
//! The records are published one per record batch: tansu 0.6 answers a fetch from an offset
//! inside a batch with the batches after it, which loses the rest of that batch for a consumer
//! resuming there (see the publisher's configuration in the test).
//!
//! `EVENTFOLD_CONSUMER_CRASH_KILLS` sets the number of children killed and replaced (default 6;
//! `scripts/faults.sh --long` sets 40), `EVENTFOLD_CONSUMER_CRASH_SEED` the seed of the random
//! kills (printed by every run). The broker is `KAFKA_BOOTSTRAP` (default 127.0.0.1:9092); an
//! unreachable broker fails the test.
#![cfg(all(feature = "kafka", feature = "postgres"))]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eventfold::BoxError;
use eventfold::eventstore::InboxStore;
use eventfold::eventstore::postgres::{PgStore, PgUnitOfWork};
use eventfold::outbox::kafka::KafkaPublisher;
use eventfold::outbox::{Consumer, Handler, KafkaSource, OutboxMessage, Publisher, Record};
use uuid::Uuid;

/// This test's name: the children run it again, in child mode.
const TEST_NAME: &str = "killed_consumers_apply_every_record_once_in_key_order";
const CHILD_ENV: &str = "EVENTFOLD_CONSUMER_CRASH_CHILD";
const MODE_ENV: &str = "EVENTFOLD_CONSUMER_CRASH_MODE";
const DATABASE_ENV: &str = "EVENTFOLD_CONSUMER_CRASH_DATABASE_URL";
const TOPIC_ENV: &str = "EVENTFOLD_CONSUMER_CRASH_TOPIC";
const GROUP_ENV: &str = "EVENTFOLD_CONSUMER_CRASH_GROUP";
/// The line a child prints once its consumer runs.
const STARTED: &str = "consumer crash child started";
/// The consumer's name (its inbox).
const CONSUMER: &str = "effects";

/// Children killed and replaced, unless `EVENTFOLD_CONSUMER_CRASH_KILLS` says otherwise.
const KILLS: usize = 6;
const PARTITIONS: i32 = 4;
/// Consumer processes running at once (between a kill and its replacement, one fewer).
const CHILDREN: usize = 2;
const KEYS: usize = 200;
/// One record per key is published this often while children are killed.
const ROUND_EVERY: Duration = Duration::from_millis(250);
/// The consumers' Kafka session: a killed member leaves its group after this.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// Killed children are replaced this long after the last kill, once the dead members' sessions
/// have expired: tansu 0.6 does not give a dead member's partitions to the survivors when its
/// session expires (they wait for the next member to join), and a member that joins before then
/// shares the partitions with the dead one, whose share then stays unconsumed (see
/// `tests/saga_crash.rs`). (A session of 3 s was tried: tansu then kept the group rebalancing,
/// with half of the partitions unassigned at a time.)
const REPLACE_AFTER: Duration = Duration::from_millis(7000);
/// A round of kills starts only when every child has run this long (joined the group, which
/// makes a follower wait 3 s on tansu, and consumed), after a random delay of up to
/// [`KILL_JITTER`].
const SETTLED_AFTER: Duration = Duration::from_secs(4);
const KILL_JITTER: Duration = Duration::from_millis(2000);
/// The drain fails when neither the effects nor the group's committed offsets move for this long.
const STALL: Duration = Duration::from_secs(60);

/// What the children count and print as `metric <name> <n>` lines, summed by the parent.
type Counters = common::printed_metrics::Counters;

/// How a child's consumer handles a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    shared_commits: bool,
    lanes: usize,
}

impl Mode {
    /// The modes the children cycle through, the first child's first.
    const CYCLE: [Mode; 4] = [
        Mode {
            shared_commits: true,
            lanes: 4,
        },
        Mode {
            shared_commits: false,
            lanes: 1,
        },
        Mode {
            shared_commits: true,
            lanes: 1,
        },
        Mode {
            shared_commits: false,
            lanes: 4,
        },
    ];

    fn name(self) -> String {
        match (self.shared_commits, self.lanes) {
            (true, 1) => "shared".to_owned(),
            (false, 1) => "single".to_owned(),
            (true, n) => format!("shared+lanes{n}"),
            (false, n) => format!("lanes{n}"),
        }
    }

    fn parse(s: &str) -> Self {
        Self::CYCLE
            .into_iter()
            .find(|m| m.name() == s)
            .unwrap_or_else(|| panic!("{MODE_ENV}: unknown mode {s:?}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Child mode

/// The effect of a record: one row of `consumer_effects`, written through the consumer's unit
/// of work, so that it commits with the inbox mark or not at all.
struct Effects {
    child: String,
    mode: String,
}

impl Handler<PgUnitOfWork> for Effects {
    async fn handle(&self, uow: &mut PgUnitOfWork, record: &Record) -> Result<(), BoxError> {
        let payload: serde_json::Value = serde_json::from_slice(&record.payload)?;
        let (Some(key), Some(seq)) = (payload["key"].as_str(), payload["seq"].as_i64()) else {
            return Err(format!("record {} carries no key and seq", record.message_id).into());
        };
        if key != record.key {
            return Err(format!(
                "record {} of key {} says {key}",
                record.message_id, record.key
            )
            .into());
        }
        sqlx::query(
            "INSERT INTO consumer_effects (key, seq, message_id, child, mode) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(key)
        .bind(seq)
        .bind(record.message_id)
        .bind(&self.child)
        .bind(&self.mode)
        .execute(uow.connection())
        .await?;
        Ok(())
    }
}

/// A Kafka source in `group` with a short session ([`SESSION_TIMEOUT`]: the group drops a
/// killed member within seconds).
fn kafka_source(brokers: &str, group: &str, topic: &str) -> KafkaSource {
    common::crash::kafka_source(
        brokers,
        group,
        topic,
        SESSION_TIMEOUT,
        Some(Duration::from_millis(500)),
    )
}

/// The counters a child reports to the parent (`metric duplicates <n>`, `metric retries <n>`).
fn reported(key: &metrics::Key) -> Option<String> {
    match key.name() {
        "eventfold_consumer_duplicates_total" => Some("duplicates".to_owned()),
        "eventfold_consumer_retries_total" => Some("retries".to_owned()),
        _ => None,
    }
}

/// A child process: a consumer of the group, until it is killed (or its parent is gone).
async fn child(name: String) -> Infallible {
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(500));
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(0);
            }
        }
    });
    common::printed_metrics::install(reported);
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let (url, topic, group) = (var(DATABASE_ENV), var(TOPIC_ENV), var(GROUP_ENV));
    let mode = Mode::parse(&var(MODE_ENV));
    let brokers = common::kafka_bootstrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{name}: connecting to {url}: {e}"));
    // The parent migrated the database before starting any child.
    let store = PgStore::builder(pool)
        .source("consumers")
        .migrate(false)
        .build()
        .await
        .unwrap_or_else(|e| panic!("{name}: the store: {e}"));
    println!("{STARTED}: {name} ({})", mode.name());
    loop {
        // A consumer whose offset commit fails after a rebalance (its partitions went to another
        // member) ends its run: it is started afresh, as a service would.
        let handler = Effects {
            child: name.clone(),
            mode: mode.name(),
        };
        let consumer = Consumer::new(
            CONSUMER,
            store.clone(),
            kafka_source(&brokers, &group, &topic),
            handler,
        )
        .shared_commits(mode.shared_commits)
        .concurrency(mode.lanes)
        .backoff(Duration::from_millis(20));
        if let Err(e) = consumer.run(std::future::pending()).await {
            eprintln!("consumer crash child {name}: the consumer failed, restarting it: {e}");
            println!("metric restarts 1");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The parent

/// Where the children connect, and what they are called.
struct Spawner {
    url: String,
    topic: String,
    group: String,
    counters: Counters,
    spawned: usize,
}

impl Spawner {
    async fn spawn(&mut self) -> ChildProcess {
        let mode = Mode::CYCLE[self.spawned % Mode::CYCLE.len()];
        self.spawned += 1;
        let name = format!("consumer-{}", self.spawned);
        let mut command = common::crash::child_command(TEST_NAME);
        command
            .env(CHILD_ENV, &name)
            .env(MODE_ENV, mode.name())
            .env(DATABASE_ENV, &self.url)
            .env(TOPIC_ENV, &self.topic)
            .env(GROUP_ENV, &self.group);
        let counters = self.counters.clone();
        let what = format!("{name} ({})", mode.name());
        let (child, _line) = tokio::task::spawn_blocking(move || {
            common::spawn_until_started(&mut command, &what, Duration::from_secs(60), move |line| {
                common::printed_metrics::add_line(&counters, line);
                // libtest prints `test <name> ... ` before it, on the same line.
                line.contains(STARTED)
            })
        })
        .await
        .expect("spawning a child");
        ChildProcess::new(child, name, mode)
    }
}

/// A consumer process in its mode; killed (SIGKILL) when dropped.
type ChildProcess = common::crash::ChildProcess<Mode>;

/// The record of `key` with sequence number `seq`: key and sequence number in the payload.
fn record(topic: &str, key: &str, seq: u64) -> OutboxMessage {
    OutboxMessage::new(
        topic,
        key,
        "effect.requested",
        format!(r#"{{"key":"{key}","seq":{seq}}}"#).into_bytes(),
    )
}

/// Per partition, the offset after the last record published to it.
type Ends = BTreeMap<u32, u64>;

/// What the producer published.
struct Published {
    /// Rounds of one record per key: every key has the sequence numbers `1..=rounds`.
    rounds: u64,
    /// Where each partition ends.
    ends: Ends,
    /// Per key and sequence number: the message id, partition and offset (its first delivery).
    records: HashMap<(String, u64), (Uuid, u32, u64)>,
}

/// Publishes rounds of one record per key (sequence numbers 1, 2, ...), one round every
/// [`ROUND_EVERY`], until `producing` is false. A record that fails is published again (with
/// its id, so the inbox takes it once) before the next round: each key's records stay in order.
async fn produce(
    publisher: KafkaPublisher,
    topic: String,
    producing: Arc<AtomicBool>,
) -> Published {
    let keys: Vec<String> = (0..KEYS).map(|k| format!("key-{k}")).collect();
    let mut ends = Ends::new();
    let mut records = HashMap::new();
    let mut rounds = 0;
    while producing.load(Ordering::SeqCst) {
        let next = Instant::now() + ROUND_EVERY;
        let seq = rounds + 1;
        let mut pending: Vec<OutboxMessage> = keys.iter().map(|k| record(&topic, k, seq)).collect();
        let mut attempts = 0;
        while !pending.is_empty() {
            attempts += 1;
            let results = publisher.publish(&pending).await;
            let mut failed = Vec::new();
            for (message, result) in pending.into_iter().zip(results) {
                match result {
                    Ok(delivery) => {
                        let end = ends.entry(delivery.partition).or_default();
                        *end = (*end).max(delivery.offset + 1);
                        records.insert(
                            (message.key.clone(), seq),
                            (message.id, delivery.partition, delivery.offset),
                        );
                    }
                    Err(e) => {
                        assert!(
                            attempts < 20,
                            "publishing {} (seq {seq}) failed 20 times: {e}",
                            message.key
                        );
                        failed.push(message);
                    }
                }
            }
            pending = failed;
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        rounds = seq;
        tokio::time::sleep_until(next.into()).await;
    }
    Published {
        rounds,
        ends,
        records,
    }
}

/// What became of the published records that have no effect (at most 10 of them): partition
/// and offset, whether the inbox marked them (an inbox mark without its effect would break the
/// handler's atomicity) or parked them; and how many inbox marks have no effect.
async fn diagnose(store: &PgStore, published: &Published) -> String {
    let applied: Vec<(String, i64)> =
        sqlx::query_as("SELECT DISTINCT key, seq FROM consumer_effects")
            .fetch_all(store.pool())
            .await
            .expect("read the effects");
    let applied: std::collections::HashSet<(String, u64)> = applied
        .into_iter()
        .map(|(key, seq)| (key, seq as u64))
        .collect();
    let mut missing: Vec<_> = published
        .records
        .iter()
        .filter(|(record, _)| !applied.contains(*record))
        .collect();
    missing.sort_by_key(|(_, (_, partition, offset))| (*partition, *offset));
    let mut lines = Vec::new();
    for ((key, seq), (id, partition, offset)) in missing.iter().take(10) {
        let (marked,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM eventfold_inbox WHERE consumer = $1 AND message_id = $2",
        )
        .bind(CONSUMER)
        .bind(id)
        .fetch_one(store.pool())
        .await
        .expect("read the inbox");
        let parked: Option<(String,)> = sqlx::query_as(
            "SELECT error FROM eventfold_inbox_dead WHERE consumer = $1 AND message_id = $2",
        )
        .bind(CONSUMER)
        .bind(id)
        .fetch_optional(store.pool())
        .await
        .expect("read the parked messages");
        lines.push(format!(
            "{key}/{seq} (id {id}) at partition {partition} offset {offset}: inbox mark {}, {}",
            if marked > 0 { "present" } else { "absent" },
            parked.map_or("not parked".to_owned(), |(e,)| format!("parked: {e}"))
        ));
    }
    let (unmatched,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM eventfold_inbox i WHERE i.consumer = $1 \
         AND NOT EXISTS (SELECT 1 FROM consumer_effects e WHERE e.message_id = i.message_id)",
    )
    .bind(CONSUMER)
    .fetch_one(store.pool())
    .await
    .expect("read the inbox");
    format!(
        "{} published records have no effect; {unmatched} inbox marks have no effect; first \
         missing: [{}]",
        missing.len(),
        lines.join("; ")
    )
}

/// Whether the group's committed offset of every partition has reached the end of what was
/// published to it (`ends`, from the delivery reports), and per partition
/// `committed/published end (the broker's high watermark)`. (tansu 0.6's high watermark can lag
/// behind the last records acknowledged to the producer, so it is reported, not relied on.)
async fn offsets(brokers: &str, topic: &str, group: &str, ends: &Ends) -> (bool, String) {
    let (brokers, topic, group) = (brokers.to_owned(), topic.to_owned(), group.to_owned());
    let ends = ends.clone();
    tokio::task::spawn_blocking(move || {
        use eventfold::outbox::kafka::rdkafka::Offset;
        let offsets = common::crash::partition_offsets(&brokers, &group, &topic, PARTITIONS);
        let mut drained = true;
        let mut parts = Vec::new();
        for (p, (committed, high)) in offsets.into_iter().enumerate() {
            let end = ends.get(&(p as u32)).copied().unwrap_or(0);
            let at = match committed {
                Some(Offset::Offset(o)) => {
                    drained &= u64::try_from(o).is_ok_and(|o| o >= end);
                    o.to_string()
                }
                Some(Offset::Invalid) if end == 0 => "-".to_owned(),
                Some(other) => {
                    drained = false;
                    format!("{other:?}")
                }
                None => {
                    drained = false;
                    "?".to_owned()
                }
            };
            parts.push(format!("{p}: {at}/{end} ({high})"));
        }
        (drained, parts.join(", "))
    })
    .await
    .expect("the offsets")
}

/// Rows of `consumer_effects` (distinct key and sequence number, all rows).
async fn applied(store: &PgStore) -> (i64, i64) {
    sqlx::query_as("SELECT COUNT(DISTINCT (key, seq)), COUNT(*) FROM consumer_effects")
        .fetch_one(store.pool())
        .await
        .expect("count the effects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_consumers_apply_every_record_once_in_key_order() {
    if let Ok(name) = std::env::var(CHILD_ENV) {
        match child(name).await {}
    }
    let started = Instant::now();
    let kills = common::env_number("EVENTFOLD_CONSUMER_CRASH_KILLS", KILLS);
    assert!(
        kills >= 1,
        "EVENTFOLD_CONSUMER_CRASH_KILLS must be at least 1"
    );
    let (seed, mut rng) = common::crash::Rng::from_env("EVENTFOLD_CONSUMER_CRASH_SEED");
    let brokers = common::kafka_bootstrap();
    let run = Uuid::now_v7().simple().to_string();
    let topic = format!("eventfold.test.consumer-crash.{run}");
    let group = format!("eventfold-test-consumer-crash-{run}");
    // One record per record batch (tansu's fetch from inside a batch skips the rest of it).
    let publisher = common::crash::publisher_one_record_per_batch(&brokers);
    publisher
        .create_topics(&[(topic.as_str(), PARTITIONS)])
        .await
        .unwrap_or_else(|e| panic!("creating topic {topic}: {e}"));

    let (store, db) = common::postgres().await;
    // No unique constraint: an effect applied twice is recorded, not refused.
    sqlx::query(
        "CREATE TABLE consumer_effects (\
           id bigserial PRIMARY KEY, key text NOT NULL, seq bigint NOT NULL, \
           message_id uuid NOT NULL, child text NOT NULL, mode text NOT NULL)",
    )
    .execute(store.pool())
    .await
    .expect("create the effects table");
    let mut spawner = Spawner {
        url: common::database_url(db.name()),
        topic: topic.clone(),
        group: group.clone(),
        counters: Counters::default(),
        spawned: 0,
    };
    let mut children = Vec::new();
    for _ in 0..CHILDREN {
        children.push(spawner.spawn().await);
    }
    eprintln!(
        "consumer crash: topic {topic}, seed {seed}, {kills} kills; {CHILDREN} children started \
         ({:?})",
        started.elapsed()
    );

    let producing = Arc::new(AtomicBool::new(true));
    let producer = tokio::spawn(produce(publisher, topic.clone(), producing.clone()));

    // Kills come in rounds: the first at a random moment once every child has run SETTLED_AFTER
    // (it has joined the group and consumes); in two rounds of three the survivor is killed
    // too, at a random moment within KILL_JITTER. The replacements start REPLACE_AFTER after the
    // round's last kill, when no dead member's session is left in the group.
    let mut killed = Vec::new();
    let mut replace_at: Option<Instant> = None;
    let mut next_kill: Option<Instant> = None;
    let mut kill_survivor = false;
    while killed.len() < kills || replace_at.is_some() {
        for child in &mut children {
            child.assert_alive();
        }
        assert!(
            !producer.is_finished(),
            "the producer ended while producing"
        );
        if replace_at.is_some_and(|at| at <= Instant::now()) {
            replace_at = None;
            next_kill = None;
            while children.len() < CHILDREN {
                let child = spawner.spawn().await;
                eprintln!(
                    "{} ({}) started at {:?}",
                    child.name,
                    child.role.name(),
                    started.elapsed()
                );
                children.push(child);
            }
            continue;
        }
        let first = replace_at.is_none()
            && children.len() == CHILDREN
            && children
                .iter()
                .all(|c| c.started_at.elapsed() >= SETTLED_AFTER);
        let second = replace_at.is_some() && kill_survivor && !children.is_empty();
        if killed.len() < kills && (first || second) {
            let at = *next_kill.get_or_insert_with(|| {
                Instant::now() + Duration::from_millis(rng.below(KILL_JITTER.as_millis() as u64))
            });
            if Instant::now() >= at {
                next_kill = None;
                kill_survivor = first && rng.below(3) > 0;
                let victim = children.remove(rng.below(children.len() as u64) as usize);
                let name = format!("{} ({})", victim.name, victim.role.name());
                victim.kill();
                replace_at = Some(Instant::now() + REPLACE_AFTER);
                let (distinct, rows) = applied(&store).await;
                eprintln!(
                    "kill {}: {name} at {:?}; {distinct} records applied ({rows} rows)",
                    killed.len() + 1,
                    started.elapsed()
                );
                killed.push(name);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    producing.store(false, Ordering::SeqCst);
    let published = producer.await.expect("the producer");
    let (rounds, ends) = (published.rounds, &published.ends);
    let records = rounds as i64 * KEYS as i64;
    eprintln!(
        "consumer crash: {} kills done, {records} records published ({rounds} per key) at {:?}",
        killed.len(),
        started.elapsed()
    );

    // The last children drain the topic: every record applied and every partition's offset
    // committed up to its end. The drain fails when nothing moves for STALL.
    let mut progress = (None, Instant::now());
    loop {
        for child in &mut children {
            child.assert_alive();
        }
        let (distinct, rows) = applied(&store).await;
        let (drained, lag) = offsets(&brokers, &topic, &group, ends).await;
        if distinct == records && drained {
            break;
        }
        let now = Some((rows, lag.clone()));
        if now != progress.0 {
            progress = (now, Instant::now());
        }
        if progress.1.elapsed() >= STALL {
            panic!(
                "the consumers made no progress for {STALL:?}: {distinct} of {records} records \
                 applied ({rows} rows); per partition the committed offset / the end of what \
                 was published (the broker's high watermark): {lag}; {}",
                diagnose(&store, &published).await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drained_at = started.elapsed();
    drop(children);

    // The checker: per key, the effects in the order they were applied.
    let effects: Vec<(String, i64)> =
        sqlx::query_as("SELECT key, seq FROM consumer_effects ORDER BY id")
            .fetch_all(store.pool())
            .await
            .expect("read the effects");
    let mut per_key: HashMap<String, Vec<i64>> = HashMap::new();
    for (key, seq) in effects {
        per_key.entry(key).or_default().push(seq);
    }
    let (mut lost, mut applied_twice, mut order_violations) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..KEYS {
        let key = format!("key-{k}");
        let seqs = per_key.remove(&key).unwrap_or_default();
        let mut times = vec![0u32; rounds as usize + 1];
        let mut last_first = 0;
        for &seq in &seqs {
            let Some(n) = usize::try_from(seq).ok().and_then(|s| times.get_mut(s)) else {
                panic!("key {key}: an effect of sequence number {seq}, never published");
            };
            *n += 1;
            if *n == 1 {
                // A first apply must come after every first apply before it.
                if seq < last_first {
                    order_violations.push(format!("{key}: {seq} after {last_first}"));
                }
                last_first = last_first.max(seq);
            }
        }
        for (seq, n) in times.iter().enumerate().skip(1) {
            match n {
                0 => lost.push(format!("{key}/{seq}")),
                1 => {}
                n => applied_twice.push(format!("{key}/{seq} ({n} times)")),
            }
        }
    }
    assert!(
        per_key.is_empty(),
        "effects of keys never published: {:?}",
        per_key.keys().collect::<Vec<_>>()
    );
    let first = |v: &[String]| v.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
    if !lost.is_empty() {
        panic!(
            "{} of {records} records have no effect after {} kills, e.g. {}; {}",
            lost.len(),
            killed.len(),
            first(&lost),
            diagnose(&store, &published).await
        );
    }
    assert!(
        applied_twice.is_empty(),
        "{} of {records} records were applied more than once after {} kills (the effect did not \
         commit with the inbox mark), e.g. {}",
        applied_twice.len(),
        killed.len(),
        first(&applied_twice)
    );
    assert!(
        order_violations.is_empty(),
        "{} effects were applied out of their key's order after {} kills, e.g. {}",
        order_violations.len(),
        killed.len(),
        first(&order_violations)
    );
    let parked = store
        .parked_messages(CONSUMER, 10)
        .await
        .expect("parked messages");
    assert!(
        parked.is_empty(),
        "the consumer parked records: {:?}",
        parked
            .iter()
            .map(|p| (&p.key, &p.error))
            .collect::<Vec<_>>()
    );
    let by_mode: Vec<(String, i64)> =
        sqlx::query_as("SELECT mode, COUNT(*) FROM consumer_effects GROUP BY mode ORDER BY mode")
            .fetch_all(store.pool())
            .await
            .expect("effects per mode");
    assert!(
        by_mode
            .iter()
            .any(|(mode, n)| *mode == Mode::CYCLE[0].name() && *n > 0),
        "a child with shared commits and lanes applied effects: {by_mode:?}"
    );

    let counters = spawner.counters.lock().unwrap().clone();
    let redelivered = counters.get("duplicates").copied().unwrap_or(0);
    eprintln!(
        "consumer crash: {records} records over {KEYS} keys applied once each, in order per key; \
         {} kills ({}), {redelivered} redeliveries refused by the inbox, {} consumer restarts \
         after a failed commit, {} batches retried after a store failure; effects per mode \
         {by_mode:?}; drained at {drained_at:?}, {:.1} s in all",
        killed.len(),
        killed.join(", "),
        counters.get("restarts").copied().unwrap_or(0),
        counters.get("retries").copied().unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    println!(
        "FAULTS fault=sigkill component=consumers injected=kills:{} \
         checked=records:{records},lost:0,applied_twice:0,order_violations:0,\
         redelivered:{redelivered} result=pass",
        killed.len()
    );
}
