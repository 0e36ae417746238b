//! PostgreSQL server restarts (issue 18): the test makes a throwaway cluster of its own
//! (`tests/cluster_common`: `initdb` into a temporary directory, `pg_ctl start` on a free port,
//! fsync on), runs writers
//! (several tasks appending to many streams through a `PgStore` with its outbox) and two relays
//! publishing to the in-process broker, and crashes the server again and again in the middle of
//! the run (`pg_ctl restart -m immediate`: every backend is killed, the server recovers from its
//! WAL). Writers retry what failed with a typed transient error; the relays must keep running.
//!
//! Afterwards, from the store and the broker:
//!
//! * every event whose append returned `Ok` is stored, and was published;
//! * nothing that is not stored was published (an append that failed and did not commit is
//!   never published); an append that failed while its commit went through (the connection
//!   dropped between the commit and its answer) is stored, so it must be published: these are
//!   counted as `ambiguous`;
//! * per key, the first deliveries are in stream-version order without a gap (duplicates from
//!   re-published rows are allowed and counted);
//! * the server was restarted the number of times asked, writers made progress after each
//!   restart, and appends did fail during the restarts (the faults hit work in flight).
//!
//! A second test crashes the server the same way under a projection runner and a saga
//! scheduler (with writers appending and sagas starting): neither may stop, park an event for a
//! database failure or fire a deadline twice; the read model must equal a fresh fold of the log
//! and every saga end `compensated` with one timeout and no timer left.
//!
//! `EVENTFOLD_CLUSTER_RESTARTS` sets the number of restarts of each test (default 3). The PostgreSQL server
//! binaries are found in `EVENTFOLD_PG_BIN` or `/usr/lib/postgresql/<version>/bin` (newest
//! first) or on `PATH`; the test fails, loudly, when they cannot be found. `initdb` refuses to
//! run as root: as root, the test runs the server binaries as the `postgres` user through
//! `runuser -u postgres --`, in a directory it hands to that user. The cluster is stopped and
//! its directory removed when the test ends, also when it fails (a guard); a test process killed
//! with SIGKILL leaves it behind (`/tmp/eventfold-cluster-*`).
#![cfg(feature = "postgres")]

mod cluster_common;
mod common;
mod projection_common;
mod saga_common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_common::{crashed, pool_on, started_cluster};
use eventfold::eventstore::postgres::PgStore;
use eventfold::eventstore::{EventStore, ExpectedVersion, OutboxRouting, OutboxStore, StoreError};
use eventfold::outbox::{InProcessBroker, Relay, RelayConfig, headers};
use eventfold::{NewEvent, StreamId};
use uuid::Uuid;

const WRITERS: usize = 6;
const STREAMS_PER_WRITER: usize = 20;
const TOPIC: &str = "acct";
const RELAYS: usize = 2;

/// What the writers saw.
#[derive(Default)]
struct Appends {
    /// Events whose append returned `Ok`: id -> (key, stream version).
    acked: HashMap<Uuid, (String, u64)>,
    /// Events whose append returned an error.
    errored: HashSet<Uuid>,
    /// Errors by kind (`connection_lost`, `pool_timed_out`, `version_conflict`, ...).
    errors: BTreeMap<String, u64>,
}

fn kind_of(e: &eventfold::eventstore::StoreError) -> String {
    match e.transient_kind() {
        Some(kind) => kind.as_str().to_owned(),
        None if e.is_conflict() => "version_conflict".to_owned(),
        None => {
            panic!("an append failed with an error that is neither transient nor a conflict: {e:?}")
        }
    }
}

/// The stream's version as stored, asked until the database answers (a transient error means the
/// server is still restarting).
async fn stored_version(store: &PgStore, stream: &StreamId) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match store.stream_version(stream).await {
            Ok(version) => return version,
            Err(e) if e.transient_kind().is_some() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("reading the version of {stream}: {e:?}"),
        }
    }
}

/// Appends 1 to 3 events at a time, round robin over its streams, until `stop`; an append that
/// fails is followed by a look at the stream's stored version, and the next append expects that.
async fn write(
    store: PgStore,
    writer: usize,
    stop: Arc<AtomicBool>,
    appends: Arc<Mutex<Appends>>,
    acked_count: Arc<AtomicU64>,
) {
    let streams: Vec<StreamId> = (0..STREAMS_PER_WRITER)
        .map(|s| StreamId::new(TOPIC, format!("w{writer}-s{s}")).expect("a stream id"))
        .collect();
    let mut versions = vec![0u64; streams.len()];
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let k = i % streams.len();
        let count = 1 + (i / streams.len() + writer) % 3;
        let events: Vec<NewEvent> = (0..count)
            .map(|n| NewEvent::raw("acct.noted", 1, format!("{{\"i\":{i},\"n\":{n}}}").into()))
            .collect();
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        match store
            .append(&streams[k], ExpectedVersion::Exact(versions[k]), events)
            .await
        {
            Ok(_) => {
                let mut appends = appends.lock().expect("the appends");
                for (n, id) in ids.iter().enumerate() {
                    let version = versions[k] + 1 + n as u64;
                    appends
                        .acked
                        .insert(*id, (streams[k].id().to_owned(), version));
                }
                versions[k] += count as u64;
                acked_count.fetch_add(count as u64, Ordering::SeqCst);
            }
            Err(e) => {
                let kind = kind_of(&e);
                {
                    let mut appends = appends.lock().expect("the appends");
                    *appends.errors.entry(kind).or_default() += 1;
                    appends.errored.extend(ids);
                }
                versions[k] = stored_version(&store, &streams[k]).await;
            }
        }
        i += 1;
    }
}

/// A relay until `stop` resolves; its error (if it gave up) fails the test.
fn spawn_relay(
    store: PgStore,
    broker: InProcessBroker,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), eventfold::eventstore::StoreError>> {
    let relay = Relay::new(store, broker).with_config(RelayConfig {
        batch_size: 200,
        lease_ttl: Duration::from_millis(3000),
        max_attempts: 10_000,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        idle_wait: Duration::from_millis(50),
        ..RelayConfig::default()
    });
    tokio::spawn(relay.run(async move {
        let mut stop = stop;
        let _ = stop.wait_for(|stop| *stop).await;
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_restarts_lose_no_acknowledged_event_and_publish_nothing_uncommitted() {
    let started = Instant::now();
    let (mut cluster, restarts) = started_cluster().await;
    let pool = pool_on(&cluster, "postgres").await;
    let store = PgStore::builder(pool)
        .source("faults-cluster")
        .outbox(OutboxRouting::new())
        .build()
        .await
        .expect("migrate the cluster's database");
    let broker = InProcessBroker::new();
    let (stop_relays, relays_stop) = tokio::sync::watch::channel(false);
    let mut relays: Vec<_> = (0..RELAYS)
        .map(|_| spawn_relay(store.clone(), broker.clone(), relays_stop.clone()))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let appends = Arc::new(Mutex::new(Appends::default()));
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(write(
                store.clone(),
                w,
                stop.clone(),
                appends.clone(),
                acked.clone(),
            ))
        })
        .collect();

    // Crash the server every 1 to 2.5 s of writing (pseudo-random, from the clock), once the
    // writers have made progress since the last restart.
    let mut at_restart = Vec::new();
    let mut last = acked.load(Ordering::SeqCst);
    for r in 0..restarts {
        let pause = 1000 + (started.elapsed().as_nanos() % 1500) as u64;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let progress_deadline = Instant::now() + Duration::from_secs(60);
        while acked.load(Ordering::SeqCst) <= last {
            assert!(
                Instant::now() < progress_deadline,
                "the writers made no progress for 60 s after restart {r}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last = acked.load(Ordering::SeqCst);
        let crash = Instant::now();
        cluster = crashed(cluster).await;
        let pending = store.outbox_status().await.map(|s| s.pending).ok();
        eprintln!(
            "restart {}: at {last} acknowledged events, down for {:?}, outbox pending {pending:?} \
             ({:?})",
            r + 1,
            crash.elapsed(),
            started.elapsed()
        );
        at_restart.push(last);
    }
    // The writers go on after the last restart, then stop.
    let after_last = acked.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::SeqCst) <= after_last + 100 {
        assert!(
            Instant::now() < deadline,
            "the writers made no progress after the last restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.expect("a writer task");
    }
    let written_at = started.elapsed();

    // The relays drain the outbox, then stop; neither may have given up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for relay in &mut relays {
            if relay.is_finished() {
                let ended = relay.await;
                panic!("a relay gave up during the run: {ended:?}");
            }
        }
        let status = store.outbox_status().await.expect("the outbox's status");
        assert_eq!(status.dead_letters, 0, "nothing is parked: {status:?}");
        if status.pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outbox did not drain within 60 s of the last append: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_relays.send(true);
    for relay in relays {
        relay
            .await
            .expect("a relay task")
            .expect("a relay survives the restarts and stops cleanly");
    }

    // What is stored, per stream, in version order.
    let appends = std::mem::take(&mut *appends.lock().expect("the appends"));
    let mut stored: HashMap<Uuid, (String, u64)> = HashMap::new();
    for writer in 0..WRITERS {
        for s in 0..STREAMS_PER_WRITER {
            let stream = StreamId::new(TOPIC, format!("w{writer}-s{s}")).expect("a stream id");
            let events = store
                .read_stream(&stream, 1, u64::MAX)
                .await
                .expect("read a stream");
            for (n, event) in events.iter().enumerate() {
                assert_eq!(event.stream_version, n as u64 + 1, "{stream}: no gap");
                stored.insert(
                    event.event_id,
                    (stream.id().to_owned(), event.stream_version),
                );
            }
        }
    }
    let lost: Vec<&Uuid> = appends
        .acked
        .iter()
        .filter(|(id, place)| stored.get(id) != Some(place))
        .map(|(id, _)| id)
        .collect();
    let ambiguous = appends
        .errored
        .iter()
        .filter(|id| stored.contains_key(id))
        .count();
    let failed: HashSet<Uuid> = appends
        .errored
        .iter()
        .filter(|id| !stored.contains_key(id))
        .copied()
        .collect();
    let unexplained = stored
        .keys()
        .filter(|id| !appends.acked.contains_key(id) && !appends.errored.contains(id))
        .count();

    // What was published, per key in offset order (a key lives in one partition).
    let mut records = broker.records(TOPIC);
    records.sort_by_key(|r| (r.partition, r.offset));
    let mut seen = HashSet::new();
    let mut duplicates = 0u64;
    let mut phantom = 0u64;
    let mut failed_published = 0u64;
    let mut order_violations = Vec::new();
    let mut last_version: HashMap<String, u64> = HashMap::new();
    for record in &records {
        let Some((key, version)) = stored.get(&record.message_id) else {
            phantom += 1;
            if failed.contains(&record.message_id) {
                failed_published += 1;
            }
            continue;
        };
        assert_eq!(&record.key, key, "the message key is the stream's id");
        assert_eq!(
            record.headers[headers::STREAM_VERSION],
            version.to_string(),
            "ce_streamversion of {}",
            record.message_id
        );
        if !seen.insert(record.message_id) {
            duplicates += 1;
            continue;
        }
        let last = last_version.entry(key.clone()).or_insert(0);
        if *version != *last + 1 {
            order_violations.push(format!("{key}: version {version} after {last}"));
        }
        *last = *version;
    }
    let unpublished = stored.keys().filter(|id| !seen.contains(id)).count();
    let errors: u64 = appends.errors.values().sum();
    eprintln!(
        "cluster faults: {} restarts (acknowledged events at each: {at_restart:?}), {} events \
         acknowledged, {} stored, {} appends failed ({:?}: {} events, {ambiguous} of them \
         committed all the same), {} records published ({duplicates} duplicates), written in \
         {written_at:?}, {:.1} s in all",
        cluster.restarts,
        appends.acked.len(),
        stored.len(),
        errors,
        appends.errors,
        appends.errored.len(),
        records.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(cluster.restarts, restarts, "the server was restarted");
    assert!(
        lost.is_empty(),
        "{} acknowledged events are not stored where their append put them, e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(unexplained, 0, "stored events that no writer appended");
    assert_eq!(
        phantom, 0,
        "published records that are not stored ({failed_published} of them from failed appends)"
    );
    assert_eq!(unpublished, 0, "stored events that were never published");
    assert!(
        order_violations.is_empty(),
        "{} first deliveries out of stream-version order, e.g. {:?}",
        order_violations.len(),
        order_violations.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        errors > 0,
        "no append failed: the restarts did not hit work in flight"
    );
    println!(
        "FAULTS fault=server_restart component=postgres injected=restarts:{} \
         checked=acked_events:{},lost:0,unpublished:0,uncommitted_published:0,order_violations:0,\
         failed_appends:{errors},ambiguous_events:{ambiguous},duplicates:{duplicates} result=pass",
        cluster.restarts,
        appends.acked.len(),
    );
}

/// A count, asked until the database answers (the server may be restarting), within 120 s.
async fn count_through_restarts(pool: &sqlx::PgPool, sql: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await {
            Ok(n) => return n,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

/// Retries `attempt` after every retriable failure (the server is restarting) for up to 120 s;
/// a failure that is not retriable, or one that lasts longer, fails the test with `what`.
async fn through_restarts<T, E, F, Fut>(what: &str, mut attempt: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, (E, bool)>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err((_, true)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err((e, _)) => panic!("{what}: {e}"),
        }
    }
}

/// The projection runner and the saga scheduler keep running while the server crashes and
/// recovers again and again (`pg_ctl restart -m immediate`) under them, while writers append and
/// sagas start: every connection of their pools dies at once, in the middle of a batch, a
/// checkpoint, a timer's claim or its firing. Neither may stop, park an event for a database
/// failure, apply an event twice, fire a deadline twice or leave a timer behind. Afterwards the
/// read model equals a fresh fold of the log (one ledger row per event), and every saga (each a
/// step nobody answers, so a durable deadline) ended `compensated` with exactly one timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_projection_runner_and_the_saga_scheduler_ride_out_server_crashes() {
    use projection_common::deposit;

    let started = Instant::now();
    let (mut cluster, restarts) = started_cluster().await;
    let pool = pool_on(&cluster, "postgres").await;
    let store = PgStore::builder(pool.clone())
        .source("faults-cluster-runners")
        .build()
        .await
        .expect("migrate the cluster's database");
    // The sagas live in a database of their own on the same server (so that the log the
    // projection folds holds deposits only).
    sqlx::query("CREATE DATABASE sagas")
        .execute(&pool)
        .await
        .expect("create the sagas' database");
    let saga_pool = pool_on(&cluster, "sagas").await;
    let saga_store = PgStore::builder(saga_pool.clone())
        .source("faults-cluster-sagas")
        .build()
        .await
        .expect("migrate the sagas' database");

    // One deposit before the runner starts (its first position to wait for).
    store
        .append(
            &StreamId::new("account", "seed").expect("a stream id"),
            ExpectedVersion::Any,
            vec![deposit("acct-0", 1)],
        )
        .await
        .expect("the first deposit");
    let runner = projection_common::strict_ledger_runner(&store);
    // The saga scheduler: each saga's one step times out after 300 ms.
    let (orchestrator, stop_scheduler, scheduling) =
        saga_common::waiting_scheduler(saga_store.clone(), Duration::from_millis(300));

    // Until the last restart: two writers (batches of 5 deposits over 30 streams, appended again
    // after a failure with the same event ids: an append that committed though its answer was
    // lost is then refused as a duplicate, and counts as done) and four saga starters
    // (a start that failed is started again with the same business key: one saga per key).
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    let started_sagas = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (store, appended, stop) = (store.clone(), appended.clone(), stop.clone());
            tokio::spawn(async move {
                for i in (w..).step_by(2) {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let stream =
                        StreamId::new("account", format!("{}", i % 30)).expect("a stream id");
                    let events: Vec<NewEvent> = (0..5)
                        .map(|k| deposit(&format!("acct-{}", (i + k) % 12), (i % 50) as i64 + 1))
                        .collect();
                    through_restarts(&format!("append to {stream}"), || {
                        let (store, stream, events) = (&store, &stream, events.clone());
                        async move {
                            match store.append(stream, ExpectedVersion::Any, events).await {
                                // The attempt before committed, though its answer was lost.
                                Err(StoreError::DuplicateEventId { .. }) => Ok(()),
                                Err(e) => {
                                    let retriable = e.is_retriable();
                                    Err((e, retriable))
                                }
                                Ok(_) => Ok(()),
                            }
                        }
                    })
                    .await;
                    appended.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            })
        })
        .collect();
    let starters: Vec<_> = (0..4)
        .map(|t| {
            let (orchestrator, stop, started_sagas) =
                (orchestrator.clone(), stop.clone(), started_sagas.clone());
            tokio::spawn(async move {
                for i in (t..).step_by(4) {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let order = saga_common::Order {
                        id: format!("o-{i}"),
                        cents: 100,
                        ..saga_common::Order::default()
                    };
                    let key = format!("k-{i}");
                    through_restarts(&format!("start saga {key}"), || {
                        let (orchestrator, key, order) = (&orchestrator, &key, order.clone());
                        async move {
                            orchestrator.start(key, order, None).await.map_err(|e| {
                                let retriable = e.is_retriable();
                                (e, retriable)
                            })
                        }
                    })
                    .await;
                    started_sagas.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();

    runner
        .wait_for(1)
        .await
        .expect("the runner set the projection up and applied the first event");

    // Crash the server every 1 to 2.5 s (pseudo-random, from the clock), once the runner and the
    // scheduler have both made progress since the last restart.
    let progress = |(pool, saga_pool): (sqlx::PgPool, sqlx::PgPool)| async move {
        (
            count_through_restarts(&pool, "SELECT count(*) FROM ledger").await,
            count_through_restarts(
                &saga_pool,
                "SELECT count(*) FROM eventfold_sagas WHERE status = 'compensated'",
            )
            .await,
        )
    };
    let mut at_restart = Vec::new();
    let mut last = progress((pool.clone(), saga_pool.clone())).await;
    for r in 0..restarts {
        let pause = 1000 + (started.elapsed().as_nanos() % 1500) as u64;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let progress_deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let now = progress((pool.clone(), saga_pool.clone())).await;
            if now.0 > last.0 && now.1 > last.1 {
                last = now;
                break;
            }
            assert!(runner.is_running("ledger"), "the projection runner stopped");
            assert!(!scheduling.is_finished(), "the saga scheduler stopped");
            assert!(
                Instant::now() < progress_deadline,
                "no progress for 90 s after restart {r}: {now:?} (ledger rows, sagas \
                 compensated), {last:?} before"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let crash = Instant::now();
        cluster = crashed(cluster).await;
        eprintln!(
            "restart {}: at {} ledger rows, {} sagas compensated, {} batches appended, down for \
             {:?} ({:?})",
            r + 1,
            last.0,
            last.1,
            appended.load(Ordering::SeqCst),
            crash.elapsed(),
            started.elapsed()
        );
        at_restart.push(last);
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.expect("a writer");
    }
    for starter in starters {
        starter.await.expect("a saga starter");
    }

    let sagas_started = started_sagas.load(Ordering::SeqCst) as i64;
    // Both catch up, bounded by progress: 60 s without any.
    let mut seen = (-1, -1);
    let mut stalled_since = Instant::now();
    loop {
        let now = progress((pool.clone(), saga_pool.clone())).await;
        let deposits = count_through_restarts(
            &pool,
            "SELECT count(*) FROM eventfold_events WHERE stream_type = 'account'",
        )
        .await;
        if now.0 == deposits && now.1 == sagas_started {
            break;
        }
        if now != seen {
            seen = now;
            stalled_since = Instant::now();
        }
        assert!(
            stalled_since.elapsed() < Duration::from_secs(60),
            "no progress for 60 s after the last restart: {} of {deposits} deposits in the \
             ledger, {} of {sagas_started} sagas compensated",
            now.0,
            now.1
        );
        assert!(runner.is_running("ledger"), "the projection runner stopped");
        assert!(!scheduling.is_finished(), "the saga scheduler stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    runner
        .stop()
        .await
        .expect("the runner survives the restarts and stops without an error");
    stop_scheduler.send(true).expect("stop the scheduler");
    scheduling.await.expect("the scheduler's task");

    // The read model.
    projection_common::assert_ledger_equals_fold(&store, &format!("{restarts} server crashes"))
        .await;
    let deposits: i64 =
        sqlx::query_scalar("SELECT count(*) FROM eventfold_events WHERE stream_type = 'account'")
            .fetch_one(&pool)
            .await
            .expect("deposits");
    let ledger: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(&pool)
        .await
        .expect("ledger rows");
    assert_eq!(ledger, deposits, "one ledger row per event");
    let batches = appended.load(Ordering::SeqCst) as i64;
    assert!(
        deposits > batches * 5,
        "{deposits} deposits stored, {batches} batches of 5 appended after the first"
    );

    // The sagas.
    saga_common::assert_each_waiting_saga_timed_out_once(&saga_pool, sagas_started).await;
    assert_eq!(cluster.restarts, restarts, "the server was restarted");
    eprintln!(
        "runners under server crashes: {restarts} restarts (ledger rows, sagas compensated at \
         each: {at_restart:?}), {deposits} deposits, {sagas_started} sagas, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "FAULTS fault=server_restart component=projection_runner injected=restarts:{restarts} \
         checked=events:{deposits},read_model_equals_fold:yes,parked:0,double_applies:0 \
         result=pass"
    );
    println!(
        "FAULTS fault=server_restart component=saga_scheduler injected=restarts:{restarts} \
         checked=sagas:{sagas_started},not_terminal:0,deadlines_fired_twice:0,timers_left:0 result=pass"
    );
}
