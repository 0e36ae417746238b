//! Broker down for 10 s in the middle of a run: the relay's publishes fail (retriable), the
//! backlog waits in the outbox, and after the broker is back it drains, in order per key, with
//! nothing lost. The relay talks to a dedicated tansu broker through a TCP proxy (the broker's
//! advertised address). Two outages:
//!
//! * a network cut: the test closes the proxy for 10 s (connections reset, new ones refused);
//! * a stopped broker: the test stops the broker process with SIGSTOP for 10 s and resumes it
//!   with SIGCONT (connections stay open and new ones are accepted by the kernel, but nothing
//!   answers: requests time out);
//! * a killed broker: the test kills the broker process with SIGKILL, and 10 s later starts a new
//!   one on the same port and creates the topic again, as an operator would (connections reset,
//!   then refused, then a broker that knows nothing). tansu keeps its log in memory here, so the
//!   new broker has lost what the old one had taken: what is checked is that every event written
//!   after the kill reaches the new broker, each key in order from the version after the last
//!   one published before (nothing skipped, nothing parked);
//! * a broker killed and restarted **with its data**: the broker keeps its log in a SQLite file
//!   (tansu's `sqlite://` storage, the `libsql` feature that `scripts/setup.sh` installs), is
//!   killed with SIGKILL and 10 s later started again on the same file; nobody creates the topic
//!   again. Every event, those it had taken before the kill included, is read back from the
//!   restarted broker, each key in order from its first version, and a consumer group resumes
//!   after the offsets it had committed before the kill.
#![cfg(all(feature = "kafka", feature = "postgres"))]
mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventfold::eventstore::{
    EventStore, ExpectedVersion, OutboxRelayStore, OutboxRouting, OutboxStore,
};
use eventfold::outbox::kafka::KafkaPublisher;
use eventfold::outbox::kafka::rdkafka::ClientConfig;
use eventfold::outbox::kafka::rdkafka::message::Message;
use eventfold::outbox::kafka_source::{KafkaSource, message_headers};
use eventfold::outbox::{Relay, RelayConfig, headers};
use eventfold::{NewEvent, StreamId};
use uuid::Uuid;

const PARTITIONS: i32 = 3;

/// A TCP proxy that can cut every connection and refuse new ones.
#[derive(Clone)]
struct Proxy {
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(listen: u16, target: u16) -> Self {
        let proxy = Proxy {
            down: Arc::new(AtomicBool::new(false)),
            open: Arc::new(Mutex::new(Vec::new())),
        };
        let listener = TcpListener::bind(("127.0.0.1", listen)).expect("bind the proxy port");
        let this = proxy.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if this.down.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                for stream in [&client, &server] {
                    if let Ok(clone) = stream.try_clone() {
                        this.open.lock().unwrap().push(clone);
                    }
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        proxy
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// A dedicated tansu broker whose advertised address is the proxy; killed when dropped.
struct Broker(Child);

impl Broker {
    /// SIGKILL, and the process reaped.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where a dedicated broker keeps its log.
#[derive(Clone, Debug)]
enum Storage {
    /// In memory: a killed broker loses it.
    Memory,
    /// In the SQLite file `tansu.db` of this directory: a restarted broker finds it again.
    File(std::path::PathBuf),
}

/// Starts a tansu broker listening on `port`, advertising `advertised` (the proxy's port).
fn start_broker(port: u16, advertised: u16, storage: &Storage) -> Broker {
    let tansu = std::env::var("HOME")
        .map(|home| format!("{home}/.cargo/bin/tansu"))
        .ok()
        .filter(|path| std::path::Path::new(path).exists())
        .unwrap_or_else(|| "tansu".to_owned());
    let mut command = Command::new(&tansu);
    command.args([
        "broker",
        "--listener-url",
        &format!("tcp://127.0.0.1:{port}"),
        "--advertised-listener-url",
        &format!("tcp://127.0.0.1:{advertised}"),
    ]);
    match storage {
        Storage::Memory => {
            command.args(["--storage-engine", "memory://outage/"]);
        }
        // tansu opens the path of a `sqlite://` URL under its working directory.
        Storage::File(dir) => {
            command
                .args(["--storage-engine", "sqlite:///tansu.db"])
                .current_dir(dir);
        }
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("tansu must be installed (scripts/test.sh installs it): {e}"));
    let mut broker = Broker(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = broker.0.try_wait() {
            panic!(
                "the dedicated tansu broker ({storage:?}) exited with {status}; a `sqlite://` \
                 storage needs tansu installed with the feature `libsql` (scripts/setup.sh)"
            );
        }
        assert!(
            Instant::now() < deadline,
            "the dedicated tansu broker did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    broker
}

async fn append(
    count: u64,
    store: &eventfold::eventstore::postgres::PgStore,
    appended: &mut HashSet<Uuid>,
    versions: &mut HashMap<String, u64>,
) {
    for i in 0..count {
        let key = format!("o{}", i % 10);
        let v = versions.entry(key.clone()).or_insert(0);
        let event = NewEvent::raw("order.noted", 1, b"{}".to_vec());
        appended.insert(event.event_id);
        let stream = StreamId::new("order", key.as_str()).unwrap();
        store
            .append(&stream, ExpectedVersion::Exact(*v), vec![event])
            .await
            .unwrap();
        *v += 1;
    }
}

fn version(headers_of: &eventfold::Headers) -> u64 {
    headers_of[headers::STREAM_VERSION]
        .parse()
        .expect("a stream version")
}

/// Sends a signal (`STOP`, `CONT`) to the broker's process.
fn signal(broker: &Broker, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(broker.0.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} of the broker failed");
}

/// How the broker goes away for 10 s.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// The proxy cuts every connection and refuses new ones.
    Cut,
    /// The broker's process is stopped (SIGSTOP), then resumed (SIGCONT).
    Stopped,
    /// The broker's process is killed (SIGKILL), then a new one is started on the same port.
    Killed,
    /// The broker, keeping its log in a file, is killed (SIGKILL) and started again on it.
    KilledWithData,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_for_ten_seconds_backlog_drains_nothing_lost() {
    outage_drains_nothing_lost(Outage::Cut, 29092).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_for_ten_seconds_backlog_drains_nothing_lost() {
    outage_drains_nothing_lost(Outage::Stopped, 29094).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_after_ten_seconds_backlog_drains_in_order() {
    outage_drains_nothing_lost(Outage::Killed, 29096).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_with_its_data_keeps_every_event_and_offset() {
    outage_drains_nothing_lost(Outage::KilledWithData, 29098).await;
}

/// The scenario, with the broker on `port` and the proxy on `port + 1`.
async fn outage_drains_nothing_lost(outage_kind: Outage, port: u16) {
    let data = std::env::temp_dir().join(format!("eventfold-tansu-{}", Uuid::now_v7().simple()));
    let storage = match outage_kind {
        Outage::KilledWithData => {
            std::fs::create_dir_all(&data).expect("a directory for the broker's file");
            Storage::File(data.clone())
        }
        Outage::Cut | Outage::Stopped | Outage::Killed => Storage::Memory,
    };
    let mut broker = start_broker(port, port + 1, &storage);
    let proxy = Proxy::start(port + 1, port);
    let bootstrap = format!("127.0.0.1:{}", port + 1);
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &bootstrap)
        .set("message.timeout.ms", "2000")
        .set("reconnect.backoff.max.ms", "500");
    let publisher = KafkaPublisher::from_config(config.clone()).expect("a Kafka publisher");
    // The operator's client: creates the topic (again, on a restarted broker).
    let admin = KafkaPublisher::from_config(config).expect("a Kafka admin client");
    let topic = format!("eventfold.test.outage.{}", Uuid::now_v7().simple());
    admin
        .create_topics(&[(topic.as_str(), PARTITIONS)])
        .await
        .expect("create the topic");

    let (store, _db) = common::postgres().await;
    let store = store.with_outbox(OutboxRouting::new().default_topic(topic.clone()));
    let mut relay = Relay::new(store.clone(), publisher).with_config(RelayConfig {
        batch_size: 100,
        max_attempts: 1000,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..RelayConfig::default()
    });
    let mut appended: HashSet<Uuid> = HashSet::new();
    let mut versions: HashMap<String, u64> = HashMap::new();
    append(100, &store, &mut appended, &mut versions).await;
    let until = Instant::now() + Duration::from_secs(60);
    while store.outbox_status().await.unwrap().pending > 0 {
        assert!(Instant::now() < until, "the first 100 were not published");
        relay.run_once().await.expect("relay round");
    }

    // What the broker had before the outage; a killed one loses it (in-memory storage).
    let published_before: HashSet<Uuid> = appended.clone();
    let versions_before = versions.clone();
    // A consumer group reads what was published so far and commits its offsets; with the
    // broker's data kept, it resumes after them once the broker is back.
    let group = format!("outage-group-{}", Uuid::now_v7().simple());
    if let Outage::KilledWithData = outage_kind {
        let read = read_in_group(&bootstrap, &group, &topic, &published_before, true).await;
        assert_eq!(read, published_before, "the group read the first events");
    }

    // The broker goes away for 10 s while the service keeps writing.
    match outage_kind {
        Outage::Cut => proxy.cut(),
        Outage::Stopped => signal(&broker, "STOP"),
        Outage::Killed | Outage::KilledWithData => broker.kill(),
    }
    let outage = Instant::now();
    append(100, &store, &mut appended, &mut versions).await;
    let mut failed_rounds = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        let report = relay.run_once().await.expect("relay round");
        failed_rounds += report.retried;
        assert_eq!(report.parked, 0, "an outage must not park anything");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = store.outbox_status().await.unwrap();
    assert!(
        status.pending >= 90,
        "the backlog waits in the outbox: {status:?}"
    );
    assert!(failed_rounds > 0, "the relay saw the outage");

    match outage_kind {
        Outage::Cut => proxy.restore(),
        Outage::Stopped => signal(&broker, "CONT"),
        // Nobody creates the topic again: the broker finds it in its file.
        Outage::KilledWithData => broker = start_broker(port, port + 1, &storage),
        Outage::Killed => {
            broker = start_broker(port, port + 1, &storage);
            let until = Instant::now() + Duration::from_secs(60);
            while let Err(e) = admin.create_topics(&[(topic.as_str(), PARTITIONS)]).await {
                assert!(
                    Instant::now() < until,
                    "the topic could not be created on the new broker: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let until = Instant::now() + Duration::from_secs(60);
    while store.outbox_status().await.unwrap().pending > 0 {
        if Instant::now() >= until {
            let rows = store.read_outbox(3).await.unwrap();
            panic!(
                "the backlog did not drain after the outage: {:?}",
                rows.iter()
                    .map(|r| (r.attempts, r.last_error.clone()))
                    .collect::<Vec<_>>()
            );
        }
        relay.run_once().await.expect("relay round");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.dead_letters(10).await.unwrap().is_empty());

    // Read everything back: nothing lost, each key in order. A killed broker lost what it had
    // taken before: the new one has the rest, each key from the version after the last one
    // published before the kill.
    let (expected, mut last): (HashSet<Uuid>, HashMap<String, u64>) = match outage_kind {
        Outage::Killed => (
            appended.difference(&published_before).copied().collect(),
            versions_before,
        ),
        Outage::Cut | Outage::Stopped | Outage::KilledWithData => {
            (appended.clone(), HashMap::new())
        }
    };
    let consumer = common::consumer_from_start(
        &bootstrap,
        format!("outage-{}", Uuid::now_v7().simple()),
        &topic,
        PARTITIONS,
    );
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !expected.is_subset(&seen) {
        assert!(
            Instant::now() < deadline,
            "{} events missing",
            expected.difference(&seen).count()
        );
        let Ok(message) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await
        else {
            continue;
        };
        let message = message.expect("consume");
        let hs = message_headers(&message);
        let id: Uuid = hs[headers::ID].parse().unwrap();
        if !seen.insert(id) {
            continue; // a duplicate from a retried send
        }
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let v = version(&hs);
        let previous = last.insert(key.clone(), v).unwrap_or(0);
        assert_eq!(v, previous + 1, "key {key}: version {v} after {previous}");
    }
    // The group resumes after the offsets it committed before the kill: it gets the events
    // written since, and none of those it had read (they would come again had the broker lost
    // its offsets).
    let mut resumed_group = String::new();
    if let Outage::KilledWithData = outage_kind {
        let after: HashSet<Uuid> = appended.difference(&published_before).copied().collect();
        let read = read_in_group(&bootstrap, &group, &topic, &after, false).await;
        assert_eq!(
            read,
            after,
            "the group resumed after its committed offsets: it read the new events, and none of \
             the {} it had committed",
            published_before.len()
        );
        resumed_group = format!(",group_resumed:{}", read.len());
    }
    let fault = match outage_kind {
        Outage::Cut => "broker_outage",
        Outage::Stopped => "broker_stopped",
        Outage::Killed => "broker_killed",
        Outage::KilledWithData => "broker_killed_with_data",
    };
    println!(
        "FAULTS fault={fault} component=kafka injected=outages:1,outage_secs:10,\
         failed_publishes:{failed_rounds} checked=events:{},lost:0,order_violations:0,parked:0\
         {resumed_group} result=pass",
        expected.len()
    );
    // The broker (the new one, after a kill) lives until here.
    drop(broker);
    let _ = std::fs::remove_dir_all(&data);
}

/// Reads `topic` in the consumer group `group` through a [`KafkaSource`] until it has every
/// message id of `expected` (failing after 60 s), committing each record; fails on a record
/// outside `expected` (one the group had committed before). Returns the ids read, duplicates
/// from a retried send folded.
async fn read_in_group(
    bootstrap: &str,
    group: &str,
    topic: &str,
    expected: &HashSet<Uuid>,
    first_time: bool,
) -> HashSet<Uuid> {
    let mut source = KafkaSource::new(bootstrap, group, &[topic]).expect("a group consumer");
    let mut read = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !expected.is_subset(&read) {
        assert!(
            Instant::now() < deadline,
            "the group ({}) read {} of {} events",
            if first_time { "first" } else { "resumed" },
            read.len(),
            expected.len()
        );
        let records = source
            .poll_records(100, Duration::from_millis(500))
            .await
            .expect("poll the group");
        for record in &records {
            assert!(
                expected.contains(&record.message_id),
                "the group got {} (offset {} of partition {}), which it had committed before",
                record.message_id,
                record.offset,
                record.partition
            );
            read.insert(record.message_id);
            source.commit_record(record).await.expect("commit");
        }
    }
    read
}
