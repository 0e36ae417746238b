//! Graceful shutdown of every long-running piece, with real processes, on PostgreSQL.
//!
//! Each test re-executes this test binary in child mode (`EVENTFOLD_SHUTDOWN_ROLE`): the child
//! runs one piece through [`eventfold::shutdown::run_until_signal`] (or the CLI's
//! `projections run`) while the parent feeds it a steady stream of work. The parent sends
//! SIGTERM mid-work and checks that the child exits with status 0 within [`EXIT_BOUND`] having
//! settled what it had in flight and given back what it held; then a second child takes over
//! **well within the piece's lease** ([`LEASE`], 30 s: the test fails if the second instance
//! has to wait for it), the parent stops feeding, the second child is stopped with SIGINT, and
//! the end state must be exact: every event published/handled/projected once, in order per key,
//! every saga terminal.
//!
//! The pieces: the outbox relay (a publisher that writes to a table, so that what was published
//! is known exactly), a consumer with its inbox (a message source over a table, so that the
//! committed offsets are known exactly), the projection runner (`projections run`, the
//! operator's command), the saga timer scheduler, and a local reactor. Kafka's side (the
//! consumer group, the saga orchestrator and participants over a broker) is in
//! `tests/shutdown_kafka.rs`.
#![cfg(feature = "postgres")]
mod common;

use common::ticks::{Note, TickEvent};
use shutdown_common::{ChildProcess, EXIT_BOUND};
mod projection_common;
mod saga_common;
mod shutdown_common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventfold::eventstore::postgres::PgStore;
use eventfold::eventstore::{EventStore, ExpectedVersion, OutboxRouting};
use eventfold::outbox::{
    Consumer, Delivery, MessageSource, PublishError, Publisher, Record, Relay, RelayConfig,
};
use eventfold::saga::choreography::LocalReactor;
use eventfold::saga::runtime::Orchestrator;
use eventfold::shutdown::run_until_signal;
use eventfold::{BoxError, NewEvent, OutboxMessage, StreamId};
use uuid::Uuid;

const ROLE_ENV: &str = "EVENTFOLD_SHUTDOWN_ROLE";
const DATABASE_ENV: &str = "EVENTFOLD_SHUTDOWN_DATABASE_URL";
const GRACE_ENV: &str = "EVENTFOLD_SHUTDOWN_GRACE_MS";
/// The line a child prints once its piece runs.
const STARTED: &str = "shutdown child started";
/// How long a child may take to exit after SIGTERM or SIGINT.
/// The leases of the relay's slots and of the scheduler's timer claims: far longer than a
/// takeover may take, so that a second instance that has to wait for them fails the test.
const LEASE: Duration = Duration::from_secs(30);
/// How long the second instance may take to finish the rest: a third of the lease.
const TAKEOVER_BOUND: Duration = Duration::from_secs(10);
/// The children's grace (`run_until_signal`), unless the test sets `GRACE_ENV`.
const GRACE: Duration = Duration::from_secs(8);

// ---------------------------------------------------------------------------------------------
// The children

/// In child mode (the parent test set `ROLE_ENV`): runs the role until a signal, then exits the
/// process: 0 after a graceful stop, 1 when the grace elapsed or a second signal came, 2 when
/// the piece failed. Returns at once otherwise.
async fn child_mode() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let url = std::env::var(DATABASE_ENV).expect("the child's database");
    let grace = std::env::var(GRACE_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(GRACE, Duration::from_millis);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .connect(&url)
        .await
        .expect("connect");
    let store = PgStore::builder(pool.clone())
        .source("test-svc")
        .build()
        .await
        .expect("store");
    let code = match role.as_str() {
        "relay" | "stuck-relay" => {
            let publisher = TablePublisher {
                pool: pool.clone(),
                hang: role == "stuck-relay",
            };
            let relay = Relay::new(store.with_outbox(OutboxRouting::new()), publisher).with_config(
                RelayConfig {
                    batch_size: 20,
                    lease_ttl: LEASE,
                    idle_wait: Duration::from_millis(20),
                    ..RelayConfig::default()
                },
            );
            println!("{STARTED}: relay {}", relay.owner());
            exit_code(run_until_signal(grace, |stop| relay.run(stop)).await)
        }
        "consumer" => {
            let source = TableSource::open(pool.clone(), "ledger-consumer").await;
            let consumer =
                Consumer::new("ledger-consumer", store, source, common::Ledger::default());
            println!("{STARTED}: consumer");
            exit_code(run_until_signal(grace, |stop| consumer.run(stop)).await)
        }
        "projections" => {
            // The operator's command: `projections run` of the application's CLI.
            use clap::Parser;
            let projections = eventfold::projections::Projections::new(store).register_with(
                projection_common::Ledger::new(1),
                eventfold::projections::ProjectionOptions::default().batch_size(20),
            );
            let grace_ms = grace.as_millis().to_string();
            let cli = eventfold::cli::Cli::try_parse_from([
                "app",
                "projections",
                "run",
                "--poll-ms",
                "50",
                "--grace-ms",
                grace_ms.as_str(),
            ])
            .expect("parse");
            // Its first line, `projections running: ...`, says it started.
            println!("{STARTED}: projections");
            let mut out = std::io::stdout();
            match cli.command.execute(&projections, &mut out).await {
                Ok(()) => 0,
                Err(eventfold::cli::CliError::Shutdown(e)) => {
                    eprintln!("{e}");
                    1
                }
                Err(e) => {
                    eprintln!("{e}");
                    2
                }
            }
        }
        "scheduler" => {
            let scheduler = Orchestrator::new(store, saga_common::waiting_definition(WAIT))
                .scheduler()
                .lease(LEASE)
                .batch(100)
                .concurrency(1)
                .poll_interval(Duration::from_millis(20));
            println!("{STARTED}: scheduler");
            exit_code(
                run_until_signal(grace, |stop| async move {
                    scheduler.run(stop).await;
                    Ok::<(), std::convert::Infallible>(())
                })
                .await,
            )
        }
        "reactor" => {
            let reactor = LocalReactor::new(store, Note).batch_size(50);
            println!("{STARTED}: reactor");
            exit_code(
                run_until_signal(grace, |stop| reactor.run(Duration::from_millis(50), stop)).await,
            )
        }
        other => panic!("unknown role {other}"),
    };
    println!("shutdown child exits with {code}");
    std::process::exit(code);
}

/// The exit status of a child: 0 stopped gracefully, 1 the grace elapsed or a second signal, 2
/// the piece failed.
fn exit_code<E: std::fmt::Display>(
    stopped: Result<
        eventfold::shutdown::Stopped<Result<(), E>>,
        eventfold::shutdown::ShutdownError,
    >,
) -> i32 {
    match stopped {
        Ok(stopped) => match stopped.output {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("the piece failed: {e}");
                2
            }
        },
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// A publisher that writes each message to the table `published` (in the order of the call)
/// and takes 20 ms per call, like a broker's round trip. With `hang`, a call never returns (a
/// broker that does not answer).
#[derive(Clone)]
struct TablePublisher {
    pool: sqlx::PgPool,
    hang: bool,
}

impl Publisher for TablePublisher {
    async fn publish(&self, messages: &[OutboxMessage]) -> Vec<Result<Delivery, PublishError>> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        let mut results = Vec::with_capacity(messages.len());
        for message in messages {
            let inserted: Result<i64, sqlx::Error> = sqlx::query_scalar(
                "INSERT INTO published (message_id, key) VALUES ($1, $2) RETURNING seq",
            )
            .bind(message.id)
            .bind(&message.key)
            .fetch_one(&self.pool)
            .await;
            results.push(match inserted {
                Ok(seq) => Ok(Delivery {
                    topic: message.topic.clone(),
                    partition: 0,
                    offset: u64::try_from(seq).unwrap_or_default(),
                }),
                Err(e) => Err(PublishError {
                    message_id: message.id,
                    topic: message.topic.clone(),
                    reason: e.to_string(),
                    retriable: true,
                }),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        results
    }
}

/// A message source over the table `source_records` (one partition, offsets 0, 1, 2, ...) with
/// its group's committed offset in `source_offsets`: what a broker keeps, in the database, so
/// that the test reads exactly what was committed.
struct TableSource {
    pool: sqlx::PgPool,
    group: String,
    /// The next offset to deliver.
    position: i64,
}

impl TableSource {
    /// Resumes after the group's committed offset.
    async fn open(pool: sqlx::PgPool, group: &str) -> Self {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT next FROM source_offsets WHERE grp = $1")
                .bind(group)
                .fetch_optional(&pool)
                .await
                .expect("read the committed offset");
        Self {
            pool,
            group: group.to_owned(),
            position: position.unwrap_or(0),
        }
    }
}

impl MessageSource for TableSource {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BoxError> {
        let until = Instant::now() + wait;
        loop {
            let rows: Vec<(i64, String, Uuid, Vec<u8>)> = sqlx::query_as(
                "SELECT off, key, message_id, payload FROM source_records WHERE off >= $1 \
                 ORDER BY off LIMIT $2",
            )
            .bind(self.position)
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
            if let Some((last, ..)) = rows.last() {
                self.position = last + 1;
                return Ok(rows
                    .into_iter()
                    .map(|(offset, key, message_id, payload)| Record {
                        topic: "ledger".to_owned(),
                        partition: 0,
                        offset: u64::try_from(offset).unwrap_or_default(),
                        key,
                        message_id,
                        message_type: "payment.received".to_owned(),
                        payload,
                        headers: Default::default(),
                        timestamp: chrono::Utc::now(),
                    })
                    .collect());
            }
            if Instant::now() >= until {
                return Ok(Vec::new());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn commit(&mut self, record: &Record) -> Result<(), BoxError> {
        sqlx::query(
            "INSERT INTO source_offsets (grp, next) VALUES ($1, $2) \
             ON CONFLICT (grp) DO UPDATE SET next = EXCLUDED.next",
        )
        .bind(&self.group)
        .bind(i64::try_from(record.offset)? + 1)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Sagas started before the scheduler runs.
const BACKLOG: u64 = 3000;
/// How long the scheduler may take to stop: a firing or two, not its backlog.
const SCHEDULER_STOP_BOUND: Duration = Duration::from_secs(2);

/// The step timeout of the scheduler's sagas: their timers are due at once.
const WAIT: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------------
// The parent's side

/// A child running `role` of `test` on the database `url`, with the default grace.
fn child(test: &str, role: &'static str, url: &str) -> ChildProcess {
    child_with(test, role, url, GRACE)
}

/// A child running `role` of `test` on the database `url`, with `grace` to stop in.
fn child_with(test: &str, role: &'static str, url: &str, grace: Duration) -> ChildProcess {
    ChildProcess::spawn(
        test,
        role,
        &[
            (ROLE_ENV, role.to_owned()),
            (DATABASE_ENV, url.to_owned()),
            (GRACE_ENV, grace.as_millis().to_string()),
        ],
        STARTED,
    )
}

/// A task that feeds work until `stop` is set, counting it in `fed`.
struct Feeder {
    stop: Arc<AtomicBool>,
    fed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Feeder {
    fn start<F, Fut>(feed: F) -> Self
    where
        F: Fn(u64) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let fed = Arc::new(AtomicU64::new(0));
        let task = {
            let (stop, fed) = (stop.clone(), fed.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    feed(i).await;
                    i += 1;
                    fed.store(i, Ordering::SeqCst);
                    if i % 10 == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        };
        Self { stop, fed, task }
    }

    /// Appends `event(i)` (a stream and its event) to `store`, at any version.
    fn appending<E>(store: &PgStore, event: E) -> Self
    where
        E: Fn(u64) -> (StreamId, NewEvent) + Send + 'static,
    {
        let store = store.clone();
        Self::start(move |i| {
            let store = store.clone();
            let (stream, event) = event(i);
            async move {
                store
                    .append(&stream, ExpectedVersion::Any, vec![event])
                    .await
                    .expect("append");
            }
        })
    }

    /// Stops feeding; returns how much was fed.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the feeder");
        self.fed.load(Ordering::SeqCst)
    }
}

/// [`shutdown_common::within`], naming the lease a waiting successor would be stuck behind.
async fn within<F, Fut>(bound: Duration, what: &str, done: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let why = format!("the lease is {LEASE:?}: a second instance that waits for it fails here");
    shutdown_common::within(bound, what, &why, done).await
}

/// Waits until `progress` reports at least `at_least`, at most 30 s.
async fn progressed<F, Fut>(what: &str, at_least: i64, mut progress: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    let start = Instant::now();
    loop {
        let now = progress().await;
        if now >= at_least {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: {now} of {at_least} in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The tests

const RELAY_TEST: &str = "relay_stops_on_sigterm_settles_its_batches_and_hands_over_at_once";

/// The relay: SIGTERM mid-stream → exit 0, every published row settled (deleted), no lease left;
/// a second relay publishes the rest at once (its slots are free, not leased for 30 s); every
/// event published exactly once, in order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_stops_on_sigterm_settles_its_batches_and_hands_over_at_once() {
    child_mode().await;
    let (store, db) = common::postgres().await;
    let store = store.with_outbox(OutboxRouting::new());
    let pool = store.pool().clone();
    sqlx::query("CREATE TABLE published (seq bigserial PRIMARY KEY, message_id uuid, key text)")
        .execute(&pool)
        .await
        .expect("the published table");
    let url = common::database_url(db.name());
    const KEYS: u64 = 20;
    let writer = Feeder::appending(&store, |i| {
        let stream = StreamId::new("order", format!("o-{}", i % KEYS)).expect("id");
        let event = NewEvent::raw("order.noted", 1, format!("{{\"i\":{i}}}").into_bytes());
        (stream, event)
    });
    let mut first = child(RELAY_TEST, "relay", &url);
    progressed("published by the first relay", 200, || {
        count(&pool, "SELECT count(*) FROM published")
    })
    .await;
    first.stop("TERM").await;
    let published_by_first = count(&pool, "SELECT count(*) FROM published").await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM eventfold_outbox_leases WHERE expires_at > now()"
        )
        .await,
        0,
        "the stopped relay released its leases"
    );
    // What the first relay published is settled: none of it is still in the outbox.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM eventfold_outbox o JOIN published p ON p.message_id = o.id"
        )
        .await,
        0,
        "a row published by the stopped relay is still in the outbox (not settled)"
    );
    let mut second = child(RELAY_TEST, "relay", &url);
    let takeover = within(TAKEOVER_BOUND, "the second relay publishing", || async {
        count(&pool, "SELECT count(*) FROM published").await > published_by_first
    })
    .await;
    let appended = writer.finish().await;
    let drained = within(
        TAKEOVER_BOUND,
        "the outbox drained by the second relay",
        || async { count(&pool, "SELECT count(*) FROM eventfold_outbox").await == 0 },
    )
    .await;
    println!(
        "{appended} events; the first relay published {published_by_first}; the second took \
         over in {takeover:?} and drained the outbox in {drained:?}"
    );
    second.stop("INT").await;
    // Exactly once, in order per key.
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT message_id, key FROM published ORDER BY seq")
            .fetch_all(&pool)
            .await
            .expect("published");
    let mut seen = HashMap::new();
    for (id, _) in &rows {
        *seen.entry(*id).or_insert(0) += 1;
    }
    let twice = seen.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "{twice} events published more than once");
    assert_eq!(rows.len() as u64, appended, "every event published");
    let version_of: HashMap<Uuid, (String, u64)> = whole_log(&store)
        .await
        .into_iter()
        .map(|e| (e.event_id, (e.stream_id.to_string(), e.stream_version)))
        .collect();
    let mut last: HashMap<String, (String, u64)> = HashMap::new();
    for (id, key) in &rows {
        let (stream, version) = version_of
            .get(id)
            .cloned()
            .expect("a published event is in the log");
        if let Some((previous_stream, previous)) =
            last.insert(key.clone(), (stream.clone(), version))
        {
            assert_eq!(previous_stream, stream, "key {key} is one stream");
            assert!(
                version > previous,
                "key {key}: version {version} published after {previous}"
            );
        }
    }
}

/// Every event of the log, in log order.
async fn whole_log<S: EventStore>(store: &S) -> Vec<eventfold::RecordedEvent> {
    let mut events = Vec::new();
    let mut from = eventfold::eventstore::Checkpoint::START;
    loop {
        let batch = store
            .read_log(from, 5000, &eventfold::eventstore::LogFilter::all())
            .await
            .expect("read the log");
        events.extend(batch.events.into_iter().map(|e| e.event));
        from = batch.checkpoint;
        if batch.reached_end && !batch.held_back {
            return events;
        }
    }
}

const STUCK_TEST: &str = "a_second_signal_or_the_grace_ends_a_stuck_stop_with_status_1";

/// The helper's bounds: a relay whose broker never answers cannot settle its batch; a second
/// SIGTERM ends the wait at once with status 1, and so does the end of the grace. Its leases
/// are left to expire (nothing is released by a process that gave up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_or_the_grace_ends_a_stuck_stop_with_status_1() {
    child_mode().await;
    // A second signal: status 1 at once, although the grace is long.
    let (store, _db, url) = stuck_outbox().await;
    let mut relay = child_with(STUCK_TEST, "stuck-relay", &url, Duration::from_secs(60));
    within(Duration::from_secs(20), "the stuck relay claiming", || {
        holds_a_lease(store.pool())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        relay.is_running(),
        "the stuck relay waits for its batch in flight after the first signal"
    );
    let sent = Instant::now();
    relay.signal("TERM");
    let (status, took) = relay.exited_since(sent, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(1), "a second signal exits 1 ({status})");
    assert!(
        holds_a_lease(store.pool()).await,
        "a relay that gave up leaves its leases to expire"
    );
    println!("second signal: exit 1 in {took:?}");
    // The grace: status 1 once it elapsed.
    let (store, _db, url) = stuck_outbox().await;
    let grace = Duration::from_millis(1500);
    let mut relay = child_with(STUCK_TEST, "stuck-relay", &url, grace);
    within(Duration::from_secs(20), "the stuck relay claiming", || {
        holds_a_lease(store.pool())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    relay.signal("INT");
    let (status, took) = relay.exited_since(sent, EXIT_BOUND).await;
    assert_eq!(
        status.code(),
        Some(1),
        "the grace elapsed: exit 1 ({status})"
    );
    assert!(
        took >= grace && took < grace + Duration::from_secs(3),
        "exited {took:?} after SIGINT with a grace of {grace:?}"
    );
    println!("grace of {grace:?} elapsed: exit 1 in {took:?}");
}

/// A fresh database with one event in the outbox, and its URL.
async fn stuck_outbox() -> (
    PgStore,
    eventfold::eventstore::postgres::testing::TestDb,
    String,
) {
    let (store, db) = common::postgres().await;
    let store = store.with_outbox(OutboxRouting::new());
    let url = common::database_url(db.name());
    let stream = StreamId::new("order", "stuck").expect("id");
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::raw("order.noted", 1, b"{}".to_vec())],
        )
        .await
        .expect("append");
    (store, db, url)
}

/// Whether a relay holds a live slot lease.
async fn holds_a_lease(pool: &sqlx::PgPool) -> bool {
    count(
        pool,
        "SELECT count(*) FROM eventfold_outbox_leases WHERE expires_at > now()",
    )
    .await
        > 0
}

const CONSUMER_TEST: &str = "consumer_stops_on_sigterm_with_its_handled_messages_committed";

/// A consumer with its inbox: SIGTERM mid-stream → exit 0 with the offset of every handled
/// message committed (so its successor gets no duplicate: the committed offset equals the
/// messages that took effect); the second consumer handles the rest, every effect exactly once,
/// in offset order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_stops_on_sigterm_with_its_handled_messages_committed() {
    child_mode().await;
    let (store, db) = common::postgres().await;
    let pool = store.pool().clone();
    sqlx::raw_sql(
        "CREATE TABLE source_records (off bigint PRIMARY KEY, key text, message_id uuid, payload bytea); \
         CREATE TABLE source_offsets (grp text PRIMARY KEY, next bigint NOT NULL);",
    )
    .execute(&pool)
    .await
    .expect("the source tables");
    let url = common::database_url(db.name());
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let feeder = {
        let (pool, ids) = (pool.clone(), ids.clone());
        Feeder::start(move |i| {
            let (pool, ids) = (pool.clone(), ids.clone());
            async move {
                let id = Uuid::now_v7();
                sqlx::query(
                    "INSERT INTO source_records (off, key, message_id, payload) VALUES ($1, $2, $3, $4)",
                )
                .bind(i64::try_from(i).expect("an offset"))
                .bind(format!("k-{}", i % 7))
                .bind(id)
                .bind(format!("{{\"i\":{i}}}").into_bytes())
                .execute(&pool)
                .await
                .expect("feed a record");
                ids.lock().expect("ids").push(id);
            }
        })
    };
    let effects = || async { common::effects(&store).await.len() as i64 };
    let mut first = child(CONSUMER_TEST, "consumer", &url);
    progressed("handled by the first consumer", 200, effects).await;
    first.stop("TERM").await;
    let committed = count(&pool, "SELECT COALESCE(max(next), 0) FROM source_offsets").await;
    let handled = effects().await;
    assert_eq!(
        committed, handled,
        "the stopped consumer committed the offset of every message it handled (else its \
         successor gets them again)"
    );
    let mut second = child(CONSUMER_TEST, "consumer", &url);
    let takeover = within(TAKEOVER_BOUND, "the second consumer handling", || async {
        effects().await > handled
    })
    .await;
    let fed = feeder.finish().await;
    let drained = within(TAKEOVER_BOUND, "every message handled", || async {
        effects().await == i64::try_from(fed).expect("a count")
    })
    .await;
    println!(
        "{fed} messages; the first consumer handled {handled}; the second took over in \
         {takeover:?}, finished in {drained:?}"
    );
    second.stop("INT").await;
    let expected = ids.lock().expect("ids").clone();
    assert_eq!(
        common::effects(&store).await,
        expected,
        "every message took effect once, in offset order"
    );
    assert_eq!(
        count(&pool, "SELECT max(next) FROM source_offsets").await,
        i64::try_from(fed).expect("a count"),
        "everything committed"
    );
}

const PROJECTIONS_TEST: &str = "projections_run_stops_on_sigterm_and_a_successor_goes_on";

/// `projections run` (the operator's command): SIGTERM mid-stream → exit 0 with its batch
/// committed; a second runner goes on at once from the checkpoint; the read model equals a fresh
/// fold of the log, nothing parked (a double apply would be refused by the ledger's key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_run_stops_on_sigterm_and_a_successor_goes_on() {
    child_mode().await;
    let (store, db) = common::postgres().await;
    let url = common::database_url(db.name());
    let pool = store.pool().clone();
    let writer = Feeder::appending(&store, |i| {
        let stream = StreamId::new("account", format!("a-{}", i % 9)).expect("id");
        let event = projection_common::deposit(&format!("acct-{}", i % 13), 1 + (i % 5) as i64);
        (stream, event)
    });
    // 0 until the runner created its table.
    let ledger_rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT COALESCE(sum(events), 0)::bigint FROM balances")
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
    };
    let mut first = child(PROJECTIONS_TEST, "projections", &url);
    progressed("projected by the first runner", 200, ledger_rows).await;
    first.stop("TERM").await;
    let projected = ledger_rows().await;
    let state = projection_common::ledger_state(&store).await;
    let below_checkpoint = whole_log(&store)
        .await
        .iter()
        .filter(|e| e.global_position <= state.position)
        .count();
    assert_eq!(
        projected as usize, below_checkpoint,
        "the stopped runner's read model is exactly the events up to its checkpoint"
    );
    let mut second = child(PROJECTIONS_TEST, "projections", &url);
    let takeover = within(TAKEOVER_BOUND, "the second runner projecting", || async {
        ledger_rows().await > projected
    })
    .await;
    let appended = writer.finish().await;
    let caught_up = within(TAKEOVER_BOUND, "every event projected", || async {
        ledger_rows().await == i64::try_from(appended).expect("a count")
    })
    .await;
    println!(
        "{appended} events; the first runner projected {projected}; the second took over in \
         {takeover:?}, caught up in {caught_up:?}"
    );
    second.stop("INT").await;
    assert_eq!(
        projection_common::balances(&pool).await,
        projection_common::expected_balances(&store).await,
        "the read model equals a fresh fold of the log"
    );
    assert!(
        projection_common::parked_ledger(&store).await.is_empty(),
        "nothing parked"
    );
}

const SCHEDULER_TEST: &str = "scheduler_stops_on_sigterm_and_releases_the_timers_it_claimed";

/// The saga timer scheduler: sagas whose one step times out at once keep starting; SIGTERM in
/// the middle of a round → exit 0, no timer left claimed (those claimed but not fired are
/// released); a second scheduler fires the rest at once, not after the 30 s claim lease; every
/// saga `compensated`, each deadline fired once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_stops_on_sigterm_and_releases_the_timers_it_claimed() {
    child_mode().await;
    let (store, db) = common::postgres().await;
    let url = common::database_url(db.name());
    let pool = store.pool().clone();
    let starter = Orchestrator::new(store.clone(), saga_common::waiting_definition(WAIT));
    // A backlog first, so that the scheduler works full rounds when the signal comes (the old
    // scheduler looked at its stop only after a round that was not full: seconds later).
    let mut starting = tokio::task::JoinSet::new();
    for task in 0..8u64 {
        let starter = starter.clone();
        starting.spawn(async move {
            for i in (task..BACKLOG).step_by(8) {
                starter
                    .start(&format!("b-{i}"), order(i), None)
                    .await
                    .expect("start a saga");
            }
        });
    }
    starting.join_all().await;
    let feeder = {
        let starter = starter.clone();
        Feeder::start(move |i| {
            let starter = starter.clone();
            async move {
                starter
                    .start(&format!("s-{i}"), order(i), None)
                    .await
                    .expect("start a saga");
            }
        })
    };
    let terminal = || async {
        count(
            &pool,
            "SELECT count(*) FROM eventfold_sagas WHERE status = 'compensated'",
        )
        .await
    };
    let mut first = child(SCHEDULER_TEST, "scheduler", &url);
    progressed("sagas ended by the first scheduler", 100, terminal).await;
    let took = first.stop("TERM").await;
    assert!(
        took < SCHEDULER_STOP_BOUND,
        "the scheduler took {took:?} to stop in the middle of its backlog: it must take the stop \
         between firings, not after the backlog"
    );
    let claimed = count(
        &pool,
        "SELECT count(*) FROM eventfold_saga_timers WHERE claims > 0",
    )
    .await;
    assert_eq!(
        claimed, 0,
        "the stopped scheduler left {claimed} timers claimed (they wait for the lease)"
    );
    let ended_by_first = terminal().await;
    // The oldest sagas still running: among them those whose timers the first scheduler had
    // claimed and not fired (claims go oldest deadline first). Released, they are due at once.
    let oldest: Vec<Uuid> = sqlx::query_scalar(
        "SELECT saga_id FROM eventfold_sagas WHERE status <> 'compensated' \
         ORDER BY started_at, saga_id LIMIT 300",
    )
    .fetch_all(&pool)
    .await
    .expect("the oldest running sagas");
    let mut second = child(SCHEDULER_TEST, "scheduler", &url);
    let takeover = within(
        TAKEOVER_BOUND,
        "the oldest running sagas ended by the second scheduler",
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM eventfold_sagas WHERE saga_id = ANY($1) \
                 AND status <> 'compensated'",
            )
            .bind(&oldest)
            .fetch_one(&pool)
            .await
            .expect("count")
                == 0
        },
    )
    .await;
    let started = feeder.finish().await + BACKLOG;
    let finished = within(Duration::from_secs(90), "every saga ended", || async {
        terminal().await == i64::try_from(started).expect("a count")
    })
    .await;
    println!(
        "{started} sagas; the first scheduler ended {ended_by_first}; the second ended the \
         oldest {} running in {takeover:?}, all in {finished:?}",
        oldest.len()
    );
    second.stop("INT").await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM eventfold_saga_timers").await,
        0,
        "no timer left"
    );
    let timeouts = count(
        &pool,
        "SELECT count(*) FROM eventfold_events WHERE event_type = 'saga.step_timed_out'",
    )
    .await;
    assert_eq!(
        timeouts,
        i64::try_from(started).expect("a count"),
        "every deadline fired exactly once"
    );
}

fn order(i: u64) -> saga_common::Order {
    saga_common::Order {
        id: format!("o-{i}"),
        cents: 100,
        ..saga_common::Order::default()
    }
}

const REACTOR_TEST: &str = "local_reactor_stops_between_events_and_a_successor_goes_on";

/// A local reactor: SIGTERM mid-stream → exit 0 between two events' transactions (its
/// checkpoint is where its effects are); a second reactor goes on at once; every event takes
/// effect exactly once, in log order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_reactor_stops_between_events_and_a_successor_goes_on() {
    child_mode().await;
    let (store, db) = common::postgres().await;
    let url = common::database_url(db.name());
    let writer = Feeder::appending(&store, |n| {
        let tick = NewEvent::encode(
            &TickEvent::Ticked { n },
            "",
            &eventfold::CommandMetadata::new(),
        )
        .expect("encode");
        let stream = StreamId::new("tick", format!("t-{}", n % 5)).expect("id");
        (stream, tick)
    });
    let effects_stream = StreamId::new("effects", "all").expect("id");
    let effects = || {
        let store = store.clone();
        let stream = effects_stream.clone();
        async move { store.stream_version(&stream).await.expect("version") as i64 }
    };
    let mut first = child(REACTOR_TEST, "reactor", &url);
    progressed("reacted by the first reactor", 200, effects).await;
    first.stop("TERM").await;
    let reacted = effects().await;
    let mut second = child(REACTOR_TEST, "reactor", &url);
    let takeover = within(TAKEOVER_BOUND, "the second reactor reacting", || async {
        effects().await > reacted
    })
    .await;
    let appended = writer.finish().await;
    let caught_up = within(TAKEOVER_BOUND, "every event reacted to", || async {
        effects().await == i64::try_from(appended).expect("a count")
    })
    .await;
    println!(
        "{appended} events; the first reactor reacted to {reacted}; the second took over in \
         {takeover:?}, caught up in {caught_up:?}"
    );
    second.stop("INT").await;
    let causes: Vec<Uuid> = store
        .read_stream(&effects_stream, 1, u64::MAX)
        .await
        .expect("effects")
        .into_iter()
        .filter_map(|e| e.causation_id)
        .collect();
    let ticks: Vec<Uuid> = whole_log(&store)
        .await
        .into_iter()
        .filter(|e| e.stream_id.to_string().starts_with("tick"))
        .map(|e| e.event_id)
        .collect();
    assert_eq!(causes, ticks, "every tick took effect once, in log order");
}
