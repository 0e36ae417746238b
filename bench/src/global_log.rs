//! The global-log section: writer throughput with and without the never-skip mechanism,
//! catch-up read rate, and commit-to-reader latency of a live `Subscription`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use eventfold_core::{CommandMetadata, Headers, RecordedEvent, StreamId};
use eventfold_eventstore::postgres::PgStore;
use eventfold_eventstore::{Checkpoint, EventStore, LogFilter};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    BoxError, CONCURRENCY, Case, CpuRow, Increment, Monitor, Options, Result, Shared, TARGET_RATIO,
    compare, r3, timed, verdict,
};

/// Catch-up target of the issue: events/s into a no-op consumer.
const CATCH_UP_TARGET: f64 = 150_000.0;
/// Latency target of the issue: p99 commit-to-reader latency at 1000 events/s.
const LATENCY_TARGET_MS: f64 = 50.0;
/// Batch sizes of the catch-up reads.
const CATCH_UP_BATCHES: [usize; 2] = [1000, 5000];
/// Full reads per variant and batch size (alternated raw, library, library, raw).
const CATCH_UP_ROUNDS: usize = 2;
/// Streams of the filled log.
const FILL_STREAMS: i64 = 1000;
/// Writer tasks of the latency test.
const LATENCY_WRITERS: usize = 4;
/// Offered load of the latency test, all writers together (events/s).
const LATENCY_RATE: f64 = 1000.0;
/// Streams each latency writer cycles over.
const LATENCY_STREAMS_PER_WRITER: usize = 25;
/// How long to wait for the subscriber after the last append before calling events missing.
const LATENCY_DRAIN: Duration = Duration::from_secs(10);
/// `read_log` calls timed at the end of the idle log after the latency test.
const IDLE_READS: usize = 50;
/// How long to keep listening for duplicates once every event was seen.
const LATENCY_GRACE: Duration = Duration::from_millis(300);

/// Writes `$1` events over `$2` streams into `table` in one statement, with one commit key
/// (this transaction's id), as one big append would. Payloads are `{n, order, amount_cents,
/// currency}` (the projection section decodes them).
pub(crate) fn fill_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (event_id, stream_type, stream_id, stream_version, \
         event_type, schema_version, payload, recorded_at, source, correlation_id, causation_id, tenant_id, \
         headers, commit_key) \
         SELECT gen_random_uuid(), 'fill', 'fill-' || (i % $2), i / $2 + 1, 'fill.recorded', 1, \
           convert_to(format('{{\"n\":%s,\"order\":\"o-%s\",\"amount_cents\":%s,\"currency\":\"EUR\"}}', \
             i, i % $2, (i * 7919) % 100000), 'UTF8'), \
           now(), 'bench-fill', gen_random_uuid(), NULL, NULL, '{{}}'::jsonb, pg_current_xact_id()::text::int8 \
         FROM generate_series(0::int8, $1 - 1) AS i"
    )
}

/// Waits until every event of the log is below the readable horizon (a transaction of another
/// client of the server could hold it back).
pub(crate) async fn wait_readable(store: &PgStore) -> Result<()> {
    let waited = Instant::now();
    loop {
        let head = store.log_head().await?;
        if head.readable_position == head.position {
            return Ok(());
        }
        if waited.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "the log head stays held back ({} of {} readable, blocked by {:?})",
                head.readable_position, head.position, head.blocked_by
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The columns the library's `read_log` selects, in its order, keyset-paginated by position.
const RAW_LOG_SQL: &str = "SELECT commit_key, stream_type, stream_id, event_id, stream_version, \
     global_position, event_type, schema_version, payload, recorded_at, source, correlation_id, \
     causation_id, tenant_id, headers::text FROM eventfold_events \
     WHERE global_position > $1 ORDER BY global_position LIMIT $2";

pub(crate) type RawLogRow = (
    i64,
    String,
    String,
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

/// Decodes a row into the library's type, with the checks the library makes.
pub(crate) fn recorded(row: RawLogRow) -> Result<RecordedEvent> {
    let (
        _key,
        stream_type,
        id,
        event_id,
        version,
        position,
        event_type,
        schema_version,
        payload,
        timestamp,
        source,
        correlation_id,
        causation_id,
        tenant_id,
        headers,
    ) = row;
    let headers: Headers = serde_json::from_str(&headers)?;
    Ok(RecordedEvent {
        event_id,
        event_type,
        schema_version: u32::try_from(schema_version)?,
        stream_id: StreamId::new(stream_type, id)?,
        stream_version: u64::try_from(version)?,
        global_position: u64::try_from(position)?,
        timestamp,
        source,
        correlation_id,
        causation_id,
        tenant_id,
        headers,
        payload,
    })
}

/// The resident set size of this process (KiB), from `/proc/self/status`.
pub(crate) fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Results.

struct WriterRow {
    writers: usize,
    plain: f64,
    keyed: f64,
    lib: f64,
}

/// One or more full reads of the log.
#[derive(Debug, Default, Clone, Copy)]
struct Read {
    events: u64,
    position_sum: u128,
    batches: u64,
    seconds: f64,
    rss_before: Option<u64>,
    rss_max: Option<u64>,
    rss_after: Option<u64>,
}

impl Read {
    /// An empty read, with the resident set size before it.
    fn starting() -> Self {
        let rss_before = rss_kib();
        Read {
            rss_before,
            rss_max: rss_before,
            ..Read::default()
        }
    }

    fn add(&mut self, other: Read) {
        self.events += other.events;
        self.position_sum += other.position_sum;
        self.batches += other.batches;
        self.seconds += other.seconds;
        self.rss_before = self.rss_before.or(other.rss_before);
        self.rss_max = self.rss_max.max(other.rss_max);
        self.rss_after = other.rss_after;
    }
    fn rate(&self) -> f64 {
        self.events as f64 / self.seconds
    }
    fn rss(&self) -> String {
        let mib = |k: Option<u64>| {
            k.map_or_else(|| "n/a".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0))
        };
        format!(
            "{} → {} → {}",
            mib(self.rss_before),
            mib(self.rss_max),
            mib(self.rss_after)
        )
    }
    fn rss_json(&self) -> serde_json::Value {
        serde_json::json!({
            "before": self.rss_before,
            "max": self.rss_max,
            "after": self.rss_after,
        })
    }
}

struct CatchUpRow {
    batch: usize,
    lib: Read,
    raw: Read,
}

struct CatchUp {
    filled: u64,
    fill_seconds: f64,
    vacuum_seconds: f64,
    log_events: u64,
    rows: Vec<CatchUpRow>,
    /// Where the library's last read ended: the end of the log.
    end: Checkpoint,
}

impl CatchUp {
    fn met(&self) -> bool {
        self.rows.iter().all(|r| r.lib.rate() >= CATCH_UP_TARGET)
    }
}

#[derive(Default)]
struct Latency {
    seconds: f64,
    appended: usize,
    received: usize,
    duplicates: usize,
    missing: usize,
    unexpected: usize,
    out_of_order: usize,
    subscriber_error: Option<String>,
    /// Milliseconds, sorted.
    samples: Vec<f64>,
    /// Durations of `read_log` calls at the end of the idle log (ms, sorted).
    idle_reads: Vec<f64>,
}

impl Latency {
    fn exactly_once(&self) -> bool {
        self.duplicates == 0
            && self.missing == 0
            && self.unexpected == 0
            && self.out_of_order == 0
            && self.subscriber_error.is_none()
            && self.appended > 0
    }
    /// Nearest-rank percentile of the latencies (ms).
    fn pct(&self, p: f64) -> f64 {
        percentile(&self.samples, p)
    }
    fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / self.samples.len() as f64
    }
    fn over(&self, ms: f64) -> usize {
        self.samples.iter().filter(|s| **s > ms).count()
    }
    fn met(&self) -> bool {
        self.pct(0.99) <= LATENCY_TARGET_MS
    }
}

/// What the global-log section measured.
pub(crate) struct LogResults {
    writers: Vec<WriterRow>,
    catch_up: CatchUp,
    latency: Latency,
}

impl LogResults {
    fn writers_met(&self) -> bool {
        self.writers
            .iter()
            .all(|r| r.keyed / r.plain >= TARGET_RATIO)
    }

    /// Fails unless the subscriber saw every appended event exactly once, in stream order.
    pub(crate) fn check(&self) -> Result<()> {
        let l = &self.latency;
        if l.exactly_once() {
            return Ok(());
        }
        Err(format!(
            "global log: the subscriber did not see every appended event exactly once: appended {}, \
             received {}, duplicates {}, missing {}, unexpected {}, out of stream order {}, error: {}",
            l.appended,
            l.received,
            l.duplicates,
            l.missing,
            l.unexpected,
            l.out_of_order,
            l.subscriber_error.as_deref().unwrap_or("none")
        )
        .into())
    }
}

impl crate::report::Section for LogResults {
    fn print(&self) {
        println!(
            "### Global log: writer throughput with and without the never-skip mechanism (events/s)\n"
        );
        println!(
            "| writers | without: version-checked `INSERT` (`raw_plain`) | with: keyed `INSERT` (`raw_keyed`) | with / without | target ≥ {TARGET_RATIO:.2} | library `store.append` (Exact) | library / without |"
        );
        println!("|---:|---:|---:|---:|:--|---:|---:|");
        for r in &self.writers {
            let ratio = r.keyed / r.plain;
            println!(
                "| {} | {:.0} | {:.0} | {ratio:.2} | {} | {:.0} | {:.2} |",
                r.writers,
                r.plain,
                r.keyed,
                verdict(ratio),
                r.lib,
                r.lib / r.plain
            );
        }
        println!();
        println!(
            "* one event per autocommit statement; each writer cycles over its own 50 streams, versions"
        );
        println!(
            "  tracked by the client; variants alternated (A B C, C B A) in the same run, as above."
        );
        println!(
            "* both raw statements check the expected version in the statement, as every event store"
        );
        println!(
            "  append must; they differ only by the mechanism. without: `WITH cur AS (SELECT MAX(stream_version)"
        );
        println!(
            "  ...) INSERT INTO raw_plain ... WHERE cur.v = expected`, commit_key 0; `raw_plain` is `LIKE"
        );
        println!(
            "  eventfold_events INCLUDING ALL` with the `(commit_key, global_position)` index dropped."
        );
        println!(
            "* with: `WITH last AS (SELECT stream_version, commit_key ... ORDER BY stream_version DESC LIMIT 1)"
        );
        println!(
            "  INSERT INTO raw_keyed ... SELECT ..., GREATEST(pg_current_xact_id()::text::int8, (SELECT commit_key"
        );
        println!(
            "  FROM last)) WHERE last version = expected`; `raw_keyed` keeps the log index (as the library does)."
        );
        println!(
            "* library: `store.append(&stream, ExpectedVersion::Exact(v), vec![event])` into `eventfold_events`.\n"
        );

        let c = &self.catch_up;
        println!("### Global log: catch-up read into a no-op consumer (events/s)\n");
        println!(
            "| batch | library `read_log` | raw keyset `SELECT` | library / raw | target ≥ {CATCH_UP_TARGET:.0} (library) | RSS MiB before → max → after, library | raw |"
        );
        println!("|---:|---:|---:|---:|:--|:--|:--|");
        for r in &c.rows {
            let rate = r.lib.rate();
            println!(
                "| {} | {:.0} | {:.0} | {:.2} | {} | {} | {} |",
                r.batch,
                rate,
                r.raw.rate(),
                rate / r.raw.rate(),
                if rate >= CATCH_UP_TARGET {
                    "met"
                } else {
                    "**missed**"
                },
                r.lib.rss(),
                r.raw.rss()
            );
        }
        println!();
        println!(
            "* the log held {} events: {} written with one `INSERT ... SELECT FROM generate_series` in {:.1} s \
             ({:.0} events/s; 1000 streams, ~66-byte JSON payloads, one commit key), then `VACUUM (ANALYZE)` \
             ({:.1} s), plus {} from the sections before.",
            c.log_events,
            c.filled,
            c.fill_seconds,
            c.filled as f64 / c.fill_seconds,
            c.vacuum_seconds,
            c.log_events.saturating_sub(c.filled)
        );
        println!(
            "* library: `loop {{ store.read_log(checkpoint, batch, &LogFilter::all()) }}` from `Checkpoint::START`"
        );
        println!(
            "  until `reached_end`; raw: sqlx `SELECT <the same 15 columns> FROM eventfold_events WHERE"
        );
        println!(
            "  global_position > $1 ORDER BY global_position LIMIT $2`, rows decoded into `RecordedEvent`."
        );
        println!(
            "* consumer: counts events and sums their positions (both readers agree on both); {CATCH_UP_ROUNDS} full"
        );
        println!(
            "  reads per cell, alternated raw, library, library, raw; RSS sampled after every batch.\n"
        );

        let l = &self.latency;
        println!("### Global log: commit-to-reader latency of a `Subscription` (ms)\n");
        println!(
            "| offered load | duration | appended | received once | p50 | p90 | p99 | max | target p99 ≤ {LATENCY_TARGET_MS:.0} ms | exactly once, in stream order |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|:--|:--|");
        println!(
            "| {LATENCY_RATE:.0}/s | {:.0} s | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            l.seconds,
            l.appended,
            l.samples.len(),
            l.pct(0.50),
            l.pct(0.90),
            l.pct(0.99),
            l.pct(1.0),
            verdict_ms(l.met()),
            if l.exactly_once() {
                "yes".to_owned()
            } else {
                format!(
                    "**NO**: {} duplicates, {} missing, {} unexpected, {} out of order{}",
                    l.duplicates,
                    l.missing,
                    l.unexpected,
                    l.out_of_order,
                    l.subscriber_error
                        .as_ref()
                        .map_or_else(String::new, |e| format!(", error: {e}"))
                )
            }
        );
        println!();
        println!(
            "* {LATENCY_WRITERS} writer tasks, each a tokio interval at {:.0}/s over its own {LATENCY_STREAMS_PER_WRITER} streams, one",
            LATENCY_RATE / LATENCY_WRITERS as f64
        );
        println!(
            "  cached command (`Repository::with_cache`, one autocommit append) per tick; one subscriber task"
        );
        println!(
            "  `store.subscribe(<end of the log>, LogFilter::all())` started 0.5 s before the writers."
        );
        println!(
            "* latency = `Instant` the subscriber got the event − `Instant` `execute` returned; mean {:.1} ms,",
            l.mean()
        );
        println!(
            "  {} over {LATENCY_TARGET_MS:.0} ms; achieved rate {:.0} events/s.",
            l.over(LATENCY_TARGET_MS),
            l.appended as f64 / l.seconds
        );
        println!(
            "* one `read_log(<end of the log>, 1000, &LogFilter::all())` on the idle log afterwards ({IDLE_READS} calls,"
        );
        println!(
            "  what a live reader pays per wake-up): p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms.\n",
            percentile(&l.idle_reads, 0.5),
            percentile(&l.idle_reads, 0.9),
            percentile(&l.idle_reads, 1.0)
        );
    }

    fn print_targets(&self) {
        let says = |met: bool| if met { "met" } else { "NOT met" };
        let c = &self.catch_up;
        let l = &self.latency;
        println!(
            "Global log targets: writers with/without ≥ {TARGET_RATIO:.2} at every concurrency: {}; \
             catch-up ≥ {CATCH_UP_TARGET:.0} events/s (library, every batch size): {}; \
             p99 commit-to-reader ≤ {LATENCY_TARGET_MS:.0} ms at {LATENCY_RATE:.0} events/s: {} ({:.1} ms); \
             every event exactly once: {}.",
            says(self.writers_met()),
            says(c.met()),
            says(l.met()),
            l.pct(0.99),
            if l.exactly_once() { "yes" } else { "NO" }
        );
    }
}

impl LogResults {
    pub(crate) fn json(&self) -> serde_json::Value {
        let c = &self.catch_up;
        let l = &self.latency;
        let ms = |v: f64| (v * 100.0).round() / 100.0;
        serde_json::json!({
            "writers": self.writers.iter().map(|r| serde_json::json!({
                "writers": r.writers,
                "without_events_per_s": r.plain.round(),
                "with_events_per_s": r.keyed.round(),
                "ratio_with_vs_without": r3(r.keyed / r.plain),
                "library_append_events_per_s": r.lib.round(),
                "library_ratio_vs_without": r3(r.lib / r.plain),
            })).collect::<Vec<_>>(),
            "catch_up": {
                "filled_events": c.filled,
                "fill_s": ms(c.fill_seconds),
                "log_events": c.log_events,
                "rounds": CATCH_UP_ROUNDS,
                "batches": c.rows.iter().map(|r| serde_json::json!({
                    "batch": r.batch,
                    "library_events_per_s": r.lib.rate().round(),
                    "raw_events_per_s": r.raw.rate().round(),
                    "ratio": r3(r.lib.rate() / r.raw.rate()),
                    "library_rss_kib": r.lib.rss_json(),
                    "raw_rss_kib": r.raw.rss_json(),
                })).collect::<Vec<_>>(),
            },
            "latency": {
                "offered_events_per_s": LATENCY_RATE,
                "seconds": l.seconds,
                "appended": l.appended,
                "received_once": l.samples.len(),
                "duplicates": l.duplicates,
                "missing": l.missing,
                "unexpected": l.unexpected,
                "out_of_order": l.out_of_order,
                "p50_ms": ms(l.pct(0.50)),
                "p90_ms": ms(l.pct(0.90)),
                "p99_ms": ms(l.pct(0.99)),
                "max_ms": ms(l.pct(1.0)),
                "mean_ms": ms(l.mean()),
                "idle_read_log_p50_ms": ms(percentile(&l.idle_reads, 0.5)),
                "idle_read_log_max_ms": ms(percentile(&l.idle_reads, 1.0)),
            },
            "targets": {
                "writers_ratio_met": self.writers_met(),
                "catch_up_met": c.met(),
                "latency_p99_met": l.met(),
                "exactly_once": l.exactly_once(),
            },
        })
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn verdict_ms(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

// ---------------------------------------------------------------------------------------------
// The measurements.

/// Runs the three parts of the section.
pub(crate) async fn run(
    shared: &Arc<Shared>,
    options: &Options,
    monitor: &mut Monitor,
    cpu: &mut Vec<CpuRow>,
) -> Result<LogResults> {
    let pool = &shared.pool;
    create_tables(pool).await?;
    let total = Duration::from_secs_f64(options.seconds);
    let mut writers = Vec::new();
    for n in CONCURRENCY {
        eprintln!("global log writers, {n} writer(s):");
        let r = compare(
            shared,
            &[Case::LogPlain, Case::LogKeyed, Case::LogLibAppend],
            n,
            total,
            monitor,
        )
        .await?;
        writers.push(WriterRow {
            writers: n,
            plain: r[0].0.events_per_s(),
            keyed: r[1].0.events_per_s(),
            lib: r[2].0.events_per_s(),
        });
        cpu.push(CpuRow::new("log write: without (raw_plain)", n, &r[0].0));
        cpu.push(CpuRow::new("log write: with (raw_keyed)", n, &r[1].0));
        cpu.push(CpuRow::new("log write: library append", n, &r[2].0));
    }
    let catch_up = catch_up(pool, &shared.store, options.log_events).await?;
    eprintln!(
        "global log latency: {LATENCY_RATE:.0} events/s for {} s",
        options.latency_seconds
    );
    let latency = latency(shared, catch_up.end, options.latency_seconds).await?;
    Ok(LogResults {
        writers,
        catch_up,
        latency,
    })
}

/// `raw_plain` (no log index) and `raw_keyed` (with it), both like `eventfold_events`.
async fn create_tables(pool: &PgPool) -> Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE raw_plain (LIKE eventfold_events INCLUDING ALL); \
         CREATE TABLE raw_keyed (LIKE eventfold_events INCLUDING ALL)",
    )
    .execute(pool)
    .await?;
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT tablename::text, indexname::text FROM pg_indexes \
         WHERE schemaname = current_schema() AND tablename IN ('raw_plain', 'raw_keyed') \
         AND indexdef LIKE '%(commit_key, global_position)'",
    )
    .fetch_all(pool)
    .await?;
    let find = |table: &str| -> Result<String> {
        let names: Vec<&String> = indexes
            .iter()
            .filter(|(t, _)| t == table)
            .map(|(_, i)| i)
            .collect();
        match names.as_slice() {
            [name] => Ok((*name).clone()),
            _ => Err(format!(
                "expected one (commit_key, global_position) index on {table}, found {names:?}"
            )
            .into()),
        }
    };
    find("raw_keyed")?;
    let plain = find("raw_plain")?;
    sqlx::query(&format!("DROP INDEX \"{plain}\""))
        .execute(pool)
        .await?;
    eprintln!("raw_plain: dropped the log index {plain}; raw_keyed keeps its copy");
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Reader {
    Library,
    Raw,
}

async fn catch_up(pool: &PgPool, store: &PgStore, events: u64) -> Result<CatchUp> {
    eprintln!("global log catch-up: writing {events} events");
    let started = Instant::now();
    sqlx::query(&fill_sql("eventfold_events"))
        .bind(i64::try_from(events)?)
        .bind(FILL_STREAMS)
        .execute(pool)
        .await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    sqlx::raw_sql("VACUUM (ANALYZE) eventfold_events")
        .execute(pool)
        .await?;
    let vacuum_seconds = started.elapsed().as_secs_f64();
    wait_readable(store).await?;
    let (count, sum): (i64, String) = sqlx::query_as(
        "SELECT count(*), COALESCE(sum(global_position), 0)::text FROM eventfold_events",
    )
    .fetch_one(pool)
    .await?;
    let log_events = u64::try_from(count)?;
    let position_sum: u128 = sum.parse()?;
    eprintln!(
        "  filled in {fill_seconds:.1} s, vacuumed in {vacuum_seconds:.1} s; the log holds {log_events} events"
    );

    let mut rows = Vec::new();
    let mut end = Checkpoint::START;
    for batch in CATCH_UP_BATCHES {
        let (mut lib, mut raw) = (Read::default(), Read::default());
        for round in 0..CATCH_UP_ROUNDS {
            let order = if round % 2 == 0 {
                [Reader::Raw, Reader::Library]
            } else {
                [Reader::Library, Reader::Raw]
            };
            for reader in order {
                let read = match reader {
                    Reader::Library => {
                        let (read, checkpoint) = read_library(store, batch).await?;
                        end = checkpoint;
                        lib.add(read);
                        read
                    }
                    Reader::Raw => {
                        let read = read_raw(pool, batch).await?;
                        raw.add(read);
                        read
                    }
                };
                eprintln!(
                    "  round {} {reader:?} batch {batch}: {} events in {:.2} s = {:.0} events/s",
                    round + 1,
                    read.events,
                    read.seconds,
                    read.rate()
                );
                if read.events != log_events || read.position_sum != position_sum {
                    return Err(format!(
                        "{reader:?} read {} events (position sum {}), the table holds {log_events} \
                         (position sum {position_sum})",
                        read.events, read.position_sum
                    )
                    .into());
                }
            }
        }
        rows.push(CatchUpRow { batch, lib, raw });
    }
    Ok(CatchUp {
        filled: events,
        fill_seconds,
        vacuum_seconds,
        log_events,
        rows,
        end,
    })
}

/// Reads the whole log with the library into a no-op consumer.
async fn read_library(store: &PgStore, batch: usize) -> Result<(Read, Checkpoint)> {
    let filter = LogFilter::all();
    let mut read = Read::starting();
    let started = Instant::now();
    let mut checkpoint = Checkpoint::START;
    loop {
        let got = store.read_log(checkpoint, batch, &filter).await?;
        for e in &got.events {
            read.events += 1;
            read.position_sum += u128::from(e.event.global_position);
        }
        read.batches += 1;
        read.rss_max = read.rss_max.max(rss_kib());
        checkpoint = got.checkpoint;
        if got.reached_end {
            break;
        }
    }
    read.seconds = started.elapsed().as_secs_f64();
    read.rss_after = rss_kib();
    Ok((read, checkpoint))
}

/// Reads the whole table with keyset pagination on the position, decoding every row.
async fn read_raw(pool: &PgPool, batch: usize) -> Result<Read> {
    let mut read = Read::starting();
    let started = Instant::now();
    let mut after = 0i64;
    let limit = i64::try_from(batch)?;
    loop {
        let rows: Vec<RawLogRow> = sqlx::query_as(RAW_LOG_SQL)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?;
        let n = rows.len();
        let events = rows.into_iter().map(recorded).collect::<Result<Vec<_>>>()?;
        for e in &events {
            read.events += 1;
            read.position_sum += u128::from(e.global_position);
        }
        read.batches += 1;
        read.rss_max = read.rss_max.max(rss_kib());
        if let Some(last) = events.last() {
            after = i64::try_from(last.global_position)?;
        }
        if n < batch {
            break;
        }
    }
    read.seconds = started.elapsed().as_secs_f64();
    read.rss_after = rss_kib();
    Ok(read)
}

/// What the subscriber task reports per event: id, stream id, version, when it was received.
type Received = std::result::Result<(Uuid, String, u64, Instant), String>;

async fn latency(shared: &Arc<Shared>, from: Checkpoint, seconds: f64) -> Result<Latency> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Received>();
    let mut subscription = shared.store.subscribe(from, LogFilter::all());
    let reader = tokio::spawn(async move {
        loop {
            let next = subscription.next().await;
            let at = Instant::now();
            let failed = next.is_err();
            let message = next
                .map(|e| {
                    (
                        e.event.event_id,
                        e.event.stream_id.id().to_owned(),
                        e.event.stream_version,
                        at,
                    )
                })
                .map_err(|e| e.to_string());
            if tx.send(message).is_err() || failed {
                break;
            }
        }
    });
    // Let the subscriber read to the end and start waiting (its wake-up registered).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let start = Instant::now() + Duration::from_millis(10);
    let end = start + Duration::from_secs_f64(seconds);
    let repo = Arc::new(shared.cached.clone());
    let handles = timed::paced(
        LATENCY_WRITERS,
        LATENCY_RATE,
        start,
        end,
        move |w, k, _tick| {
            let repo = repo.clone();
            async move {
                let id = format!("lat-w{w}-a{}", k % LATENCY_STREAMS_PER_WRITER);
                let done = repo
                    .execute(&id, &Increment, CommandMetadata::new())
                    .await?;
                let at = Instant::now();
                Ok(done.events.iter().map(|e| (e.event_id, at)).collect())
            }
        },
    );
    let mut committed: HashMap<Uuid, Instant> = HashMap::new();
    let mut first_error = None;
    for handle in handles {
        match handle.await {
            Ok(Ok(sent)) => committed.extend(sent),
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => first_error = first_error.or(Some(Box::new(e) as BoxError)),
        }
    }
    if let Some(e) = first_error {
        reader.abort();
        return Err(format!("latency writer failed: {e}").into());
    }

    let mut result = Latency {
        seconds,
        appended: committed.len(),
        ..Latency::default()
    };
    let mut seen: HashMap<Uuid, Instant> = HashMap::with_capacity(committed.len());
    let mut versions: HashMap<String, u64> = HashMap::new();
    let deadline = Instant::now() + LATENCY_DRAIN;
    let mut grace: Option<Instant> = None;
    loop {
        let until = grace.unwrap_or(deadline);
        let message = match tokio::time::timeout_at(until.into(), rx.recv()).await {
            Ok(Some(message)) => message,
            Ok(None) | Err(_) => break,
        };
        match message {
            Ok((id, stream, version, at)) => {
                result.received += 1;
                let last = versions.entry(stream).or_insert(0);
                if version != *last + 1 {
                    result.out_of_order += 1;
                }
                *last = (*last).max(version);
                if !committed.contains_key(&id) {
                    result.unexpected += 1;
                } else if let std::collections::hash_map::Entry::Vacant(slot) = seen.entry(id) {
                    slot.insert(at);
                } else {
                    result.duplicates += 1;
                }
                if grace.is_none() && seen.len() == committed.len() {
                    grace = Some(Instant::now() + LATENCY_GRACE);
                }
            }
            Err(e) => {
                result.subscriber_error = Some(e);
                break;
            }
        }
    }
    reader.abort();
    let mut samples = Vec::with_capacity(seen.len());
    for (id, commit) in &committed {
        match seen.get(id) {
            Some(got) => samples.push(match got.checked_duration_since(*commit) {
                Some(d) => d.as_secs_f64() * 1000.0,
                None => -(commit.duration_since(*got).as_secs_f64() * 1000.0),
            }),
            None => result.missing += 1,
        }
    }
    samples.sort_by(f64::total_cmp);
    result.samples = samples;
    result.idle_reads = idle_reads(&shared.store, from).await?;
    eprintln!(
        "  appended {}, received {}, p99 {:.1} ms",
        result.appended,
        result.received,
        result.pct(0.99)
    );
    Ok(result)
}

/// Reads from `from` to the end of the log, then times [`IDLE_READS`] reads there (ms, sorted).
async fn idle_reads(store: &PgStore, from: Checkpoint) -> Result<Vec<f64>> {
    let filter = LogFilter::all();
    let mut checkpoint = from;
    loop {
        let batch = store.read_log(checkpoint, 1000, &filter).await?;
        checkpoint = batch.checkpoint;
        if batch.reached_end {
            break;
        }
    }
    let mut times = Vec::with_capacity(IDLE_READS);
    for _ in 0..IDLE_READS {
        let started = Instant::now();
        let batch = store.read_log(checkpoint, 1000, &filter).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        checkpoint = batch.checkpoint;
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}
