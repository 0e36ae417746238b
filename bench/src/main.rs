//! # eventfold-bench
//!
//! Throughput of eventfold's PostgreSQL event store next to hand-written `sqlx` baselines that
//! run in the same process, on the same database, with the same pool and concurrency.
//!
//! ```text
//! cd /work/main && cargo run --release -p eventfold-bench -- --seconds 5
//! ```
//!
//! Options: `--seconds N` (measured time per case, default 5), `--quick` (2 s per case),
//! `--no-test-before-acquire` (turn off sqlx's ping on every pool checkout, for diagnosis).
//! The server is `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`); the
//! benchmark creates a database `eventfold_bench_<random>` there and drops it (`WITH (FORCE)`)
//! at the end. It refuses to run when the server has `fsync` off, because commit figures would
//! then be meaningless.
//!
//! What is measured:
//!
//! 1. **Commands, 1 event each**, at 1 and 8 writers (tokio tasks, pool of 16 connections); each
//!    writer cycles over its own 50 aggregates:
//!    * library: `Repository::execute` (begin, load the stream, `handle`, append with the
//!      expected version, commit);
//!    * raw insert: `BEGIN; INSERT` one row `; COMMIT` into `raw_events`, a table created with
//!      `CREATE TABLE raw_events (LIKE eventfold_events INCLUDING ALL)` (same columns,
//!      constraints and indexes);
//!    * raw load+insert: `BEGIN; SELECT` the stream's rows by version (same columns the library
//!      reads), fold their JSON payloads, `INSERT` the next version `; COMMIT`.
//! 2. **Appends of 100 events** per transaction on fresh streams: `EventStore::append` with
//!    `ExpectedVersion::Exact(0)` against one `INSERT ... SELECT FROM UNNEST(...)` of 100 rows
//!    into `raw_events` in a transaction; 1 and 8 writers.
//!
//! Each case is warmed up for 0.5 s before it is measured. Variants alternate in two rounds
//! (A B C then C B A) of half the duration each, and the two halves are summed, so that drift
//! affects every variant alike. The figures are printed as markdown tables and as one
//! `BENCH_JSON {...}` line. A third table gives the CPU time per operation of this process and
//! of the PostgreSQL backends serving the pool (from `/proc/<pid>/schedstat`; `n/a` when the
//! server is not on this machine), which shows where the time goes on a CPU-bound host.
//! Progress per round goes to stderr.
#![warn(missing_docs)]

use std::error::Error;
use std::fmt;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use eventfold_core::{Aggregate, CodecError, CommandMetadata, Event, EventTypeInfo, NewEvent};
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

// ---------------------------------------------------------------------------------------------
// The benchmark's aggregate: a counter whose events carry `{"n":1}`.

/// Events of [`Counter`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum CounterEvent {
    Incremented { n: u64 },
}

const INCREMENTED: &str = "counter.incremented";

/// Reads `n` from a `{"n":..}` payload (shared by the library aggregate and the raw baseline).
fn decode_n(payload: &[u8]) -> Result<u64> {
    let value: serde_json::Value = serde_json::from_slice(payload)?;
    value
        .get("n")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| "payload has no numeric `n`".into())
}

impl Event for CounterEvent {
    const CONTENT_TYPE: &'static str = "application/json";

    fn event_type(&self) -> &'static str {
        INCREMENTED
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn event_types() -> &'static [EventTypeInfo] {
        &[EventTypeInfo {
            name: INCREMENTED,
            version: 1,
            variant: "Incremented",
        }]
    }

    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let CounterEvent::Incremented { n } = self;
        Ok(format!(r#"{{"n":{n}}}"#).into_bytes())
    }

    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, CodecError> {
        if event_type != INCREMENTED {
            return Err(CodecError::UnknownEventType {
                event_type: event_type.to_owned(),
            });
        }
        decode_n(payload)
            .map(|n| CounterEvent::Incremented { n })
            .map_err(|source| CodecError::Decode {
                event_type: event_type.to_owned(),
                codec: "json",
                source,
            })
    }
}

/// The error of [`Counter`] (it never rejects).
#[derive(Debug)]
struct Never;

impl fmt::Display for Never {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("never")
    }
}

impl Error for Never {}

/// A running total.
#[derive(Debug, Default)]
struct Counter {
    total: u64,
}

/// Adds one.
struct Increment;

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = Increment;
    type Event = CounterEvent;
    type Error = Never;

    fn handle(&self, _: &Increment) -> Result<Vec<CounterEvent>, Never> {
        Ok(vec![CounterEvent::Incremented { n: 1 }])
    }

    fn apply(&mut self, event: &CounterEvent) {
        let CounterEvent::Incremented { n } = event;
        self.total += n;
    }
}

// ---------------------------------------------------------------------------------------------
// Raw baselines.

const RAW_COLUMNS: &str = "event_id, stream_type, stream_id, stream_version, event_type, schema_version, \
     payload, recorded_at, source, correlation_id, causation_id, tenant_id, headers";

fn raw_insert_sql() -> String {
    format!(
        "INSERT INTO raw_events ({RAW_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb)"
    )
}

/// The same columns, order and filter the library's `read_stream` uses.
const RAW_LOAD_SQL: &str = "SELECT event_id, stream_version, global_position, event_type, schema_version, \
     payload, recorded_at, source, correlation_id, causation_id, tenant_id, headers::text \
     FROM raw_events WHERE stream_type = $1 AND stream_id = $2 ORDER BY stream_version";

fn raw_batch_sql() -> String {
    format!(
        "INSERT INTO raw_events ({RAW_COLUMNS}) \
         SELECT e.event_id, $1, $2, e.stream_version, e.event_type, e.schema_version, e.payload, \
           e.recorded_at, e.source, e.correlation_id, e.causation_id, e.tenant_id, e.headers::jsonb \
         FROM UNNEST($3::uuid[], $4::int8[], $5::text[], $6::int4[], $7::bytea[], $8::timestamptz[], \
           $9::text[], $10::uuid[], $11::uuid[], $12::text[], $13::text[]) \
           AS e(event_id, stream_version, event_type, schema_version, payload, recorded_at, source, \
           correlation_id, causation_id, tenant_id, headers)"
    )
}

type RawRow = (
    Uuid,
    i64,
    i64,
    String,
    i32,
    Vec<u8>,
    DateTime<Utc>,
    String,
    Uuid,
    Option<Uuid>,
    Option<String>,
    String,
);

/// Headers as JSON text, as the library sends them.
fn headers_text(event: &NewEvent) -> Result<String> {
    if event.headers.is_empty() {
        Ok("{}".to_owned())
    } else {
        Ok(serde_json::to_string(&event.headers)?)
    }
}

// ---------------------------------------------------------------------------------------------
// Cases and writers.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    /// `Repository::execute`, one event per command.
    LibExecute,
    /// BEGIN; INSERT one row; COMMIT.
    RawInsert,
    /// BEGIN; SELECT the stream; INSERT the next version; COMMIT.
    RawLoadInsert,
    /// `EventStore::append` of 100 events, `Exact(0)`, fresh stream.
    LibAppend,
    /// BEGIN; INSERT 100 rows with UNNEST; COMMIT.
    RawAppend,
}

impl Case {
    fn tag(self) -> &'static str {
        match self {
            Case::LibExecute => "lib",
            Case::RawInsert => "rin",
            Case::RawLoadInsert => "rli",
            Case::LibAppend => "lba",
            Case::RawAppend => "rba",
        }
    }
}

struct Shared {
    pool: PgPool,
    store: PgStore,
    repo: Repository<Counter, PgStore>,
    raw_insert: String,
    raw_batch: String,
}

/// One concurrent writer: its own aggregates (or fresh streams), kept across rounds.
struct Writer {
    case: Case,
    shared: Arc<Shared>,
    /// Aggregate ids (part 1) or the stream id prefix (part 2).
    ids: Vec<String>,
    /// The version of each aggregate, for the raw insert (which does not load).
    versions: Vec<u64>,
    /// Operations done, warm-up included.
    done: u64,
}

impl Writer {
    fn new(case: Case, shared: &Arc<Shared>, writers: usize, index: usize) -> Self {
        let ids = match case {
            Case::LibExecute | Case::RawInsert | Case::RawLoadInsert => (0..AGGREGATES_PER_WRITER)
                .map(|a| format!("{}-c{writers}-w{index}-a{a}", case.tag()))
                .collect(),
            Case::LibAppend | Case::RawAppend => {
                vec![format!("{}-c{writers}-w{index}", case.tag())]
            }
        };
        Self {
            case,
            shared: shared.clone(),
            versions: vec![0; ids.len()],
            ids,
            done: 0,
        }
    }

    fn meta() -> CommandMetadata {
        CommandMetadata::new()
    }

    /// One operation; returns the number of events it wrote.
    async fn step(&mut self) -> Result<u64> {
        let slot = (self.done % self.ids.len() as u64) as usize;
        self.done += 1;
        let shared = &self.shared;
        match self.case {
            Case::LibExecute => {
                shared
                    .repo
                    .execute(&self.ids[slot], &Increment, Self::meta())
                    .await?;
                Ok(1)
            }
            Case::RawInsert => {
                let event = NewEvent::encode(
                    &CounterEvent::Incremented { n: 1 },
                    shared.store.source(),
                    &Self::meta(),
                )?;
                let version = self.versions[slot] + 1;
                let mut tx = shared.pool.begin().await?;
                insert_one(
                    &mut tx,
                    &shared.raw_insert,
                    &self.ids[slot],
                    version,
                    &event,
                )
                .await?;
                tx.commit().await?;
                self.versions[slot] = version;
                Ok(1)
            }
            Case::RawLoadInsert => {
                let mut tx = shared.pool.begin().await?;
                let rows: Vec<RawRow> = sqlx::query_as(RAW_LOAD_SQL)
                    .bind(Counter::TYPE)
                    .bind(&self.ids[slot])
                    .fetch_all(&mut *tx)
                    .await?;
                let mut total = 0u64;
                let mut version = 0i64;
                for row in &rows {
                    if row.1 != version + 1 {
                        return Err(format!(
                            "stream {} jumps from {version} to {}",
                            self.ids[slot], row.1
                        )
                        .into());
                    }
                    version = row.1;
                    total += decode_n(&row.5)?;
                }
                std::hint::black_box(total);
                let event = NewEvent::encode(
                    &CounterEvent::Incremented { n: 1 },
                    shared.store.source(),
                    &Self::meta(),
                )?;
                let next = u64::try_from(version)? + 1;
                insert_one(&mut tx, &shared.raw_insert, &self.ids[slot], next, &event).await?;
                tx.commit().await?;
                Ok(1)
            }
            Case::LibAppend => {
                let stream = eventfold_core::StreamId::new(
                    Counter::TYPE,
                    format!("{}-{}", self.ids[0], self.done),
                )?;
                let events = batch(shared.store.source())?;
                shared
                    .store
                    .append(&stream, ExpectedVersion::Exact(0), events)
                    .await?;
                Ok(BATCH as u64)
            }
            Case::RawAppend => {
                let stream = format!("{}-{}", self.ids[0], self.done);
                let events = batch(shared.store.source())?;
                let mut tx = shared.pool.begin().await?;
                insert_batch(&mut tx, &shared.raw_batch, &stream, &events).await?;
                tx.commit().await?;
                Ok(BATCH as u64)
            }
        }
    }
}

fn batch(source: &str) -> Result<Vec<NewEvent>> {
    let meta = Writer::meta();
    (0..BATCH)
        .map(|_| {
            NewEvent::encode(&CounterEvent::Incremented { n: 1 }, source, &meta)
                .map_err(BoxError::from)
        })
        .collect()
}

async fn insert_one(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    stream_id: &str,
    version: u64,
    e: &NewEvent,
) -> Result<()> {
    sqlx::query(sql)
        .bind(e.event_id)
        .bind(Counter::TYPE)
        .bind(stream_id)
        .bind(i64::try_from(version)?)
        .bind(e.event_type.as_str())
        .bind(i32::try_from(e.schema_version)?)
        .bind(e.payload.as_slice())
        .bind(e.timestamp)
        .bind(e.source.as_str())
        .bind(e.correlation_id)
        .bind(e.causation_id)
        .bind(e.tenant_id.as_deref())
        .bind(headers_text(e)?)
        .execute(conn)
        .await?;
    Ok(())
}

async fn insert_batch(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    stream_id: &str,
    events: &[NewEvent],
) -> Result<()> {
    let n = events.len();
    let mut ids = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut schema_versions = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    let mut sources = Vec::with_capacity(n);
    let mut correlations = Vec::with_capacity(n);
    let mut causations = Vec::with_capacity(n);
    let mut tenants = Vec::with_capacity(n);
    let mut headers = Vec::with_capacity(n);
    for (i, e) in events.iter().enumerate() {
        ids.push(e.event_id);
        versions.push(i64::try_from(i)? + 1);
        types.push(e.event_type.as_str());
        schema_versions.push(i32::try_from(e.schema_version)?);
        payloads.push(e.payload.as_slice());
        times.push(e.timestamp);
        sources.push(e.source.as_str());
        correlations.push(e.correlation_id);
        causations.push(e.causation_id);
        tenants.push(e.tenant_id.as_deref());
        headers.push(headers_text(e)?);
    }
    sqlx::query(sql)
        .bind(Counter::TYPE)
        .bind(stream_id)
        .bind(ids)
        .bind(versions)
        .bind(types)
        .bind(schema_versions)
        .bind(payloads)
        .bind(times)
        .bind(sources)
        .bind(correlations)
        .bind(causations)
        .bind(tenants)
        .bind(headers)
        .execute(conn)
        .await?;
    Ok(())
}

/// What one measured segment produced.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ops: u64,
    events: u64,
    seconds: f64,
    /// CPU time of this process's threads in the measured window (ns).
    client_ns: Option<u64>,
    /// CPU time of the PostgreSQL backends of the pool in the measured window (ns).
    server_ns: Option<u64>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        let first = self.ops == 0 && self.seconds == 0.0;
        let sum = |a: Option<u64>, b: Option<u64>| if first { b } else { Some(a? + b?) };
        self.client_ns = sum(self.client_ns, other.client_ns);
        self.server_ns = sum(self.server_ns, other.server_ns);
        self.ops += other.ops;
        self.events += other.events;
        self.seconds += other.seconds;
    }
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.seconds
    }
    /// Client and server CPU microseconds per operation.
    fn cpu_us_per_op(&self) -> (Option<f64>, Option<f64>) {
        let per = |ns: Option<u64>| {
            ns.filter(|_| self.ops > 0)
                .map(|ns| ns as f64 / 1000.0 / self.ops as f64)
        };
        (per(self.client_ns), per(self.server_ns))
    }
}

/// Samples CPU time from `/proc/<pid>/schedstat` (Linux): this process's threads, and the
/// backends of the benchmark database when the server runs on this machine.
struct Monitor {
    conn: sqlx::PgConnection,
}

struct CpuSample {
    client: Option<u64>,
    server: Vec<(i32, u64)>,
}

fn schedstat_ns(dir: &str) -> Option<u64> {
    std::fs::read_to_string(format!("{dir}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn client_cpu_ns() -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        total += schedstat_ns(&entry.ok()?.path().display().to_string())?;
    }
    Some(total)
}

impl Monitor {
    async fn sample(&mut self) -> Result<CpuSample> {
        let pids: Vec<(i32,)> = sqlx::query_as(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut self.conn)
        .await?;
        let server = pids
            .into_iter()
            .filter_map(|(pid,)| {
                let dir = format!("/proc/{pid}");
                // Only a local server's backends: the process must be a postgres one.
                let comm = std::fs::read_to_string(format!("{dir}/comm")).ok()?;
                if comm.trim() != "postgres" {
                    return None;
                }
                schedstat_ns(&dir).map(|ns| (pid, ns))
            })
            .collect();
        Ok(CpuSample {
            client: client_cpu_ns(),
            server,
        })
    }
}

fn cpu_delta(before: &CpuSample, after: &CpuSample) -> (Option<u64>, Option<u64>) {
    let client = before
        .client
        .zip(after.client)
        .map(|(a, b)| b.saturating_sub(a));
    let mut server = None;
    for (pid, ns) in &after.server {
        let start = before
            .server
            .iter()
            .find(|(p, _)| p == pid)
            .map_or(0, |(_, ns)| *ns);
        server = Some(server.unwrap_or(0) + ns.saturating_sub(start));
    }
    (client, server)
}

/// Runs the writers for a warm-up and then `measure`, counting only operations that completed
/// inside the measured window.
async fn segment(
    writers: Vec<Writer>,
    measure: Duration,
    monitor: &mut Monitor,
) -> Result<(Vec<Writer>, Tally)> {
    let start = Instant::now();
    let warm_end = start + WARMUP;
    let end = warm_end + measure;
    let mut handles = Vec::with_capacity(writers.len());
    for mut writer in writers {
        handles.push(tokio::spawn(async move {
            while Instant::now() < warm_end {
                writer.step().await?;
            }
            let (mut ops, mut events) = (0u64, 0u64);
            loop {
                let n = writer.step().await?;
                if Instant::now() > end {
                    break;
                }
                ops += 1;
                events += n;
            }
            Ok::<_, BoxError>((writer, ops, events))
        }));
    }
    tokio::time::sleep_until(warm_end.into()).await;
    let before = monitor.sample().await;
    tokio::time::sleep_until(end.into()).await;
    let after = monitor.sample().await;
    let (client_ns, server_ns) = match (&before, &after) {
        (Ok(a), Ok(b)) => cpu_delta(a, b),
        _ => (None, None),
    };
    let mut back = Vec::with_capacity(handles.len());
    let mut tally = Tally {
        seconds: measure.as_secs_f64(),
        client_ns,
        server_ns,
        ..Tally::default()
    };
    let mut first_error = None;
    for handle in handles {
        match handle.await {
            Ok(Ok((writer, ops, events))) => {
                tally.ops += ops;
                tally.events += events;
                back.push(writer);
            }
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => first_error = first_error.or(Some(Box::new(e) as BoxError)),
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok((back, tally)),
    }
}

/// Measures `cases` at `writers` concurrency, alternating A B C / C B A over two rounds.
async fn compare(
    shared: &Arc<Shared>,
    cases: &[Case],
    writers: usize,
    total: Duration,
    monitor: &mut Monitor,
) -> Result<Vec<(Tally, f64)>> {
    let mut pools: Vec<Option<Vec<Writer>>> = cases
        .iter()
        .map(|case| {
            Some(
                (0..writers)
                    .map(|i| Writer::new(*case, shared, writers, i))
                    .collect(),
            )
        })
        .collect();
    let mut tallies = vec![Tally::default(); cases.len()];
    let half = total / 2;
    let forward: Vec<usize> = (0..cases.len()).collect();
    let backward: Vec<usize> = forward.iter().rev().copied().collect();
    for (round, order) in [forward, backward].into_iter().enumerate() {
        for i in order {
            let ws = pools[i].take().ok_or("writers missing")?;
            let (ws, tally) = segment(ws, half, monitor).await.map_err(|e| {
                format!(
                    "{:?} with {writers} writers (round {}) failed: {e}",
                    cases[i],
                    round + 1
                )
            })?;
            eprintln!(
                "  round {} {:<14} writers={writers}: {:>10.0} ops/s",
                round + 1,
                format!("{:?}", cases[i]),
                tally.ops_per_s()
            );
            tallies[i].add(tally);
            pools[i] = Some(ws);
        }
    }
    Ok(tallies
        .into_iter()
        .zip(pools)
        .map(|(t, ws)| {
            // Average stream length at the end (part 1 only makes sense; part 2 streams are fresh).
            let ws = ws.unwrap_or_default();
            let ops: u64 = ws.iter().map(|w| w.done).sum();
            let streams: usize = ws.iter().map(|w| w.ids.len()).sum();
            (t, ops as f64 / streams.max(1) as f64)
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Setup, teardown, report.

struct Options {
    seconds: f64,
    test_before_acquire: bool,
}

fn parse_args() -> Result<Options> {
    let mut options = Options {
        seconds: 5.0,
        test_before_acquire: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = args.next().ok_or("--seconds needs a value")?;
                options.seconds = value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0 && s.is_finite())
                    .ok_or_else(|| format!("--seconds: not a positive number: {value}"))?;
            }
            "--quick" => options.seconds = 2.0,
            "--no-test-before-acquire" => options.test_before_acquire = false,
            "-h" | "--help" => {
                println!(
                    "usage: eventfold-bench [--seconds N | --quick] [--no-test-before-acquire]\n\
                     DATABASE_URL defaults to {DEFAULT_DATABASE_URL}"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)").into()),
        }
    }
    Ok(options)
}

struct CommandRow {
    writers: usize,
    lib: f64,
    raw_insert: f64,
    raw_load_insert: f64,
    stream_len: [f64; 3],
}

struct AppendRow {
    writers: usize,
    lib: f64,
    raw: f64,
}

/// CPU per operation of one case.
struct CpuRow {
    what: &'static str,
    writers: usize,
    client_us: Option<f64>,
    server_us: Option<f64>,
}

impl CpuRow {
    fn new(what: &'static str, writers: usize, tally: &Tally) -> Self {
        let (client_us, server_us) = tally.cpu_us_per_op();
        Self {
            what,
            writers,
            client_us,
            server_us,
        }
    }
}

async fn bench(admin: &PgConnectOptions, db: &str, options: &Options) -> Result<()> {
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
        Ok(conn) => bench_on(&pool, options, &mut Monitor { conn }).await,
        Err(e) => Err(e.into()),
    };
    pool.close().await;
    result
}

async fn bench_on(pool: &PgPool, options: &Options, monitor: &mut Monitor) -> Result<()> {
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
        store,
        raw_insert: raw_insert_sql(),
        raw_batch: raw_batch_sql(),
    });
    let total = Duration::from_secs_f64(options.seconds);
    println!(
        "{} s measured per case (two rounds of {} s, each after a {} s warm-up), pool of {POOL_SIZE}, \
         sqlx test_before_acquire = {}, {} CPU(s)\n",
        options.seconds,
        options.seconds / 2.0,
        WARMUP.as_secs_f64(),
        options.test_before_acquire,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut commands = Vec::new();
    let mut cpu = Vec::new();
    for writers in CONCURRENCY {
        eprintln!("commands, {writers} writer(s):");
        let r = compare(
            &shared,
            &[Case::RawInsert, Case::RawLoadInsert, Case::LibExecute],
            writers,
            total,
            monitor,
        )
        .await?;
        commands.push(CommandRow {
            writers,
            raw_insert: r[0].0.ops_per_s(),
            raw_load_insert: r[1].0.ops_per_s(),
            lib: r[2].0.ops_per_s(),
            stream_len: [r[0].1, r[1].1, r[2].1],
        });
        cpu.push(CpuRow::new("command: library", writers, &r[2].0));
        cpu.push(CpuRow::new("command: raw insert", writers, &r[0].0));
        cpu.push(CpuRow::new("command: raw load+insert", writers, &r[1].0));
    }
    let mut appends = Vec::new();
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
    report(&Results {
        options,
        fsync,
        sync_commit,
        server,
        commands,
        appends,
        cpu,
    })
}

fn verdict(ratio: f64) -> &'static str {
    if ratio >= TARGET_RATIO {
        "met"
    } else {
        "**missed**"
    }
}

struct Results<'a> {
    options: &'a Options,
    fsync: String,
    sync_commit: String,
    server: String,
    commands: Vec<CommandRow>,
    appends: Vec<AppendRow>,
    cpu: Vec<CpuRow>,
}

fn report(results: &Results<'_>) -> Result<()> {
    let Results {
        options,
        fsync,
        sync_commit,
        server,
        commands,
        appends,
        cpu,
    } = results;
    println!("### Commands with 1 event each (commands/s)\n");
    println!(
        "| writers | library `Repository::execute` | raw insert | library / raw insert | target ≥ {TARGET_RATIO:.2} | raw load+insert | library / raw load+insert |"
    );
    println!("|---:|---:|---:|---:|:--|---:|---:|");
    for r in commands {
        let ratio = r.lib / r.raw_insert;
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {} | {:.0} | {:.2} |",
            r.writers,
            r.lib,
            r.raw_insert,
            ratio,
            verdict(ratio),
            r.raw_load_insert,
            r.lib / r.raw_load_insert
        );
    }
    println!();
    println!(
        "* library: `Repository::<Counter, PgStore>::execute(id, &Increment, CommandMetadata::new())`:"
    );
    println!(
        "  begin, read the stream, decode and apply its events, `handle`, append 1 event with the"
    );
    println!("  expected version (the library's `UNNEST` statement), commit.");
    println!(
        "* raw insert: sqlx `BEGIN; INSERT INTO raw_events (13 columns) VALUES (...); COMMIT`, no read;"
    );
    println!("  `raw_events` is `CREATE TABLE raw_events (LIKE eventfold_events INCLUDING ALL)`.");
    println!(
        "* raw load+insert: sqlx `BEGIN; SELECT` the stream's rows ordered by version (the columns the"
    );
    println!("  library reads), fold their JSON payloads, `INSERT` the next version`; COMMIT`.");
    println!(
        "* each writer cycles over its own {AGGREGATES_PER_WRITER} aggregates; events per stream at the end:"
    );
    for r in commands {
        println!(
            "  {} writer(s): library {:.0}, raw insert {:.0}, raw load+insert {:.0}",
            r.writers, r.stream_len[2], r.stream_len[0], r.stream_len[1]
        );
    }
    println!("\n### Appends of {BATCH} events per transaction (events/s)\n");
    println!("| writers | library `EventStore::append` | raw `UNNEST` insert | library / raw |");
    println!("|---:|---:|---:|---:|");
    for r in appends {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} |",
            r.writers,
            r.lib,
            r.raw,
            r.lib / r.raw
        );
    }
    println!();
    println!(
        "* library: `store.append(&fresh_stream, ExpectedVersion::Exact(0), 100 events)` (its own transaction)."
    );
    println!(
        "* raw: sqlx `BEGIN; INSERT INTO raw_events ... SELECT FROM UNNEST(11 arrays)` of 100 rows `; COMMIT`."
    );
    println!();
    println!(
        "Setup: PostgreSQL {server}, fsync = {fsync}, synchronous_commit = {sync_commit}; pool of {POOL_SIZE} \
         connections; writers are tokio tasks; {} s per case, variants alternated (A B C, C B A) and summed; \
         0.5 s warm-up before each half.",
        options.seconds
    );
    let us = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"));
    println!(
        "\n### CPU time per operation (µs, measured windows; client = this process, server = the \
         PostgreSQL backends of the pool)\n"
    );
    println!("| operation | writers | client | server |");
    println!("|:--|---:|---:|---:|");
    for r in cpu.iter() {
        println!(
            "| {} | {} | {} | {} |",
            r.what,
            r.writers,
            us(r.client_us),
            us(r.server_us)
        );
    }
    println!();
    let target_met = commands
        .iter()
        .all(|r| r.lib / r.raw_insert >= TARGET_RATIO);
    println!(
        "Target: library / raw insert ≥ {TARGET_RATIO:.2} at every concurrency: {}.",
        if target_met { "met" } else { "NOT met" }
    );

    let json = serde_json::json!({
        "seconds": options.seconds,
        "server_version": server,
        "fsync": fsync,
        "synchronous_commit": sync_commit,
        "pool": POOL_SIZE,
        "test_before_acquire": options.test_before_acquire,
        "target_ratio": TARGET_RATIO,
        "target_met": target_met,
        "commands": commands.iter().map(|r| serde_json::json!({
            "writers": r.writers,
            "library_cmd_per_s": r.lib.round(),
            "raw_insert_cmd_per_s": r.raw_insert.round(),
            "raw_load_insert_cmd_per_s": r.raw_load_insert.round(),
            "ratio_vs_raw_insert": (r.lib / r.raw_insert * 1000.0).round() / 1000.0,
            "ratio_vs_raw_load_insert": (r.lib / r.raw_load_insert * 1000.0).round() / 1000.0,
            "events_per_stream_at_end": {
                "library": r.stream_len[2].round(),
                "raw_insert": r.stream_len[0].round(),
                "raw_load_insert": r.stream_len[1].round(),
            },
        })).collect::<Vec<_>>(),
        "cpu_us_per_op": cpu.iter().map(|r| serde_json::json!({
            "operation": r.what,
            "writers": r.writers,
            "client": r.client_us.map(f64::round),
            "server": r.server_us.map(f64::round),
        })).collect::<Vec<_>>(),
        "append_100": appends.iter().map(|r| serde_json::json!({
            "writers": r.writers,
            "library_events_per_s": r.lib.round(),
            "raw_events_per_s": r.raw.round(),
            "ratio": (r.lib / r.raw * 1000.0).round() / 1000.0,
        })).collect::<Vec<_>>(),
    });
    println!("\nBENCH_JSON {json}");
    Ok(())
}

async fn run() -> Result<()> {
    let options = parse_args()?;
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
    let result = bench(&admin, &db, &options).await;
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
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eventfold-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}
