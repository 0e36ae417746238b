//! # eventfold-bench
//!
//! Throughput and latency of eventfold's PostgreSQL event store next to hand-written `sqlx`
//! baselines that run in the same process, on the same database, with the same pool and
//! concurrency.
//!
//! ```text
//! cd /work/main && cargo run --release -p eventfold-bench -- --seconds 5
//! cd /work/main && cargo run --release -p eventfold-bench -- --quick --only log
//! cd /work/main && cargo run --release -p eventfold-bench -- --only sagas
//! cd /work/main && cargo run --release -p eventfold-bench -- --only peers,sqlite --seconds 3
//! ```
//!
//! Options:
//!
//! * `--seconds N`: measured time per throughput case (default 5);
//! * `--quick`: 2 s per case, 200,000 events for the catch-up read, 4 s of latency tests,
//!   100,000 relay rows;
//! * `--only SECTIONS`: a comma-separated subset of `commands`, `appends`, `log`, `relay`,
//!   `projections`, `sagas`, `peers`, `sqlite` (default `all` = `commands,appends,log,projections`:
//!   the `relay` section takes over 2 minutes at its default size and needs a Kafka broker,
//!   `sagas` needs one for one of its variants, and `peers` and `sqlite` are comparisons of their
//!   own, so they run only when named);
//! * `--log-events N`: events written for the catch-up read (default 1,000,000);
//! * `--latency-seconds N`: duration of the commit-to-reader latency test (default 10);
//! * `--relay-rows N`: outbox rows of the relay backlog (default 1,000,000);
//! * `--projection-events N`: events of the projection rebuilds (default 1,000,000; see
//!   `projections.rs`);
//! * `--saga-latency-seconds N`: duration of the one-saga-at-a-time latency run of each `sagas`
//!   variant (default 3; 2 with `--quick`, which also shortens the raw commit baselines to 1 s);
//! * `--saga-fetch-wait-ms N`: `fetch.wait.max.ms` of the consumers of the low-wait Kafka saga
//!   variant (default 1);
//! * `--peer-callers N,..`: the concurrent callers of the `peers` section (default 1, 8 and 64);
//! * `--peer-variants KEY,..`: only these eventfold variants in the `peers` section (keys of
//!   the JSON report: `eventfold`, `eventfold_outbox`, ...); cqrs-es always runs;
//! * `--no-test-before-acquire`: turn off sqlx's ping on every pool checkout (for diagnosis).
//!
//! The server is `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`); the
//! benchmark creates a database `eventfold_bench_<random>` there and drops it (`WITH (FORCE)`)
//! at the end. It refuses to run when the server has `fsync` off, because commit figures would
//! then be meaningless. A full run (`--seconds 5`) takes about 5 minutes on 2 CPUs.
//!
//! What is measured:
//!
//! 1. **Commands, 1 event each** (`commands`), at 1 and 8 writers (tokio tasks, pool of 16
//!    connections); each writer cycles over its own 50 aggregates:
//!    * library: `Repository::execute` (read the stream, `handle`, one autocommit append
//!      statement with the expected version);
//!    * library + state cache: `Repository::new(store).with_cache(1024)`: the state is kept in
//!      memory, so a command is only the autocommit append statement;
//!    * raw insert (tx): `BEGIN; INSERT` one row `; COMMIT` into `raw_events`, a table created
//!      with `CREATE TABLE raw_events (LIKE eventfold_events INCLUDING ALL)` (same columns,
//!      constraints and indexes; `commit_key` is written as 0);
//!    * raw insert (autocommit): the same `INSERT` alone, without `BEGIN`/`COMMIT` (one round
//!      trip, like the library's cached path);
//!    * raw load+insert: `BEGIN; SELECT` the stream's rows by version (same columns the library
//!      reads), fold their JSON payloads, `INSERT` the next version `; COMMIT`.
//! 2. **Appends of 100 events** (`appends`) on fresh streams: `EventStore::append` with
//!    `ExpectedVersion::Exact(0)` against one `INSERT ... SELECT FROM UNNEST(...)` of 100 rows
//!    into `raw_events` in a transaction; 1 and 8 writers.
//! 3. **Global log** (`log`):
//!    * writer throughput with and without the never-skip mechanism, 1 and 8 writers, one event
//!      per autocommit `INSERT`, versions tracked by the client: "without" inserts into
//!      `raw_plain` with the expected-version check (`LIKE eventfold_events INCLUDING ALL`, the `(commit_key, global_position)`
//!      index dropped, `commit_key` = 0); "with" inserts into `raw_keyed` (`LIKE ... INCLUDING
//!      ALL`, index kept) computing `commit_key` as the library's append statement does (a CTE
//!      over the stream's last row, `GREATEST(pg_current_xact_id(), its commit_key)`); the
//!      library's `store.append` with `ExpectedVersion::Exact` for reference;
//!    * catch-up read rate: `--log-events` events are written into `eventfold_events` with one
//!      `INSERT ... SELECT FROM generate_series` (1000 streams, ~66-byte JSON payloads, one
//!      commit key), then the whole log is read into a no-op consumer (count and sum of
//!      positions) by the library's `read_log` loop and by a raw keyset-paginated
//!      `SELECT ... ORDER BY global_position` decoding the rows into the same `RecordedEvent`s,
//!      with batches of 1000 and 5000, each twice (raw/library alternated); the process's
//!      `VmRSS` is sampled before, after every batch, and after;
//!    * commit-to-reader latency: a `Subscription` from the end of the log, 4 writer tasks
//!      executing cached commands of 1 event at 250/s each (1000 events/s offered) for
//!      `--latency-seconds`; latency = when the subscriber got the event minus when the
//!      command returned. Every event must be seen exactly once, in stream order, or the run
//!      fails (exit code 1). Afterwards 50 `read_log` calls at the end of the idle log are
//!      timed: what a live reader pays per wake-up.
//!
//! 4. **Outbox relay** (`relay`, only on request; Kafka-protocol broker at `KAFKA_BOOTSTRAP`,
//!    default `127.0.0.1:9092`):
//!    * drain: `--relay-rows` rows are written into `eventfold_outbox` with `INSERT ... SELECT
//!      FROM UNNEST` in chunks of 10,000 (10,000 keys round robin, 100-byte payloads, slots
//!      computed with `OutboxMessage::slot_of`), then one `Relay` with the `KafkaPublisher`
//!      (batch sizes 500, 1000, 2000) runs `Relay::run` until every row is acknowledged, to a
//!      fresh 12-partition topic; beside it a raw rdkafka `FutureProducer` with the same
//!      settings sends the same messages with at most 10,000 in flight. `VmRSS` is sampled
//!      every 100 ms;
//!    * commit-to-ack latency (run first, after a `CHECKPOINT`, so that it measures the relay
//!      rather than the checkpoint and vacuum the drains leave behind): 8 writer tasks append 1
//!      event per call through a `PgStore` with an outbox at 2000 events/s in total for 10 s
//!      (4 s with `--quick`) while `Relay::run` (default `RelayConfig`) publishes; latency =
//!      when the publisher returned the broker's ack − when `append` returned. The first
//!      second of load (connections opening, statements being prepared) is not counted, here
//!      and in the raw producer's baselines. Every appended event must be acknowledged or the
//!      run fails.
//!
//! 5. **Sagas** (`sagas`, only on request; the Kafka variant needs the broker at
//!    `KAFKA_BOOTSTRAP`; about 80 s with the defaults, 45 s with `--quick`; see `sagas/mod.rs`):
//!    completed 3-step sagas per second (64 in flight, `--seconds` after a warm-up of at least 1 s
//!    and 64 completions) and
//!    start-to-completion latency p50/p99/max, under that load and one saga at a time, for
//!    PostgreSQL with the in-process broker, PostgreSQL with the Kafka-protocol broker
//!    (`KafkaPublisher` + `KafkaSource`, fresh topics; once with `KafkaSource::new`'s defaults,
//!    once with the consumers' `fetch.wait.max.ms` = 1, or `--saga-fetch-wait-ms`) and SQLite (a temporary WAL file) with the
//!    in-process broker. One process runs the orders service (`Orchestrator`, its reply consumer,
//!    its `Scheduler`, one `Relay`) and three participants (inventory, payments, shipping: one
//!    event appended per command, success replied), all `run(shutdown)` loops on tokio tasks,
//!    **over one database** (a fresh PostgreSQL database per variant). Beside them: database
//!    transactions per saga (`pg_stat_database.xact_commit` delta; counted units of work on
//!    SQLite), broker messages per saga, the raw commit rate of PostgreSQL (1, 8 and 32 tasks)
//!    and SQLite (1 and 8 tasks) measured in the same run (7 commits of 1 task: the floor under
//!    the one-at-a-time latency), and sagas/s × transactions per saga ÷ raw commits/s; how busy
//!    each consumer was under load, and the CPU time per saga of this process
//!    and of PostgreSQL. Every started saga must end `completed`, or the run fails.
//!
//! 6. **Peers** (`peers`, only on request; see `peers.rs`): eventfold's `Repository::execute`
//!    (each entry of `peers::EVENTFOLD_VARIANTS`: without and with outbox rows) beside cqrs-es 0.5
//!    with postgres-es 0.5 on account deposits, one event per command, a new aggregate per
//!    command and existing aggregates, at 1, 8 and 64 callers, alternated in the same database:
//!    commands/s, p50/p99 latency and the ratio eventfold / cqrs-es. `--seconds` per system and
//!    case (about 80 s with `--seconds 3`).
//! 7. **SQLite** (`sqlite`, only on request; see `sqlite.rs`): commands (1 and 8 callers),
//!    appends of 100 events, a catch-up read and a relay drain to the in-process broker, each
//!    beside raw sqlx doing the same writes and reads on the same temporary file (about 45 s
//!    with `--seconds 3`).
//!
//! Each throughput case is warmed up for 0.5 s before it is measured. Variants alternate in two
//! rounds (A B C then C B A) of half the duration each, and the two halves are summed, so that
//! drift affects every variant alike. The figures are printed as markdown tables and as one
//! `BENCH_JSON {...}` line. A CPU table gives the CPU time per operation of this process and of
//! the PostgreSQL backends serving the pool (from `/proc/<pid>/schedstat`; `n/a` when the server
//! is not on this machine), which shows where the time goes on a CPU-bound host. Progress goes
//! to stderr.
#![warn(missing_docs)]

mod consumer;
mod counter;
mod global_log;
mod options;
mod peers;
mod projections;
mod raw;
mod relay;
mod report;
mod sagas;
mod sqlite;
mod sqlite_file;
mod timed;
mod writers;

use std::error::Error;
use std::fmt;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use eventfold_core::{
    Aggregate, CodecError, CommandMetadata, Event, EventTypeInfo, NewEvent, StreamId,
};
use eventfold_eventstore::postgres::PgStore;
use eventfold_eventstore::{EventStore, ExpectedVersion, Repository};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use uuid::Uuid;

type BoxError = Box<dyn Error + Send + Sync + 'static>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const POOL_SIZE: u32 = 16;
const AGGREGATES_PER_WRITER: usize = 50;
const BATCH: usize = 100;
const WARMUP: Duration = Duration::from_millis(500);
const TARGET_RATIO: f64 = 0.90;
const CONCURRENCY: [usize; 2] = [1, 8];
/// Capacity of the library's state cache in the "library + state cache" variant.
const CACHE_CAPACITY: usize = 1024;
/// Whether the default (`all`) sections include `relay` (see the crate docs).
const RELAY_IN_ALL: bool = false;
/// Whether the default (`all`) sections include `sagas` (it needs a Kafka broker).
const SAGAS_IN_ALL: bool = false;
/// Whether the default (`all`) sections include `peers` (cqrs-es beside eventfold).
const PEERS_IN_ALL: bool = false;
/// Whether the default (`all`) sections include `sqlite` (the embedded default).
const SQLITE_IN_ALL: bool = false;

use counter::*;
use options::*;
use raw::*;
use report::*;
use writers::*;

async fn bench(
    admin: &PgConnectOptions,
    db: &str,
    options: &Options,
    started: Instant,
) -> Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .test_before_acquire(options.test_before_acquire)
        .connect_with(admin.clone().database(db))
        .await
        .map_err(|e| format!("connecting to database {db}: {e}"))?;
    let monitor = admin
        .clone()
        .database(db)
        .connect()
        .await
        .map_err(|e| format!("connecting to database {db}: {e}"));
    let result = match monitor {
        Ok(conn) => bench_on(&pool, options, &mut Monitor { conn }, started).await,
        Err(e) => Err(e.into()),
    };
    pool.close().await;
    result
}

async fn bench_on(
    pool: &PgPool,
    options: &Options,
    monitor: &mut Monitor,
    started: Instant,
) -> Result<()> {
    let (fsync,): (String,) = sqlx::query_as("SHOW fsync").fetch_one(pool).await?;
    let (sync_commit,): (String,) = sqlx::query_as("SHOW synchronous_commit")
        .fetch_one(pool)
        .await?;
    let (server,): (String,) = sqlx::query_as("SHOW server_version")
        .fetch_one(pool)
        .await?;
    println!("PostgreSQL {server}: fsync = {fsync}, synchronous_commit = {sync_commit}");
    if fsync != "on" {
        return Err(
            "fsync is off on this server: commit latencies would be meaningless; refusing to run"
                .into(),
        );
    }
    if sync_commit != "on" {
        eprintln!(
            "warning: synchronous_commit = {sync_commit}: commits do not wait for the WAL flush"
        );
    }

    let store = PgStore::builder(pool.clone()).build().await?;
    sqlx::query("CREATE TABLE raw_events (LIKE eventfold_events INCLUDING ALL)")
        .execute(pool)
        .await?;
    let shared = Arc::new(Shared {
        pool: pool.clone(),
        repo: Repository::new(store.clone()),
        cached: Repository::new(store.clone()).with_cache(CACHE_CAPACITY),
        store,
        raw_insert: raw_insert_sql("raw_events"),
        plain_insert: versioned_plain_sql(),
        keyed_insert: keyed_insert_sql(),
        raw_batch: raw_batch_sql(),
    });
    let total = Duration::from_secs_f64(options.seconds);
    println!(
        "{} s measured per case (two rounds of {} s, each after a {} s warm-up), pool of {POOL_SIZE}, \
         sqlx test_before_acquire = {}, {} CPU(s), sections: {}\n",
        options.seconds,
        options.seconds / 2.0,
        WARMUP.as_secs_f64(),
        options.test_before_acquire,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        options.sections.names()
    );

    let mut commands = Vec::new();
    let mut cpu = Vec::new();
    if options.sections.commands {
        for writers in CONCURRENCY {
            eprintln!("commands, {writers} writer(s):");
            let r = compare(&shared, &COMMAND_CASES, writers, total, monitor).await?;
            commands.push(CommandRow {
                writers,
                raw_insert: r[0].0.ops_per_s(),
                raw_insert_auto: r[1].0.ops_per_s(),
                raw_load_insert: r[2].0.ops_per_s(),
                lib: r[3].0.ops_per_s(),
                lib_cached: r[4].0.ops_per_s(),
                stream_len: [r[0].1, r[1].1, r[2].1, r[3].1, r[4].1],
            });
            cpu.push(CpuRow::new("command: library", writers, &r[3].0));
            cpu.push(CpuRow::new(
                "command: library + state cache",
                writers,
                &r[4].0,
            ));
            cpu.push(CpuRow::new("command: raw insert (tx)", writers, &r[0].0));
            cpu.push(CpuRow::new(
                "command: raw insert (autocommit)",
                writers,
                &r[1].0,
            ));
            cpu.push(CpuRow::new("command: raw load+insert", writers, &r[2].0));
        }
    }
    let mut appends = Vec::new();
    if options.sections.appends {
        for writers in CONCURRENCY {
            eprintln!("appends of {BATCH} events, {writers} writer(s):");
            let r = compare(
                &shared,
                &[Case::RawAppend, Case::LibAppend],
                writers,
                total,
                monitor,
            )
            .await?;
            appends.push(AppendRow {
                writers,
                raw: r[0].0.events_per_s(),
                lib: r[1].0.events_per_s(),
            });
            cpu.push(CpuRow::new("append of 100: library", writers, &r[1].0));
            cpu.push(CpuRow::new("append of 100: raw", writers, &r[0].0));
        }
    }
    // A section's results when it is selected, else `None`.
    macro_rules! section {
        ($selected:expr, $run:expr) => {
            if $selected { Some($run.await?) } else { None }
        };
    }
    let log = section!(
        options.sections.log,
        global_log::run(&shared, options, monitor, &mut cpu)
    );
    let relay = section!(options.sections.relay, relay::run(pool, options));
    let projections = section!(
        options.sections.projections,
        projections::run(pool, options)
    );
    let sagas = section!(options.sections.sagas, sagas::run(pool, options));
    let consumer = section!(options.sections.consumer, consumer::run(pool, options));
    let peers = section!(options.sections.peers, peers::run(pool, options));
    let sqlite = section!(options.sections.sqlite, sqlite::run(options));
    let results = Results {
        peers,
        sqlite,
        options,
        projections,
        fsync,
        sync_commit,
        server,
        commands,
        appends,
        cpu,
        log,
        relay,
        sagas,
        consumer,
        started,
    };
    report(&results)?;
    // The report is printed in full first; a failed exactly-once check then fails the run.
    if let Some(log) = &results.log {
        log.check()?;
    }
    if let Some(projections) = &results.projections {
        projections.check()?;
    }
    if let Some(sagas) = &results.sagas {
        sagas.check()?;
    }
    match &results.relay {
        Some(relay) => relay.check(),
        None => Ok(()),
    }
}

async fn run(options: &Options, started: Instant) -> Result<()> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let admin =
        PgConnectOptions::from_str(&url).map_err(|e| format!("DATABASE_URL `{url}`: {e}"))?;
    let db = format!("eventfold_bench_{}", Uuid::now_v7().simple());
    let mut conn = admin
        .connect()
        .await
        .map_err(|e| format!("connecting to DATABASE_URL `{url}`: {e}"))?;
    sqlx::query(&format!("CREATE DATABASE \"{db}\""))
        .execute(&mut conn)
        .await
        .map_err(|e| format!("creating database {db}: {e}"))?;
    eprintln!("database {db} created on {url}");
    let result = bench(&admin, &db, options, started).await;
    let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await;
    match &dropped {
        Ok(_) => eprintln!("database {db} dropped"),
        Err(e) => eprintln!("error: dropping database {db}: {e}"),
    }
    result?;
    dropped.map(|_| ()).map_err(Into::into)
}

#[tokio::main]
async fn main() -> ExitCode {
    let started = Instant::now();
    let options = match parse_args() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("eventfold-bench: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = run(&options, started).await;
    println!("\nTotal elapsed: {:.1} s", started.elapsed().as_secs_f64());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eventfold-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}
