//! The peers (`--only peers`): eventfold beside cqrs-es + postgres-es (crates.io, 0.5) on the
//! same workload, the same PostgreSQL database and the same run.
//!
//! The workload is account deposits, one event per command, through each library's command
//! path with the state loaded from the events (no snapshots, no state cache):
//!
//! * eventfold: `Repository::<Account, PgStore>::execute(id, &Deposit, CommandMetadata::new())`
//!   (read the stream, `handle`, one autocommit append statement), once per entry of
//!   [`EVENTFOLD_VARIANTS`];
//! * cqrs-es: `postgres_es::postgres_cqrs(pool, vec![], ()).execute(id, Deposit)` (read the
//!   stream, `handle`, `BEGIN; INSERT; COMMIT`), on postgres-es's own `events` and `snapshots`
//!   tables (its `db/init.sql`), created by this scenario in the benchmark's fresh database.
//!
//! Two workloads: a new aggregate per command (the stream is empty when the command starts),
//! and existing aggregates (each caller cycles over its own [`AGGREGATES_PER_CALLER`]
//! aggregates, given their first event before the measurement). Each at 1, 8 and 64 concurrent
//! callers (tokio tasks); every system runs with a pool of [`PEER_POOL`] connections (the
//! eventfold variants share one, as they never run at the same time; cqrs-es has its own). The
//! systems alternate, eventfold and cqrs-es in turn (`V1 P V2 P ...`, then the reverse), each
//! segment after a warm-up, `--seconds` per system and case in total.

use std::sync::Arc;
use std::time::Duration;

use eventfold::{Event, aggregate};
use eventfold_core::CommandMetadata;
use eventfold_eventstore::postgres::{PgStore, PgStoreBuilder};
use eventfold_eventstore::{Coalescing, OutboxRouting, Repository};
use postgres_es::PostgresCqrs;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::timed::{self, Timed};
use crate::{Never, Options, Result, WARMUP, r3};

/// Connections of each system's pool.
const PEER_POOL: u32 = 32;
/// Concurrent callers.
const CALLERS: [usize; 3] = [1, 8, 64];
/// Aggregates of each caller in the "existing aggregates" workload.
const AGGREGATES_PER_CALLER: usize = 20;
/// Rounds per case (the second in reverse order).
const ROUNDS: usize = 2;

/// One way of configuring eventfold's PostgreSQL store.
pub(crate) struct Variant {
    /// The name printed in the table.
    pub(crate) name: &'static str,
    /// Its key in the JSON line (and the prefix of its aggregate ids).
    pub(crate) key: &'static str,
    /// Applied to `PgStore::builder(pool)` before `build`.
    pub(crate) configure: fn(PgStoreBuilder) -> PgStoreBuilder,
}

/// The eventfold configurations measured against cqrs-es. Adding one is one line here (with a
/// key of its own: the variants share the events table, and their aggregate ids start with it).
pub(crate) const EVENTFOLD_VARIANTS: &[Variant] = &[
    Variant {
        name: "eventfold",
        key: "eventfold",
        configure: |builder| builder,
    },
    Variant {
        name: "eventfold + outbox",
        key: "eventfold_outbox",
        configure: |builder| builder.outbox(OutboxRouting::new()),
    },
    Variant {
        name: "eventfold + outbox + coalescing (appends only)",
        key: "eventfold_outbox_coalescing_appends",
        configure: |builder| {
            builder
                .outbox(OutboxRouting::new())
                .coalescing(Coalescing::default().share_reads(false))
        },
    },
    Variant {
        name: "eventfold + outbox + coalescing",
        key: "eventfold_outbox_coalescing",
        configure: |builder| {
            builder
                .outbox(OutboxRouting::new())
                .coalescing(Coalescing::default())
        },
    },
];

// ---------------------------------------------------------------------------------------------
// eventfold's account.

/// Events of eventfold's [`Account`].
#[derive(Debug, Clone, PartialEq, Event)]
enum AccountEvent {
    Deposited { cents: u64 },
}

/// An account: its balance.
#[derive(Debug, Default, Clone)]
struct Account {
    balance: u64,
}

/// Deposits `cents`.
struct Deposit {
    cents: u64,
}

#[aggregate(name = "account")]
impl Account {
    fn handle(&self, command: &Deposit) -> Result<Vec<AccountEvent>, Never> {
        Ok(vec![AccountEvent::Deposited {
            cents: command.cents,
        }])
    }

    fn apply(&mut self, event: &AccountEvent) {
        let AccountEvent::Deposited { cents } = event;
        self.balance += cents;
    }
}

// ---------------------------------------------------------------------------------------------
// The same account for cqrs-es.

mod peer {
    use cqrs_es::event_sink::EventSink;
    use cqrs_es::{Aggregate, DomainEvent};
    use serde::{Deserialize, Serialize};

    use crate::Never;

    /// Events of cqrs-es's [`Account`].
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub(super) enum AccountEvent {
        Deposited { cents: u64 },
    }

    impl DomainEvent for AccountEvent {
        fn event_type(&self) -> String {
            "account.deposited".to_owned()
        }

        fn event_version(&self) -> String {
            "1".to_owned()
        }
    }

    /// Deposits `cents`.
    pub(super) struct Deposit {
        pub(super) cents: u64,
    }

    /// An account: its balance.
    #[derive(Debug, Default, Serialize, Deserialize)]
    pub(super) struct Account {
        balance: u64,
    }

    impl Aggregate for Account {
        const TYPE: &'static str = "account";
        type Command = Deposit;
        type Event = AccountEvent;
        type Error = Never;
        type Services = ();

        async fn handle(
            &mut self,
            command: Deposit,
            _: &(),
            sink: &EventSink<Self>,
        ) -> Result<(), Never> {
            sink.write(
                AccountEvent::Deposited {
                    cents: command.cents,
                },
                self,
            )
            .await;
            Ok(())
        }

        fn apply(&mut self, event: AccountEvent) {
            let AccountEvent::Deposited { cents } = event;
            self.balance += cents;
        }
    }
}

/// postgres-es's tables, as in its `db/init.sql` (without its test view and test user).
const CQRS_ES_TABLES: &str = "\
CREATE TABLE events (
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE TABLE snapshots (
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);";

// ---------------------------------------------------------------------------------------------
// The systems.

#[derive(Clone)]
enum System {
    Eventfold(Arc<Repository<Account, PgStore>>),
    CqrsEs(Arc<PostgresCqrs<peer::Account>>),
}

impl System {
    async fn deposit(&self, id: &str) -> Result<()> {
        match self {
            System::Eventfold(repo) => {
                repo.execute(id, &Deposit { cents: 1 }, CommandMetadata::new())
                    .await?;
            }
            System::CqrsEs(cqrs) => cqrs
                .execute(id, peer::Deposit { cents: 1 })
                .await
                .map_err(|e| format!("cqrs-es: {e}"))?,
        }
        Ok(())
    }
}

/// One measured system: its printed name, its key (JSON, aggregate-id prefix) and the system.
struct Entry {
    name: &'static str,
    key: &'static str,
    system: System,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// A new aggregate per command.
    New,
    /// Each caller cycles over its own aggregates, which exist before the measurement.
    Existing,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::New => "new aggregate per command",
            Workload::Existing => "existing aggregates",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Workload::New => "new",
            Workload::Existing => "existing",
        }
    }
}

/// One system's figures in one case.
pub(crate) struct PeerRow {
    workload: Workload,
    callers: usize,
    name: &'static str,
    key: &'static str,
    is_peer: bool,
    timed: Timed,
    /// Events per stream at the end (existing aggregates).
    stream_len: f64,
}

/// What the scenario measured.
pub(crate) struct PeerResults {
    rows: Vec<PeerRow>,
    seconds: f64,
    server_version: String,
}

/// The aggregate id of `caller`'s `n`-th command.
fn aggregate_id(
    workload: Workload,
    key: &str,
    callers: usize,
    segment: usize,
    caller: usize,
    n: u64,
) -> String {
    match workload {
        Workload::New => format!("{key}-n{callers}-s{segment}-{caller}-{n}"),
        Workload::Existing => format!(
            "{key}-x{callers}-{caller}-{}",
            n % AGGREGATES_PER_CALLER as u64
        ),
    }
}

/// Runs one system for one segment.
async fn segment(
    entry: &Entry,
    workload: Workload,
    callers: usize,
    segment_no: usize,
    measure: Duration,
) -> Result<Timed> {
    let system = entry.system.clone();
    let key = entry.key;
    timed::run(callers, WARMUP, measure, move |caller, n| {
        let system = system.clone();
        let id = aggregate_id(workload, key, callers, segment_no, caller, n);
        async move {
            system.deposit(&id).await?;
            Ok(1)
        }
    })
    .await
}

/// Events per stream of the "existing" aggregates of `entry` at `callers`.
async fn stream_len(pool: &PgPool, entry: &Entry, callers: usize) -> Result<f64> {
    let table = match entry.system {
        System::Eventfold(_) => "eventfold_events",
        System::CqrsEs(_) => "events",
    };
    let id = match entry.system {
        System::Eventfold(_) => "stream_id",
        System::CqrsEs(_) => "aggregate_id",
    };
    let (count,): (i64,) =
        sqlx::query_as(&format!("SELECT count(*) FROM {table} WHERE {id} LIKE $1"))
            .bind(format!("{}-x{callers}-%", entry.key))
            .fetch_one(pool)
            .await?;
    Ok(count as f64 / (AGGREGATES_PER_CALLER * callers) as f64)
}

/// Gives every aggregate of the "existing" workload its first event (not measured).
async fn seed(entry: &Entry, callers: usize) -> Result<()> {
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let system = entry.system.clone();
        let key = entry.key;
        tasks.push(tokio::spawn(async move {
            for n in 0..AGGREGATES_PER_CALLER as u64 {
                let id = aggregate_id(Workload::Existing, key, callers, 0, caller, n);
                system.deposit(&id).await?;
            }
            Ok::<_, crate::BoxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// The segment order of one round: eventfold variants and cqrs-es in turn.
fn round_order(entries: usize) -> Vec<usize> {
    let peer = entries - 1;
    let variants = entries - 1;
    let mut order = Vec::new();
    for v in 0..variants {
        order.push(v);
        if v + 1 < variants || variants == 1 {
            order.push(peer);
        }
    }
    order
}

pub(crate) async fn run(pool: &PgPool, options: &Options) -> Result<PeerResults> {
    let (server_version,): (String,) = sqlx::query_as("SHOW server_version")
        .fetch_one(pool)
        .await?;
    sqlx::raw_sql(CQRS_ES_TABLES).execute(pool).await?;
    let connect = pool.connect_options().as_ref().clone();
    let new_pool = || {
        PgPoolOptions::new()
            .max_connections(PEER_POOL)
            .test_before_acquire(options.test_before_acquire)
            .connect_with(connect.clone())
    };
    // The eventfold variants share one pool (one of them runs at a time), cqrs-es has its own:
    // every system runs with PEER_POOL connections, and the two pools stay within the
    // server's default `max_connections` of 100 beside the harness's own pool.
    let eventfold_pool = new_pool().await?;
    let mut entries = Vec::new();
    for variant in EVENTFOLD_VARIANTS {
        if !options.peer_variants.is_empty()
            && !options.peer_variants.iter().any(|k| k == variant.key)
        {
            continue;
        }
        let store = (variant.configure)(PgStore::builder(eventfold_pool.clone()))
            .build()
            .await?;
        entries.push(Entry {
            name: variant.name,
            key: variant.key,
            system: System::Eventfold(Arc::new(Repository::new(store))),
        });
    }
    let peer_pool = new_pool().await?;
    entries.push(Entry {
        name: "cqrs-es + postgres-es",
        key: "cqrs_es",
        system: System::CqrsEs(Arc::new(postgres_es::postgres_cqrs(
            peer_pool.clone(),
            vec![],
            (),
        ))),
    });
    let pools = [eventfold_pool, peer_pool];

    let forward = round_order(entries.len());
    let peer = entries.len() - 1;
    // Each system gets `--seconds` per case: eventfold variants in one segment per round, the
    // peer's share split over its segments of the round.
    let per_round = options.seconds / ROUNDS as f64;
    let peer_segments = forward.iter().filter(|&&i| i == peer).count();
    let mut rows = Vec::new();
    let mut segment_no = 0usize;
    let result: Result<()> = async {
        for workload in [Workload::New, Workload::Existing] {
            let callers_list: Vec<usize> = if options.peer_callers.is_empty() {
                CALLERS.to_vec()
            } else {
                options.peer_callers.clone()
            };
            for &callers in &callers_list {
                eprintln!("peers: {}, {callers} caller(s)", workload.name());
                if workload == Workload::Existing {
                    for entry in &entries {
                        seed(entry, callers).await?;
                    }
                }
                let mut tallies: Vec<Timed> = entries.iter().map(|_| Timed::default()).collect();
                for round in 0..ROUNDS {
                    let order: Vec<usize> = if round % 2 == 0 {
                        forward.clone()
                    } else {
                        forward.iter().rev().copied().collect()
                    };
                    for i in order {
                        let seconds = if i == peer {
                            per_round / peer_segments as f64
                        } else {
                            per_round
                        };
                        segment_no += 1;
                        let timed = segment(
                            &entries[i],
                            workload,
                            callers,
                            segment_no,
                            Duration::from_secs_f64(seconds),
                        )
                        .await
                        .map_err(|e| {
                            format!(
                                "{} ({}, {callers} callers): {e}",
                                entries[i].name,
                                workload.name()
                            )
                        })?;
                        eprintln!(
                            "  round {} {:<24} {:>8.0} commands/s",
                            round + 1,
                            entries[i].name,
                            timed.ops_per_s()
                        );
                        tallies[i].add(timed);
                    }
                }
                for (i, (entry, timed)) in entries.iter().zip(tallies).enumerate() {
                    let stream_len = match workload {
                        Workload::New => 1.0,
                        Workload::Existing => stream_len(pool, entry, callers).await?,
                    };
                    rows.push(PeerRow {
                        workload,
                        callers,
                        name: entry.name,
                        key: entry.key,
                        is_peer: i == peer,
                        timed: timed.sorted(),
                        stream_len,
                    });
                }
            }
        }
        Ok(())
    }
    .await;
    for pool in pools {
        pool.close().await;
    }
    result?;
    Ok(PeerResults {
        rows,
        seconds: options.seconds,
        server_version,
    })
}

impl PeerResults {
    /// The cqrs-es row of the same case as `row`.
    fn peer_of(&self, row: &PeerRow) -> Option<&PeerRow> {
        self.rows
            .iter()
            .find(|r| r.is_peer && r.workload == row.workload && r.callers == row.callers)
    }
}

impl crate::report::Section for PeerResults {
    fn print(&self) {
        println!(
            "### Peers: eventfold and cqrs-es + postgres-es, account deposits, 1 event per command\n"
        );
        println!("| workload | callers | system | commands/s | p50 | p99 | eventfold / cqrs-es |");
        println!("|:--|---:|:--|---:|---:|---:|---:|");
        for row in &self.rows {
            let ratio = match self.peer_of(row) {
                Some(peer) if !row.is_peer => {
                    format!("**{:.2}**", row.timed.ops_per_s() / peer.timed.ops_per_s())
                }
                _ => String::new(),
            };
            println!(
                "| {} | {} | {} | {:.0} | {:.2} ms | {:.2} ms | {ratio} |",
                row.workload.name(),
                row.callers,
                row.name,
                row.timed.ops_per_s(),
                row.timed.percentile_ms(0.5),
                row.timed.percentile_ms(0.99),
            );
        }
        println!();
        println!(
            "* PostgreSQL {}; one database, one run; every system runs with a pool of {PEER_POOL} connections;",
            self.server_version
        );
        println!(
            "  callers are tokio tasks; {} s per system and case, in {ROUNDS} rounds (eventfold and cqrs-es in turn,",
            self.seconds
        );
        println!(
            "  the second round reversed), each segment after a {} s warm-up.",
            WARMUP.as_secs_f64()
        );
        println!(
            "* eventfold: `Repository::<Account, PgStore>::execute(id, &Deposit, CommandMetadata::new())`"
        );
        println!("  (read the stream, `handle`, one autocommit append statement);");
        println!(
            "  \"+ outbox\": `PgStore::builder(pool).outbox(OutboxRouting::new())`, an outbox row per event in the"
        );
        println!("  same statement's transaction (no relay runs, the rows stay).");
        println!(
            "* cqrs-es 0.5 + postgres-es 0.5: `postgres_cqrs(pool, vec![], ()).execute(id, Deposit)` (read the"
        );
        println!(
            "  stream, `handle`, `BEGIN; INSERT; COMMIT`); no outbox (it has none). Tables from postgres-es's db/init.sql."
        );
        println!(
            "* existing aggregates: each caller cycles over its own {AGGREGATES_PER_CALLER}, given their first event before"
        );
        print!("  the measurement; events per stream at the end:");
        for row in self
            .rows
            .iter()
            .filter(|r| r.workload == Workload::Existing)
        {
            print!(
                " {} {} callers {:.0};",
                row.key, row.callers, row.stream_len
            );
        }
        println!("\n");
    }
}

impl PeerResults {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!(
            self.rows
                .iter()
                .map(|row| serde_json::json!({
                    "workload": row.workload.key(),
                    "callers": row.callers,
                    "system": row.key,
                    "commands_per_s": row.timed.ops_per_s().round(),
                    "p50_ms": r3(row.timed.percentile_ms(0.5)),
                    "p99_ms": r3(row.timed.percentile_ms(0.99)),
                    "ratio_vs_cqrs_es": self
                        .peer_of(row)
                        .filter(|_| !row.is_peer)
                        .map(|peer| r3(row.timed.ops_per_s() / peer.timed.ops_per_s())),
                }))
                .collect::<Vec<_>>()
        )
    }
}
