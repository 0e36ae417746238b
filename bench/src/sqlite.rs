//! The embedded default measured (`--only sqlite`): eventfold's `SqliteStore` on a temporary
//! file (what `SqliteStore::connect` opens: WAL, `synchronous = NORMAL`, a pool of 8), each
//! case beside raw sqlx doing the same writes and reads on the same file, in the same run:
//!
//! * **commands**, 1 event each, 1 and 8 callers (and 8 with write coalescing on), each cycling
//!   over its own [`AGGREGATES_PER_CALLER`] aggregates: `Repository::<Counter, SqliteStore>::execute` against
//!   raw `SELECT` of the stream (the columns the library reads), a fold of the payloads, and
//!   `BEGIN IMMEDIATE; INSERT` the next version`; COMMIT` into `raw_events` (the events table's
//!   DDL under another name);
//! * **commands with the state cache**, 1 caller: `Repository::with_cache(..).execute` (the
//!   append alone) against one autocommit `INSERT` of the next version, which the raw caller
//!   tracks itself;
//! * **appends of 100 events** to fresh streams, 1 caller: `EventStore::append(..,
//!   ExpectedVersion::Exact(0), 100 events)` against `BEGIN IMMEDIATE;` 100 prepared
//!   `INSERT`s`; COMMIT`;
//! * **catch-up**: the whole log (topped up to [`LOG_EVENTS`] events by copying rows in SQL)
//!   read by `read_log` batches of [`READ_BATCH`] against a raw keyset `SELECT` of the same
//!   columns decoded into the same `RecordedEvent`s;
//! * **relay to the in-process broker**: [`RELAY_ROWS`] outbox rows (10,000 keys round robin)
//!   drained by `Relay::run` (default `RelayConfig`) into an `InProcessBroker`, against a raw
//!   loop of `SELECT` 500 rows by `seq`, `publish` to the same kind of broker, `DELETE` them.
//!
//! Throughput cases alternate (raw, library, then library, raw) over two rounds of half of
//! `--seconds` each; the reads and drains run twice each, alternated.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use eventfold_core::{Aggregate, CommandMetadata, NewEvent, OutboxMessage, StreamId};
use eventfold_eventstore::Coalescing;
use eventfold_eventstore::sqlite::SqliteStore;
use eventfold_eventstore::{
    Checkpoint, EventStore, ExpectedVersion, LogFilter, OUTBOX_SLOTS, OutboxRouting, OutboxStore,
    Repository,
};
use eventfold_outbox::{Delivery, Headers, InProcessBroker, PublishError, Publisher, Relay};
use sqlx::SqlitePool;
use sqlx::sqlite::SqlitePoolOptions;
use uuid::Uuid;

use crate::sqlite_file;
use crate::timed::{self, Timed};
use crate::{
    BATCH, BoxError, Counter, CounterEvent, Increment, Options, RawRow, Result, WARMUP, r3,
    raw_fold,
};

/// Callers of the command cases.
/// The command cases: callers, and whether the library's store coalesces concurrent appends
/// into shared transactions (`SqliteStore::with_coalescing`, ADR 0024).
const COMMAND_CASES: [(usize, bool); 3] = [(1, false), (8, false), (8, true)];
/// Aggregates of each caller in the command cases.
const AGGREGATES_PER_CALLER: usize = 50;
/// Events in the log for the catch-up read (topped up to this).
const LOG_EVENTS: i64 = 200_000;
/// Events per `read_log` call / raw page.
const READ_BATCH: usize = 1000;
/// Outbox rows per drain.
const RELAY_ROWS: usize = 50_000;
/// Keys of the outbox rows (round robin).
const RELAY_KEYS: usize = 10_000;
/// Rows per raw relay round (the relay's default batch size).
const RAW_RELAY_BATCH: i64 = 500;

/// The events table's DDL (migration 0001) under the name `raw_events`.
const RAW_TABLE: &str = "\
CREATE TABLE raw_events (
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id BLOB NOT NULL,
    stream_type TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    stream_version INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload BLOB NOT NULL,
    recorded_at TEXT NOT NULL,
    source TEXT NOT NULL,
    correlation_id BLOB NOT NULL,
    causation_id BLOB,
    tenant_id TEXT,
    headers TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX raw_events_event_id_uq ON raw_events (event_id);
CREATE UNIQUE INDEX raw_events_stream_version_uq ON raw_events (stream_type, stream_id, stream_version);";

const RAW_INSERT: &str = "INSERT INTO raw_events (event_id, stream_type, stream_id, stream_version, \
     event_type, schema_version, payload, recorded_at, source, correlation_id, causation_id, tenant_id, \
     headers) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

/// The columns and order of the library's stream read.
const RAW_LOAD: &str = "SELECT event_id, stream_version, global_position, event_type, schema_version, \
     payload, recorded_at, source, correlation_id, causation_id, tenant_id, headers \
     FROM raw_events WHERE stream_type = ?1 AND stream_id = ?2 ORDER BY stream_version";

/// The columns of the library's log read, keyset-paginated.
const RAW_LOG: &str = "SELECT 0, stream_type, stream_id, event_id, stream_version, global_position, \
     event_type, schema_version, payload, recorded_at, source, correlation_id, causation_id, tenant_id, \
     headers FROM eventfold_events WHERE global_position > ?1 ORDER BY global_position LIMIT ?2";

/// Copies the first event of the log into `?1` rows of 100-event streams.
const TOP_UP: &str = "INSERT INTO eventfold_events (event_id, stream_type, stream_id, stream_version, \
     event_type, schema_version, payload, recorded_at, source, correlation_id, causation_id, tenant_id, headers) \
     SELECT randomblob(16), t.stream_type, 'fill-' || (s.x / 100), (s.x % 100) + 1, t.event_type, \
     t.schema_version, t.payload, t.recorded_at, t.source, t.correlation_id, t.causation_id, t.tenant_id, t.headers \
     FROM (WITH RECURSIVE s(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM s WHERE x + 1 < ?1) SELECT x FROM s) s, \
     (SELECT * FROM eventfold_events ORDER BY global_position LIMIT 1) t";

const OUTBOX_INSERT: &str = "INSERT INTO eventfold_outbox (id, aggregatetype, aggregateid, type, payload, \
     topic, key, headers, slot, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

const RAW_CLAIM: &str = "SELECT seq, id, aggregatetype, aggregateid, type, payload, topic, key, headers \
     FROM eventfold_outbox ORDER BY seq LIMIT ?1";

const RAW_DELETE: &str =
    "DELETE FROM eventfold_outbox WHERE seq IN (SELECT value FROM json_each(?1))";

/// One case: library and raw figures.
pub(crate) struct SqliteRow {
    case: String,
    unit: &'static str,
    lib: Timed,
    raw: Timed,
}

/// What the scenario measured.
pub(crate) struct SqliteResults {
    rows: Vec<SqliteRow>,
    seconds: f64,
    log_events: u64,
}

pub(crate) async fn run(options: &Options) -> Result<SqliteResults> {
    sqlite_file::with_temp_file("sqlite", |path| async move {
        // `SqliteStore::connect`'s settings, with the pool kept for the raw side.
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(sqlite_file::store_connect_options(&path)?)
            .await?;
        let store = SqliteStore::builder(pool.clone()).build().await?;
        sqlx::raw_sql(RAW_TABLE).execute(&pool).await?;
        let measured = measure(&pool, &store, options).await;
        pool.close().await;
        measured
    })
    .await
}

async fn measure(
    pool: &SqlitePool,
    store: &SqliteStore,
    options: &Options,
) -> Result<SqliteResults> {
    let half = Duration::from_secs_f64(options.seconds / 2.0);
    let plain = Arc::new(Repository::<Counter, _>::new(store.clone()));
    let coalesced = Arc::new(Repository::<Counter, _>::new(
        store.clone().with_coalescing(Coalescing::default()),
    ));
    let mut rows = Vec::new();

    for (callers, coalescing) in COMMAND_CASES {
        let how = if coalescing { ", coalesced" } else { "" };
        eprintln!("sqlite: commands, {callers} caller(s){how}");
        let repo = if coalescing { &coalesced } else { &plain };
        // The aggregate of a caller's `n`-th command: its own, cycling over
        // `AGGREGATES_PER_CALLER`, per variant and case.
        let aggregate = move |variant: &str, caller: usize, n: u64| {
            format!(
                "{variant}-c{callers}{how}-{caller}-{}",
                n % AGGREGATES_PER_CALLER as u64
            )
        };
        let row = alternated(
            format!("command, 1 event, {callers} caller(s){how}"),
            "commands/s",
            Timed::ops_per_s,
            |_, library| {
                let (repo, pool) = (repo.clone(), pool.clone());
                async move {
                    if library {
                        timed::run(callers, WARMUP, half, move |caller, n| {
                            let repo = repo.clone();
                            let id = aggregate("lib", caller, n);
                            async move {
                                repo.execute(&id, &Increment, CommandMetadata::new())
                                    .await?;
                                Ok(1)
                            }
                        })
                        .await
                    } else {
                        timed::run(callers, WARMUP, half, move |caller, n| {
                            let pool = pool.clone();
                            let id = aggregate("raw", caller, n);
                            async move {
                                raw_command(&pool, &id).await?;
                                Ok(1)
                            }
                        })
                        .await
                    }
                }
            },
        )
        .await?;
        rows.push(row);
    }

    // One caller with the state cache: a command is the append alone (one statement on
    // SQLite), against raw sqlx's one autocommit `INSERT` of the next version, which the raw
    // caller tracks itself (no read, no check).
    eprintln!("sqlite: commands, 1 caller, state cache");
    let cached = Arc::new(
        Repository::<Counter, _>::new(store.clone()).with_cache(AGGREGATES_PER_CALLER * 2),
    );
    let row = alternated(
        "command, 1 event, 1 caller, state cache".to_owned(),
        "commands/s",
        Timed::ops_per_s,
        |round, library| {
            let (repo, pool) = (cached.clone(), pool.clone());
            async move {
                timed::run(1, WARMUP, half, move |_, n| {
                    let (repo, pool) = (repo.clone(), pool.clone());
                    let slot = n % AGGREGATES_PER_CALLER as u64;
                    async move {
                        if library {
                            let id = format!("cached-lib-{slot}");
                            repo.execute(&id, &Increment, CommandMetadata::new())
                                .await?;
                        } else {
                            // Each round's own aggregates, whose n-th command is version
                            // n / AGGREGATES_PER_CALLER + 1.
                            let id = format!("cached-raw-{round}-{slot}");
                            let version = n / AGGREGATES_PER_CALLER as u64 + 1;
                            let event = NewEvent::encode(
                                &CounterEvent::Incremented { n: 1 },
                                "eventfold",
                                &CommandMetadata::new(),
                            )?;
                            let mut conn = pool.acquire().await?;
                            insert(&mut conn, &id, version as i64, &event).await?;
                        }
                        Ok(1)
                    }
                })
                .await
            }
        },
    )
    .await?;
    rows.push(row);

    eprintln!("sqlite: appends of {BATCH} events");
    let row = alternated(
        format!("append of {BATCH} events, 1 caller"),
        "events/s",
        Timed::units_per_s,
        |round, library| {
            let (store, pool) = (store.clone(), pool.clone());
            async move {
                if library {
                    timed::run(1, WARMUP, half, move |_, n| {
                        let store = store.clone();
                        async move {
                            let stream = StreamId::new(Counter::TYPE, format!("lba-{round}-{n}"))?;
                            let events = crate::batch(store.source())?;
                            store
                                .append(&stream, ExpectedVersion::Exact(0), events)
                                .await?;
                            Ok(BATCH as u64)
                        }
                    })
                    .await
                } else {
                    let source = store.source().to_owned();
                    timed::run(1, WARMUP, half, move |_, n| {
                        let pool = pool.clone();
                        let source = source.clone();
                        async move {
                            let events = crate::batch(&source)?;
                            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                            let stream = format!("rba-{round}-{n}");
                            for (i, event) in events.iter().enumerate() {
                                insert(&mut tx, &stream, i as i64 + 1, event).await?;
                            }
                            tx.commit().await?;
                            Ok(BATCH as u64)
                        }
                    })
                    .await
                }
            }
        },
    )
    .await?;
    rows.push(row);

    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM eventfold_events")
        .fetch_one(pool)
        .await?;
    if count < LOG_EVENTS {
        sqlx::query(TOP_UP)
            .bind(LOG_EVENTS - count)
            .execute(pool)
            .await?;
    }
    let (count, sum): (i64, i64) =
        sqlx::query_as("SELECT count(*), COALESCE(sum(global_position), 0) FROM eventfold_events")
            .fetch_one(pool)
            .await?;
    let log_events = u64::try_from(count)?;
    eprintln!("sqlite: catch-up read of {log_events} events");
    let row = alternated(
        format!("catch-up read of {log_events} events, batches of {READ_BATCH}"),
        "events/s",
        Timed::units_per_s,
        |_, library| async move {
            // The sum of the positions read, to check that every event was read once.
            let seen = Arc::new(AtomicU64::new(0));
            let read = seen.clone();
            let timed = if library {
                timed::once(async move {
                    let filter = LogFilter::all();
                    let mut checkpoint = Checkpoint::START;
                    let mut events = 0u64;
                    loop {
                        let got = store.read_log(checkpoint, READ_BATCH, &filter).await?;
                        for e in &got.events {
                            events += 1;
                            seen.fetch_add(e.event.global_position, Ordering::Relaxed);
                        }
                        checkpoint = got.checkpoint;
                        if got.reached_end {
                            break;
                        }
                    }
                    Ok(events)
                })
                .await?
            } else {
                timed::once(async move {
                    let mut after = 0i64;
                    let mut events = 0u64;
                    loop {
                        let rows: Vec<crate::global_log::RawLogRow> = sqlx::query_as(RAW_LOG)
                            .bind(after)
                            .bind(READ_BATCH as i64)
                            .fetch_all(pool)
                            .await?;
                        let n = rows.len();
                        for row in rows {
                            let e = crate::global_log::recorded(row)?;
                            events += 1;
                            seen.fetch_add(e.global_position, Ordering::Relaxed);
                            after = i64::try_from(e.global_position)?;
                        }
                        if n < READ_BATCH {
                            break;
                        }
                    }
                    Ok(events)
                })
                .await?
            };
            let seen_sum = read.load(Ordering::Relaxed);
            let units = timed.units;
            let wrong = units != log_events || seen_sum != u64::try_from(sum)?;
            let problem = wrong.then(|| {
                format!(
                    "read {units} events (position sum {seen_sum}), the log holds {log_events} (sum {sum})"
                )
            });
            checked(library, timed, problem)
        },
    )
    .await?;
    rows.push(row);

    eprintln!("sqlite: relay of {RELAY_ROWS} outbox rows to the in-process broker");
    let relay_store = SqliteStore::builder(pool.clone())
        .outbox(OutboxRouting::new())
        .build()
        .await?;
    let relay_store = &relay_store;
    let row = alternated(
        format!("relay of {RELAY_ROWS} outbox rows to the in-process broker"),
        "messages/s",
        Timed::units_per_s,
        |round, library| async move {
            fill_outbox(pool, round).await?;
            let broker = InProcessBroker::new();
            let timed = if library {
                drain_library(relay_store, broker).await?
            } else {
                drain_raw(pool, broker).await?
            };
            let pending = relay_store.outbox_status().await?.pending;
            let units = timed.units;
            let wrong = pending != 0 || units != RELAY_ROWS as u64;
            let problem =
                wrong.then(|| format!("published {units} of {RELAY_ROWS} rows, {pending} left"));
            checked(library, timed, problem)
        },
    )
    .await?;
    rows.push(row);

    Ok(SqliteResults {
        rows,
        seconds: options.seconds,
        log_events,
    })
}

/// `library` or `raw`: the variant a measurement ran.
fn variant(library: bool) -> &'static str {
    if library { "library" } else { "raw" }
}

/// `timed`, or the error of the variant (`library` or raw) whose run went wrong: `problem` says
/// what it did.
fn checked(library: bool, timed: Timed, problem: Option<String>) -> Result<Timed> {
    match problem {
        Some(problem) => Err(format!("{} {problem}", variant(library)).into()),
        None => Ok(timed),
    }
}

/// Measures the library and the raw baseline twice each, alternated (raw then library, then
/// library then raw, so that neither always runs second), with `measure(round, library)`;
/// prints each round's `rate` in `unit` and returns the figures as the row of `case`.
async fn alternated<F, Fut>(
    case: String,
    unit: &'static str,
    rate: fn(&Timed) -> f64,
    mut measure: F,
) -> Result<SqliteRow>
where
    F: FnMut(usize, bool) -> Fut,
    Fut: std::future::Future<Output = Result<Timed>>,
{
    let (mut lib, mut raw) = (Timed::default(), Timed::default());
    for round in 0..2 {
        for library in if round == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let timed = measure(round, library).await?;
            eprintln!(
                "  round {} {}: {:.0} {unit}",
                round + 1,
                variant(library),
                rate(&timed)
            );
            if library {
                lib.add(timed)
            } else {
                raw.add(timed)
            }
        }
    }
    Ok(SqliteRow {
        case,
        unit,
        lib: lib.sorted(),
        raw: raw.sorted(),
    })
}

async fn insert(
    conn: &mut sqlx::SqliteConnection,
    stream: &str,
    version: i64,
    event: &NewEvent,
) -> Result<()> {
    crate::raw::bind_event_row!(sqlx::query(RAW_INSERT), stream, version, event)
        .execute(conn)
        .await?;
    Ok(())
}

/// Read the stream, fold it, insert the next version in a write transaction.
async fn raw_command(pool: &SqlitePool, id: &str) -> Result<()> {
    let rows: Vec<RawRow> = sqlx::query_as(RAW_LOAD)
        .bind(Counter::TYPE)
        .bind(id)
        .fetch_all(pool)
        .await?;
    let version = raw_fold(id, &rows)?;
    let event = NewEvent::encode(
        &CounterEvent::Incremented { n: 1 },
        "eventfold",
        &CommandMetadata::new(),
    )?;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    insert(&mut tx, id, version + 1, &event).await?;
    tx.commit().await?;
    Ok(())
}

/// Writes [`RELAY_ROWS`] outbox rows in one transaction.
async fn fill_outbox(pool: &SqlitePool, round: usize) -> Result<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let now = eventfold_core::metadata::now_micros();
    let payload = vec![b'x'; 100];
    for i in 0..RELAY_ROWS {
        let key = format!("r{round}-k{}", i % RELAY_KEYS);
        sqlx::query(OUTBOX_INSERT)
            .bind(Uuid::now_v7())
            .bind("counter")
            .bind(&key)
            .bind("counter.incremented")
            .bind(&payload)
            .bind("eventfold.bench.sqlite")
            .bind(&key)
            .bind("{}")
            .bind(OutboxMessage::slot_of(&key, OUTBOX_SLOTS) as i32)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Counts acknowledged messages and says when `target` were.
#[derive(Clone)]
struct Counting {
    inner: InProcessBroker,
    delivered: Arc<AtomicU64>,
    target: u64,
    done: Arc<tokio::sync::Notify>,
}

impl Publisher for Counting {
    async fn publish(&self, messages: &[OutboxMessage]) -> Vec<Result<Delivery, PublishError>> {
        let results = self.inner.publish(messages).await;
        let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
        if self.delivered.fetch_add(ok, Ordering::Relaxed) + ok >= self.target {
            self.done.notify_one();
        }
        results
    }
}

/// `Relay::run` until every row was acknowledged.
async fn drain_library(store: &SqliteStore, broker: InProcessBroker) -> Result<Timed> {
    let counting = Counting {
        inner: broker,
        delivered: Arc::default(),
        target: RELAY_ROWS as u64,
        done: Arc::default(),
    };
    let delivered = counting.delivered.clone();
    let done = counting.done.clone();
    let relay = Relay::new(store.clone(), counting);
    let mut timed = timed::once(async move {
        tokio::time::timeout(
            Duration::from_secs(300),
            relay.run(async move { done.notified().await }),
        )
        .await
        .map_err(|_| "relay drain did not finish in 300 s")??;
        Ok(delivered.load(Ordering::Relaxed))
    })
    .await?;
    timed.units = timed.units.min(RELAY_ROWS as u64);
    Ok(timed)
}

type ClaimRow = (
    i64,
    Uuid,
    String,
    String,
    String,
    Vec<u8>,
    String,
    String,
    String,
);

/// `SELECT` a batch by `seq`, publish it, `DELETE` it, until the outbox is empty.
async fn drain_raw(pool: &SqlitePool, broker: InProcessBroker) -> Result<Timed> {
    timed::once(async move {
        let mut published = 0u64;
        loop {
            let rows: Vec<ClaimRow> = sqlx::query_as(RAW_CLAIM)
                .bind(RAW_RELAY_BATCH)
                .fetch_all(pool)
                .await?;
            if rows.is_empty() {
                break;
            }
            let mut seqs = Vec::with_capacity(rows.len());
            let mut messages = Vec::with_capacity(rows.len());
            for (
                seq,
                id,
                aggregate_type,
                aggregate_id,
                message_type,
                payload,
                topic,
                key,
                headers,
            ) in rows
            {
                seqs.push(seq);
                messages.push(OutboxMessage {
                    id,
                    topic,
                    key,
                    aggregate_type,
                    aggregate_id,
                    message_type,
                    payload,
                    headers: serde_json::from_str::<Headers>(&headers)?,
                });
            }
            for result in broker.publish(&messages).await {
                result.map_err(|e| -> BoxError { format!("raw publish: {e}").into() })?;
            }
            published += messages.len() as u64;
            sqlx::query(RAW_DELETE)
                .bind(serde_json::to_string(&seqs)?)
                .execute(pool)
                .await?;
        }
        Ok(published)
    })
    .await
}

impl crate::report::Section for SqliteResults {
    fn print(&self) {
        println!("### SQLite (the embedded default): eventfold beside raw sqlx on the same file\n");
        println!(
            "| case | unit | eventfold | raw sqlx | eventfold / raw | eventfold p50 | p99 | raw p50 | p99 |"
        );
        println!("|:--|:--|---:|---:|---:|---:|---:|---:|---:|");
        for row in &self.rows {
            let (lib, raw) = (row.lib.units_per_s(), row.raw.units_per_s());
            let latency = |t: &Timed| {
                if t.ops > 2 {
                    (
                        format!("{:.2} ms", t.percentile_ms(0.5)),
                        format!("{:.2} ms", t.percentile_ms(0.99)),
                    )
                } else {
                    (String::new(), String::new())
                }
            };
            let (lp50, lp99) = latency(&row.lib);
            let (rp50, rp99) = latency(&row.raw);
            println!(
                "| {} | {} | {lib:.0} | {raw:.0} | **{:.2}** | {lp50} | {lp99} | {rp50} | {rp99} |",
                row.case,
                row.unit,
                lib / raw
            );
        }
        println!();
        println!(
            "* a temporary file, WAL, synchronous = NORMAL, one pool of 8 connections for both sides; commands and"
        );
        println!(
            "  appends: {} s per side, two rounds (raw, library; library, raw), each after a {} s warm-up;",
            self.seconds,
            WARMUP.as_secs_f64()
        );
        println!("  the read and the drain: twice per side, alternated, summed.");
        println!(
            "* command: library `Repository::<Counter, SqliteStore>::execute` (read the stream, `handle`, append in"
        );
        println!(
            "  `BEGIN IMMEDIATE` with the version check and a savepoint); raw: `SELECT` the stream, fold, `BEGIN IMMEDIATE;"
        );
        println!(
            "  INSERT; COMMIT`. Each caller cycles over its own {AGGREGATES_PER_CALLER} aggregates."
        );
        println!(
            "* command with the state cache: `Repository::with_cache(..).execute` (the append alone: one statement that"
        );
        println!(
            "  checks the version and inserts); raw: one autocommit `INSERT` of the version the caller tracks (no check)."
        );
        println!(
            "* append: `store.append(fresh stream, Exact(0), 100 events)` against `BEGIN IMMEDIATE;` 100 `INSERT`s `; COMMIT`."
        );
        println!(
            "* catch-up: {} events, `read_log` batches of {READ_BATCH} against a keyset `SELECT` decoded into `RecordedEvent`s.",
            self.log_events
        );
        println!(
            "* relay: `Relay::run` (default `RelayConfig`) + `InProcessBroker`, {RELAY_KEYS} keys; raw: `SELECT` {RAW_RELAY_BATCH}"
        );
        println!(
            "  rows by `seq`, `publish`, `DELETE` them, until empty (no leases, no per-key order checks)."
        );
        println!();
    }
}

impl SqliteResults {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!(
            self.rows
                .iter()
                .map(|row| serde_json::json!({
                    "case": row.case,
                    "unit": row.unit,
                    "library": row.lib.units_per_s().round(),
                    "raw": row.raw.units_per_s().round(),
                    "ratio": r3(row.lib.units_per_s() / row.raw.units_per_s()),
                }))
                .collect::<Vec<_>>()
        )
    }
}
