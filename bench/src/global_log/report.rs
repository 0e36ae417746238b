//! The results of the global-log section and their report: the markdown tables, the targets
//! and the `BENCH_JSON` part.

use super::*;
use crate::relay::percentile;
use crate::report::met_or_missed;

pub(crate) struct WriterRow {
    pub(crate) writers: usize,
    pub(crate) plain: f64,
    pub(crate) keyed: f64,
    pub(crate) lib: f64,
}

/// One or more full reads of the log.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Read {
    pub(crate) events: u64,
    pub(crate) position_sum: u128,
    pub(crate) batches: u64,
    pub(crate) seconds: f64,
    pub(crate) rss_before: Option<u64>,
    pub(crate) rss_max: Option<u64>,
    pub(crate) rss_after: Option<u64>,
}

impl Read {
    /// An empty read, with the resident set size before it.
    pub(crate) fn starting() -> Self {
        let rss_before = rss_kib();
        Read {
            rss_before,
            rss_max: rss_before,
            ..Read::default()
        }
    }

    pub(crate) fn add(&mut self, other: Read) {
        self.events += other.events;
        self.position_sum += other.position_sum;
        self.batches += other.batches;
        self.seconds += other.seconds;
        self.rss_before = self.rss_before.or(other.rss_before);
        self.rss_max = self.rss_max.max(other.rss_max);
        self.rss_after = other.rss_after;
    }
    pub(crate) fn rate(&self) -> f64 {
        self.events as f64 / self.seconds
    }
    pub(crate) fn rss(&self) -> String {
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
    pub(crate) fn rss_json(&self) -> serde_json::Value {
        serde_json::json!({
            "before": self.rss_before,
            "max": self.rss_max,
            "after": self.rss_after,
        })
    }
}

pub(crate) struct CatchUpRow {
    pub(crate) batch: usize,
    pub(crate) lib: Read,
    pub(crate) raw: Read,
}

pub(crate) struct CatchUp {
    pub(crate) filled: u64,
    pub(crate) fill_seconds: f64,
    pub(crate) vacuum_seconds: f64,
    pub(crate) log_events: u64,
    pub(crate) rows: Vec<CatchUpRow>,
    /// Where the library's last read ended: the end of the log.
    pub(crate) end: Checkpoint,
}

impl CatchUp {
    pub(crate) fn met(&self) -> bool {
        self.rows.iter().all(|r| r.lib.rate() >= CATCH_UP_TARGET)
    }
}

#[derive(Default)]
pub(crate) struct Latency {
    pub(crate) seconds: f64,
    pub(crate) appended: usize,
    pub(crate) received: usize,
    pub(crate) duplicates: usize,
    pub(crate) missing: usize,
    pub(crate) unexpected: usize,
    pub(crate) out_of_order: usize,
    pub(crate) subscriber_error: Option<String>,
    /// Milliseconds, sorted.
    pub(crate) samples: Vec<f64>,
    /// Durations of `read_log` calls at the end of the idle log (ms, sorted).
    pub(crate) idle_reads: Vec<f64>,
}

impl Latency {
    pub(crate) fn exactly_once(&self) -> bool {
        self.duplicates == 0
            && self.missing == 0
            && self.unexpected == 0
            && self.out_of_order == 0
            && self.subscriber_error.is_none()
            && self.appended > 0
    }
    /// Nearest-rank percentile of the latencies (ms).
    pub(crate) fn pct(&self, p: f64) -> f64 {
        percentile(&self.samples, p)
    }
    pub(crate) fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / self.samples.len() as f64
    }
    pub(crate) fn over(&self, ms: f64) -> usize {
        self.samples.iter().filter(|s| **s > ms).count()
    }
    pub(crate) fn met(&self) -> bool {
        self.pct(0.99) <= LATENCY_TARGET_MS
    }
}

/// What the global-log section measured.
pub(crate) struct LogResults {
    pub(crate) writers: Vec<WriterRow>,
    pub(crate) catch_up: CatchUp,
    pub(crate) latency: Latency,
}

impl LogResults {
    pub(crate) fn writers_met(&self) -> bool {
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
            met_or_missed(l.met()),
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
