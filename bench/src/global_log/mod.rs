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
    CONCURRENCY, Case, CpuRow, Increment, Monitor, Options, Result, Shared, TARGET_RATIO, compare,
    r3, timed, verdict,
};

mod report;

pub(crate) use report::LogResults;
use report::*;
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

/// A row of [`RAW_LOG_SQL`]: commit key, stream type, stream id, then an event row.
pub(crate) type RawLogRow = crate::raw::raw_event_row!(i64, String, String);

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
        let rows: Vec<RawLogRow> = crate::raw::raw_page(pool, RAW_LOG_SQL, after, limit).await?;
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
    let (committed, first_error) = timed::join_paced(handles).await;
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
