//! Transient faults on real PostgreSQL (issue 18): deadlocks and sessions terminated in the middle
//! of a transaction are typed [`StoreError::Transient`] errors with their [`TransientKind`], and
//! `Repository::execute` retries them (a lost connection only for a command with an id) until
//! every command succeeded once, counting each retry in `eventfold_repository_retries_total`.
//!
//! The long-running pieces ride out sessions terminated again and again (a [`Killer`]
//! terminating every other session of the database every 30 ms): the consumer, the projection
//! runner and the saga scheduler each end with every message, event or timer taken exactly once.
//!
//! The test databases get `deadlock_timeout = 50ms`, so a deadlock is found in milliseconds
//! rather than PostgreSQL's default second.
mod common;
mod projection_common;
mod saga_common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use eventfold::eventstore::contract::{Tally, TallyCommand};
use eventfold::eventstore::postgres::PgStore;
use eventfold::eventstore::postgres::testing::TestDb;
use eventfold::eventstore::{
    EventStore, ExecuteError, ExpectedVersion, Repository, StoreError, TransientKind, UnitOfWork,
};
use eventfold::{CommandMetadata, NewEvent, StreamId};
use uuid::Uuid;

/// A fresh database with a fast deadlock detector, and a store on a pool whose connections have
/// that setting.
async fn store() -> (PgStore, TestDb) {
    let (_, db) = common::postgres().await;
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" SET deadlock_timeout = '50ms'",
        db.name()
    ))
    .execute(db.pool())
    .await
    .expect("set deadlock_timeout");
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(20);
    (store_on(&db, pool).await, db)
}

/// A store (source `faults`) on a pool of `options` to the test database `db`.
async fn store_on(db: &TestDb, options: sqlx::postgres::PgPoolOptions) -> PgStore {
    let pool = options
        .connect(&common::database_url(db.name()))
        .await
        .expect("connect to the test database");
    PgStore::builder(pool)
        .source("faults")
        .build()
        .await
        .expect("open the store")
}

fn stream(kind: &str, id: &str) -> StreamId {
    StreamId::new(kind, id).expect("a valid stream id")
}

/// One unit of work appending one event to `first`, then (after a pause that lets the other
/// side take its first lock) one to `second`, then committing.
async fn append_both(
    store: &PgStore,
    first: &StreamId,
    second: &StreamId,
) -> Result<(), StoreError> {
    let mut uow = store.begin().await?;
    let event = || NewEvent::raw("pair.touched", 1, b"{}".to_vec());
    uow.append(first, ExpectedVersion::Any, vec![event()])
        .await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    uow.append(second, ExpectedVersion::Any, vec![event()])
        .await?;
    uow.commit().await
}

/// Two units of work append to the same two streams in opposite order, many times at once: the
/// victims of PostgreSQL's deadlock detector get `Transient { kind: Deadlock }` (no generic
/// database error), and what committed is consistent: both streams of a pair have the same
/// gapless versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_order_units_of_work_deadlock_as_a_typed_transient_error() {
    let (store, _db) = store().await;
    const PAIRS: usize = 6;
    const ROUNDS: usize = 3;
    let mut deadlocks = 0;
    let mut committed = [0u64; PAIRS];
    for _ in 0..ROUNDS {
        let mut tasks = Vec::new();
        for pair in 0..PAIRS {
            let a = stream("pair", &format!("{pair}-a"));
            let b = stream("pair", &format!("{pair}-b"));
            for (first, second) in [(a.clone(), b.clone()), (b, a)] {
                let store = store.clone();
                tasks.push((
                    pair,
                    tokio::spawn(async move { append_both(&store, &first, &second).await }),
                ));
            }
        }
        for (pair, task) in tasks {
            match task.await.expect("the unit of work's task") {
                Ok(()) => committed[pair] += 1,
                Err(e) => {
                    assert_eq!(
                        e.transient_kind(),
                        Some(TransientKind::Deadlock),
                        "only deadlocks are expected, got {e:?}"
                    );
                    assert!(e.is_retriable(), "a deadlock is retriable: {e}");
                    assert!(
                        matches!(&e, StoreError::Transient { table, .. } if table.contains("events")),
                        "the error names the events table: {e}"
                    );
                    deadlocks += 1;
                }
            }
        }
    }
    println!(
        "{deadlocks} deadlock(s) in {} units of work",
        PAIRS * ROUNDS * 2
    );
    assert!(
        deadlocks > 0,
        "opposite lock orders must deadlock at least once"
    );
    for (pair, committed) in committed.iter().enumerate() {
        for side in ["a", "b"] {
            let events = store
                .read_stream(&stream("pair", &format!("{pair}-{side}")), 1, u64::MAX)
                .await
                .expect("read a pair's stream");
            let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
            assert_eq!(
                versions,
                (1..=*committed).collect::<Vec<_>>(),
                "pair {pair} side {side}: one event per committed unit of work, no gap"
            );
        }
    }
    println!(
        "FAULTS fault=deadlock component=unit_of_work injected=deadlocks:{deadlocks} \
         checked=units_of_work:{},untyped_errors:0,version_gaps:0 result=pass",
        PAIRS * ROUNDS * 2
    );
}

/// The same opposite lock orders inside `Repository::execute`: a trigger stands in for the
/// application's SQL of the command's transaction and touches two rows, in one order for the
/// `a-*` aggregates and in the other for the `b-*` ones. Deadlocks happen; every command succeeds
/// after retries (commands with and without an id), each exactly once: every stream's version is
/// its number of commands, and both rows were touched once per stored event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_execute_retries_deadlocks_until_every_command_succeeded_once() {
    let (store, _db) = store().await;
    sqlx::raw_sql(
        "CREATE TABLE fault_pair (k int PRIMARY KEY, n bigint NOT NULL); \
         INSERT INTO fault_pair VALUES (1, 0), (2, 0); \
         CREATE FUNCTION fault_pair() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.stream_id LIKE 'a-%' THEN \
             UPDATE fault_pair SET n = n + 1 WHERE k = 1; PERFORM pg_sleep(0.01); \
             UPDATE fault_pair SET n = n + 1 WHERE k = 2; \
           ELSE \
             UPDATE fault_pair SET n = n + 1 WHERE k = 2; PERFORM pg_sleep(0.01); \
             UPDATE fault_pair SET n = n + 1 WHERE k = 1; \
           END IF; RETURN NULL; END $$; \
         CREATE TRIGGER fault_pair AFTER INSERT ON eventfold_events \
           FOR EACH ROW EXECUTE FUNCTION fault_pair();",
    )
    .execute(store.pool())
    .await
    .expect("install the trigger");
    let before = retries("deadlock");
    const TASKS: usize = 3;
    const COMMANDS: usize = 8;
    let mut tasks = Vec::new();
    for side in ["a", "b"] {
        for task in 0..TASKS {
            let repo = Repository::<Tally, _>::new(store.clone()).with_max_transient_attempts(30);
            tasks.push(tokio::spawn(async move {
                for i in 0..COMMANDS {
                    // The `b` side's commands carry an id (a unit of work per command), the
                    // `a` side's do not (a single-statement append).
                    let meta = match side {
                        "b" => CommandMetadata::new().command_id(Uuid::now_v7()),
                        _ => CommandMetadata::new(),
                    };
                    let id = format!("{side}-{task}");
                    match repo.execute(&id, &TallyCommand::Add(1), meta).await {
                        Ok(done) => assert!(!done.deduplicated),
                        Err(e) => panic!("command {i} on {id} failed: {e:?}"),
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("a command task");
    }
    let deadlocks = retries("deadlock") - before;
    println!("retries after a deadlock: {deadlocks}");
    assert!(
        deadlocks > 0,
        "the opposite lock orders must have deadlocked and been retried"
    );
    let repo = Repository::<Tally, _>::new(store.clone());
    for side in ["a", "b"] {
        for task in 0..TASKS {
            let loaded = repo.load(&format!("{side}-{task}")).await.expect("load");
            assert_eq!(
                (loaded.version, loaded.state.total),
                (COMMANDS as u64, COMMANDS as u64),
                "{side}-{task}: every command once"
            );
        }
    }
    let touched: Vec<i64> = sqlx::query_scalar("SELECT n FROM fault_pair ORDER BY k")
        .fetch_all(store.pool())
        .await
        .expect("read the rows");
    let events = (2 * TASKS * COMMANDS) as i64;
    assert_eq!(
        touched,
        vec![events, events],
        "the rolled-back attempts left nothing behind"
    );
    println!(
        "FAULTS fault=deadlock component=repository injected=deadlocks:{deadlocks} \
         checked=commands:{events},failed:0,applied_twice:0,rolled_back_leftovers:0 result=pass"
    );
}

/// A unit of work whose session is terminated (`pg_terminate_backend`) in the middle of its
/// transaction fails with `Transient { kind: ConnectionLost }`, and nothing of it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_session_is_a_lost_connection() {
    let (store, _db) = store().await;
    let s = stream("killed", "1");
    let mut uow = store.begin().await.expect("begin");
    uow.append(
        &s,
        ExpectedVersion::NoStream,
        vec![NewEvent::raw("killed.first", 1, b"{}".to_vec())],
    )
    .await
    .expect("the first append");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(uow.connection())
        .await
        .expect("the session's pid");
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(store.pool())
        .await
        .expect("terminate the session");
    assert!(terminated);
    let e = uow
        .append(
            &s,
            ExpectedVersion::Exact(1),
            vec![NewEvent::raw("killed.second", 1, b"{}".to_vec())],
        )
        .await
        .expect_err("the session is gone");
    assert_eq!(
        e.transient_kind(),
        Some(TransientKind::ConnectionLost),
        "got {e:?}"
    );
    assert!(e.is_retriable());
    assert!(
        e.to_string().contains("connection lost"),
        "the message says so: {e}"
    );
    let _ = uow.rollback().await;
    assert_eq!(
        store
            .stream_version(&s)
            .await
            .expect("the stream's version"),
        0,
        "nothing of the terminated transaction is stored"
    );
    println!(
        "FAULTS fault=terminate_backend component=unit_of_work injected=terminations:1 \
         checked=typed_connection_lost:1,stored_after_termination:0 result=pass"
    );
}

/// `Repository::execute` and a session terminated while the command's append runs: a command
/// with an id is retried and succeeds once; a command without one returns the typed error (its
/// append might have committed), and here nothing was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_execute_retries_a_lost_connection_only_for_a_command_with_an_id() {
    let (store, _db) = store().await;
    // The append sleeps in a trigger while the switch holds a row; the killer terminates a
    // session seen sleeping there and empties the switch.
    sqlx::raw_sql(
        "CREATE TABLE fault_switch (id int); \
         CREATE FUNCTION fault_sleep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF EXISTS (SELECT 1 FROM fault_switch) THEN PERFORM pg_sleep(5); END IF; \
           RETURN NULL; END $$; \
         CREATE TRIGGER fault_sleep AFTER INSERT ON eventfold_events \
           FOR EACH STATEMENT EXECUTE FUNCTION fault_sleep();",
    )
    .execute(store.pool())
    .await
    .expect("install the trigger");
    let repo = Repository::<Tally, _>::new(store.clone());
    for with_id in [true, false] {
        sqlx::query("INSERT INTO fault_switch VALUES (1)")
            .execute(store.pool())
            .await
            .expect("arm the fault");
        let killer = tokio::spawn(kill_the_sleeper(store.pool().clone()));
        let before = retries("connection_lost");
        let meta = if with_id {
            CommandMetadata::new().command_id(Uuid::now_v7())
        } else {
            CommandMetadata::new()
        };
        let id = format!("killed-{with_id}");
        let outcome = repo.execute(&id, &TallyCommand::Add(7), meta).await;
        killer.await.expect("the killer");
        let loaded = repo.load(&id).await.expect("load");
        if with_id {
            let done = outcome.expect("a command with an id is retried after a lost connection");
            assert_eq!((done.version, done.state.total), (1, 7));
            assert_eq!((loaded.version, loaded.state.total), (1, 7), "stored once");
            assert_eq!(retries("connection_lost") - before, 1, "one retry counted");
        } else {
            match outcome {
                Err(ExecuteError::Store(e)) => assert_eq!(
                    e.transient_kind(),
                    Some(TransientKind::ConnectionLost),
                    "got {e:?}"
                ),
                other => panic!("a command without an id returns the lost connection: {other:?}"),
            }
            assert_eq!(retries("connection_lost"), before, "and is not retried");
            assert_eq!(loaded.version, 0, "the killed append did not commit");
        }
    }
    println!(
        "FAULTS fault=terminate_backend component=repository injected=terminations:2 \
         checked=retried_with_id:1,stored_once:1,not_retried_without_id:1 result=pass"
    );
}

/// A log wakeup (what a relay, a runner or a subscription waits on) holds its LISTEN connection
/// outside the store's pool: on a pool of one connection, appends and reads still run while a
/// wakeup exists. (The listener used to take a connection of the store's pool; after server
/// restarts such a connection could come back to the pool still listening, and every statement
/// on it then failed with "unexpected message: NotificationResponse", see
/// `tests/faults_cluster.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_connection_is_not_taken_from_the_stores_pool() {
    let (_, db) = common::postgres().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2));
    let store = store_on(&db, pool).await;
    let mut wakeups = Vec::new();
    for _ in 0..3 {
        wakeups.push(store.wakeup().await.expect("a wakeup"));
    }
    let s = stream("listen", "1");
    for version in 0..3u64 {
        store
            .append(
                &s,
                ExpectedVersion::Exact(version),
                vec![NewEvent::raw("listen.noted", 1, b"{}".to_vec())],
            )
            .await
            .unwrap_or_else(|e| {
                panic!("append {version} beside 3 wakeups on a 1-connection pool: {e}")
            });
    }
    assert_eq!(store.stream_version(&s).await.expect("read"), 3);
    drop(wakeups);
    println!(
        "FAULTS fault=shared_listen_connection component=log_wakeup injected=wakeups:3 \
         checked=appends_on_a_1_connection_pool:3,blocked:0 result=pass"
    );
}

/// A consumer keeps running while every session of its database is terminated again and again
/// (`pg_terminate_backend` every 30 ms, in the middle of its transactions): a lost connection is
/// transient, so it handles the same batch again after a backoff (the inbox skips what had
/// committed), counting `eventfold_consumer_retries_total`, and every message takes effect once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_rides_out_terminated_sessions_and_takes_each_message_once() {
    use eventfold::outbox::{Consumer, InProcessBroker, OutboxMessage, Publisher};

    let (store, db) = store().await;
    let broker = InProcessBroker::new();
    let total = 400;
    let messages: Vec<OutboxMessage> = (0..total)
        .map(|i| {
            OutboxMessage::new(
                "payments",
                format!("p-{}", i % 13),
                "payment.captured",
                format!(r#"{{"n":{i}}}"#).into_bytes(),
            )
        })
        .collect();
    broker.publish(&messages).await;
    let retries_before = consumer_retries("ledger");
    let consumer = Consumer::new(
        "ledger",
        store.clone(),
        broker.consumer("ledger", &["payments"]),
        common::Ledger::default(),
    )
    .shared_commits(true)
    // Two attempts per message: a database failure under the handler must count none (it
    // used to count one, and two in a row parked the message: a lost effect).
    .max_attempts(2)
    .backoff(Duration::from_millis(1));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(consumer.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));

    let mut killer = Killer::connect(db.name()).await;
    loop {
        let effects = killer
            .count("SELECT count(*) FROM eventfold_events WHERE stream_type = 'ledger'")
            .await;
        if effects >= total as i64 {
            break;
        }
        assert!(
            !task.is_finished(),
            "the consumer stopped after {} terminated sessions: {:?}",
            killer.kills,
            task.await
        );
        killer
            .round(
                effects,
                &format!("{effects} of {total} messages took effect"),
            )
            .await;
    }
    let kills = killer.kills;
    stop.send(true).expect("stop the consumer");
    task.await
        .expect("the consumer task")
        .expect("the consumer ends without an error");

    let effects = common::effects(&store).await;
    let unique: std::collections::HashSet<_> = effects.iter().collect();
    assert_eq!(effects.len(), total, "every message took effect");
    assert_eq!(unique.len(), total, "and only once");
    let retried = consumer_retries("ledger") - retries_before;
    eprintln!(
        "consumer under terminated sessions: {kills} sessions terminated, {retried} batch retries, {total} messages each once"
    );
    assert!(kills >= 3, "only {kills} sessions were terminated");
    assert!(retried >= 1, "no retry was counted");
    println!(
        "FAULTS fault=terminate_backend component=consumer injected=terminations:{kills} \
         checked=messages:{total},lost:0,double_effects:0,batch_retries:{retried} result=pass"
    );
}

/// Terminates every other client session of a test database (`pg_terminate_backend`), from a
/// connection of its own that it spares, and counts the sessions it ended.
struct Killer {
    connection: sqlx::PgConnection,
    kills: i64,
    /// The pause after a round: 30 ms; after 2 s without progress, doubled (up to 1 s) at every
    /// round that still sees none.
    pause: Duration,
    /// The progress seen at the last round, and when it last grew.
    progress: (i64, std::time::Instant),
}

impl Killer {
    async fn connect(database: &str) -> Self {
        use sqlx::Connection;
        let connection = sqlx::PgConnection::connect(&common::database_url(database))
            .await
            .expect("the killer's connection");
        Self {
            connection,
            kills: 0,
            pause: Duration::from_millis(30),
            progress: (i64::MIN, std::time::Instant::now()),
        }
    }

    /// Terminates the other sessions, then waits. `progress` is the victim's progress so far
    /// (effects, rows, sagas done): the killer waits 30 ms, and only when the progress has not
    /// grown for 2 s does it back off (doubling up to 1 s, back to 30 ms at the next progress),
    /// so that a victim whose transactions take longer than 30 ms on a loaded machine still
    /// gets windows to finish one, while everywhere else it is cut every 30 ms as before.
    /// Panics when the progress has not grown for 60 s: `what` says what was awaited.
    async fn round(&mut self, progress: i64, what: &str) {
        if progress > self.progress.0 {
            self.progress = (progress, std::time::Instant::now());
            self.pause = Duration::from_millis(30);
        } else if self.progress.1.elapsed() >= Duration::from_secs(2) {
            self.pause = (self.pause * 2).min(Duration::from_secs(1));
        }
        assert!(
            self.progress.1.elapsed() < Duration::from_secs(60),
            "{what}: no progress for 60 s (at {progress}, {} sessions terminated)",
            self.kills
        );
        self.kills += sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND backend_type = 'client backend'",
        )
        .fetch_one(&mut self.connection)
        .await
        .expect("terminate the other sessions");
        tokio::time::sleep(self.pause).await;
    }

    /// A count, read on the killer's own connection (the store's connections are the victims).
    async fn count(&mut self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&mut self.connection)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// Appends `events` to `stream`, again after every transient failure (a terminated session): an
/// append whose commit was cut off may have committed, and is then stored twice, which the
/// checks allow (they compare the read model with the log, whatever it holds).
async fn append_through_faults(store: &PgStore, stream: &StreamId, events: Vec<NewEvent>) {
    loop {
        match store
            .append(stream, ExpectedVersion::Any, events.clone())
            .await
        {
            Ok(_) => return,
            Err(e) if e.is_retriable() => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => panic!("append to {stream}: {e}"),
        }
    }
}

/// A projection runner keeps running while every session of its database is terminated again
/// and again, in the middle of its batches (the projection's own statements, its checkpoint,
/// its commit) and while writers append: a lost connection is a transient failure of the store,
/// not a failure of the projection, so no event is parked (skipped) for it, and at the end the
/// read model equals a fresh fold of the log, each event applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_runner_rides_out_terminated_sessions() {
    use projection_common::deposit;

    let (store, db) = store().await;
    let batch = |i: usize| {
        let stream = stream("account", &format!("{}", i % 30));
        let events = (0..5)
            .map(|k| deposit(&format!("acct-{}", (i + k) % 12), (i % 50) as i64 + 1))
            .collect::<Vec<_>>();
        (stream, events)
    };
    // A backlog, then the runner, then writers and the killer at once.
    for i in 0..200 {
        let (stream, events) = batch(i);
        append_through_faults(&store, &stream, events).await;
    }
    let runner = projection_common::strict_ledger_runner(&store);
    runner
        .wait_for(1)
        .await
        .expect("the runner set the projection up and applied the first event");
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in (200 + w..400).step_by(2) {
                    let (stream, events) = batch(i);
                    append_through_faults(&store, &stream, events).await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    let mut killer = Killer::connect(db.name()).await;
    loop {
        let written = writers.iter().all(|w| w.is_finished());
        // The runner's position against the log's head, both on the killer's connection.
        let behind = killer
            .count(
                "SELECT (SELECT count(*) FROM eventfold_events) \
                      - COALESCE((SELECT count(*) FROM ledger), 0)",
            )
            .await;
        if written && behind == 0 {
            break;
        }
        let applied = killer
            .count("SELECT COALESCE((SELECT count(*) FROM ledger), 0)")
            .await;
        killer
            .round(
                applied,
                &format!("the runner did not catch up ({behind} events behind)"),
            )
            .await;
    }
    let kills = killer.kills;
    for w in writers {
        w.await.expect("a writer");
    }
    runner
        .stop()
        .await
        .expect("the runner stops without an error");

    projection_common::assert_ledger_equals_fold(&store, &format!("{kills} terminated sessions"))
        .await;
    let events = killer.count("SELECT count(*) FROM eventfold_events").await;
    let ledger = killer.count("SELECT count(*) FROM ledger").await;
    assert_eq!(ledger, events, "one ledger row per event");
    assert!(kills >= 3, "only {kills} sessions were terminated");
    println!(
        "FAULTS fault=terminate_backend component=projection_runner injected=terminations:{kills} \
         checked=events:{events},read_model_equals_fold:yes,parked:0,double_applies:0 result=pass"
    );
}

/// The saga scheduler keeps firing while every session of its database is terminated again and
/// again: 200 sagas whose one step nobody answers time out (each deadline a durable timer), and
/// every saga ends `compensated` with exactly one timeout, no timer left, while firings and
/// claims lose their connections (a firing that failed comes due again after its claim's
/// lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_scheduler_rides_out_terminated_sessions() {
    const SAGAS: i64 = 200;
    let (store, db) = store().await;
    let (orchestrator, stop, running) =
        saga_common::waiting_scheduler(store.clone(), Duration::from_millis(200));
    // Sagas start while the killer runs; a start cut off by it is retried with the same business
    // key (one saga per key, whatever happened to the first attempt).
    let starters: Vec<_> = (0..4)
        .map(|t| {
            let orchestrator = orchestrator.clone();
            tokio::spawn(async move {
                for i in (t..SAGAS).step_by(4) {
                    let order = saga_common::Order {
                        id: format!("o-{i}"),
                        cents: 100,
                        ..saga_common::Order::default()
                    };
                    let key = format!("k-{i}");
                    let since = std::time::Instant::now();
                    while let Err(e) = orchestrator.start(&key, order.clone(), None).await {
                        assert!(
                            since.elapsed() < Duration::from_secs(60),
                            "starting saga {key} kept failing for 60 s: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        })
        .collect();
    let mut killer = Killer::connect(db.name()).await;
    let started = std::time::Instant::now();
    let mut last_report = started;
    loop {
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = std::time::Instant::now();
            eprintln!(
                "{:?}: {} sagas, {} compensated, {} timers ({} claimed), {} sessions terminated",
                started.elapsed(),
                killer.count("SELECT count(*) FROM eventfold_sagas").await,
                killer
                    .count("SELECT count(*) FROM eventfold_sagas WHERE status = 'compensated'")
                    .await,
                killer
                    .count("SELECT count(*) FROM eventfold_saga_timers")
                    .await,
                killer
                    .count("SELECT count(*) FROM eventfold_saga_timers WHERE claims > 0")
                    .await,
                killer.kills
            );
        }
        let done = killer
            .count("SELECT count(*) FROM eventfold_sagas WHERE status = 'compensated'")
            .await;
        if done == SAGAS {
            break;
        }
        assert!(!running.is_finished(), "the scheduler stopped");
        killer
            .round(done, &format!("{done} of {SAGAS} sagas ended"))
            .await;
    }
    let kills = killer.kills;
    for s in starters {
        s.await.expect("a starter");
    }
    stop.send(true).expect("stop the scheduler");
    running.await.expect("the scheduler's task");

    saga_common::assert_each_waiting_saga_timed_out_once(store.pool(), SAGAS).await;
    assert!(kills >= 3, "only {kills} sessions were terminated");
    println!(
        "FAULTS fault=terminate_backend component=saga_scheduler injected=terminations:{kills} \
         checked=sagas:{SAGAS},not_terminal:0,deadlines_fired_twice:0,timers_left:0 result=pass"
    );
}

/// `eventfold_consumer_retries_total{consumer, reason}` of `consumer` so far, every reason.
fn consumer_retries(consumer: &str) -> u64 {
    let counters = recorder().counters.lock().expect("the counters");
    counters
        .iter()
        .filter(|(name, _)| {
            name.starts_with("eventfold_consumer_retries_total{")
                && name.contains(&format!("consumer={consumer}"))
        })
        .map(|(_, c)| c.load(Ordering::SeqCst))
        .sum()
}

/// Terminates the first session of this database seen sleeping in the trigger, then disarms the
/// fault.
async fn kill_the_sleeper(pool: sqlx::PgPool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event = 'PgSleep' \
               AND pid <> pg_backend_pid()",
        )
        .fetch_all(&pool)
        .await
        .expect("look for the sleeping session");
        if killed.contains(&true) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no session slept in the trigger"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query("DELETE FROM fault_switch")
        .execute(&pool)
        .await
        .expect("disarm the fault");
}

/// `eventfold_repository_retries_total{reason}` so far, from this process's recorder.
fn retries(reason: &str) -> u64 {
    let counters = recorder().counters.lock().expect("the counters");
    counters
        .get(&format!(
            "eventfold_repository_retries_total{{reason={reason}}}"
        ))
        .map_or(0, |c| c.load(Ordering::SeqCst))
}

/// The counters of this process, by name and labels, kept by a recorder installed once.
#[derive(Default)]
struct Counting {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

fn recorder() -> &'static Counting {
    static RECORDER: OnceLock<&'static Counting> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let counting: &'static Counting = Box::leak(Box::default());
        let recorder = common::printed_metrics::CountersOnly(move |key: &metrics::Key| {
            let name = common::printed_metrics::labelled_name(key, |_| false);
            let mut counters = counting.counters.lock().expect("the counters");
            let counter = counters.entry(name).or_default().clone();
            metrics::Counter::from_arc(Arc::new(Count(counter)))
        });
        metrics::set_global_recorder(recorder).expect("the only recorder of this test process");
        counting
    })
}

struct Count(Arc<AtomicU64>);

impl metrics::CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }

    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}
