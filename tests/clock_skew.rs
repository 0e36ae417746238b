//! Clock skew between writers: three writers whose clocks disagree by an hour each way (their
//! events' timestamps and their UUIDv7 event ids come from their own clocks) append to the same
//! streams at once. Order comes from the store, never from a clock: the global log reads every
//! event once in commit order with each stream's versions ascending, the relay publishes each
//! key in version order, and the timestamps are stored as written (not "corrected").
mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventfold::eventstore::{
    Checkpoint, ExpectedVersion, LogFilter, OutboxRelayStore, OutboxRouting,
};
use eventfold::outbox::{InProcessBroker, Relay, headers};
use eventfold::{NewEvent, StreamId};
use uuid::Uuid;

const STREAMS: usize = 6;
const PER_WRITER: usize = 60;
/// The writers' clock offsets: one an hour behind, one right, one an hour ahead.
const SKEWS_S: [i64; 3] = [-3600, 0, 3600];

/// An event as a writer whose clock is `skew_s` seconds off writes it: timestamp and UUIDv7 id
/// from that clock (microseconds, what every backend keeps).
fn skewed_event(skew_s: i64, writer: usize, n: usize) -> NewEvent {
    let micros = Utc::now().timestamp_micros() + skew_s * 1_000_000;
    let timestamp = DateTime::from_timestamp_micros(micros).expect("a valid time");
    let secs = u64::try_from(micros / 1_000_000).expect("after 1970");
    let nanos = u32::try_from((micros % 1_000_000) * 1000).expect("nanos");
    let id = Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, nanos));
    let mut event = NewEvent::raw(
        "clock.noted",
        1,
        format!(r#"{{"writer":{writer},"n":{n}}}"#).into_bytes(),
    );
    event.event_id = id;
    event.timestamp = timestamp;
    event
}

async fn skewed_writers_keep_store_order<S: OutboxRelayStore>(store: S) {
    let store = store.with_outbox(OutboxRouting::new());
    let streams: Vec<StreamId> = (0..STREAMS)
        .map(|i| StreamId::new("clock", format!("s-{i}").as_str()).expect("a stream id"))
        .collect();
    // The writers, at once: each appends to the streams in turn, one event per append.
    let mut tasks = Vec::new();
    for (writer, skew) in SKEWS_S.into_iter().enumerate() {
        let (store, streams) = (store.clone(), streams.clone());
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for n in 0..PER_WRITER {
                let event = skewed_event(skew, writer, n);
                written.push((event.event_id, event.timestamp));
                let stream = &streams[(n + writer) % STREAMS];
                store
                    .append(stream, ExpectedVersion::Any, vec![event])
                    .await
                    .expect("append");
                // Let the other writers in, so that their events interleave in the log.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            written
        }));
    }
    let mut written: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    for task in tasks {
        written.extend(task.await.expect("writer"));
    }
    let total = SKEWS_S.len() * PER_WRITER;
    assert_eq!(written.len(), total);

    // The global log: every event once, in log order, each stream's versions ascending, the
    // timestamps as written, whatever order the clocks give them.
    let mut read = Vec::new();
    let mut checkpoints = Vec::new();
    let mut after = Checkpoint::START;
    loop {
        let batch = store
            .read_log(after, 50, &LogFilter::all())
            .await
            .expect("read the log");
        checkpoints.extend(batch.events.iter().map(|e| e.checkpoint));
        read.extend(batch.events.iter().map(|e| e.event.clone()));
        after = batch.checkpoint;
        if batch.reached_end && !batch.held_back {
            break;
        }
    }
    assert_eq!(read.len(), total, "every event once");
    let mut last_version: BTreeMap<String, u64> = BTreeMap::new();
    let mut clock_inversions = 0;
    assert!(
        checkpoints.windows(2).all(|pair| pair[0] < pair[1]),
        "the log reads in its own order (commit order on PostgreSQL), checkpoints ascending"
    );
    for pair in read.windows(2) {
        if pair[0].timestamp > pair[1].timestamp {
            clock_inversions += 1;
        }
    }
    for event in &read {
        let last = last_version.entry(event.stream_id.to_string()).or_insert(0);
        assert_eq!(
            event.stream_version,
            *last + 1,
            "{}: versions in log order",
            event.stream_id
        );
        *last = event.stream_version;
        assert_eq!(
            written.get(&event.event_id),
            Some(&event.timestamp),
            "event {}: the timestamp as its writer's clock gave it",
            event.event_id
        );
    }
    // The skew was real: the log's order disagrees with the clocks many times.
    assert!(
        clock_inversions >= total / 10,
        "only {clock_inversions} clock inversions in the log: the writers were not skewed"
    );

    // The relay publishes each key in version order.
    let broker = InProcessBroker::new();
    let mut relay = Relay::new(store.clone(), broker.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.outbox_status().await.expect("status").pending > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay drained the outbox"
        );
        relay.run_once().await.expect("relay round");
    }
    let records = broker.records("clock");
    assert_eq!(records.len(), total, "every event published once");
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for record in &records {
        per_key.entry(record.key.clone()).or_default().push(
            record.headers[headers::STREAM_VERSION]
                .parse()
                .expect("a version header"),
        );
    }
    for (key, versions) in per_key {
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, expected, "key {key}: published in version order");
    }
    println!(
        "FAULTS fault=clock_skew component=log_and_relay injected=writers:3,skew_secs:3600 \
         checked=events:{total},clock_inversions:{clock_inversions},lost:0,order_violations:0 result=pass"
    );
    eprintln!(
        "clock skew: {total} events from writers at {SKEWS_S:?} s; {clock_inversions} clock inversions in the log; log, versions and relay in store order"
    );
}

common::backend_tests!([memory, sqlite, postgres] {
    4 => skewed_clocks_do_not_reorder_the_log_or_the_relay: skewed_writers_keep_store_order,
});
