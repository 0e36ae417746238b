//! Projection rebuilds (`--only projections`): a log of `--projection-events` events (default
//! 1,000,000) is rebuilt in place into
//!
//! * a no-op projection (decoding every event, writing nothing but its checkpoint), beside a raw
//!   keyset scan of the same rows that decodes the same payloads;
//! * a PostgreSQL table of order totals written with batched upserts (`apply_batch`: one
//!   `INSERT ... SELECT FROM UNNEST ... ON CONFLICT DO UPDATE` per batch), beside a raw scan that
//!   aggregates each batch and upserts it with the same statement, one transaction per batch.
//!
//! Both read models are then compared with a fold of the whole log: the figures only count if
//! the rebuilt tables hold the right totals.

use std::collections::HashMap;
use std::time::Instant;

use eventfold::eventstore::Naming;
use eventfold::eventstore::postgres::{PgStore, PgUnitOfWork};
use eventfold::projections::{
    Projection, ProjectionOptions, Projections, RebuildMode, RebuildProgress, Tables,
};
use eventfold::{BoxError, Envelope, Event};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::{Options, Result};

/// Throughput target of the no-op rebuild (events/s).
const NOOP_TARGET: f64 = 150_000.0;
/// Throughput target of the rebuild into a PostgreSQL table (events/s).
const UPSERT_TARGET: f64 = 30_000.0;
/// Distinct orders (streams) of the log.
const STREAMS: i64 = 10_000;
/// Events per rebuild batch (and per raw batch): each size is one row of the table.
const BATCHES: [usize; 2] = [1000, 5000];
/// The table prefix of this section's store, so that its log holds exactly the filled events.
const PREFIX: &str = "pbench_";

/// What the fill writes, as the projections decode it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
pub(crate) enum FillEvent {
    /// One recorded amount of an order.
    Recorded {
        n: i64,
        order: String,
        amount_cents: i64,
        currency: String,
    },
}

/// The raw scan: the columns `read_log` selects, keyset-paginated by position.
const RAW_SCAN_SQL: &str = "SELECT global_position, event_id, stream_type, stream_id, stream_version, \
     event_type, schema_version, payload, recorded_at, source, correlation_id, causation_id, tenant_id, \
     headers::text FROM pbench_events WHERE global_position > $1 ORDER BY global_position LIMIT $2";

type RawRow = (
    i64,
    uuid::Uuid,
    String,
    String,
    i64,
    String,
    i32,
    Vec<u8>,
    chrono::DateTime<chrono::Utc>,
    String,
    uuid::Uuid,
    Option<uuid::Uuid>,
    Option<String>,
    String,
);

/// The batched upsert both the projection and the raw baseline use (`{table}` is replaced).
const UPSERT_SQL: &str = "INSERT INTO {table} (order_id, total_cents, events) \
     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[]) \
     ON CONFLICT (order_id) DO UPDATE SET total_cents = {table}.total_cents + EXCLUDED.total_cents, \
       events = {table}.events + EXCLUDED.events";

/// Sums a batch per order (an `ON CONFLICT` statement may touch a row once).
fn aggregate<'a>(
    events: impl Iterator<Item = (&'a str, i64)>,
) -> (Vec<String>, Vec<i64>, Vec<i64>) {
    let mut sums: HashMap<&str, (i64, i64)> = HashMap::new();
    for (order, cents) in events {
        let entry = sums.entry(order).or_default();
        entry.0 += cents;
        entry.1 += 1;
    }
    let mut orders = Vec::with_capacity(sums.len());
    let mut totals = Vec::with_capacity(sums.len());
    let mut counts = Vec::with_capacity(sums.len());
    for (order, (total, count)) in sums {
        orders.push(order.to_owned());
        totals.push(total);
        counts.push(count);
    }
    (orders, totals, counts)
}

/// Decodes every event and writes nothing.
struct Noop;

impl Projection<PgUnitOfWork> for Noop {
    type Event = FillEvent;

    fn name(&self) -> &str {
        "bench_noop"
    }

    async fn apply(
        &self,
        _uow: &mut PgUnitOfWork,
        _tables: &Tables,
        event: &Envelope<FillEvent>,
    ) -> std::result::Result<(), BoxError> {
        std::hint::black_box(event);
        Ok(())
    }
}

/// Order totals in a PostgreSQL table, one upsert per batch.
struct Totals;

impl Projection<PgUnitOfWork> for Totals {
    type Event = FillEvent;

    fn name(&self) -> &str {
        "bench_totals"
    }

    fn tables(&self) -> Vec<String> {
        vec!["bench_order_totals".into()]
    }

    async fn setup(
        &self,
        uow: &mut PgUnitOfWork,
        tables: &Tables,
    ) -> std::result::Result<(), BoxError> {
        let sql = format!(
            "CREATE TABLE {} (order_id TEXT PRIMARY KEY, total_cents BIGINT NOT NULL, events BIGINT NOT NULL)",
            tables.table("bench_order_totals")
        );
        sqlx::query(&sql).execute(uow.connection()).await?;
        Ok(())
    }

    async fn apply(
        &self,
        uow: &mut PgUnitOfWork,
        tables: &Tables,
        event: &Envelope<FillEvent>,
    ) -> std::result::Result<(), BoxError> {
        self.apply_batch(uow, tables, std::slice::from_ref(event))
            .await
    }

    async fn apply_batch(
        &self,
        uow: &mut PgUnitOfWork,
        tables: &Tables,
        events: &[Envelope<FillEvent>],
    ) -> std::result::Result<(), BoxError> {
        let (orders, totals, counts) = aggregate(events.iter().map(|e| match &e.payload {
            FillEvent::Recorded {
                order,
                amount_cents,
                ..
            } => (order.as_str(), *amount_cents),
        }));
        let sql = UPSERT_SQL.replace("{table}", &tables.table("bench_order_totals"));
        sqlx::query(&sql)
            .bind(orders)
            .bind(totals)
            .bind(counts)
            .execute(uow.connection())
            .await?;
        Ok(())
    }
}

/// One measured pass.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Pass {
    events: u64,
    seconds: f64,
    rss_before_kib: u64,
    rss_max_kib: u64,
    rss_after_kib: u64,
}

impl Pass {
    fn rate(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }

    fn rss(&self) -> String {
        format!(
            "{:.1} / {:.1} / {:.1}",
            self.rss_before_kib as f64 / 1024.0,
            self.rss_max_kib as f64 / 1024.0,
            self.rss_after_kib as f64 / 1024.0
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "events": self.events,
            "seconds": crate::r3(self.seconds),
            "events_per_s": self.rate().round(),
            "rss_kib": {"before": self.rss_before_kib, "max": self.rss_max_kib, "after": self.rss_after_kib},
        })
    }
}

/// One batch size's figures.
struct Row {
    batch: usize,
    raw_scan: Pass,
    noop: Pass,
    raw_upsert: Pass,
    upsert: Pass,
}

/// The section's figures.
pub(crate) struct ProjectionResults {
    events: u64,
    fill_seconds: f64,
    rows: Vec<Row>,
    /// The rebuilt totals equal the raw baseline's and a fold of the log.
    totals_match: bool,
}

fn rss_kib() -> u64 {
    crate::global_log::rss_kib().unwrap_or(0)
}

/// Runs the section on its own store (`pbench_` tables) in the bench database.
pub(crate) async fn run(pool: &PgPool, options: &Options) -> Result<ProjectionResults> {
    let events = options.projection_events;
    let store = PgStore::builder(pool.clone())
        .naming(Naming::new(PREFIX)?)
        .build()
        .await?;
    eprintln!("projections: writing {events} events over {STREAMS} streams");
    let started = Instant::now();
    sqlx::query(&crate::global_log::fill_sql("pbench_events"))
        .bind(i64::try_from(events)?)
        .bind(STREAMS)
        .execute(pool)
        .await?;
    sqlx::raw_sql("VACUUM (ANALYZE) pbench_events")
        .execute(pool)
        .await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    crate::global_log::wait_readable(&store).await?;

    sqlx::raw_sql(
        "CREATE TABLE bench_raw_totals (order_id TEXT PRIMARY KEY, total_cents BIGINT NOT NULL, events BIGINT NOT NULL)",
    )
    .execute(pool)
    .await?;
    let fold_total: (i64, String, String) = sqlx::query_as(
        "SELECT count(DISTINCT stream_id), \
         sum(((convert_from(payload, 'UTF8')::jsonb)->>'amount_cents')::int8)::text, count(*)::text \
         FROM pbench_events",
    )
    .fetch_one(pool)
    .await?;
    let mut rows = Vec::new();
    let mut totals_match = true;
    for batch in BATCHES {
        let projections = Projections::new(store.clone())
            .register_with(Noop, ProjectionOptions::default().batch_size(batch))
            .register_with(Totals, ProjectionOptions::default().batch_size(batch));
        eprintln!("projections, batches of {batch}: raw scan");
        let raw_scan = raw_pass(pool, false, batch).await?;
        eprintln!("  {:.0} events/s; no-op rebuild", raw_scan.rate());
        let noop = rebuild(&projections, "bench_noop").await?;
        eprintln!("  {:.0} events/s; raw batched upsert", noop.rate());
        sqlx::raw_sql("TRUNCATE bench_raw_totals")
            .execute(pool)
            .await?;
        let raw_upsert = raw_pass(pool, true, batch).await?;
        eprintln!(
            "  {:.0} events/s; rebuild into a PostgreSQL table",
            raw_upsert.rate()
        );
        let upsert = rebuild(&projections, "bench_totals").await?;
        eprintln!("  {:.0} events/s", upsert.rate());
        let view: (i64, String, String) = sqlx::query_as(
            "SELECT count(*), sum(total_cents)::text, sum(events)::text FROM bench_order_totals",
        )
        .fetch_one(pool)
        .await?;
        let raw: (i64, String, String) = sqlx::query_as(
            "SELECT count(*), sum(total_cents)::text, sum(events)::text FROM bench_raw_totals",
        )
        .fetch_one(pool)
        .await?;
        if view != fold_total || raw != fold_total {
            totals_match = false;
            eprintln!(
                "projections: totals differ: fold {fold_total:?}, rebuilt view {view:?}, raw {raw:?}"
            );
        }
        rows.push(Row {
            batch,
            raw_scan,
            noop,
            raw_upsert,
            upsert,
        });
    }
    Ok(ProjectionResults {
        events,
        fill_seconds,
        rows,
        totals_match,
    })
}

async fn rebuild(projections: &Projections<PgStore>, name: &str) -> Result<Pass> {
    let rss_before_kib = rss_kib();
    let rss_max = std::sync::atomic::AtomicU64::new(rss_before_kib);
    let started = Instant::now();
    let report = projections
        .rebuild(name, RebuildMode::InPlace, |_: RebuildProgress| {
            rss_max.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
        })
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Pass {
        events: report.applied,
        seconds,
        rss_before_kib,
        rss_max_kib: rss_max.load(std::sync::atomic::Ordering::Relaxed),
        rss_after_kib: rss_kib(),
    })
}

/// The raw baseline: a keyset scan decoding each payload; with `upsert`, each batch is summed
/// per order and upserted into `bench_raw_totals` in its own transaction.
async fn raw_pass(pool: &PgPool, upsert: bool, batch: usize) -> Result<Pass> {
    let rss_before_kib = rss_kib();
    let mut rss_max_kib = rss_before_kib;
    let started = Instant::now();
    let mut after = 0i64;
    let mut events = 0u64;
    let limit = i64::try_from(batch)?;
    let upsert_sql = UPSERT_SQL.replace("{table}", "bench_raw_totals");
    loop {
        let rows: Vec<RawRow> = crate::raw::raw_page(pool, RAW_SCAN_SQL, after, limit).await?;
        let n = rows.len();
        let mut decoded = Vec::with_capacity(n);
        for row in &rows {
            let event: FillEvent = FillEvent::decode(&row.5, &row.7)?;
            decoded.push(event);
        }
        events += n as u64;
        if upsert && n > 0 {
            let (orders, totals, counts) = aggregate(decoded.iter().map(|e| match e {
                FillEvent::Recorded {
                    order,
                    amount_cents,
                    ..
                } => (order.as_str(), *amount_cents),
            }));
            let mut tx = pool.begin().await?;
            sqlx::query(&upsert_sql)
                .bind(orders)
                .bind(totals)
                .bind(counts)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        std::hint::black_box(&decoded);
        rss_max_kib = rss_max_kib.max(rss_kib());
        match rows.last() {
            Some(last) => after = last.0,
            None => break,
        }
        if n < batch {
            break;
        }
    }
    Ok(Pass {
        events,
        seconds: started.elapsed().as_secs_f64(),
        rss_before_kib,
        rss_max_kib,
        rss_after_kib: rss_kib(),
    })
}

/// One row of the rebuild table: `read_model` rebuilt by eventfold against its `raw` baseline
/// (`raw_work` says what the baseline did).
fn print_row(
    read_model: &str,
    batch: usize,
    eventfold: &Pass,
    raw: &Pass,
    raw_work: &str,
    target: f64,
) {
    println!(
        "| {read_model} | {batch} | {:.0} | {:.0} ({raw_work}) | {:.2} | ≥ {target:.0}/s: {} | {} |",
        eventfold.rate(),
        raw.rate(),
        eventfold.rate() / raw.rate(),
        verdict(eventfold.rate(), target),
        eventfold.rss()
    );
}

fn verdict(rate: f64, target: f64) -> &'static str {
    if rate >= target { "met" } else { "**missed**" }
}

impl ProjectionResults {
    /// Fails the run when the rebuilt read model is wrong.
    pub(crate) fn check(&self) -> Result<()> {
        if self.totals_match {
            Ok(())
        } else {
            Err("projections: the rebuilt totals differ from a fold of the log".into())
        }
    }

    fn best(&self, rate: impl Fn(&Row) -> f64) -> (f64, usize) {
        self.rows
            .iter()
            .map(|r| (rate(r), r.batch))
            .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a })
    }
}

impl crate::report::Section for ProjectionResults {
    fn print(&self) {
        println!(
            "### Projection rebuilds: {} events, in place\n",
            self.events
        );
        println!(
            "| read model | batch | eventfold rebuild (events/s) | raw baseline (events/s) | eventfold / raw | target | RSS before / max / after (MiB) |"
        );
        println!("|:--|---:|---:|---:|---:|:--|:--|");
        for r in &self.rows {
            print_row(
                "no-op (decode only)",
                r.batch,
                &r.noop,
                &r.raw_scan,
                "scan + decode",
                NOOP_TARGET,
            );
        }
        for r in &self.rows {
            print_row(
                "PostgreSQL table, batched upserts",
                r.batch,
                &r.upsert,
                &r.raw_upsert,
                "scan + decode + upsert",
                UPSERT_TARGET,
            );
        }
        println!();
        println!(
            "* log: {} events over {STREAMS} streams written by one `INSERT ... SELECT` ({:.1} s with VACUUM), \
             JSON payloads `{{n, order, amount_cents, currency}}`.",
            self.events, self.fill_seconds
        );
        println!(
            "* rebuild: `Projections::rebuild(name, RebuildMode::InPlace, ..)` with `ProjectionOptions::batch_size(batch)`, \
             through the global-log reader, decoding with `#[derive(Event)]`; the checkpoint is written in each batch's transaction."
        );
        println!(
            "* raw: keyset scan of the same columns in pages of `batch`, `serde_json` decode; the upsert baseline sums each page \
             per order and runs the same `INSERT ... SELECT FROM UNNEST ... ON CONFLICT DO UPDATE`, one transaction per page."
        );
        println!(
            "* check: the rebuilt view and the raw table both equal a fold of the log in SQL: {}.\n",
            if self.totals_match { "yes" } else { "**NO**" }
        );
    }

    fn print_targets(&self) {
        let (noop, noop_batch) = self.best(|r| r.noop.rate());
        let (upsert, upsert_batch) = self.best(|r| r.upsert.rate());
        println!(
            "Projection targets: no-op rebuild ≥ {NOOP_TARGET:.0} events/s: {} ({noop:.0}/s, batches of {noop_batch}); \
             rebuild into a PostgreSQL table ≥ {UPSERT_TARGET:.0} events/s: {} ({upsert:.0}/s, batches of {upsert_batch}).",
            verdict(noop, NOOP_TARGET),
            verdict(upsert, UPSERT_TARGET),
        );
    }
}

impl ProjectionResults {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "events": self.events,
            "streams": STREAMS,
            "fill_s": crate::r3(self.fill_seconds),
            "noop_target": NOOP_TARGET,
            "upsert_target": UPSERT_TARGET,
            "totals_match": self.totals_match,
            "rows": self.rows.iter().map(|r| serde_json::json!({
                "batch": r.batch,
                "raw_scan": r.raw_scan.json(),
                "noop_rebuild": r.noop.json(),
                "raw_upsert": r.raw_upsert.json(),
                "upsert_rebuild": r.upsert.json(),
                "noop_ratio": crate::r3(r.noop.rate() / r.raw_scan.rate()),
                "upsert_ratio": crate::r3(r.upsert.rate() / r.raw_upsert.rate()),
            })).collect::<Vec<_>>(),
        })
    }
}
