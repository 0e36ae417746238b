//! The relay on every backend, publishing to the in-process broker: every committed event is
//! delivered, in order per key, with several relays and one of them killed; a message the broker
//! refuses is parked while its key waits and other keys flow; an outage drains afterwards; a
//! rolled-back transaction publishes nothing; a delete that fails in PostgreSQL makes the relay
//! publish the rows again, in order, and it keeps running.
//!
//! These tests need the relay (`eventfold-outbox`), so they cannot join the backend contract
//! suite of `eventfold-eventstore` (which the outbox crate depends on); the store-level relay
//! rules (claims, leases, dead letters, a retrying key) are in `eventstore::contract::relay`.
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventfold::eventstore::contract::billing_request;
use eventfold::eventstore::{
    EventStore, ExpectedVersion, OutboxRelayStore, OutboxRouting, OutboxStore, UnitOfWork,
};
use eventfold::outbox::{
    Delivery, InProcessBroker, OutboxMessage, PublishError, Publisher, Record, Relay, RelayConfig,
    headers,
};
use eventfold::{NewEvent, StreamId};
use uuid::Uuid;

fn config() -> RelayConfig {
    RelayConfig {
        batch_size: 64,
        lease_ttl: Duration::from_millis(1500),
        max_attempts: 50,
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        idle_wait: Duration::from_millis(20),
        in_flight_batches: 2,
        // The relay tests run with a linger, so its path keeps every promise they check; the
        // other relay tests (Kafka, sagas, faults) run without one.
        claim_linger: Duration::from_millis(1),
    }
}

/// Appends `events` to `stream`, which must be new.
async fn append_new<S: EventStore>(store: &S, stream: &StreamId, events: Vec<NewEvent>) {
    store
        .append(stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
}

/// `n` rounds of `relay`, each of which must succeed.
async fn rounds<S: OutboxRelayStore, P: Publisher>(relay: &mut Relay<S, P>, n: usize) {
    for _ in 0..n {
        relay.run_once().await.expect("round");
    }
}

fn event(size: usize) -> NewEvent {
    NewEvent::raw("order.noted", 1, vec![b'x'; size])
}

fn version(record: &Record) -> u64 {
    record.headers[headers::STREAM_VERSION]
        .parse()
        .expect("a stream version header")
}

/// Every appended event was delivered, and per key the first deliveries follow the versions.
fn check_order(records: &[Record], appended: &HashMap<Uuid, (String, u64)>) -> usize {
    let mut first_seen: HashSet<Uuid> = HashSet::new();
    let mut last_version: BTreeMap<String, u64> = BTreeMap::new();
    let mut duplicates = 0;
    for record in records {
        if !first_seen.insert(record.message_id) {
            duplicates += 1;
            continue;
        }
        let v = version(record);
        let last = last_version.entry(record.key.clone()).or_insert(0);
        assert_eq!(
            v,
            *last + 1,
            "key {} delivered version {v} after {}",
            record.key,
            *last
        );
        *last = v;
    }
    let missing: Vec<_> = appended
        .keys()
        .filter(|id| !first_seen.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} committed events were never published",
        missing.len()
    );
    duplicates
}

async fn drain<S: OutboxRelayStore>(store: &S, deadline: Duration) {
    let until = Instant::now() + deadline;
    while store.outbox_status().await.expect("status").pending > 0 {
        assert!(
            Instant::now() < until,
            "the outbox did not drain within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn many_relays_one_killed<S: OutboxRelayStore>(store: S) {
    let store = store.with_outbox(OutboxRouting::new());
    let broker = InProcessBroker::new();
    let mut relays = Vec::new();
    let stop = Arc::new(tokio::sync::Notify::new());
    for _ in 0..3 {
        let relay = Relay::new(store.clone(), broker.clone()).with_config(config());
        let stop = stop.clone();
        relays.push(tokio::spawn(async move {
            relay.run(async move { stop.notified().await }).await
        }));
    }
    let mut appended = HashMap::new();
    let mut versions: HashMap<String, u64> = HashMap::new();
    for i in 0..900u64 {
        // About 2 s of writes: long enough for the relays to split the slots (leases are renewed
        // every 0.5 s) before one of them is killed.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let key = format!("o{}", i % 40);
        let v = versions.entry(key.clone()).or_insert(0);
        let e = event(20);
        appended.insert(e.event_id, (key.clone(), *v + 1));
        let stream = StreamId::new("order", key.as_str()).unwrap();
        store
            .append(&stream, ExpectedVersion::Exact(*v), vec![e])
            .await
            .expect("append");
        *v += 1;
        if i == 400 {
            // Kill one relay: no graceful release; its slots (a third by now) are taken over
            // when its leases expire, or the outbox would never drain.
            relays.remove(0).abort();
        }
    }
    drain(&store, Duration::from_secs(60)).await;
    stop.notify_waiters();
    for relay in relays {
        relay.await.expect("relay task").expect("relay");
    }
    let duplicates = check_order(&broker.records("order"), &appended);
    eprintln!(
        "{} events delivered in order per key, {duplicates} duplicates",
        appended.len()
    );
}

async fn refused_message_is_parked_and_its_key_waits<S: OutboxRelayStore>(store: S) {
    let store = store.with_outbox(OutboxRouting::new());
    let broker = InProcessBroker::new().with_max_message_bytes(2000);
    let big = StreamId::new("order", "big").unwrap();
    let other = StreamId::new("order", "other").unwrap();
    append_new(&store, &big, vec![event(10), event(5000), event(10)]).await;
    append_new(&store, &other, vec![event(10), event(10)]).await;
    let mut relay = Relay::new(store.clone(), broker.clone()).with_config(config());
    rounds(&mut relay, 5).await;
    let delivered = |broker: &InProcessBroker, key: &str| {
        broker
            .records("order")
            .iter()
            .filter(|r| r.key == key)
            .map(version)
            .collect::<Vec<_>>()
    };
    assert_eq!(delivered(&broker, "other"), vec![1, 2], "other keys flow");
    assert_eq!(
        delivered(&broker, "big"),
        vec![1],
        "the key waits behind its parked message"
    );
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].error.contains("too large"), "{}", dead[0].error);
    assert_eq!(dead[0].row.message.headers[headers::STREAM_VERSION], "2");

    // The operator raises the limit and retries: the key resumes in order.
    broker.set_max_message_bytes(None);
    assert!(store.retry_dead_letter(dead[0].row.seq).await.unwrap());
    rounds(&mut relay, 5).await;
    assert_eq!(delivered(&broker, "big"), vec![1, 2, 3]);
    assert_eq!(store.outbox_status().await.unwrap().pending, 0);
}

/// A parked key with far more waiting rows than a batch must not fill the claim's window: the
/// keys behind it keep flowing.
async fn parked_key_with_a_long_queue_does_not_starve_others<S: OutboxRelayStore>(store: S) {
    let store = store.with_outbox(OutboxRouting::new());
    let broker = InProcessBroker::new().with_max_message_bytes(2000);
    let big = StreamId::new("order", "big").unwrap();
    let mut events = vec![event(5000)];
    events.extend((0..300).map(|_| event(10)));
    append_new(&store, &big, events).await;
    let others: Vec<StreamId> = (0..20)
        .map(|i| StreamId::new("order", format!("o{i}")).unwrap())
        .collect();
    for stream in &others {
        append_new(&store, stream, vec![event(10), event(10)]).await;
    }
    let mut relay = Relay::new(store.clone(), broker.clone()).with_config(config());
    rounds(&mut relay, 6).await;
    let records = broker.records("order");
    assert!(
        records.iter().all(|r| r.key != "big"),
        "nothing of the parked key is published"
    );
    assert_eq!(
        records.len(),
        40,
        "the 20 other keys delivered both of their events behind 301 blocked rows"
    );
    assert_eq!(store.dead_letters(10).await.unwrap().len(), 1);
    assert_eq!(store.outbox_status().await.unwrap().pending, 300);
}

async fn outage_backlog_drains_in_order<S: OutboxRelayStore>(store: S) {
    let store = store.with_outbox(OutboxRouting::new());
    let broker = InProcessBroker::new();
    broker.set_available(false);
    let mut appended = HashMap::new();
    for i in 0..50u64 {
        let key = format!("k{}", i % 5);
        let e = event(10);
        appended.insert(e.event_id, (key.clone(), i / 5 + 1));
        store
            .append(
                &StreamId::new("order", key.as_str()).unwrap(),
                ExpectedVersion::Exact(i / 5),
                vec![e],
            )
            .await
            .unwrap();
    }
    let mut relay = Relay::new(store.clone(), broker.clone()).with_config(config());
    for _ in 0..3 {
        let report = relay.run_once().await.expect("round");
        assert_eq!(report.published, 0);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let waiting = store.read_outbox(100).await.unwrap();
    assert_eq!(
        waiting.len(),
        50,
        "nothing is lost while the broker is down"
    );
    assert!(
        waiting
            .iter()
            .any(|r| r.attempts > 0 && r.last_error.is_some())
    );
    broker.set_available(true);
    let until = Instant::now() + Duration::from_secs(30);
    while store.outbox_status().await.unwrap().pending > 0 {
        assert!(Instant::now() < until, "the backlog did not drain");
        relay.run_once().await.expect("round");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check_order(&broker.records("order"), &appended);
    assert!(store.dead_letters(10).await.unwrap().is_empty());
}

/// An order event (routed to `order`) and a billing request (`billing`), in `uow`.
async fn order_and_billing_request<U: UnitOfWork>(uow: &mut U) {
    uow.append(
        &StreamId::new("order", "1").unwrap(),
        ExpectedVersion::NoStream,
        vec![event(10)],
    )
    .await
    .unwrap();
    uow.enqueue(vec![billing_request("c-1")]).await.unwrap();
}

async fn rolled_back_transaction_publishes_nothing<S: OutboxRelayStore>(store: S) {
    let store = store.with_outbox(OutboxRouting::new());
    let broker = InProcessBroker::new();
    let mut uow = store.begin().await.unwrap();
    order_and_billing_request(&mut uow).await;
    uow.rollback().await.unwrap();
    let mut relay = Relay::new(store.clone(), broker.clone()).with_config(config());
    relay.run_once().await.unwrap();
    assert!(
        broker.records("order").is_empty() && broker.records("billing").is_empty(),
        "no dual write"
    );
    // The same after a commit: both are published.
    let mut uow = store.begin().await.unwrap();
    order_and_billing_request(&mut uow).await;
    uow.commit().await.unwrap();
    relay.run_once().await.unwrap();
    assert_eq!(
        (
            broker.records("order").len(),
            broker.records("billing").len()
        ),
        (1, 1)
    );
}

async fn enqueued_message_wakes_a_waiting_relay<S: OutboxRelayStore>(store: S) {
    let broker = InProcessBroker::new();
    let relay = Relay::new(store.clone(), broker.clone()).with_config(RelayConfig {
        // No polling within the test's time: only the commit's wake-up can start a round.
        idle_wait: Duration::from_secs(60),
        lease_ttl: Duration::from_secs(180),
        ..config()
    });
    let stop = Arc::new(tokio::sync::Notify::new());
    let running = {
        let stop = stop.clone();
        tokio::spawn(async move { relay.run(async move { stop.notified().await }).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // the relay is idle, waiting
    let sent = Instant::now();
    let mut uow = store.begin().await.unwrap();
    uow.enqueue(vec![billing_request("c-1")]).await.unwrap();
    uow.commit().await.unwrap();
    while broker.records("billing").is_empty() {
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "the relay was not woken by the commit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.notify_waiters();
    running.await.unwrap().unwrap();
}

/// Publishes through the in-process broker after a delay that varies from batch to batch, so
/// the batches a relay has in flight finish out of order.
#[derive(Clone)]
struct Jittery {
    inner: InProcessBroker,
    calls: Arc<std::sync::atomic::AtomicU64>,
    largest: Arc<std::sync::atomic::AtomicUsize>,
}

impl Publisher for Jittery {
    async fn publish(&self, messages: &[OutboxMessage]) -> Vec<Result<Delivery, PublishError>> {
        use std::sync::atomic::Ordering;
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        self.largest.fetch_max(messages.len(), Ordering::Relaxed);
        // 0..=24 ms, in an order unrelated to the call order.
        tokio::time::sleep(Duration::from_millis((n * 7919) % 25)).await;
        self.inner.publish(messages).await
    }
}

/// `Relay::run` with several batches in flight that finish out of order, while 8 writers
/// append: every event delivered once, per key in version order; a key never has two rows in
/// flight, so a later batch never overtakes an earlier row of its key.
async fn pipelined_batches_finishing_out_of_order_keep_key_order<S: OutboxRelayStore>(store: S) {
    let store = store.with_outbox(OutboxRouting::new());
    let publisher = Jittery {
        inner: InProcessBroker::new(),
        calls: Arc::default(),
        largest: Arc::default(),
    };
    let relay = Relay::new(store.clone(), publisher.clone()).with_config(RelayConfig {
        batch_size: 8,
        in_flight_batches: 4,
        ..config()
    });
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let running = tokio::spawn(relay.run(async move { stopped.notified().await }));
    let mut writers = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut appended = HashMap::new();
            for v in 1..=40u64 {
                let key = format!("p{w}-{}", v % 3);
                let stream = StreamId::new("order", key.clone()).unwrap();
                let event = event(10);
                let id = event.event_id;
                store
                    .append(&stream, ExpectedVersion::Any, vec![event])
                    .await
                    .unwrap();
                appended.insert(id, (key, v));
            }
            appended
        }));
    }
    let mut appended = HashMap::new();
    for writer in writers {
        appended.extend(writer.await.unwrap());
    }
    drain(&store, Duration::from_secs(60)).await;
    stop.notify_waiters();
    running.await.unwrap().unwrap();
    let records = publisher.inner.records("order");
    let duplicates = check_order(&records, &appended);
    assert_eq!(duplicates, 0, "no crash, so no duplicate");
    assert_eq!(records.len(), appended.len());
    let calls = publisher.calls.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        calls >= 20,
        "{calls} publish calls: the relay published in many batches"
    );
    assert!(publisher.largest.load(std::sync::atomic::Ordering::Relaxed) <= 8);
}

/// Publishes through the in-process broker once the gate opens, counting the calls that
/// entered it: the batches of a relay stay in flight for as long as a test wants.
#[derive(Clone)]
struct Gated {
    inner: InProcessBroker,
    entered: Arc<std::sync::atomic::AtomicUsize>,
    open: tokio::sync::watch::Receiver<bool>,
}

impl Publisher for Gated {
    async fn publish(&self, messages: &[OutboxMessage]) -> Vec<Result<Delivery, PublishError>> {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut open = self.open.clone();
        // The sender lives as long as the test; a closed gate only ends with the test.
        let _ = open.wait_for(|open| *open).await;
        self.inner.publish(messages).await
    }
}

/// A graceful stop while batches are in flight: `run` claims nothing more, waits for the
/// batches it has in flight, deletes their rows and releases its leases, so another relay
/// takes every slot at once (not after the leases expire) and delivers the rest, in order and
/// without a duplicate.
async fn graceful_stop_settles_the_batches_in_flight<S: OutboxRelayStore>(store: S) {
    use std::sync::atomic::Ordering;
    let store = store.with_outbox(OutboxRouting::new());
    let mut appended = HashMap::new();
    // Version-major, so the oldest rows are the first rows of distinct keys: full batches.
    for v in 1..=3u64 {
        for k in 0..40 {
            let key = format!("s{k}");
            let stream = StreamId::new("order", key.clone()).unwrap();
            let event = event(10);
            appended.insert(event.event_id, (key.clone(), v));
            store
                .append(&stream, ExpectedVersion::Any, vec![event])
                .await
                .unwrap();
        }
    }
    let (gate, open) = tokio::sync::watch::channel(false);
    let publisher = Gated {
        inner: InProcessBroker::new(),
        entered: Arc::default(),
        open,
    };
    let long_leases = RelayConfig {
        batch_size: 8,
        in_flight_batches: 3,
        // Leases that outlive the test: only a release lets another relay in.
        lease_ttl: Duration::from_secs(600),
        ..config()
    };
    let relay = Relay::new(store.clone(), publisher.clone()).with_config(long_leases.clone());
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let running = tokio::spawn(relay.run(async move { stopped.notified().await }));
    let until = Instant::now() + Duration::from_secs(30);
    while publisher.entered.load(Ordering::SeqCst) < 3 {
        assert!(
            Instant::now() < until,
            "the relay never had 3 batches in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.notify_one();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !running.is_finished(),
        "the relay stopped without waiting for its batches in flight"
    );
    assert_eq!(
        store.outbox_status().await.unwrap().pending,
        120,
        "nothing is deleted before its batch is acknowledged"
    );
    gate.send_replace(true);
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the relay stops once its batches are acknowledged")
        .unwrap()
        .unwrap();
    assert_eq!(
        publisher.entered.load(Ordering::SeqCst),
        3,
        "no batch is claimed after the stop"
    );
    let first = publisher.inner.records("order");
    assert_eq!(first.len(), 24, "the 3 batches in flight were published");
    assert_eq!(
        store.outbox_status().await.unwrap().pending,
        120 - 24,
        "the rows of the batches in flight were deleted at the stop"
    );

    let mut next = Relay::new(store.clone(), publisher.clone()).with_config(long_leases);
    let report = next.run_once().await.unwrap();
    assert_eq!(
        report.slots,
        eventfold::eventstore::OUTBOX_SLOTS as usize,
        "the stopped relay released its leases"
    );
    while store.outbox_status().await.unwrap().pending > 0 {
        next.run_once().await.unwrap();
    }
    let records = publisher.inner.records("order");
    assert_eq!(check_order(&records, &appended), 0, "no duplicate");
    assert_eq!(records.len(), 120);
}

/// A relay that runs for many lease lifetimes keeps renewing its leases while it publishes (the
/// renewal runs beside the publishing): every row it delivered is deleted, so nothing is
/// published twice. (In memory, where a renewal takes no time: a short lease cannot expire
/// for a slow database.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_renewed_for_as_long_as_the_relay_runs() {
    let store = eventfold::eventstore::memory::MemoryStore::new().with_outbox(OutboxRouting::new());
    let broker = InProcessBroker::new();
    let lease_ttl = Duration::from_millis(150);
    let relay = Relay::new(store.clone(), broker.clone()).with_config(RelayConfig {
        lease_ttl,
        ..config()
    });
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let running = tokio::spawn(relay.run(async move { stopped.notified().await }));
    let mut appended = HashMap::new();
    let started = Instant::now();
    let mut v = 0u64;
    // Ten lease lifetimes of appends.
    while started.elapsed() < lease_ttl * 10 {
        v += 1;
        for k in 0..4 {
            let key = format!("l{k}");
            let e = event(10);
            appended.insert(e.event_id, (key.clone(), v));
            let stream = StreamId::new("order", key).unwrap();
            store
                .append(&stream, ExpectedVersion::Exact(v - 1), vec![e])
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drain(&store, Duration::from_secs(30)).await;
    stop.notify_one();
    running.await.unwrap().unwrap();
    let records = broker.records("order");
    assert_eq!(
        check_order(&records, &appended),
        0,
        "a delivered row was published again: the relay lost its leases while running"
    );
}

/// When recording delivered rows fails in the database (here a trigger refuses the delete), the
/// relay keeps running: the rows stay in the outbox and are published again, each key's first
/// row over and over, never a later one before it; once the database accepts the delete, the
/// backlog drains with every key's deliveries in order (duplicates only of a row already sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_delete_publishes_again_in_order_postgres() {
    let (store, db) = common::postgres().await;
    let store = store.with_outbox(OutboxRouting::new());
    common::inject_fault(db.pool(), "relay_fault", "DELETE", "eventfold_outbox").await;
    let broker = InProcessBroker::new();
    let relay = Relay::new(store.clone(), broker.clone()).with_config(config());
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let running = tokio::spawn(relay.run(async move { stopped.notified().await }));
    let mut appended = HashMap::new();
    for k in 0..4 {
        let key = format!("f{k}");
        let stream = StreamId::new("order", key.clone()).unwrap();
        let events: Vec<NewEvent> = (0..10).map(|_| event(10)).collect();
        for (v, e) in events.iter().enumerate() {
            appended.insert(e.event_id, (key.clone(), v as u64 + 1));
        }
        append_new(&store, &stream, events).await;
    }
    // While the delete fails, only each key's first row is published, again and again.
    let until = Instant::now() + Duration::from_secs(20);
    while broker.records("order").len() < 20 {
        assert!(
            Instant::now() < until,
            "the relay stopped publishing after a failed delete"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = broker.records("order");
    assert!(
        during.iter().all(|r| version(r) == 1),
        "a later row was published while its key's first row was still in the outbox"
    );
    assert_eq!(store.outbox_status().await.unwrap().pending, 40);

    common::lift_fault(db.pool(), "relay_fault").await;
    drain(&store, Duration::from_secs(30)).await;
    stop.notify_one();
    running
        .await
        .unwrap()
        .expect("the relay survives failed deletes");
    let records = broker.records("order");
    let duplicates = check_order(&records, &appended);
    assert!(duplicates >= 16, "the first rows were published again");
    let mut last: HashMap<&str, u64> = HashMap::new();
    for record in &records {
        let v = version(record);
        let before = last.insert(record.key.as_str(), v).unwrap_or(0);
        assert!(
            v == before || v == before + 1,
            "key {} delivered version {v} after {before}",
            record.key
        );
    }
}

common::backend_tests!([memory, sqlite, postgres] {
    4 => many_relays_one_killed_deliver_everything_in_order: many_relays_one_killed,
    2 => refused_message_parked_key_waits_others_flow: refused_message_is_parked_and_its_key_waits,
    2 => parked_key_does_not_starve_others: parked_key_with_a_long_queue_does_not_starve_others,
    2 => outage_backlog_drains: outage_backlog_drains_in_order,
    2 => enqueue_wakes_the_relay: enqueued_message_wakes_a_waiting_relay,
    2 => pipelined_batches_keep_key_order: pipelined_batches_finishing_out_of_order_keep_key_order,
    2 => graceful_stop_settles_batches_in_flight: graceful_stop_settles_the_batches_in_flight,
    2 => no_dual_write: rolled_back_transaction_publishes_nothing,
});
