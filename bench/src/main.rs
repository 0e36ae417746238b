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
//!    once with the consumers' `fetch.wait.max.ms` = 5) and SQLite (a temporary WAL file) with the
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
mod global_log;
mod peers;
mod projections;
mod relay;
mod sagas;
mod sqlite;
mod timed;

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

// ---------------------------------------------------------------------------------------------
// The benchmark's aggregate: a counter whose events carry `{"n":1}`.

/// Events of [`Counter`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum CounterEvent {
    Incremented { n: u64 },
}

const INCREMENTED: &str = "counter.incremented";

/// The raw baselines' fold of a loaded stream: checks that the versions run 1, 2, ... without a
/// gap, adds up the events' `n` (as the aggregate would) and returns the last version.
pub(crate) fn raw_fold(stream: &str, rows: &[RawRow]) -> Result<i64> {
    let mut total = 0u64;
    let mut version = 0i64;
    for row in rows {
        if row.1 != version + 1 {
            return Err(format!("stream {stream} jumps from {version} to {}", row.1).into());
        }
        version = row.1;
        total += decode_n(&row.5)?;
    }
    std::hint::black_box(total);
    Ok(version)
}

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

/// A running total (`Clone` for the repository's state cache).
#[derive(Debug, Default, Clone)]
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

/// One row into `table`, `commit_key` = 0 (no log mechanism).
fn raw_insert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} ({RAW_COLUMNS}, commit_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, 0)"
    )
}

/// One row into `raw_plain` with the expected-version check every event store needs (the
/// stream's current version must be `$4 - 1`), `commit_key` = 0: the append without the log
/// mechanism.
fn versioned_plain_sql() -> String {
    format!(
        "WITH cur AS (SELECT COALESCE(MAX(stream_version), 0)::int8 AS v FROM raw_plain \
           WHERE stream_type = $2 AND stream_id = $3) \
         INSERT INTO raw_plain ({RAW_COLUMNS}, commit_key) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, 0 \
         FROM cur WHERE cur.v = $4 - 1"
    )
}

/// The same version-checked row into `raw_keyed`, its `commit_key` computed as the library's
/// append statement does: the writing transaction's id, raised to the commit key of the stream's
/// last event (the log index is kept on this table).
fn keyed_insert_sql() -> String {
    format!(
        "WITH last AS (SELECT stream_version, commit_key FROM raw_keyed \
           WHERE stream_type = $2 AND stream_id = $3 ORDER BY stream_version DESC LIMIT 1) \
         INSERT INTO raw_keyed ({RAW_COLUMNS}, commit_key) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, \
           GREATEST(pg_current_xact_id()::text::int8, COALESCE((SELECT commit_key FROM last), 0)) \
         WHERE COALESCE((SELECT stream_version FROM last), 0) = $4 - 1"
    )
}

/// The same columns, order and filter the library's `read_stream` uses.
const RAW_LOAD_SQL: &str = "SELECT event_id, stream_version, global_position, event_type, schema_version, \
     payload, recorded_at, source, correlation_id, causation_id, tenant_id, headers::text \
     FROM raw_events WHERE stream_type = $1 AND stream_id = $2 ORDER BY stream_version";

fn raw_batch_sql() -> String {
    format!(
        "INSERT INTO raw_events ({RAW_COLUMNS}, commit_key) \
         SELECT e.event_id, $1, $2, e.stream_version, e.event_type, e.schema_version, e.payload, \
           e.recorded_at, e.source, e.correlation_id, e.causation_id, e.tenant_id, e.headers::jsonb, 0 \
         FROM UNNEST($3::uuid[], $4::int8[], $5::text[], $6::int4[], $7::bytea[], $8::timestamptz[], \
           $9::text[], $10::uuid[], $11::uuid[], $12::text[], $13::text[]) \
           AS e(event_id, stream_version, event_type, schema_version, payload, recorded_at, source, \
           correlation_id, causation_id, tenant_id, headers)"
    )
}

/// A stream's event row as the raw baselines load it (PostgreSQL and SQLite): event_id,
/// stream_version, global_position, event_type, schema_version, payload, recorded_at, source,
/// correlation_id, causation_id, tenant_id, headers (JSON text).
pub(crate) type RawRow = (
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
    /// `Repository::with_cache(..).execute`, one event per command.
    LibCached,
    /// BEGIN; INSERT one row; COMMIT.
    RawInsert,
    /// INSERT one row (autocommit).
    RawInsertAuto,
    /// BEGIN; SELECT the stream; INSERT the next version; COMMIT.
    RawLoadInsert,
    /// `EventStore::append` of 100 events, `Exact(0)`, fresh stream.
    LibAppend,
    /// BEGIN; INSERT 100 rows with UNNEST; COMMIT.
    RawAppend,
    /// Global log, without the mechanism: autocommit INSERT into `raw_plain`, commit_key 0.
    LogPlain,
    /// Global log, with the mechanism: autocommit INSERT into `raw_keyed`, keyed.
    LogKeyed,
    /// Global log, library: `EventStore::append` of 1 event, `Exact(version)`.
    LogLibAppend,
}

impl Case {
    fn tag(self) -> &'static str {
        match self {
            Case::LibExecute => "lib",
            Case::LibCached => "lbc",
            Case::RawInsert => "rin",
            Case::RawInsertAuto => "ria",
            Case::RawLoadInsert => "rli",
            Case::LibAppend => "lba",
            Case::RawAppend => "rba",
            Case::LogPlain => "lgp",
            Case::LogKeyed => "lgk",
            Case::LogLibAppend => "lgl",
        }
    }

    /// Does this case append to fresh streams (100 events each) rather than cycle over
    /// aggregates?
    fn fresh_streams(self) -> bool {
        matches!(self, Case::LibAppend | Case::RawAppend)
    }
}

struct Shared {
    pool: PgPool,
    store: PgStore,
    repo: Repository<Counter, PgStore>,
    cached: Repository<Counter, PgStore>,
    raw_insert: String,
    plain_insert: String,
    keyed_insert: String,
    raw_batch: String,
}

/// One concurrent writer: its own aggregates (or fresh streams), kept across rounds.
struct Writer {
    case: Case,
    shared: Arc<Shared>,
    /// Aggregate ids (part 1) or the stream id prefix (part 2).
    ids: Vec<String>,
    /// The version of each aggregate, for the cases that do not load.
    versions: Vec<u64>,
    /// Operations done, warm-up included.
    done: u64,
}

impl Writer {
    fn new(case: Case, shared: &Arc<Shared>, writers: usize, index: usize) -> Self {
        let ids = if case.fresh_streams() {
            vec![format!("{}-c{writers}-w{index}", case.tag())]
        } else {
            (0..AGGREGATES_PER_WRITER)
                .map(|a| format!("{}-c{writers}-w{index}-a{a}", case.tag()))
                .collect()
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

    fn event(&self) -> Result<NewEvent> {
        Ok(NewEvent::encode(
            &CounterEvent::Incremented { n: 1 },
            self.shared.store.source(),
            &Self::meta(),
        )?)
    }

    /// One operation; returns the number of events it wrote.
    async fn step(&mut self) -> Result<u64> {
        let slot = (self.done % self.ids.len() as u64) as usize;
        self.done += 1;
        let shared = &self.shared;
        match self.case {
            Case::LibExecute | Case::LibCached => {
                let repo = if self.case == Case::LibCached {
                    &shared.cached
                } else {
                    &shared.repo
                };
                repo.execute(&self.ids[slot], &Increment, Self::meta())
                    .await?;
                Ok(1)
            }
            Case::RawInsert => {
                let event = self.event()?;
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
            Case::RawInsertAuto | Case::LogPlain | Case::LogKeyed => {
                let sql = match self.case {
                    Case::RawInsertAuto => &shared.raw_insert,
                    Case::LogPlain => &shared.plain_insert,
                    _ => &shared.keyed_insert,
                };
                let event = self.event()?;
                let version = self.versions[slot] + 1;
                let mut conn = shared.pool.acquire().await?;
                insert_one(&mut conn, sql, &self.ids[slot], version, &event).await?;
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
                let version = raw_fold(&self.ids[slot], &rows)?;
                let event = self.event()?;
                let next = u64::try_from(version)? + 1;
                insert_one(&mut tx, &shared.raw_insert, &self.ids[slot], next, &event).await?;
                tx.commit().await?;
                Ok(1)
            }
            Case::LogLibAppend => {
                let stream = StreamId::new(Counter::TYPE, self.ids[slot].as_str())?;
                let event = self.event()?;
                let done = shared
                    .store
                    .append(
                        &stream,
                        ExpectedVersion::Exact(self.versions[slot]),
                        vec![event],
                    )
                    .await?;
                self.versions[slot] = done.version;
                Ok(1)
            }
            Case::LibAppend => {
                let stream =
                    StreamId::new(Counter::TYPE, format!("{}-{}", self.ids[0], self.done))?;
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

/// Which sections run (`--only`).
#[derive(Debug, Clone, Copy)]
struct Sections {
    commands: bool,
    appends: bool,
    log: bool,
    relay: bool,
    projections: bool,
    sagas: bool,
    consumer: bool,
    peers: bool,
    sqlite: bool,
}

impl Sections {
    const ALL: Sections = Sections {
        commands: true,
        appends: true,
        log: true,
        relay: RELAY_IN_ALL,
        projections: true,
        sagas: SAGAS_IN_ALL,
        consumer: true,
        peers: PEERS_IN_ALL,
        sqlite: SQLITE_IN_ALL,
    };

    fn parse(value: &str) -> Result<Self> {
        let mut sections = Sections {
            commands: false,
            appends: false,
            log: false,
            relay: false,
            projections: false,
            sagas: false,
            consumer: false,
            peers: false,
            sqlite: false,
        };
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "commands" => sections.commands = true,
                "appends" => sections.appends = true,
                "log" => sections.log = true,
                "relay" => sections.relay = true,
                "projections" => sections.projections = true,
                "sagas" => sections.sagas = true,
                "consumer" => sections.consumer = true,
                "peers" => sections.peers = true,
                "sqlite" => sections.sqlite = true,
                "all" => sections = Sections::ALL,
                other => {
                    return Err(format!(
                        "--only: unknown section `{other}` (commands, appends, log, relay, projections, sagas, peers, sqlite, consumer, all)"
                    )
                    .into());
                }
            }
        }
        if !(sections.commands
            || sections.appends
            || sections.log
            || sections.relay
            || sections.projections
            || sections.sagas
            || sections.consumer
            || sections.peers
            || sections.sqlite)
        {
            return Err("--only: no section named".into());
        }
        Ok(sections)
    }

    fn names(self) -> String {
        [
            (self.commands, "commands"),
            (self.appends, "appends"),
            (self.log, "log"),
            (self.relay, "relay"),
            (self.projections, "projections"),
            (self.sagas, "sagas"),
            (self.consumer, "consumer"),
            (self.peers, "peers"),
            (self.sqlite, "sqlite"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(",")
    }
}

struct Options {
    seconds: f64,
    test_before_acquire: bool,
    sections: Sections,
    /// Events written for the catch-up read.
    log_events: u64,
    /// Duration of the commit-to-reader latency test.
    latency_seconds: f64,
    /// Outbox rows of the relay backlog.
    relay_rows: u64,
    /// Duration of the relay's commit-to-ack latency test.
    relay_latency_seconds: f64,
    /// Events of the projection rebuilds.
    projection_events: u64,
    /// Duration of each saga variant's one-at-a-time latency run.
    saga_latency_seconds: f64,
    /// `--quick` was given.
    quick: bool,
}

fn positive(flag: &str, value: Option<String>) -> Result<f64> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value
        .parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0 && s.is_finite())
        .ok_or_else(|| format!("{flag}: not a positive number: {value}").into())
}

/// A positive count (`_` separators allowed, at most `i64::MAX`) given to `flag`.
fn positive_count(flag: &str, value: Option<String>) -> Result<u64> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value
        .replace('_', "")
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0 && *n <= i64::MAX as u64)
        .ok_or_else(|| format!("{flag}: not a positive count: {value}").into())
}

fn parse_args() -> Result<Options> {
    let mut quick = false;
    let mut seconds = None;
    let mut log_events = None;
    let mut latency_seconds = None;
    let mut relay_rows = None;
    let mut projection_events = None;
    let mut saga_latency_seconds = None;
    let mut test_before_acquire = true;
    let mut sections = Sections::ALL;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = Some(positive("--seconds", args.next())?),
            "--quick" => quick = true,
            "--only" => {
                sections = Sections::parse(&args.next().ok_or("--only needs a value")?)?;
            }
            "--log-events" => log_events = Some(positive_count("--log-events", args.next())?),
            "--relay-rows" => relay_rows = Some(positive_count("--relay-rows", args.next())?),
            "--projection-events" => {
                projection_events = Some(positive_count("--projection-events", args.next())?)
            }
            "--latency-seconds" => {
                latency_seconds = Some(positive("--latency-seconds", args.next())?);
            }
            "--saga-latency-seconds" => {
                saga_latency_seconds = Some(positive("--saga-latency-seconds", args.next())?);
            }
            "--no-test-before-acquire" => test_before_acquire = false,
            "-h" | "--help" => {
                println!(
                    "usage: eventfold-bench [--seconds N | --quick] [--only commands,appends,log,relay,projections,sagas,peers,sqlite]\n\
                     \x20                      [--log-events N] [--latency-seconds N] [--relay-rows N] [--projection-events N]\n\
                     \x20                      [--saga-latency-seconds N] [--no-test-before-acquire]\n\
                     --quick: 2 s per case, 200000 log events, 4 s latency tests, 100000 relay rows, 200000 projection events,\n\
                     \x20        2 s saga latency runs, 1 s raw commit baselines\n\
                     sections run by default: commands,appends,log,projections; relay, sagas, peers and sqlite only when named\n\
                     \x20 (they need a Kafka-protocol broker at KAFKA_BOOTSTRAP, default 127.0.0.1:9092)\n\
                     DATABASE_URL defaults to {DEFAULT_DATABASE_URL}"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)").into()),
        }
    }
    Ok(Options {
        seconds: seconds.unwrap_or(if quick { 2.0 } else { 5.0 }),
        test_before_acquire,
        sections,
        log_events: log_events.unwrap_or(if quick { 200_000 } else { 1_000_000 }),
        latency_seconds: latency_seconds.unwrap_or(if quick { 4.0 } else { 10.0 }),
        relay_rows: relay_rows.unwrap_or(if quick { 100_000 } else { 1_000_000 }),
        relay_latency_seconds: if quick { 4.0 } else { 10.0 },
        projection_events: projection_events.unwrap_or(if quick { 200_000 } else { 1_000_000 }),
        saga_latency_seconds: saga_latency_seconds.unwrap_or(if quick { 2.0 } else { 3.0 }),
        quick,
    })
}

/// Commands/s of each variant at one concurrency.
struct CommandRow {
    writers: usize,
    raw_insert: f64,
    raw_insert_auto: f64,
    raw_load_insert: f64,
    lib: f64,
    lib_cached: f64,
    /// Events per stream at the end, in the order of the fields above.
    stream_len: [f64; 5],
}

/// The order in which the command cases are measured (and stored in [`CommandRow`]).
const COMMAND_CASES: [Case; 5] = [
    Case::RawInsert,
    Case::RawInsertAuto,
    Case::RawLoadInsert,
    Case::LibExecute,
    Case::LibCached,
];

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

fn verdict(ratio: f64) -> &'static str {
    if ratio >= TARGET_RATIO {
        "met"
    } else {
        "**missed**"
    }
}

/// A ratio rounded to 3 decimals for the JSON line.
pub(crate) fn r3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

struct Results<'a> {
    options: &'a Options,
    fsync: String,
    sync_commit: String,
    server: String,
    commands: Vec<CommandRow>,
    appends: Vec<AppendRow>,
    cpu: Vec<CpuRow>,
    log: Option<global_log::LogResults>,
    relay: Option<relay::RelayResults>,
    projections: Option<projections::ProjectionResults>,
    sagas: Option<sagas::SagaResults>,
    consumer: Option<consumer::ConsumerResults>,
    peers: Option<peers::PeerResults>,
    sqlite: Option<sqlite::SqliteResults>,
    started: Instant,
}

fn report_commands(commands: &[CommandRow]) {
    println!("### Commands with 1 event each (commands/s)\n");
    println!(
        "| writers | raw insert (tx) | raw insert (autocommit) | raw load+insert | library `Repository::execute` | library + state cache |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in commands {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.writers, r.raw_insert, r.raw_insert_auto, r.raw_load_insert, r.lib, r.lib_cached
        );
    }
    println!("\n### Commands: library / raw (target ≥ {TARGET_RATIO:.2} against a raw insert)\n");
    println!(
        "| writers | library variant | / raw insert (tx) | / raw insert (autocommit) | / raw load+insert |"
    );
    println!("|---:|:--|---:|---:|---:|");
    for r in commands {
        for (name, lib) in [
            ("`execute`", r.lib),
            ("`execute` + state cache", r.lib_cached),
        ] {
            let tx = lib / r.raw_insert;
            let auto = lib / r.raw_insert_auto;
            println!(
                "| {} | {name} | {tx:.2} ({}) | {auto:.2} ({}) | {:.2} |",
                r.writers,
                verdict(tx),
                verdict(auto),
                lib / r.raw_load_insert
            );
        }
    }
    println!();
    println!(
        "* library: `Repository::<Counter, PgStore>::execute(id, &Increment, CommandMetadata::new())`:"
    );
    println!(
        "  read the stream, decode and apply its events, `handle`, then one autocommit append statement"
    );
    println!(
        "  (`UNNEST`, expected-version check and commit key computed in the statement; no BEGIN/COMMIT)."
    );
    println!(
        "* library + state cache: `Repository::new(store).with_cache({CACHE_CAPACITY})`: state from memory,"
    );
    println!("  `handle`, the same single autocommit append statement; no read.");
    println!(
        "* raw insert (tx): sqlx `BEGIN; INSERT INTO raw_events (13 columns, commit_key 0) VALUES (...); COMMIT`;"
    );
    println!(
        "  raw insert (autocommit): the same `INSERT` alone, one round trip. Both: no read, version tracked"
    );
    println!(
        "  by the client; `raw_events` is `CREATE TABLE raw_events (LIKE eventfold_events INCLUDING ALL)`."
    );
    println!(
        "* raw load+insert: sqlx `BEGIN; SELECT` the stream's rows ordered by version (the columns the"
    );
    println!("  library reads), fold their JSON payloads, `INSERT` the next version`; COMMIT`.");
    println!(
        "* each writer cycles over its own {AGGREGATES_PER_WRITER} aggregates; events per stream at the end:"
    );
    for r in commands {
        println!(
            "  {} writer(s): raw insert (tx) {:.0}, raw insert (autocommit) {:.0}, raw load+insert {:.0}, \
             library {:.0}, library + cache {:.0}",
            r.writers,
            r.stream_len[0],
            r.stream_len[1],
            r.stream_len[2],
            r.stream_len[3],
            r.stream_len[4]
        );
    }
    println!();
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
        log,
        relay,
        projections,
        sagas,
        consumer,
        peers,
        sqlite,
        started,
    } = results;
    if !commands.is_empty() {
        report_commands(commands);
    }
    if !appends.is_empty() {
        println!("### Appends of {BATCH} events per transaction (events/s)\n");
        println!(
            "| writers | library `EventStore::append` | raw `UNNEST` insert | library / raw |"
        );
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
            "* library: `store.append(&fresh_stream, ExpectedVersion::Exact(0), 100 events)` (one autocommit statement)."
        );
        println!(
            "* raw: sqlx `BEGIN; INSERT INTO raw_events ... SELECT FROM UNNEST(11 arrays)` of 100 rows `; COMMIT`."
        );
        println!();
    }
    if let Some(log) = log {
        log.print();
    }
    if let Some(relay) = relay {
        relay.print();
    }
    if let Some(projections) = projections {
        projections.print();
    }
    if let Some(sagas) = sagas {
        sagas.print();
    }
    if let Some(peers) = peers {
        peers.print();
    }
    if let Some(sqlite) = sqlite {
        sqlite.print();
    }
    println!(
        "Setup: PostgreSQL {server}, fsync = {fsync}, synchronous_commit = {sync_commit}; pool of {POOL_SIZE} \
         connections; writers are tokio tasks; {} s per throughput case, variants alternated (A B C, C B A) \
         and summed; 0.5 s warm-up before each half.",
        options.seconds
    );
    let us = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"));
    if !cpu.is_empty() {
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
    }
    println!();
    let all_met = |f: &dyn Fn(&CommandRow) -> f64| {
        (!commands.is_empty()).then(|| commands.iter().all(|r| f(r) >= TARGET_RATIO))
    };
    let target_met = all_met(&|r| r.lib / r.raw_insert);
    let cached_vs_tx = all_met(&|r| r.lib_cached / r.raw_insert);
    let cached_vs_auto = all_met(&|r| r.lib_cached / r.raw_insert_auto);
    let says = |met: Option<bool>| match met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    };
    println!(
        "Target: library / raw insert ≥ {TARGET_RATIO:.2} at every concurrency: `execute` vs raw insert (tx): {}; \
         `execute` + state cache vs raw insert (tx): {}; `execute` + state cache vs raw insert (autocommit): {}.",
        says(target_met),
        says(cached_vs_tx),
        says(cached_vs_auto)
    );
    if let Some(log) = log {
        log.print_targets();
    }
    if let Some(relay) = relay {
        relay.print_targets();
    }
    if let Some(projections) = projections {
        projections.print_targets();
    }
    if let Some(sagas) = sagas {
        sagas.print_targets();
    }

    let json = serde_json::json!({
        "seconds": options.seconds,
        "sections": options.sections.names(),
        "server_version": server,
        "fsync": fsync,
        "synchronous_commit": sync_commit,
        "pool": POOL_SIZE,
        "test_before_acquire": options.test_before_acquire,
        "target_ratio": TARGET_RATIO,
        "target_met": target_met,
        "target_met_cached_vs_raw_insert": cached_vs_tx,
        "target_met_cached_vs_raw_insert_autocommit": cached_vs_auto,
        "commands": commands.iter().map(|r| serde_json::json!({
            "writers": r.writers,
            "library_cmd_per_s": r.lib.round(),
            "library_cached_cmd_per_s": r.lib_cached.round(),
            "raw_insert_cmd_per_s": r.raw_insert.round(),
            "raw_insert_autocommit_cmd_per_s": r.raw_insert_auto.round(),
            "raw_load_insert_cmd_per_s": r.raw_load_insert.round(),
            "ratio_vs_raw_insert": r3(r.lib / r.raw_insert),
            "ratio_vs_raw_insert_autocommit": r3(r.lib / r.raw_insert_auto),
            "ratio_vs_raw_load_insert": r3(r.lib / r.raw_load_insert),
            "cached_ratio_vs_raw_insert": r3(r.lib_cached / r.raw_insert),
            "cached_ratio_vs_raw_insert_autocommit": r3(r.lib_cached / r.raw_insert_auto),
            "cached_ratio_vs_raw_load_insert": r3(r.lib_cached / r.raw_load_insert),
            "events_per_stream_at_end": {
                "raw_insert": r.stream_len[0].round(),
                "raw_insert_autocommit": r.stream_len[1].round(),
                "raw_load_insert": r.stream_len[2].round(),
                "library": r.stream_len[3].round(),
                "library_cached": r.stream_len[4].round(),
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
            "ratio": r3(r.lib / r.raw),
        })).collect::<Vec<_>>(),
        "global_log": log.as_ref().map(global_log::LogResults::json),
        "relay": relay.as_ref().map(relay::RelayResults::json),
        "projections": projections.as_ref().map(projections::ProjectionResults::json),
        "sagas": sagas.as_ref().map(sagas::SagaResults::json),
        "consumer": consumer.as_ref().map(consumer::ConsumerResults::json),
        "peers": peers.as_ref().map(peers::PeerResults::json),
        "sqlite": sqlite.as_ref().map(sqlite::SqliteResults::json),
        "elapsed_s_at_report": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    println!("\nBENCH_JSON {json}");
    Ok(())
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
