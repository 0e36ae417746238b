//! The standalone relay (`eventfold-relay`) as a real process on PostgreSQL and a real
//! Kafka-protocol broker (`KAFKA_BOOTSTRAP`, tansu in `scripts/test.sh`): it creates its topic
//! (`--create-topics`), relays while writers append, and stops gracefully on SIGTERM (and
//! SIGINT): exit status 0 within `EVENTFOLD_SHUTDOWN_TIMEOUT_MS`, its leases released at once
//! (checked against a lease TTL of 60 s), and every outbox row either on the topic or still
//! pending, none parked; a second relay then publishes the rest.
#![cfg(all(feature = "kafka", feature = "postgres"))]
mod common;

use std::collections::HashSet;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eventfold::eventstore::postgres::PgStore;
use eventfold::eventstore::{EventStore, ExpectedVersion, OutboxRouting, OutboxStore};
use eventfold::outbox::headers;
use eventfold::outbox::kafka_source::message_headers;
use eventfold::{NewEvent, StreamId};
use uuid::Uuid;

const PARTITIONS: i32 = 3;
const KEYS: usize = 20;
const SHUTDOWN_TIMEOUT_MS: u64 = 10_000;

/// A running relay process (killed if the test fails before it exits).
struct RelayProcess {
    child: Child,
    owner: Uuid,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_relay(database_url: &str, brokers: &str, topic: &str, args: &[&str]) -> RelayProcess {
    let (child, line) = common::spawn_until_started(
        Command::new(env!("CARGO_BIN_EXE_eventfold-relay"))
            .args(args)
            .env("DATABASE_URL", database_url)
            .env("KAFKA_BOOTSTRAP", brokers)
            .env("EVENTFOLD_TOPIC", topic)
            // Long leases: a relay that did not release them would hold its slots for a minute.
            .env("EVENTFOLD_LEASE_TTL_MS", "60000")
            .env(
                "EVENTFOLD_SHUTDOWN_TIMEOUT_MS",
                SHUTDOWN_TIMEOUT_MS.to_string(),
            ),
        "eventfold-relay",
        Duration::from_secs(60),
        |line| line.starts_with("relay ") && line.ends_with(" started"),
    );
    let owner = line
        .strip_prefix("relay ")
        .and_then(|rest| rest.strip_suffix(" started"))
        .and_then(|owner| owner.parse().ok())
        .unwrap_or_else(|| panic!("unexpected start line of eventfold-relay: {line:?}"));
    RelayProcess { child, owner }
}

/// Sends `signal` (`TERM`, `INT`) to the relay and waits for its exit, at most the shutdown
/// timeout plus 5 s; returns the status and how long it took.
async fn stop(relay: &mut RelayProcess, signal: &str) -> (ExitStatus, Duration) {
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(relay.child.id().to_string())
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{signal} failed");
    let started = Instant::now();
    let bound = Duration::from_millis(SHUTDOWN_TIMEOUT_MS) + Duration::from_secs(5);
    loop {
        if let Some(status) = relay.child.try_wait().expect("poll the relay") {
            return (status, started.elapsed());
        }
        assert!(
            started.elapsed() < bound,
            "the relay did not exit within {bound:?} of SIG{signal}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Slots leased (unexpired) by `owner`.
async fn leased_by(store: &PgStore, owner: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM eventfold_outbox_leases WHERE owner = $1 AND expires_at > now()",
    )
    .bind(owner)
    .fetch_one(store.pool())
    .await
    .expect("count the relay's leases")
}

/// Appends one event at a time over `KEYS` aggregates until `stop` is set; returns the ids.
async fn write(store: PgStore, stop: Arc<AtomicBool>) -> Vec<Uuid> {
    let mut versions = [0u64; KEYS];
    let mut ids = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let k = i % KEYS;
        let event = NewEvent::raw("order.noted", 1, format!("{{\"i\":{i}}}").into_bytes());
        ids.push(event.event_id);
        let stream = StreamId::new("order", format!("o-{k}")).expect("a stream id");
        store
            .append(&stream, ExpectedVersion::Exact(versions[k]), vec![event])
            .await
            .unwrap_or_else(|e| panic!("append to {stream}: {e}"));
        versions[k] += 1;
        i += 1;
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    ids
}

/// The ids of the records on `topic`, read from the beginning until every id of `expected` was
/// seen or 30 s passed.
async fn published(brokers: &str, topic: &str, expected: &HashSet<Uuid>) -> HashSet<Uuid> {
    let consumer = common::consumer_from_start(
        brokers,
        format!("eventfold-test-{}", Uuid::now_v7().simple()),
        topic,
        PARTITIONS,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = HashSet::new();
    while !expected.is_subset(&seen) {
        let Some(message) = common::recv_before(&consumer, deadline, topic).await else {
            break;
        };
        let id = message_headers(&message)
            .get(headers::ID)
            .and_then(|id| id.parse().ok())
            .expect("a ce_id header");
        seen.insert(id);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_relay_gracefully_and_loses_nothing() {
    let brokers = common::kafka_bootstrap();
    let topic = format!("eventfold.test.shutdown.{}", Uuid::now_v7().simple());
    let (store, db) = common::postgres().await;
    let store = store.with_outbox(OutboxRouting::new().default_topic(topic.clone()));
    let url = common::database_url(db.name());

    // The relay creates its topic (the broker does not auto-create topics).
    let partitions = PARTITIONS.to_string();
    let relay_args = [
        "--create-topics",
        topic.as_str(),
        "--partitions",
        &partitions,
    ];
    let mut relay = {
        let (url, brokers, topic) = (url.clone(), brokers.clone(), topic.clone());
        let args: Vec<String> = relay_args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            spawn_relay(&url, &brokers, &topic, &args)
        })
        .await
        .expect("spawn the relay")
    };
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write(store.clone(), stop_writing.clone()));
    // Let it relay for a while; the writer keeps appending, so rows are in flight when the
    // signal comes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        leased_by(&store, relay.owner).await > 0,
        "the running relay leases slots"
    );
    let (status, took) = stop(&mut relay, "TERM").await;
    stop_writing.store(true, Ordering::SeqCst);
    let appended = writer.await.expect("the writer");
    println!(
        "{} events appended; the relay exited with {status} {took:?} after SIGTERM",
        appended.len()
    );
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    assert!(took < Duration::from_millis(SHUTDOWN_TIMEOUT_MS));
    assert_eq!(
        leased_by(&store, relay.owner).await,
        0,
        "the stopped relay released its leases (TTL 60 s)"
    );

    // Every row is on the topic or still pending; nothing is parked.
    let status = store.outbox_status().await.expect("outbox status");
    assert_eq!(status.dead_letters, 0, "nothing parked: {status:?}");
    let pending: HashSet<Uuid> = store
        .read_outbox(usize::MAX)
        .await
        .expect("read the outbox")
        .into_iter()
        .map(|row| row.message.id)
        .collect();
    // Every row not pending any more must be on the topic.
    let expected: HashSet<Uuid> = appended
        .iter()
        .filter(|id| !pending.contains(id))
        .copied()
        .collect();
    assert!(
        !expected.is_empty(),
        "the relay published before it stopped"
    );
    let on_topic = published(&brokers, &topic, &expected).await;
    let lost = expected.difference(&on_topic).count();
    assert_eq!(lost, 0, "rows neither published nor pending after the stop");
    println!(
        "{} on the topic, {} pending after the stop",
        on_topic.len(),
        pending.len()
    );

    // A second relay takes every slot at once (the leases were released) and publishes the
    // rest; SIGINT stops it gracefully too.
    let mut second = {
        let (url, brokers, topic) = (url.clone(), brokers.clone(), topic.clone());
        tokio::task::spawn_blocking(move || spawn_relay(&url, &brokers, &topic, &[]))
            .await
            .expect("spawn the second relay")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = store.outbox_status().await.expect("outbox status");
        if status.pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second relay did not drain the outbox within 30 s (lease TTL 60 s): {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = stop(&mut second, "INT").await;
    assert_eq!(status.code(), Some(0), "SIGINT stops gracefully too");
    let all: HashSet<Uuid> = appended.iter().copied().collect();
    let on_topic = published(&brokers, &topic, &all).await;
    let missing = all.difference(&on_topic).count();
    assert_eq!(missing, 0, "every appended event reached the topic");
}

/// Topic settings the relay cannot ask for are refused at startup, naming the flag, with exit
/// status 1.
#[test]
fn invalid_topic_settings_are_a_clear_startup_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_eventfold-relay"))
        .args(["--create-topics", "orders", "--replication-factor", "0"])
        .env("DATABASE_URL", "postgres://127.0.0.1:1/none")
        .output()
        .expect("run the relay");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("--replication-factor must be at least 1"),
        "stderr: {stderr}"
    );
}
