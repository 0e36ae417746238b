//! The embeddable command line (feature `cli`): operate projections, the outbox and the
//! migrations of a service from its own binary, or from the standalone `eventfold` binary.
//!
//! An application flattens [`Command`] into its own clap parser (or uses [`Cli`] as it is) and
//! hands it its registry of projections, which carries the store:
//!
//! ```no_run
//! use clap::Parser;
//! use eventfold::eventstore::sqlite::SqliteStore;
//! use eventfold::projections::Projections;
//!
//! #[derive(Parser)]
//! enum Admin {
//!     /// the application's own commands ...
//!     Serve,
//!     #[command(flatten)]
//!     Eventfold(eventfold::cli::Command),
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     let Ok(store) = SqliteStore::connect("sqlite://app.db").await else { return 1.into() };
//!     let projections = Projections::new(store); // .register(OrderTotals)...
//!     match Admin::parse() {
//!         Admin::Serve => std::process::ExitCode::SUCCESS,
//!         Admin::Eventfold(command) => command.run(&projections).await,
//!     }
//! }
//! ```
//!
//! That gives the application `migrate`, `status`, `projections ...` and `outbox ...` beside its
//! own commands (a struct with `#[command(subcommand)] eventfold: eventfold::cli::Command` does the
//! same; a variant `Admin { #[command(subcommand)] command: Command }` puts them one level down). [`Command::run`] prints to stdout, reports failures on stderr and returns the exit
//! code; [`Command::execute`] writes to any [`Write`] and returns a typed [`CliError`] (tests,
//! admin endpoints):
//!
//! ```
//! use clap::Parser;
//! use eventfold::cli::Cli;
//! use eventfold::eventstore::memory::MemoryStore;
//! use eventfold::projections::Projections;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let projections = Projections::new(MemoryStore::new());
//! let cli = Cli::try_parse_from(["admin", "outbox", "status", "--json"])?;
//! let mut out = Vec::new();
//! cli.command.execute(&projections, &mut out).await?;
//! let status: serde_json::Value = serde_json::from_slice(&out)?;
//! assert_eq!(status["pending"], 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Commands
//!
//! | command | does |
//! |---|---|
//! | `migrate` | applies eventfold's embedded migrations (idempotent), lists the applied ones |
//! | `status` | projections (state, lag, parked events) and the outbox in one view |
//! | `projections list` | the projections registered in this program: version, tables, event types |
//! | `projections status` | every projection known to the registry or the store: position, lag, state |
//! | `projections rebuild <name> [--blue-green [--drop-old]]` | rebuilds (in place, or into new tables then switches), with a progress bar |
//! | `projections pause <name>` / `resume <name>` | pauses or resumes a projection (the running service obeys) |
//! | `projections dead-letters <name> [--limit N]` | the events parked by a projection |
//! | `projections reset <name>` | asks the running service to rebuild the projection in place |
//! | `projections drop-old <name>` | drops the tables of generations no longer in use |
//! | `outbox status` | rows waiting, age of the oldest, dead letters, the floor lag (PostgreSQL) |
//! | `outbox dead-letters [--limit N]` | the parked outbox rows with their errors |
//! | `outbox retry <seq>` / `skip <seq>` | puts a dead letter back in the outbox, or drops it |
//! | `outbox parked <consumer> [--limit N]` | the messages a consumer parked (its inbox's dead letters) |
//! | `sagas`, `trace` | reserved: fail with "not available yet" |
//!
//! Every command takes `--json` (anywhere after the command's first word) and then prints one
//! JSON document on stdout with these stable fields:
//!
//! - `migrate`: `{"backend", "migrations": [{"version", "name"}]}`
//! - `status`: `{"projections": [projection status], "outbox": outbox status, "log_head": {"position", "readable_position"}}`
//! - `projections list`: `[{"name", "version", "tables", "event_types"}]`
//! - `projections status`: `[{"name", "version", "generation", "position", "head", "lag_events",
//!   "lag_seconds", "status", "paused", "parked", "last_error", "building": null | {"generation",
//!   "version", "position"}, "registered"}]`
//! - `projections rebuild`: `{"name", "mode": "in_place" | "blue_green", "generation", "applied",
//!   "seconds", "events_per_second", "dropped"}`
//! - `projections pause|resume`: `{"name", "paused"}`; `reset`: `{"name", "reset_requested": true}`;
//!   `drop-old`: `{"name", "dropped"}`
//! - `projections dead-letters`: `[{"projection", "generation", "event_id", "global_position",
//!   "stream_id", "event_type", "error", "parked_at"}]`
//! - `outbox status`: `{"pending", "oldest", "oldest_age_seconds", "dead_letters", "floor_lag"}`
//!   (`floor_lag` is `null` but on PostgreSQL)
//! - `outbox dead-letters`: `[{"seq", "message_id", "topic", "key", "type", "attempts", "error",
//!   "created_at", "parked_at"}]`
//! - `outbox retry|skip`: `{"seq", "action": "retried" | "skipped"}`
//! - `outbox parked <consumer>`: `[{"consumer", "message_id", "topic", "partition", "offset",
//!   "key", "type", "attempts", "error", "parked_at"}]`
//!
//! Times are RFC 3339 in UTC. A failure exits with status 1 and one line on stderr naming what
//! failed and where (the projection, the dead letter, the table); clap's usage errors exit with 2.
//!
//! # The standalone binary
//!
//! `eventfold` (`cargo install eventfold --features cli,postgres,sqlite`) runs the same commands
//! against `--database-url` (or `DATABASE_URL`, `postgres://...` or `sqlite://...`) with
//! `--prefix` and `--schema`, and an empty registry: everything works except the commands that
//! need the projections' code (`rebuild`, `drop-old`), which say so; `projections reset` asks the
//! running service to rebuild in place instead.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::eventstore::{
    EventStore, InboxStore, OutboxRelayStore, OutboxStatus, ProjectionStore, StoreError,
};
use crate::projections::{ProjectionError, Projections, RebuildMode, RebuildProgress};

mod table;

use table::{Align, Table, write_pairs};

pub use clap;

/// A parser with only eventfold's commands, for an admin binary that needs nothing else:
/// `Cli::parse().command.run(&projections).await`.
#[derive(Debug, Clone, clap::Parser)]
#[command(about = "Operate eventfold: migrations, projections, the outbox")]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// eventfold's commands, to flatten into an application's parser.
#[derive(Debug, Clone, clap::Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Apply eventfold's embedded migrations (idempotent) and list the applied ones.
    Migrate(MigrateArgs),
    /// Projections and the outbox in one view.
    Status(StatusArgs),
    /// Read projections: list, status, rebuild, pause, resume, dead letters, reset.
    Projections(ProjectionsArgs),
    /// The transactional outbox: status, dead letters, retry, skip; consumers' parked messages.
    Outbox(OutboxArgs),
    /// Sagas (not available yet).
    Sagas(ReservedArgs),
    /// Trace a correlation id through events, messages and sagas (not available yet).
    Trace(ReservedArgs),
}

/// The output flag every command takes.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct OutputArgs {
    /// Print JSON (one document on stdout) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `projections ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProjectionsArgs {
    /// The projections command.
    #[command(subcommand)]
    pub command: ProjectionsCommand,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The `projections` commands.
#[derive(Debug, Clone, clap::Subcommand)]
#[non_exhaustive]
pub enum ProjectionsCommand {
    /// The projections registered in this program (name, version, tables, event types).
    List,
    /// Position, lag, state and parked events of every projection.
    Status,
    /// Rebuild a projection from the start of the log.
    Rebuild {
        /// The projection.
        name: String,
        /// Build into new tables while the current ones keep serving, then switch atomically.
        #[arg(long)]
        blue_green: bool,
        /// After a blue/green switch, drop the old generation's tables.
        #[arg(long, requires = "blue_green")]
        drop_old: bool,
    },
    /// Pause a projection (the running service stops applying events to it).
    Pause {
        /// The projection.
        name: String,
    },
    /// Resume a paused projection.
    Resume {
        /// The projection.
        name: String,
    },
    /// The events a projection parked, with their errors.
    DeadLetters {
        /// The projection.
        name: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Ask the running service to rebuild a projection in place (needs no projection code).
    Reset {
        /// The projection.
        name: String,
    },
    /// Drop the tables of a projection's generations that no longer serve.
    DropOld {
        /// The projection.
        name: String,
    },
}

/// `outbox ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct OutboxArgs {
    /// The outbox command.
    #[command(subcommand)]
    pub command: OutboxCommand,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The `outbox` commands.
#[derive(Debug, Clone, clap::Subcommand)]
#[non_exhaustive]
pub enum OutboxCommand {
    /// Rows waiting to be published, the age of the oldest, dead letters.
    Status,
    /// The parked rows (dead letters) with their errors, oldest first.
    DeadLetters {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put a dead letter back into the outbox (its key's later rows wait for it again).
    Retry {
        /// The dead letter's `seq`.
        seq: u64,
    },
    /// Drop a dead letter for good, so its key's later rows flow.
    Skip {
        /// The dead letter's `seq`.
        seq: u64,
    },
    /// The messages a consumer parked (its handler kept failing on them), oldest first.
    Parked {
        /// The consumer's name.
        consumer: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// Arguments of a reserved command (accepted, then refused).
#[derive(Debug, Clone, clap::Args)]
pub struct ReservedArgs {
    #[allow(missing_docs)]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub args: Vec<String>,
}

/// A failed command: what failed and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The store failed.
    #[error("{action}: {source}")]
    Store {
        /// What the command was doing.
        action: String,
        /// The store's error (it names the table).
        source: Box<StoreError>,
    },
    /// A projection operation failed.
    #[error("{action}: {source}")]
    Projection {
        /// What the command was doing.
        action: String,
        /// The projections' error.
        source: Box<ProjectionError>,
    },
    /// No projection of that name in the registry or the store.
    #[error("unknown projection `{name}` ({})", known_list(.known))]
    UnknownProjection {
        /// The name given.
        name: String,
        /// The projections that exist.
        known: Vec<String>,
    },
    /// No outbox dead letter with that `seq`.
    #[error(
        "outbox {action} {seq}: no dead letter with seq {seq} (`outbox dead-letters` lists them)"
    )]
    UnknownDeadLetter {
        /// `retry` or `skip`.
        action: &'static str,
        /// The `seq` given.
        seq: u64,
    },
    /// The command runs the projection's code, which this program does not have.
    #[error(
        "projections {command} {name}: `{name}` is not registered in this program; {command} runs \
         the projection's code, so run it from the application's binary (it embeds \
         `eventfold::cli::Command` with its registry){}",
        reset_hint(.command, .name)
    )]
    NeedsRegistry {
        /// `rebuild` or `drop-old`.
        command: &'static str,
        /// The projection.
        name: String,
    },
    /// A reserved command.
    #[error("`{command}` is not available yet in this version of eventfold")]
    NotAvailable {
        /// `sagas` or `trace`.
        command: &'static str,
    },
    /// The output could not be written.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
    /// The JSON output could not be encoded.
    #[error("encoding the JSON output: {0}")]
    Json(#[from] serde_json::Error),
}

fn reset_hint(command: &str, name: &str) -> String {
    if command == "rebuild" {
        format!(
            ", or ask the running service to rebuild it in place with `projections reset {name}`"
        )
    } else {
        String::new()
    }
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "no projection is registered here or recorded in the store".to_owned()
    } else {
        format!("known: {}", known.join(", "))
    }
}

/// A migration recorded in eventfold's migration table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedMigration {
    /// Its number.
    pub version: i64,
    /// Its name.
    pub name: String,
}

/// What the CLI needs from a store beyond the store traits: its migrations and a name.
/// Implemented for every backend.
pub trait CliStore: EventStore + OutboxRelayStore + InboxStore + ProjectionStore {
    /// The backend: `postgres`, `sqlite` or `memory`.
    fn backend(&self) -> &'static str;

    /// Applies the embedded migrations that are not applied yet and returns every applied one.
    fn run_migrations(
        &self,
    ) -> impl Future<Output = Result<Vec<AppliedMigration>, StoreError>> + Send;
}

impl CliStore for crate::eventstore::memory::MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn run_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        Ok(Vec::new())
    }
}

#[cfg(feature = "postgres")]
impl CliStore for crate::eventstore::postgres::PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn run_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        self.migrate().await?;
        let table = self.naming().table("migrations");
        let rows: Vec<(i64, String)> = sqlx::query_as(&format!(
            "SELECT version, name FROM {table} ORDER BY version"
        ))
        .fetch_all(self.pool())
        .await
        .map_err(|e| StoreError::Database {
            operation: "reading applied migrations",
            table,
            source: Box::new(e),
        })?;
        Ok(rows
            .into_iter()
            .map(|(version, name)| AppliedMigration { version, name })
            .collect())
    }
}

#[cfg(feature = "sqlite")]
impl CliStore for crate::eventstore::sqlite::SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn run_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        self.migrate().await?;
        let table = self.naming().table("migrations");
        let rows: Vec<(i64, String)> = sqlx::query_as(&format!(
            "SELECT version, name FROM {table} ORDER BY version"
        ))
        .fetch_all(self.pool())
        .await
        .map_err(|e| StoreError::Database {
            operation: "reading applied migrations",
            table,
            source: Box::new(e),
        })?;
        Ok(rows
            .into_iter()
            .map(|(version, name)| AppliedMigration { version, name })
            .collect())
    }
}

impl Command {
    /// Runs the command, prints to stdout, reports a failure on stderr (`error: ...`) and
    /// returns the process's exit code (0, or 1 on failure).
    pub async fn run<S: CliStore>(self, projections: &Projections<S>) -> ExitCode {
        let mut stdout = std::io::stdout();
        let result = self.execute(projections, &mut stdout).await;
        let _ = stdout.flush();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }

    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        match self {
            Command::Migrate(a) => a.output.json,
            Command::Status(a) => a.output.json,
            Command::Projections(a) => a.output.json,
            Command::Outbox(a) => a.output.json,
            Command::Sagas(_) | Command::Trace(_) => false,
        }
    }

    /// Runs the command against `projections` (and the store it carries), writing its output to
    /// `out`.
    pub async fn execute<S: CliStore>(
        &self,
        projections: &Projections<S>,
        out: &mut (dyn Write + Send),
    ) -> Result<(), CliError> {
        let json = self.json();
        match self {
            Command::Migrate(_) => migrate(projections.store(), json, out).await,
            Command::Status(_) => overview(projections, json, out).await,
            Command::Projections(args) => {
                run_projections(&args.command, projections, json, out).await
            }
            Command::Outbox(args) => {
                run_outbox(&args.command, projections.store(), json, out).await
            }
            Command::Sagas(_) => Err(CliError::NotAvailable { command: "sagas" }),
            Command::Trace(_) => Err(CliError::NotAvailable { command: "trace" }),
        }
    }
}

fn store_err(action: impl Into<String>) -> impl FnOnce(StoreError) -> CliError {
    let action = action.into();
    move |source| CliError::Store {
        action,
        source: Box::new(source),
    }
}

fn write_json<T: Serialize + ?Sized>(out: &mut dyn Write, value: &T) -> Result<(), CliError> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Prints a list: as JSON with `--json`, else `empty` when there is nothing, else a table with
/// `columns` and one `row` per item.
fn write_list<T: Serialize>(
    out: &mut dyn Write,
    json: bool,
    items: &[T],
    empty: &str,
    columns: &[(&'static str, Align)],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<(), CliError> {
    if json {
        return write_json(out, items);
    }
    if items.is_empty() {
        writeln!(out, "{empty}")?;
        return Ok(());
    }
    let mut table = Table::new(columns);
    for item in items {
        table.row(row(item));
    }
    table.write(out)?;
    Ok(())
}

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

// ---------------------------------------------------------------------------------------------
// migrate

#[derive(Serialize)]
struct MigrateJson<'a> {
    backend: &'a str,
    migrations: &'a [AppliedMigration],
}

async fn migrate<S: CliStore>(
    store: &S,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let backend = store.backend();
    let migrations = store
        .run_migrations()
        .await
        .map_err(store_err(format!("migrate ({backend})")))?;
    if json {
        return write_json(
            out,
            &MigrateJson {
                backend,
                migrations: &migrations,
            },
        );
    }
    if migrations.is_empty() {
        writeln!(out, "{backend}: nothing to migrate")?;
        return Ok(());
    }
    writeln!(out, "{backend}: schema up to date; applied migrations:")?;
    let mut table = Table::new(&[("VERSION", Align::Right), ("NAME", Align::Left)]);
    for m in &migrations {
        table.row(vec![m.version.to_string(), m.name.clone()]);
    }
    table.write(out)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// status (overview)

#[derive(Serialize)]
struct LogHeadJson {
    position: u64,
    readable_position: u64,
}

#[derive(Serialize)]
struct OverviewJson {
    projections: Vec<ProjectionStatusJson>,
    outbox: OutboxStatusJson,
    log_head: LogHeadJson,
}

async fn overview<S: CliStore>(
    projections: &Projections<S>,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let store = projections.store();
    let statuses = projection_statuses(projections).await?;
    let outbox = store
        .outbox_status()
        .await
        .map_err(store_err("reading the outbox status"))?;
    let head = store
        .log_head()
        .await
        .map_err(store_err("reading the log head"))?;
    let outbox = OutboxStatusJson::from(&outbox);
    if json {
        return write_json(
            out,
            &OverviewJson {
                projections: statuses,
                outbox,
                log_head: LogHeadJson {
                    position: head.position,
                    readable_position: head.readable_position,
                },
            },
        );
    }
    let mut pairs = vec![("log head", head.position.to_string())];
    if head.readable_position < head.position {
        pairs.push(("readable up to", head.readable_position.to_string()));
    }
    if let Some(blocked) = &head.blocked_by {
        pairs.push((
            "held back by",
            format!(
                "pid {} running for {:.1} s: {}",
                blocked.pid,
                blocked.running_for.as_secs_f64(),
                blocked.description
            ),
        ));
    }
    write_pairs(out, &pairs)?;
    writeln!(out)?;
    writeln!(out, "projections")?;
    write_projection_statuses(&statuses, out)?;
    writeln!(out)?;
    writeln!(out, "outbox")?;
    write_outbox_status(&outbox, out)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// projections

#[derive(Serialize)]
struct ProjectionInfoJson {
    name: String,
    version: u32,
    tables: Vec<String>,
    event_types: Vec<String>,
}

#[derive(Serialize)]
struct BuildJson {
    generation: u32,
    version: u32,
    position: u64,
}

#[derive(Serialize)]
struct ProjectionStatusJson {
    name: String,
    version: u32,
    generation: u32,
    position: u64,
    head: u64,
    lag_events: u64,
    lag_seconds: f64,
    status: String,
    paused: bool,
    parked: u64,
    last_error: Option<String>,
    building: Option<BuildJson>,
    registered: bool,
}

#[derive(Serialize)]
struct PausedJson<'a> {
    name: &'a str,
    paused: bool,
}

#[derive(Serialize)]
struct ResetJson<'a> {
    name: &'a str,
    reset_requested: bool,
}

#[derive(Serialize)]
struct DroppedJson<'a> {
    name: &'a str,
    dropped: &'a [String],
}

#[derive(Serialize)]
struct RebuildJson<'a> {
    name: &'a str,
    mode: &'static str,
    generation: u32,
    applied: u64,
    seconds: f64,
    events_per_second: f64,
    dropped: &'a [String],
}

#[derive(Serialize)]
struct ParkedEventJson {
    projection: String,
    generation: u32,
    event_id: String,
    global_position: u64,
    stream_id: String,
    event_type: String,
    error: String,
    parked_at: String,
}

async fn projection_statuses<S: CliStore>(
    projections: &Projections<S>,
) -> Result<Vec<ProjectionStatusJson>, CliError> {
    let statuses = projections
        .status()
        .await
        .map_err(|source| CliError::Projection {
            action: "reading the projections' status".to_owned(),
            source: Box::new(source),
        })?;
    Ok(statuses
        .into_iter()
        .map(|s| ProjectionStatusJson {
            name: s.name,
            version: s.version,
            generation: s.generation,
            position: s.position,
            head: s.head,
            lag_events: s.lag_events,
            lag_seconds: s.lag_seconds,
            status: s.status,
            paused: s.paused,
            parked: s.parked,
            last_error: s.last_error,
            building: s.building.map(|b| BuildJson {
                generation: b.generation,
                version: b.version,
                position: b.position,
            }),
            registered: s.registered,
        })
        .collect())
}

fn write_projection_statuses(
    statuses: &[ProjectionStatusJson],
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if statuses.is_empty() {
        writeln!(
            out,
            "no projections (none registered here, none recorded in the store)"
        )?;
        return Ok(());
    }
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("VERSION", Align::Right),
        ("GEN", Align::Right),
        ("POSITION", Align::Right),
        ("LAG", Align::Right),
        ("LAG(S)", Align::Right),
        ("STATUS", Align::Left),
        ("PARKED", Align::Right),
        ("NOTE", Align::Left),
    ]);
    for s in statuses {
        let mut notes = Vec::new();
        if let Some(b) = &s.building {
            notes.push(format!(
                "building generation {} (version {}) at {}",
                b.generation, b.version, b.position
            ));
        }
        if !s.registered {
            notes.push("not registered in this program".to_owned());
        }
        if let Some(e) = &s.last_error {
            notes.push(format!("last error: {}", one_line(e)));
        }
        table.row(vec![
            s.name.clone(),
            s.version.to_string(),
            s.generation.to_string(),
            s.position.to_string(),
            s.lag_events.to_string(),
            format!("{:.1}", s.lag_seconds),
            s.status.clone(),
            s.parked.to_string(),
            notes.join("; "),
        ]);
    }
    table.write(out)?;
    Ok(())
}

/// The text on one line (a table cell): line breaks become spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The names of every projection the registry or the store knows, for error messages.
async fn known_projections<S: CliStore>(projections: &Projections<S>) -> Vec<String> {
    let mut known = projections.names();
    if let Ok(states) = projections.store().projection_states().await {
        for state in states {
            if !known.contains(&state.name) {
                known.push(state.name);
            }
        }
    }
    known.sort();
    known
}

async fn unknown_projection<S: CliStore>(projections: &Projections<S>, name: &str) -> CliError {
    CliError::UnknownProjection {
        name: name.to_owned(),
        known: known_projections(projections).await,
    }
}

/// Maps a projections error, turning an unknown name into [`CliError::UnknownProjection`].
async fn projection_err<S: CliStore>(
    projections: &Projections<S>,
    action: String,
    source: ProjectionError,
) -> CliError {
    match source {
        ProjectionError::UnknownProjection(name) => unknown_projection(projections, &name).await,
        source => CliError::Projection {
            action,
            source: Box::new(source),
        },
    }
}

fn is_registered<S: CliStore>(projections: &Projections<S>, name: &str) -> bool {
    projections.names().iter().any(|n| n == name)
}

async fn run_projections<S: CliStore>(
    command: &ProjectionsCommand,
    projections: &Projections<S>,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let store = projections.store();
    match command {
        ProjectionsCommand::List => {
            let infos: Vec<ProjectionInfoJson> = projections
                .describe()
                .into_iter()
                .map(|i| ProjectionInfoJson {
                    name: i.name,
                    version: i.version,
                    tables: i.tables,
                    event_types: i.event_types,
                })
                .collect();
            write_list(
                out,
                json,
                &infos,
                "no projections are registered in this program (`projections status` shows those recorded in the store)",
                &[
                    ("NAME", Align::Left),
                    ("VERSION", Align::Right),
                    ("TABLES", Align::Left),
                    ("EVENT TYPES", Align::Left),
                ],
                |i| {
                    vec![
                        i.name.clone(),
                        i.version.to_string(),
                        i.tables.join(", "),
                        if i.event_types.is_empty() {
                            "(all)".to_owned()
                        } else {
                            i.event_types.join(", ")
                        },
                    ]
                },
            )
        }
        ProjectionsCommand::Status => {
            let statuses = projection_statuses(projections).await?;
            if json {
                return write_json(out, &statuses);
            }
            write_projection_statuses(&statuses, out)
        }
        ProjectionsCommand::Rebuild {
            name,
            blue_green,
            drop_old,
        } => {
            if !is_registered(projections, name) {
                if !projections.names().is_empty() {
                    return Err(unknown_projection(projections, name).await);
                }
                return Err(CliError::NeedsRegistry {
                    command: "rebuild",
                    name: name.clone(),
                });
            }
            let mode = if *blue_green {
                RebuildMode::BlueGreen {
                    drop_old: *drop_old,
                }
            } else {
                RebuildMode::InPlace
            };
            let bar = progress_bar(json, name);
            let progress = {
                let bar = bar.clone();
                move |p: RebuildProgress| {
                    bar.set_length(p.head.max(p.position));
                    bar.set_position(p.position);
                    bar.set_message(format!("{} events applied", p.applied));
                }
            };
            let started = Instant::now();
            let result = projections.rebuild(name, mode, progress).await;
            bar.finish_and_clear();
            let report = match result {
                Ok(report) => report,
                Err(source) => {
                    return Err(projection_err(
                        projections,
                        format!("projections rebuild {name}"),
                        source,
                    )
                    .await);
                }
            };
            let seconds = if report.seconds > 0.0 {
                report.seconds
            } else {
                started.elapsed().as_secs_f64()
            };
            let rate = if seconds > 0.0 {
                report.applied as f64 / seconds
            } else {
                0.0
            };
            if json {
                return write_json(
                    out,
                    &RebuildJson {
                        name,
                        mode: if *blue_green {
                            "blue_green"
                        } else {
                            "in_place"
                        },
                        generation: report.generation,
                        applied: report.applied,
                        seconds,
                        events_per_second: rate,
                        dropped: &report.dropped,
                    },
                );
            }
            if *blue_green {
                writeln!(
                    out,
                    "rebuilt `{name}` blue/green into generation {} and switched to it: {} events \
                     applied in {seconds:.2} s ({rate:.0} events/s)",
                    report.generation, report.applied
                )?;
            } else {
                writeln!(
                    out,
                    "rebuilt `{name}` in place (generation {}): {} events applied in {seconds:.2} s \
                     ({rate:.0} events/s)",
                    report.generation, report.applied
                )?;
            }
            if !report.dropped.is_empty() {
                writeln!(out, "dropped old tables: {}", report.dropped.join(", "))?;
            }
            Ok(())
        }
        ProjectionsCommand::Pause { name } | ProjectionsCommand::Resume { name } => {
            let paused = matches!(command, ProjectionsCommand::Pause { .. });
            let verb = if paused { "pause" } else { "resume" };
            let result = if paused {
                projections.pause(name).await
            } else {
                projections.resume(name).await
            };
            if let Err(source) = result {
                return Err(projection_err(
                    projections,
                    format!("projections {verb} {name}"),
                    source,
                )
                .await);
            }
            if json {
                return write_json(out, &PausedJson { name, paused });
            }
            if paused {
                writeln!(out, "paused `{name}`")?;
            } else {
                writeln!(out, "resumed `{name}`")?;
            }
            Ok(())
        }
        ProjectionsCommand::DeadLetters { name, limit } => {
            let parked = store
                .parked_projection_events(name, *limit)
                .await
                .map_err(store_err(format!("projections dead-letters {name}")))?;
            if parked.is_empty() && !is_registered(projections, name) {
                let state = store
                    .projection_state(name)
                    .await
                    .map_err(store_err(format!("projections dead-letters {name}")))?;
                if state.is_none() {
                    return Err(unknown_projection(projections, name).await);
                }
            }
            let parked: Vec<ParkedEventJson> = parked
                .into_iter()
                .map(|p| ParkedEventJson {
                    projection: p.projection,
                    generation: p.generation,
                    event_id: p.event_id.to_string(),
                    global_position: p.global_position,
                    stream_id: p.stream_id,
                    event_type: p.event_type,
                    error: p.error,
                    parked_at: rfc3339(&p.parked_at),
                })
                .collect();
            write_list(
                out,
                json,
                &parked,
                &format!("`{name}` has no parked events"),
                &[
                    ("POSITION", Align::Right),
                    ("EVENT ID", Align::Left),
                    ("STREAM", Align::Left),
                    ("TYPE", Align::Left),
                    ("GEN", Align::Right),
                    ("PARKED AT", Align::Left),
                    ("ERROR", Align::Left),
                ],
                |p| {
                    vec![
                        p.global_position.to_string(),
                        p.event_id.clone(),
                        p.stream_id.clone(),
                        p.event_type.clone(),
                        p.generation.to_string(),
                        p.parked_at.clone(),
                        one_line(&p.error),
                    ]
                },
            )
        }
        ProjectionsCommand::Reset { name } => {
            let found = store
                .request_projection_reset(name)
                .await
                .map_err(store_err(format!("projections reset {name}")))?;
            if !found {
                return Err(unknown_projection(projections, name).await);
            }
            if json {
                return write_json(
                    out,
                    &ResetJson {
                        name,
                        reset_requested: true,
                    },
                );
            }
            writeln!(
                out,
                "requested an in-place rebuild of `{name}`: the running service resets it and \
                 replays the log (`projections status` shows the progress)"
            )?;
            Ok(())
        }
        ProjectionsCommand::DropOld { name } => {
            if !is_registered(projections, name) {
                if !projections.names().is_empty() {
                    return Err(unknown_projection(projections, name).await);
                }
                return Err(CliError::NeedsRegistry {
                    command: "drop-old",
                    name: name.clone(),
                });
            }
            let dropped = match projections.drop_old(name).await {
                Ok(dropped) => dropped,
                Err(source) => {
                    return Err(projection_err(
                        projections,
                        format!("projections drop-old {name}"),
                        source,
                    )
                    .await);
                }
            };
            if json {
                return write_json(
                    out,
                    &DroppedJson {
                        name,
                        dropped: &dropped,
                    },
                );
            }
            if dropped.is_empty() {
                writeln!(out, "`{name}` has no old tables to drop")?;
            } else {
                writeln!(out, "dropped {}", dropped.join(", "))?;
            }
            Ok(())
        }
    }
}

/// A progress bar on stderr, hidden with `--json` or when stderr is not a terminal.
fn progress_bar(json: bool, name: &str) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = progress_style() {
        bar.set_style(style);
    }
    bar.set_message("0 events applied");
    bar.set_prefix(format!("rebuilding {name}"));
    bar
}

/// Log positions done out of the head, the events applied, the rate and the time left.
fn progress_style() -> Result<ProgressStyle, indicatif::style::TemplateError> {
    Ok(ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] [{wide_bar}] {pos}/{len} log positions, {msg} \
         ({rate}, ETA {eta})",
    )?
    .with_key(
        "rate",
        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0} positions/s", state.per_sec());
        },
    )
    .progress_chars("=> "))
}

// ---------------------------------------------------------------------------------------------
// outbox

#[derive(Serialize)]
struct OutboxStatusJson {
    pending: u64,
    oldest: Option<String>,
    oldest_age_seconds: Option<f64>,
    dead_letters: u64,
    floor_lag: Option<u64>,
}

impl From<&OutboxStatus> for OutboxStatusJson {
    fn from(s: &OutboxStatus) -> Self {
        Self {
            pending: s.pending,
            oldest: s.oldest.as_ref().map(rfc3339),
            oldest_age_seconds: s.oldest.map(|t| {
                (Utc::now() - t)
                    .to_std()
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0)
            }),
            dead_letters: s.dead_letters,
            floor_lag: s.floor_lag,
        }
    }
}

#[derive(Serialize)]
struct DeadLetterJson {
    seq: u64,
    message_id: String,
    topic: String,
    key: String,
    #[serde(rename = "type")]
    message_type: String,
    attempts: u32,
    error: String,
    created_at: String,
    parked_at: String,
}

#[derive(Serialize)]
struct ParkedMessageJson {
    consumer: String,
    message_id: String,
    topic: String,
    partition: u32,
    offset: u64,
    key: String,
    #[serde(rename = "type")]
    message_type: String,
    attempts: u32,
    error: String,
    parked_at: String,
}

#[derive(Serialize)]
struct DeadLetterActionJson {
    seq: u64,
    action: &'static str,
}

fn write_outbox_status(s: &OutboxStatusJson, out: &mut dyn Write) -> Result<(), CliError> {
    let oldest = match (&s.oldest, s.oldest_age_seconds) {
        (Some(t), Some(age)) => format!("{t} ({age:.1} s ago)"),
        _ => "-".to_owned(),
    };
    let mut pairs = vec![
        ("pending", s.pending.to_string()),
        ("oldest pending", oldest),
        ("dead letters", s.dead_letters.to_string()),
    ];
    if let Some(lag) = s.floor_lag {
        pairs.push(("floor lag (seq)", lag.to_string()));
    }
    write_pairs(out, &pairs)?;
    Ok(())
}

async fn run_outbox<S: CliStore>(
    command: &OutboxCommand,
    store: &S,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        OutboxCommand::Status => {
            let status = store
                .outbox_status()
                .await
                .map_err(store_err("outbox status"))?;
            let status = OutboxStatusJson::from(&status);
            if json {
                return write_json(out, &status);
            }
            write_outbox_status(&status, out)
        }
        OutboxCommand::DeadLetters { limit } => {
            let letters = store
                .dead_letters(*limit)
                .await
                .map_err(store_err("outbox dead-letters"))?;
            let letters: Vec<DeadLetterJson> = letters
                .into_iter()
                .map(|d| DeadLetterJson {
                    seq: d.row.seq,
                    message_id: d.row.message.id.to_string(),
                    topic: d.row.message.topic,
                    key: d.row.message.key,
                    message_type: d.row.message.message_type,
                    attempts: d.row.attempts,
                    error: d.error,
                    created_at: rfc3339(&d.row.created_at),
                    parked_at: rfc3339(&d.parked_at),
                })
                .collect();
            write_list(
                out,
                json,
                &letters,
                "no dead letters",
                &[
                    ("SEQ", Align::Right),
                    ("TOPIC", Align::Left),
                    ("KEY", Align::Left),
                    ("TYPE", Align::Left),
                    ("ATTEMPTS", Align::Right),
                    ("PARKED AT", Align::Left),
                    ("ERROR", Align::Left),
                ],
                |d| {
                    vec![
                        d.seq.to_string(),
                        d.topic.clone(),
                        d.key.clone(),
                        d.message_type.clone(),
                        d.attempts.to_string(),
                        d.parked_at.clone(),
                        one_line(&d.error),
                    ]
                },
            )
        }
        OutboxCommand::Parked { consumer, limit } => {
            let parked: Vec<ParkedMessageJson> = store
                .parked_messages(consumer, *limit)
                .await
                .map_err(store_err(format!("outbox parked {consumer}")))?
                .into_iter()
                .map(|m| ParkedMessageJson {
                    consumer: m.consumer,
                    message_id: m.message_id.to_string(),
                    topic: m.topic,
                    partition: m.partition,
                    offset: m.offset,
                    key: m.key,
                    message_type: m.message_type,
                    attempts: m.attempts,
                    error: m.error,
                    parked_at: rfc3339(&m.parked_at),
                })
                .collect();
            write_list(
                out,
                json,
                &parked,
                &format!("consumer `{consumer}` has no parked messages"),
                &[
                    ("TOPIC", Align::Left),
                    ("PARTITION", Align::Right),
                    ("OFFSET", Align::Right),
                    ("KEY", Align::Left),
                    ("TYPE", Align::Left),
                    ("ATTEMPTS", Align::Right),
                    ("PARKED AT", Align::Left),
                    ("ERROR", Align::Left),
                ],
                |m| {
                    vec![
                        m.topic.clone(),
                        m.partition.to_string(),
                        m.offset.to_string(),
                        m.key.clone(),
                        m.message_type.clone(),
                        m.attempts.to_string(),
                        m.parked_at.clone(),
                        one_line(&m.error),
                    ]
                },
            )
        }
        OutboxCommand::Retry { seq } | OutboxCommand::Skip { seq } => {
            let retry = matches!(command, OutboxCommand::Retry { .. });
            let (verb, done) = if retry {
                ("retry", "retried")
            } else {
                ("skip", "skipped")
            };
            let found = if retry {
                store.retry_dead_letter(*seq).await
            } else {
                store.skip_dead_letter(*seq).await
            }
            .map_err(store_err(format!("outbox {verb} {seq}")))?;
            if !found {
                return Err(CliError::UnknownDeadLetter {
                    action: verb,
                    seq: *seq,
                });
            }
            if json {
                return write_json(
                    out,
                    &DeadLetterActionJson {
                        seq: *seq,
                        action: done,
                    },
                );
            }
            if retry {
                writeln!(
                    out,
                    "dead letter {seq} is back in the outbox; the relay publishes it next"
                )?;
            } else {
                writeln!(
                    out,
                    "dead letter {seq} skipped (deleted); its key flows again"
                )?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_template_is_valid() {
        assert!(progress_style().is_ok());
    }

    #[test]
    fn commands_parse_with_json_anywhere() {
        use clap::Parser;
        let cli = Cli::try_parse_from(["app", "projections", "--json", "status"]).unwrap();
        assert!(cli.command.json());
        let cli = Cli::try_parse_from(["app", "outbox", "retry", "7", "--json"]).unwrap();
        assert!(cli.command.json());
        assert!(matches!(
            cli.command,
            Command::Outbox(OutboxArgs {
                command: OutboxCommand::Retry { seq: 7 },
                ..
            })
        ));
        let cli = Cli::try_parse_from(["app", "migrate"]).unwrap();
        assert!(!cli.command.json());
        assert!(Cli::try_parse_from(["app", "projections", "rebuild", "x", "--drop-old"]).is_err());
        assert!(Cli::try_parse_from(["app", "sagas", "list", "--all"]).is_ok());
    }

    #[test]
    fn cells_stay_on_one_line() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
