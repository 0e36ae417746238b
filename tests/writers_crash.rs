//! Crash test of plain writers on PostgreSQL (issue 18): writer processes (this test binary,
//! re-executed in child mode) run commands through `Repository::execute` and two-aggregate units
//! of work, with an outbox row written for every event, and are killed with SIGKILL at random
//! moments (one every 100 to 700 ms, a random one of the three) and replaced, again and again,
//! while three of them write at once.
//!
//! Each child runs six tasks on a pool of five connections over ten `Tally` aggregates, so
//! commands conflict and the repository retries them. Most commands carry a command id (a unit of
//! work per command, the id recorded with the events); some carry none (a single-statement
//! append). Every other child turns write coalescing on (ADR 0024, one batch in flight), and
//! sends most of its commands without an id, so that they share commits. One command in five is a unit of work that executes a
//! command on each of two aggregates (`Repository::execute_in`, one command id each) and commits
//! once. Every command carries its own id as the correlation id of its events.
//!
//! A child prints `WRITER SEND <id> <command>` (flushed) before it sends a command and
//! `WRITER ACK <id> ...` (stream versions and states) once it is acknowledged, after a random
//! pause of up to 30 ms that stands for the answer's way back to the client (a kill then leaves
//! a committed command unacknowledged); the parent reads every child's stdout. The commands a killed child had sent and not acknowledged are in doubt:
//! those with a command id are handed to its replacement, which sends them again with the same
//! id before anything else, as a client would; those without one cannot be retried safely and
//! are left as they are. After the last kill the three children each get another 30 commands
//! acknowledged, then stop, and one check of the database follows:
//!
//! - every acknowledged command is stored once, its events ending at the acknowledged version,
//!   and a fresh fold of the stream up to that version gives the acknowledged state;
//! - no command took effect twice (retried in-doubt ones exactly once, in-doubt ones without an
//!   id at most once), and every stored event belongs to a command that was sent;
//! - every stream's versions are 1..n without gaps;
//! - a unit of work is all or nothing, and its events and command records are one transaction;
//! - every event has exactly one outbox row and no outbox row lacks its event (nothing
//!   uncommitted can be published), and each key's rows are in stream version order;
//! - the global log reads every event exactly once, in ascending checkpoint order, each stream
//!   in version order;
//! - each aggregate loaded by the repository equals the fold of the commands that took effect.
//!
//! `EVENTFOLD_WRITER_CRASH_KILLS` sets the number of children killed and replaced (default 6;
//! `scripts/faults.sh --long` sets 40), `EVENTFOLD_WRITER_CRASH_SEED` the seed of the kills'
//! timing and victims (printed by every run).
#![cfg(feature = "postgres")]
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::crash::Rng;
use eventfold::CommandMetadata;
use eventfold::eventstore::contract::{OverCap, Tally, TallyCommand};
use eventfold::eventstore::postgres::PgStore;
use eventfold::eventstore::{
    Checkpoint, Coalescing, EventStore, ExecuteError, LogFilter, OutboxRouting, Repository,
    UnitOfWork,
};
use uuid::Uuid;

/// This test's name: the children run it again, in child mode.
const TEST_NAME: &str = "killed_writers_lose_nothing_and_apply_each_command_once";
const NAME_ENV: &str = "EVENTFOLD_WRITER_CRASH_CHILD";
const DATABASE_ENV: &str = "EVENTFOLD_WRITER_CRASH_DATABASE_URL";
const COALESCE_ENV: &str = "EVENTFOLD_WRITER_CRASH_COALESCE";
const STOP_ENV: &str = "EVENTFOLD_WRITER_CRASH_STOP";
const RETRY_ENV: &str = "EVENTFOLD_WRITER_CRASH_RETRY";
const KILLS_ENV: &str = "EVENTFOLD_WRITER_CRASH_KILLS";
const SEED_ENV: &str = "EVENTFOLD_WRITER_CRASH_SEED";
/// Children killed and replaced, unless `EVENTFOLD_WRITER_CRASH_KILLS` says otherwise.
const KILLS: usize = 6;
/// Writer processes running at once.
const CHILDREN: usize = 3;
/// Command tasks per child.
const TASKS: usize = 6;
/// Connections per child (fewer than tasks: tasks also wait for connections).
const CONNECTIONS: u32 = 5;
/// The aggregates every child writes to: `tally-a0` ... `tally-a9`.
const AGGREGATES: usize = 10;
/// Percent of new commands that are two-aggregate units of work.
const UNIT_PERCENT: u64 = 20;
/// Commands each surviving child gets acknowledged after the last kill, before it stops.
const FINAL_ACKS: usize = 30;
/// The marker of the lines a child prints for the parent.
const MARK: &str = "WRITER ";

// ---------------------------------------------------------------------------------------------
// Commands, as children print them and the parent reads them

/// What a command does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Spec {
    /// `AddMany(values)` on one aggregate, with the command id or without (`plain`).
    Single {
        agg: usize,
        plain: bool,
        values: Vec<u64>,
    },
    /// One unit of work: `AddMany(va)` on aggregate `a` with the command id, `AddMany(vb)` on
    /// aggregate `b` (`a < b`) with the [`second_id`] of it, one commit.
    Unit {
        a: usize,
        va: Vec<u64>,
        b: usize,
        vb: Vec<u64>,
    },
}

/// One aggregate's share of a command: the aggregate, the values added, the command id recorded
/// (`None`: a command without an id).
struct Part<'a> {
    agg: usize,
    values: &'a [u64],
    command_id: Option<Uuid>,
}

impl Spec {
    fn parts(&self, id: Uuid) -> Vec<Part<'_>> {
        match self {
            Spec::Single { agg, plain, values } => vec![Part {
                agg: *agg,
                values,
                command_id: (!plain).then_some(id),
            }],
            Spec::Unit { a, va, b, vb } => vec![
                Part {
                    agg: *a,
                    values: va,
                    command_id: Some(id),
                },
                Part {
                    agg: *b,
                    values: vb,
                    command_id: Some(second_id(id)),
                },
            ],
        }
    }

    fn idempotent(&self) -> bool {
        !matches!(self, Spec::Single { plain: true, .. })
    }

    fn is_unit(&self) -> bool {
        matches!(self, Spec::Unit { .. })
    }

    fn parse(s: &str) -> Option<Spec> {
        let words: Vec<&str> = s.split_whitespace().collect();
        match words.as_slice() {
            ["single", agg, mode, values] => Some(Spec::Single {
                agg: agg.parse().ok()?,
                plain: match *mode {
                    "plain" => true,
                    "id" => false,
                    _ => return None,
                },
                values: parse_values(values)?,
            }),
            ["unit", a, va, b, vb] => Some(Spec::Unit {
                a: a.parse().ok()?,
                va: parse_values(va)?,
                b: b.parse().ok()?,
                vb: parse_values(vb)?,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Spec::Single { agg, plain, values } => write!(
                f,
                "single {agg} {} {}",
                if *plain { "plain" } else { "id" },
                join_values(values)
            ),
            Spec::Unit { a, va, b, vb } => {
                write!(f, "unit {a} {} {b} {}", join_values(va), join_values(vb))
            }
        }
    }
}

fn join_values(values: &[u64]) -> String {
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_values(s: &str) -> Option<Vec<u64>> {
    let values = s
        .split(',')
        .map(|v| v.parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    (!values.is_empty()).then_some(values)
}

/// The command id of a unit of work's second command.
fn second_id(id: Uuid) -> Uuid {
    Uuid::from_u128(id.as_u128() ^ 1)
}

fn agg_id(agg: usize) -> String {
    format!("a{agg}")
}

/// What an acknowledgement says about one aggregate of the command.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AckPart {
    agg: usize,
    version: u64,
    total: u64,
    applied: u64,
    deduplicated: bool,
}

impl fmt::Display for AckPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}:{}",
            self.agg,
            self.version,
            self.total,
            self.applied,
            u8::from(self.deduplicated)
        )
    }
}

impl AckPart {
    fn parse(s: &str) -> Option<AckPart> {
        let fields: Vec<&str> = s.split(':').collect();
        let [agg, version, total, applied, dedup] = fields.as_slice() else {
            return None;
        };
        Some(AckPart {
            agg: agg.parse().ok()?,
            version: version.parse().ok()?,
            total: total.parse().ok()?,
            applied: applied.parse().ok()?,
            deduplicated: match *dedup {
                "1" => true,
                "0" => false,
                _ => return None,
            },
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Child mode

/// Prints one line for the parent, flushed before the caller goes on.
fn say(line: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MARK}{line}").expect("write to the parent");
    out.flush().expect("flush to the parent");
}

struct Ctx {
    store: PgStore,
    repo: Repository<Tally, PgStore>,
    coalescing: bool,
    stop: PathBuf,
    /// In-doubt commands handed over by the parent: sent again before anything new.
    retries: Mutex<VecDeque<(Uuid, Spec)>>,
}

fn new_spec(rng: &mut Rng, coalescing: bool) -> Spec {
    let values =
        |rng: &mut Rng| -> Vec<u64> { (0..1 + rng.below(3)).map(|_| 1 + rng.below(9)).collect() };
    if rng.below(100) < UNIT_PERCENT {
        let a = rng.below(AGGREGATES as u64) as usize;
        let b = (a + 1 + rng.below(AGGREGATES as u64 - 1) as usize) % AGGREGATES;
        // Always the lower aggregate first: two units never wait for each other in a cycle.
        let (a, b) = (a.min(b), a.max(b));
        return Spec::Unit {
            a,
            va: values(rng),
            b,
            vb: values(rng),
        };
    }
    // Children with coalescing send most commands without an id: those go through the shared
    // commits; the others send a few.
    let plain = rng.below(10) < if coalescing { 7 } else { 2 };
    Spec::Single {
        agg: rng.below(AGGREGATES as u64) as usize,
        plain,
        values: values(rng),
    }
}

async fn run_single(
    ctx: &Ctx,
    id: Uuid,
    agg: usize,
    plain: bool,
    values: &[u64],
) -> Result<Vec<AckPart>, String> {
    let mut meta = CommandMetadata::new().correlation_id(id);
    if !plain {
        meta = meta.command_id(id);
    }
    let done = ctx
        .repo
        .execute(&agg_id(agg), &TallyCommand::AddMany(values.to_vec()), meta)
        .await
        .map_err(|e| format!("{e} ({e:?})"))?;
    Ok(vec![AckPart {
        agg,
        version: done.version,
        total: done.state.total,
        applied: done.state.applied,
        deduplicated: done.deduplicated,
    }])
}

/// One attempt of a unit of work: a command on each of two aggregates, one commit.
async fn unit_once(
    ctx: &Ctx,
    id: Uuid,
    parts: [(usize, &[u64], Uuid); 2],
) -> Result<Vec<AckPart>, ExecuteError<OverCap>> {
    let mut uow = ctx.store.begin().await?;
    let mut acks = Vec::new();
    for (agg, values, command_id) in parts {
        let meta = CommandMetadata::new()
            .command_id(command_id)
            .correlation_id(id);
        let done = match ctx
            .repo
            .execute_in(
                &mut uow,
                &agg_id(agg),
                &TallyCommand::AddMany(values.to_vec()),
                meta,
            )
            .await
        {
            Ok(done) => done,
            Err(e) => {
                let _ = uow.rollback().await;
                return Err(e);
            }
        };
        acks.push(AckPart {
            agg,
            version: done.version,
            total: done.state.total,
            applied: done.state.applied,
            deduplicated: done.deduplicated,
        });
    }
    uow.commit().await?;
    Ok(acks)
}

/// A unit of work, tried again (same command ids) after a version conflict or a transient
/// failure, as an application would.
async fn run_unit(
    ctx: &Ctx,
    id: Uuid,
    (a, va): (usize, &[u64]),
    (b, vb): (usize, &[u64]),
) -> Result<Vec<AckPart>, String> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match unit_once(ctx, id, [(a, va, id), (b, vb, second_id(id))]).await {
            Ok(acks) => return Ok(acks),
            Err(e) => {
                let retriable = match &e {
                    ExecuteError::Conflict { .. } => true,
                    ExecuteError::Store(s) => s.is_conflict() || s.is_retriable(),
                    _ => false,
                };
                if !retriable || attempt >= 100 {
                    return Err(format!(
                        "unit of work failed after {attempt} attempt(s): {e} ({e:?})"
                    ));
                }
                let pause = 2u64 << attempt.min(6);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }
}

async fn writer_task(ctx: Arc<Ctx>, seed: u64) -> Result<usize, String> {
    let mut rng = Rng::new(seed);
    let mut done = 0;
    loop {
        let retry = ctx.retries.lock().expect("the retries").pop_front();
        let (id, spec) = match retry {
            Some(retry) => retry,
            None if ctx.stop.exists() => return Ok(done),
            None => (Uuid::now_v7(), new_spec(&mut rng, ctx.coalescing)),
        };
        say(format_args!("SEND {id} {spec}"));
        let acked = match &spec {
            Spec::Single { agg, plain, values } => run_single(&ctx, id, *agg, *plain, values).await,
            Spec::Unit { a, va, b, vb } => {
                run_unit(&ctx, id, (*a, va.as_slice()), (*b, vb.as_slice())).await
            }
        };
        match acked {
            Ok(parts) => {
                // The answer's way back to the client: a kill in this window leaves a command
                // that committed unacknowledged, which its retry must not apply again.
                tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
                let parts: Vec<String> = parts.iter().map(AckPart::to_string).collect();
                say(format_args!("ACK {id} {}", parts.join(",")));
                done += 1;
            }
            Err(e) => {
                say(format_args!("ERR {id} {}", e.replace('\n', " ")));
                return Err(format!("command {id} ({spec}) failed: {e}"));
            }
        }
    }
}

/// A writer process: runs commands until the stop file exists (and its retries are done), or
/// until it is killed.
fn child(name: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the child's runtime");
    runtime.block_on(async {
        let url = std::env::var(DATABASE_ENV).expect("the database of the child");
        let coalescing = std::env::var(COALESCE_ENV).is_ok_and(|v| v == "1");
        let stop = PathBuf::from(std::env::var(STOP_ENV).expect("the stop file"));
        let retries: VecDeque<(Uuid, Spec)> = std::env::var(RETRY_ENV)
            .unwrap_or_default()
            .split(';')
            .filter(|entry| !entry.trim().is_empty())
            .map(|entry| {
                let (id, spec) = entry.trim().split_once(' ').expect("`<id> <command>`");
                (
                    id.parse().expect("a command id"),
                    Spec::parse(spec).expect("a command"),
                )
            })
            .collect();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(CONNECTIONS)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{name}: connecting to {url}: {e}"));
        // The parent migrated the database.
        let mut builder = PgStore::builder(pool)
            .source("writers")
            .migrate(false)
            .outbox(OutboxRouting::new());
        if coalescing {
            // One batch in flight at a time: appends queue behind it and share the next commit.
            builder = builder.coalescing(Coalescing::default().max_in_flight(1));
        }
        let store = builder
            .build()
            .await
            .unwrap_or_else(|e| panic!("{name}: the store: {e}"));
        let repo = Repository::<Tally, _>::new(store.clone())
            .with_max_attempts(100)
            .with_max_transient_attempts(30);
        let handed = retries.len();
        let ctx = Arc::new(Ctx {
            store,
            repo,
            coalescing,
            stop,
            retries: Mutex::new(retries),
        });
        say(format_args!(
            "STARTED {name} coalescing={coalescing} retries={handed}"
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..TASKS {
            tasks.spawn(writer_task(ctx.clone(), common::crash::random_seed()));
        }
        let mut commands = 0;
        while let Some(task) = tasks.join_next().await {
            match task.expect("a writer task") {
                Ok(n) => commands += n,
                Err(e) => panic!("{name}: {e}"),
            }
        }
        say(format_args!("DONE {name} commands={commands}"));
    });
}

// ---------------------------------------------------------------------------------------------
// The parent: what the children said

/// Everything the children printed, and what the parent did with it.
#[derive(Default)]
struct Ledger {
    /// Every command sent, by id.
    specs: HashMap<Uuid, Spec>,
    /// The acknowledgements of each command, with the child that printed it.
    acks: HashMap<Uuid, Vec<(String, Vec<AckPart>)>>,
    /// Per child: the commands it sent or was handed and has not acknowledged.
    open: HashMap<String, BTreeSet<Uuid>>,
    /// Per child: its acknowledgements so far.
    acked_by: HashMap<String, usize>,
    /// Commands in doubt at some kill.
    in_doubt: HashSet<Uuid>,
    /// In-doubt commands handed to a replacement to send again.
    handed: HashSet<Uuid>,
    /// `ERR` lines, malformed lines, contradictions.
    problems: Vec<String>,
    /// Children that printed `DONE`.
    done: HashSet<String>,
}

impl Ledger {
    fn line(&mut self, child: &str, line: &str) {
        let Some(at) = line.find(MARK) else { return };
        let text = &line[at + MARK.len()..];
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        match word {
            "STARTED" => {}
            "DONE" => {
                self.done.insert(child.to_owned());
            }
            "SEND" => {
                let Some((id, spec)) = rest.split_once(' ') else {
                    return self.problem(child, text);
                };
                let (Ok(id), Some(spec)) = (id.parse::<Uuid>(), Spec::parse(spec)) else {
                    return self.problem(child, text);
                };
                let known = self.specs.entry(id).or_insert_with(|| spec.clone());
                if *known != spec {
                    self.problems.push(format!(
                        "{child} sent command {id} as `{spec}`, it was `{known}`"
                    ));
                }
                self.open.entry(child.to_owned()).or_default().insert(id);
            }
            "ACK" => {
                let Some((id, parts)) = rest.split_once(' ') else {
                    return self.problem(child, text);
                };
                let (Ok(id), Some(parts)) = (
                    id.parse::<Uuid>(),
                    parts
                        .split(',')
                        .map(AckPart::parse)
                        .collect::<Option<Vec<_>>>(),
                ) else {
                    return self.problem(child, text);
                };
                if !self.open.entry(child.to_owned()).or_default().remove(&id) {
                    self.problems
                        .push(format!("{child} acknowledged {id}, which it had not sent"));
                }
                *self.acked_by.entry(child.to_owned()).or_default() += 1;
                self.acks
                    .entry(id)
                    .or_default()
                    .push((child.to_owned(), parts));
            }
            "ERR" => self
                .problems
                .push(format!("{child}: a command failed: {rest}")),
            _ => self.problem(child, text),
        }
    }

    fn problem(&mut self, child: &str, text: &str) {
        self.problems
            .push(format!("{child} printed a malformed line: {text:?}"));
    }
}

type Shared = Arc<Mutex<Ledger>>;

fn lock(ledger: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().expect("the ledger")
}

/// A writer process; killed (SIGKILL) when dropped.
struct Writer {
    child: Child,
    name: String,
    started_at: Instant,
    /// Disconnected once the reader of its stdout has read the last line.
    eof: std::sync::mpsc::Receiver<()>,
}

impl Writer {
    /// Starts child `n` (coalescing when `n` is even), handing it the commands `retries` to send
    /// again, and waits for it to start.
    fn spawn(n: usize, url: &str, stop: &Path, ledger: &Shared, retries: &[(Uuid, Spec)]) -> Self {
        let name = format!("w{n}");
        lock(ledger)
            .open
            .entry(name.clone())
            .or_default()
            .extend(retries.iter().map(|(id, _)| *id));
        let retry_env: Vec<String> = retries
            .iter()
            .map(|(id, spec)| format!("{id} {spec}"))
            .collect();
        let (eof_tx, eof) = std::sync::mpsc::channel::<()>();
        let (reader_ledger, reader_name) = (ledger.clone(), name.clone());
        let (child, _line) = common::spawn_until_started(
            common::crash::child_command(TEST_NAME)
                .env(NAME_ENV, &name)
                .env(DATABASE_ENV, url)
                .env(COALESCE_ENV, if n % 2 == 0 { "1" } else { "0" })
                .env(STOP_ENV, stop)
                .env(RETRY_ENV, retry_env.join(";")),
            &format!("writer {name}"),
            Duration::from_secs(60),
            // Called with every line of the child's stdout, on the thread that reads it; the
            // closure (and `eof_tx` with it) is dropped when that thread has read the last line.
            move |line| {
                let _keep_until_eof = &eof_tx;
                let started = line.contains(&format!("{MARK}STARTED {reader_name} "));
                lock(&reader_ledger).line(&reader_name, line);
                started
            },
        );
        Self {
            child,
            name,
            started_at: Instant::now(),
            eof,
        }
    }

    /// Waits until every line the child printed has been read.
    fn drain(&self) {
        match self.eof.recv_timeout(Duration::from_secs(30)) {
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
            other => panic!(
                "the stdout of {} did not end within 30 s: {other:?}",
                self.name
            ),
        }
    }

    fn kill(mut self) -> String {
        self.child.kill().expect("SIGKILL a writer");
        let _ = self.child.wait();
        self.drain();
        std::mem::take(&mut self.name)
    }

    /// Waits (at most `wait`) for the child to exit by itself.
    fn finish(&mut self, wait: Duration) -> ExitStatus {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().expect("the writer's status") {
                self.drain();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within {} s of the stop file",
                self.name,
                wait.as_secs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deletes the stop file when dropped.
struct StopFile(PathBuf);

impl Drop for StopFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: the check of the database

/// One stored event.
struct Stored {
    position: u64,
    event_id: Uuid,
    stream: String,
    version: u64,
    n: Option<u64>,
    correlation: Uuid,
    xid: i64,
}

/// What the check counted.
struct Checked {
    acked: usize,
    in_doubt_retried: usize,
    in_doubt_committed_before_kill: usize,
    plain_in_doubt: usize,
    plain_in_doubt_stored: usize,
    events: usize,
    units: usize,
    shared_commits: usize,
}

/// Fails the test when `problems` is not empty, naming `what` and the first ten.
fn assert_none(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} {what}:\n  {}",
        problems.len(),
        problems
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// An event as read from the table: global position, event id, stream type, stream id, version,
/// event type, payload, correlation id, and the id of the transaction that wrote it (`xmin`).
type EventRow = (i64, Uuid, String, String, i64, String, Vec<u8>, Uuid, i64);

async fn check(store: &PgStore, ledger: &Ledger) -> Checked {
    let pool = store.pool();
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT global_position, event_id, stream_type, stream_id, stream_version, \
                    event_type, payload, correlation_id, xmin::text::bigint \
             FROM eventfold_events ORDER BY global_position",
    )
    .fetch_all(pool)
    .await
    .expect("read the events");
    let mut unknown = Vec::new();
    let events: Vec<Stored> = rows
        .into_iter()
        .map(
            |(
                position,
                event_id,
                stream_type,
                stream,
                version,
                event_type,
                payload,
                correlation,
                xid,
            )| {
                let n = serde_json::from_slice::<serde_json::Value>(&payload)
                    .ok()
                    .and_then(|v| v["n"].as_u64());
                if stream_type != "tally" || event_type != "tally.added" || n.is_none() {
                    unknown.push(format!(
                        "event {position}: {event_type} in {stream_type}-{stream}"
                    ));
                }
                Stored {
                    position: position as u64,
                    event_id,
                    stream,
                    version: version as u64,
                    n,
                    correlation,
                    xid,
                }
            },
        )
        .collect();
    assert_none("events that no writer appends", &unknown);

    // Every stream's versions are 1..n; the totals after each version (a fresh fold).
    let mut streams: BTreeMap<&str, Vec<&Stored>> = BTreeMap::new();
    for e in &events {
        streams.entry(e.stream.as_str()).or_default().push(e);
    }
    let mut gaps = Vec::new();
    let mut totals: HashMap<&str, Vec<u64>> = HashMap::new();
    for (stream, list) in &mut streams {
        list.sort_by_key(|e| e.version);
        let versions: Vec<u64> = list.iter().map(|e| e.version).collect();
        if versions != (1..=list.len() as u64).collect::<Vec<_>>() {
            gaps.push(format!("{stream}: versions {versions:?}"));
        }
        let mut total = vec![0];
        for e in list.iter() {
            total.push(total[total.len() - 1] + e.n.unwrap_or(0));
        }
        totals.insert(stream, total);
    }
    assert_none("streams with version gaps", &gaps);

    // Each command's events, by correlation id and stream.
    let mut by_command: HashMap<(Uuid, String), Vec<&Stored>> = HashMap::new();
    for e in &events {
        by_command
            .entry((e.correlation, e.stream.clone()))
            .or_default()
            .push(e);
    }
    let records: Vec<(Uuid, String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT command_id, stream_type, stream_id, version_before, version_after, \
                xmin::text::bigint FROM eventfold_commands",
    )
    .fetch_all(pool)
    .await
    .expect("read the command records");
    let mut records: HashMap<Uuid, (String, u64, u64, i64)> = records
        .into_iter()
        .map(|(id, _, stream, before, after, xid)| (id, (stream, before as u64, after as u64, xid)))
        .collect();

    let (mut lost, mut twice, mut torn, mut wrong, mut acks_wrong, mut unacked) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut records_wrong = Vec::new();
    let mut expected_totals: HashMap<String, u64> = HashMap::new();
    let mut plain_xids: HashMap<i64, usize> = HashMap::new();
    let mut applied_of: HashMap<Uuid, usize> = HashMap::new();
    for (&id, spec) in &ledger.specs {
        let mut applied_parts = Vec::new();
        let mut xids = BTreeSet::new();
        for part in spec.parts(id) {
            let stream = agg_id(part.agg);
            let mut stored = by_command.remove(&(id, stream.clone())).unwrap_or_default();
            stored.sort_by_key(|e| e.version);
            if stored.len() % part.values.len() != 0 {
                torn.push(format!(
                    "{id} ({spec}): {} event(s) in {stream}, not a multiple of {}",
                    stored.len(),
                    part.values.len()
                ));
            }
            let applied = stored.len() / part.values.len();
            for chunk in stored.chunks(part.values.len()) {
                let values: Vec<u64> = chunk.iter().filter_map(|e| e.n).collect();
                let contiguous = chunk.windows(2).all(|w| w[1].version == w[0].version + 1);
                if values != part.values || !contiguous {
                    wrong.push(format!(
                        "{id} ({spec}): in {stream} at versions {:?} the values {values:?}",
                        chunk.iter().map(|e| e.version).collect::<Vec<_>>()
                    ));
                }
                xids.extend(chunk.iter().map(|e| e.xid));
            }
            if applied > 1 {
                twice.push(format!(
                    "{id} ({spec}): applied {applied} times to {stream}, at versions {:?}",
                    stored.iter().map(|e| e.version).collect::<Vec<_>>()
                ));
            }
            *expected_totals.entry(stream.clone()).or_default() +=
                part.values.iter().sum::<u64>() * applied as u64;
            if part.command_id.is_none() && applied == 1 {
                *plain_xids.entry(stored[0].xid).or_default() += 1;
            }
            // The command record commits with the events, once.
            if let Some(command_id) = part.command_id {
                match (records.remove(&command_id), stored.first(), stored.last()) {
                    (None, None, _) => {}
                    (Some((s, before, after, xid)), Some(first), Some(last)) => {
                        if s != stream || before + 1 != first.version || after != last.version {
                            records_wrong.push(format!(
                                "{id} ({spec}): command record {command_id} says {s} \
                                 {before}..{after}, its events are at {}..{}",
                                first.version, last.version
                            ));
                        }
                        xids.insert(xid);
                    }
                    (record, _, _) => records_wrong.push(format!(
                        "{id} ({spec}): {} event(s) in {stream} but command record {record:?}",
                        stored.len()
                    )),
                }
            }
            applied_parts.push((part.agg, applied, stored));
        }
        let applied = applied_parts[0].1;
        if applied_parts.iter().any(|(_, a, _)| *a != applied) {
            torn.push(format!(
                "{id} ({spec}): applied {:?} times per aggregate",
                applied_parts
                    .iter()
                    .map(|(agg, a, _)| (agg_id(*agg), *a))
                    .collect::<Vec<_>>()
            ));
        }
        // A command's events and command records commit in one transaction; for a unit of
        // work, on both aggregates.
        if applied == 1 && xids.len() != 1 {
            torn.push(format!(
                "{id} ({spec}): its events and command records were written by {} \
                 transactions {xids:?}, not one",
                xids.len()
            ));
        }
        applied_of.insert(id, applied);

        // An acknowledged command is stored once, where and as its acknowledgement says.
        let acks = ledger.acks.get(&id).map_or(&[][..], Vec::as_slice);
        if acks.len() > 1 {
            acks_wrong.push(format!(
                "{id} ({spec}) was acknowledged {} times",
                acks.len()
            ));
        }
        if let Some((child, parts)) = acks.first() {
            if applied == 0 {
                lost.push(format!(
                    "{id} ({spec}), acknowledged by {child} as {parts:?}, is not stored"
                ));
            }
            if parts.len() != applied_parts.len() {
                acks_wrong.push(format!("{id} ({spec}): acknowledged as {parts:?}"));
            }
            for (ack, (agg, _, stored)) in parts.iter().zip(&applied_parts) {
                let stream = agg_id(*agg);
                let fold = totals
                    .get(stream.as_str())
                    .and_then(|t| t.get(ack.version as usize).copied());
                if ack.agg != *agg
                    || stored.last().map(|e| e.version) != Some(ack.version)
                    || fold != Some(ack.total)
                    || ack.applied != ack.version
                {
                    acks_wrong.push(format!(
                        "{id} ({spec}): acknowledged by {child} as {ack}, but its events in \
                         {stream} are at {:?} and a fresh fold to that version gives {fold:?}",
                        stored.iter().map(|e| e.version).collect::<Vec<_>>()
                    ));
                }
            }
        } else if ledger.handed.contains(&id) {
            unacked.push(format!(
                "{id} ({spec}) was handed over and never acknowledged"
            ));
        } else if !ledger.in_doubt.contains(&id) {
            unacked.push(format!(
                "{id} ({spec}) was sent by a child that was not killed and never acknowledged"
            ));
        }
    }
    let mut orphans: Vec<String> = by_command
        .iter()
        .map(|((id, stream), list)| {
            format!(
                "{} event(s) in {stream} of command {id}, never sent",
                list.len()
            )
        })
        .collect();
    orphans.extend(
        records
            .iter()
            .map(|(id, record)| format!("command record {id} {record:?} of no command sent")),
    );
    assert_none("acknowledged commands lost", &lost);
    assert_none("commands applied twice", &twice);
    assert_none("torn commands or units of work", &torn);
    assert_none("commands stored with other values", &wrong);
    assert_none(
        "commands whose command record does not match their events",
        &records_wrong,
    );
    assert_none("acknowledgements that the store contradicts", &acks_wrong);
    assert_none("commands never settled", &unacked);
    assert_none("stored things no command sent", &orphans);

    // Every event has exactly one outbox row, no outbox row lacks its event, and each key's rows
    // are in version order.
    let outbox: Vec<(i64, Uuid, String, String, Option<String>)> = sqlx::query_as(
        "SELECT seq, id, aggregatetype, aggregateid, headers->>'ce_streamversion' \
         FROM eventfold_outbox ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .expect("read the outbox");
    let by_id: HashMap<Uuid, &Stored> = events.iter().map(|e| (e.event_id, e)).collect();
    let (mut orphan_rows, mut order) = (Vec::new(), Vec::new());
    let mut rows_of: HashMap<Uuid, usize> = HashMap::new();
    let mut last_of_key: HashMap<&str, u64> = HashMap::new();
    for (seq, id, aggregate_type, key, version) in &outbox {
        let Some(event) = by_id.get(id) else {
            orphan_rows.push(format!("outbox row {seq} ({id}, key {key}) has no event"));
            continue;
        };
        *rows_of.entry(*id).or_default() += 1;
        let version: Option<u64> = version.as_deref().and_then(|v| v.parse().ok());
        if aggregate_type != "tally" || *key != event.stream || version != Some(event.version) {
            orphan_rows.push(format!(
                "outbox row {seq} ({id}): tally {key} version {version:?}, its event is {} \
                 version {}",
                event.stream, event.version
            ));
        }
        let last = last_of_key.entry(key.as_str()).or_default();
        if event.version <= *last {
            order.push(format!(
                "key {key}: outbox row {seq} carries version {} after version {last}",
                event.version
            ));
        }
        *last = event.version;
    }
    assert_none("outbox rows without their event", &orphan_rows);
    assert_none("outbox rows out of version order", &order);
    let missing: Vec<String> = events
        .iter()
        .filter(|e| rows_of.get(&e.event_id) != Some(&1))
        .map(|e| {
            format!(
                "event {} ({} version {}) has {} outbox row(s)",
                e.position,
                e.stream,
                e.version,
                rows_of.get(&e.event_id).copied().unwrap_or(0)
            )
        })
        .collect();
    assert_none("events without exactly one outbox row", &missing);

    // The global log reads every event exactly once, in ascending checkpoint order.
    let mut after = Checkpoint::START;
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut stream_at: HashMap<String, u64> = HashMap::new();
    let mut log_problems = Vec::new();
    let held_back_until = Instant::now() + Duration::from_secs(60);
    loop {
        let batch = store
            .read_log(after, 257, &LogFilter::all())
            .await
            .expect("read the log");
        for e in &batch.events {
            if e.checkpoint <= after {
                log_problems.push(format!(
                    "position {} at checkpoint {} after {after}",
                    e.event.global_position, e.checkpoint
                ));
            }
            after = e.checkpoint;
            *seen.entry(e.event.global_position).or_default() += 1;
            let at = stream_at
                .entry(e.event.stream_id.id().to_owned())
                .or_default();
            if e.event.stream_version != *at + 1 {
                log_problems.push(format!(
                    "{}: version {} read after version {at}",
                    e.event.stream_id, e.event.stream_version
                ));
            }
            *at = e.event.stream_version;
        }
        assert!(batch.checkpoint >= after, "the log's checkpoint went back");
        after = batch.checkpoint;
        if batch.reached_end && batch.events.is_empty() {
            if !batch.held_back {
                break;
            }
            // The horizon is the server's: a transaction of another test's database may hold
            // the last events back for a while.
            assert!(
                Instant::now() < held_back_until,
                "the log stayed held back for 60 s: {:?}",
                store.log_head().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for e in &events {
        match seen.remove(&e.position) {
            Some(1) => {}
            n => log_problems.push(format!(
                "event {} ({} version {}) read {} time(s)",
                e.position,
                e.stream,
                e.version,
                n.unwrap_or(0)
            )),
        }
    }
    log_problems.extend(
        seen.keys()
            .map(|p| format!("the log read position {p}, which is not stored")),
    );
    assert_none("global log problems", &log_problems);

    // Each aggregate, loaded afresh, is the fold of the commands that took effect.
    let repo = Repository::<Tally, _>::new(store.clone());
    let mut folds = Vec::new();
    for agg in 0..AGGREGATES {
        let stream = agg_id(agg);
        let loaded = repo.load(&stream).await.expect("load an aggregate");
        let events = streams.get(stream.as_str()).map_or(0, Vec::len) as u64;
        let expected = expected_totals.get(&stream).copied().unwrap_or(0);
        if (loaded.version, loaded.state.applied, loaded.state.total) != (events, events, expected)
        {
            folds.push(format!(
                "{stream}: loaded version {} applied {} total {}; {events} events, the commands \
                 that took effect add up to {expected}",
                loaded.version, loaded.state.applied, loaded.state.total
            ));
        }
    }
    assert_none("aggregates whose fold differs from their commands", &folds);

    let retried: Vec<Uuid> = ledger
        .handed
        .iter()
        .filter(|id| ledger.acks.contains_key(id))
        .copied()
        .collect();
    let plain_in_doubt: Vec<Uuid> = ledger
        .in_doubt
        .iter()
        .filter(|id| !ledger.specs[*id].idempotent())
        .copied()
        .collect();
    Checked {
        acked: ledger.acks.len(),
        in_doubt_retried: retried.len(),
        in_doubt_committed_before_kill: retried
            .iter()
            .filter(|id| {
                ledger.acks[id]
                    .iter()
                    .all(|(_, parts)| parts.iter().all(|p| p.deduplicated))
            })
            .count(),
        plain_in_doubt: plain_in_doubt.len(),
        plain_in_doubt_stored: plain_in_doubt
            .iter()
            .filter(|id| applied_of.get(id) == Some(&1))
            .count(),
        events: events.len(),
        units: ledger.specs.values().filter(|s| s.is_unit()).count(),
        shared_commits: plain_xids.values().filter(|n| **n > 1).count(),
    }
}

// ---------------------------------------------------------------------------------------------
// The test

#[test]
fn killed_writers_lose_nothing_and_apply_each_command_once() {
    if let Ok(name) = std::env::var(NAME_ENV) {
        return child(&name);
    }
    let kills = common::env_number(KILLS_ENV, KILLS);
    assert!(kills >= 1, "{KILLS_ENV} must be at least 1");
    let (seed, mut rng) = Rng::from_env(SEED_ENV);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (store, db) = runtime.block_on(common::postgres());
    // Units of work and shared commits can wait for each other's rows: find deadlocks fast.
    runtime.block_on(async {
        sqlx::query(&format!(
            "ALTER DATABASE \"{}\" SET deadlock_timeout = '100ms'",
            db.name()
        ))
        .execute(db.pool())
        .await
        .expect("set deadlock_timeout");
    });
    let url = common::database_url(db.name());
    let stop = StopFile(std::env::temp_dir().join(format!(
        "eventfold-writers-crash-{}.stop",
        Uuid::now_v7().simple()
    )));
    eprintln!(
        "writers crash: seed {seed}, {kills} kills, {CHILDREN} children of {TASKS} tasks on \
         {CONNECTIONS} connections, {AGGREGATES} aggregates"
    );
    let began = Instant::now();
    let ledger: Shared = Arc::default();
    let mut spawned = 0;
    let mut live: Vec<Writer> = Vec::new();
    for _ in 0..CHILDREN {
        live.push(Writer::spawn(spawned, &url, &stop.0, &ledger, &[]));
        spawned += 1;
    }

    for kill in 1..=kills {
        std::thread::sleep(Duration::from_millis(100 + rng.below(600)));
        let slot = rng.below(CHILDREN as u64) as usize;
        let victim = live.remove(slot);
        let lived = victim.started_at.elapsed();
        let name = victim.kill();
        let retries: Vec<(Uuid, Spec)> = {
            let mut ledger = lock(&ledger);
            let open = ledger.open.remove(&name).unwrap_or_default();
            let mut retries = Vec::new();
            for id in open {
                ledger.in_doubt.insert(id);
                let spec = ledger.specs.get(&id).cloned();
                match spec {
                    Some(spec) if spec.idempotent() => {
                        ledger.handed.insert(id);
                        retries.push((id, spec));
                    }
                    Some(_) => {}
                    // Every open command was sent once (a handed one by an earlier child).
                    None => panic!("{id} is open at {name} but was never sent"),
                }
            }
            retries
        };
        eprintln!(
            "kill {kill}: {name} after {} ms, {} command(s) in doubt handed to w{spawned}",
            lived.as_millis(),
            retries.len()
        );
        live.insert(
            slot,
            Writer::spawn(spawned, &url, &stop.0, &ledger, &retries),
        );
        spawned += 1;
    }

    // The survivors each get more commands acknowledged, then stop.
    let base: Vec<usize> = {
        let ledger = lock(&ledger);
        live.iter()
            .map(|w| ledger.acked_by.get(&w.name).copied().unwrap_or(0))
            .collect()
    };
    let mut progress = (0, Instant::now());
    loop {
        let acked: Vec<usize> = {
            let ledger = lock(&ledger);
            live.iter()
                .map(|w| ledger.acked_by.get(&w.name).copied().unwrap_or(0))
                .collect()
        };
        if acked.iter().zip(&base).all(|(a, b)| *a >= b + FINAL_ACKS) {
            break;
        }
        let sum: usize = acked.iter().sum();
        if sum > progress.0 {
            progress = (sum, Instant::now());
        }
        assert!(
            progress.1.elapsed() < Duration::from_secs(60),
            "the writers made no progress for 60 s (acknowledged {acked:?}, from {base:?}): {:?}",
            lock(&ledger).problems
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&stop.0, b"stop").expect("write the stop file");
    for writer in &mut live {
        let status = writer.finish(Duration::from_secs(120));
        assert!(
            status.success(),
            "{} exited with {status}: {:?}",
            writer.name,
            lock(&ledger).problems
        );
    }
    let written = began.elapsed();
    let ledger = std::mem::take(&mut *lock(&ledger));
    assert_none("problems reported by the writers", &ledger.problems);
    for writer in &live {
        assert!(
            ledger.done.contains(&writer.name),
            "{} exited without finishing",
            writer.name
        );
    }
    drop(live);

    let checked = runtime.block_on(async {
        // The sessions of killed children end by themselves; wait until none is busy.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let busy: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND backend_type = 'client backend' \
                 AND state <> 'idle'",
            )
            .fetch_one(store.pool())
            .await
            .expect("the sessions");
            if busy == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{busy} session(s) of killed writers still busy after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        check(&store, &ledger).await
    });
    eprintln!(
        "writers crash: {} commands sent ({} units of work), {} events in {:.1} s; {} in doubt \
         at kills: {} retried ({} had committed before the kill), {} without an id not retried \
         ({} of them stored); {} shared commits of commands without an id",
        ledger.specs.len(),
        checked.units,
        checked.events,
        written.as_secs_f64(),
        ledger.in_doubt.len(),
        checked.in_doubt_retried,
        checked.in_doubt_committed_before_kill,
        checked.plain_in_doubt,
        checked.plain_in_doubt_stored,
        checked.shared_commits,
    );
    println!(
        "FAULTS fault=sigkill component=writers injected=kills:{kills} \
         checked=acked_commands:{},in_doubt_retried:{},lost:0,applied_twice:0,version_gaps:0,\
         torn_units:0,orphan_outbox_rows:0 result=pass",
        checked.acked, checked.in_doubt_retried
    );
}
