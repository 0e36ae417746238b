//! The rows of the command, append and CPU tables, and the report: markdown tables, targets
//! and the `BENCH_JSON` line.

use crate::*;

/// Commands/s of each variant at one concurrency.
pub(crate) struct CommandRow {
    pub(crate) writers: usize,
    pub(crate) raw_insert: f64,
    pub(crate) raw_insert_auto: f64,
    pub(crate) raw_load_insert: f64,
    pub(crate) lib: f64,
    pub(crate) lib_cached: f64,
    /// Events per stream at the end, in the order of the fields above.
    pub(crate) stream_len: [f64; 5],
}

/// The order in which the command cases are measured (and stored in [`CommandRow`]).
pub(crate) const COMMAND_CASES: [Case; 5] = [
    Case::RawInsert,
    Case::RawInsertAuto,
    Case::RawLoadInsert,
    Case::LibExecute,
    Case::LibCached,
];

pub(crate) struct AppendRow {
    pub(crate) writers: usize,
    pub(crate) lib: f64,
    pub(crate) raw: f64,
}

/// CPU per operation of one case.
pub(crate) struct CpuRow {
    pub(crate) what: &'static str,
    pub(crate) writers: usize,
    pub(crate) client_us: Option<f64>,
    pub(crate) server_us: Option<f64>,
}

impl CpuRow {
    pub(crate) fn new(what: &'static str, writers: usize, tally: &Tally) -> Self {
        let (client_us, server_us) = tally.cpu_us_per_op();
        Self {
            what,
            writers,
            client_us,
            server_us,
        }
    }
}

/// `met` or `**missed**`, a target's cell.
pub(crate) fn met_or_missed(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

pub(crate) fn verdict(ratio: f64) -> &'static str {
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

pub(crate) struct Results<'a> {
    pub(crate) options: &'a Options,
    pub(crate) fsync: String,
    pub(crate) sync_commit: String,
    pub(crate) server: String,
    pub(crate) commands: Vec<CommandRow>,
    pub(crate) appends: Vec<AppendRow>,
    pub(crate) cpu: Vec<CpuRow>,
    pub(crate) log: Option<global_log::LogResults>,
    pub(crate) relay: Option<relay::RelayResults>,
    pub(crate) projections: Option<projections::ProjectionResults>,
    pub(crate) sagas: Option<sagas::SagaResults>,
    pub(crate) consumer: Option<consumer::ConsumerResults>,
    pub(crate) peers: Option<peers::PeerResults>,
    pub(crate) sqlite: Option<sqlite::SqliteResults>,
    pub(crate) started: Instant,
}

pub(crate) fn report_commands(commands: &[CommandRow]) {
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

/// A section's results as the report prints them: its tables, then its lines on the targets.
pub(crate) trait Section {
    /// The section's tables.
    fn print(&self);

    /// The section's lines on its targets (none by default).
    fn print_targets(&self) {}
}

/// The results of a section that ran, as a [`Section`].
fn section<S: Section>(results: &Option<S>) -> Option<&dyn Section> {
    results.as_ref().map(|s| s as &dyn Section)
}

pub(crate) fn report(results: &Results<'_>) -> Result<()> {
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
    // In the order they are printed; peers and sqlite have no targets.
    let sections = [
        section(log),
        section(relay),
        section(projections),
        section(sagas),
        section(peers),
        section(sqlite),
    ];
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
    for section in sections.iter().flatten() {
        section.print();
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
    for section in sections.iter().flatten() {
        section.print_targets();
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
