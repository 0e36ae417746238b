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
//! The `schema` commands check the application's event schemas ([`crate::schema`]) against its
//! committed snapshot; they need its event types, so the application passes its
//! [`EventSchemas`] with [`Command::run_with_schemas`] instead of [`Command::run`] (without them,
//! `schema` fails with [`CliError::NoEventSchemas`]).
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
//! | `projections run [--grace-ms N] [--poll-ms N]` | runs the registered projections until SIGTERM or SIGINT, then stops them gracefully (exit 0; 1 when the grace elapses or a second signal comes) |
//! | `outbox status` | rows waiting, age of the oldest, dead letters, the floor lag (PostgreSQL) |
//! | `outbox dead-letters [--limit N]` | the parked outbox rows with their errors |
//! | `outbox retry <seq>` / `skip <seq>` | puts a dead letter back in the outbox, or drops it |
//! | `outbox parked <consumer> [--limit N]` | the messages a consumer parked (its inbox's dead letters) |
//! | `sagas list [--state S] [--type T] [--correlation-id C] [--limit N]` | saga instances, most recently updated first, and counts per type and state |
//! | `sagas show <saga-id>` | one instance: data, state, each step with its attempts, the history with times, pending timers |
//! | `sagas retry <saga-id>` | resumes a saga parked on a failing compensation (the running service's scheduler fires the request) |
//! | `trace <correlation-id> [--mermaid \| --dot] [--merge URL[#PREFIX]]...` | the causal tree of a flow (events, commands sent and received, replies, saga transitions, timers, parked messages, dead letters) from this database and other services' databases |
//! | `schema check [--path P]` | compares the application's event schemas with the snapshot (default `event-schemas.json`): fails on a breaking change, or one not recorded yet |
//! | `schema write [--path P]` | writes the snapshot on purpose, keeping the old versions the upcasters still read |
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
//! - `projections run`: `{"projections", "signal"}` once stopped
//! - `projections dead-letters`: `[{"projection", "generation", "event_id", "global_position",
//!   "stream_id", "event_type", "error", "parked_at"}]`
//! - `outbox status`: `{"pending", "oldest", "oldest_age_seconds", "dead_letters", "floor_lag"}`
//!   (`floor_lag` is `null` but on PostgreSQL)
//! - `outbox dead-letters`: `[{"seq", "message_id", "topic", "key", "type", "attempts", "error",
//!   "created_at", "parked_at"}]`
//! - `outbox retry|skip`: `{"seq", "action": "retried" | "skipped"}`
//! - `outbox parked <consumer>`: `[{"consumer", "message_id", "topic", "partition", "offset",
//!   "key", "type", "attempts", "error", "parked_at"}]`
//! - `sagas list`: `[{"saga_id", "saga_type", "business_key", "status", "detail", "correlation_id",
//!   "definition_version", "version", "started_at", "updated_at"}]`
//! - `sagas show`: `{"saga": (as in list) | null, "state": {"status": {"status", ...}, "steps": [...],
//!   "data", ...}, "history": [{"version", "at", "type", "event_id", "causation_id", "event"}],
//!   "timers": [{"step", "attempt", "kind", "due_at"}]}`
//! - `sagas retry`: `{"saga_id", "retry_requested": true}`
//! - `trace`: the trace's JSON (`eventfold::trace`): `{"correlation_id", "records", "services",
//!   "first_at", "last_at", "roots": [id], "nodes": [{"id", "depth", "parent", "children", "kind",
//!   "name", "service", "at", "subject", "causation_id", "missing_parent", "deliveries", ...}]}`
//! - `schema check`: `{"path", "status": "ok" | "breaking" | "unrecorded", "schemas", "changes":
//!   [{"event_type", "version", "field", "kind", ..., "breaking", "message"}]}` (printed before
//!   the exit with 1 on a difference)
//! - `schema write`: `{"path", "schemas", "created", "unchanged", "changes": [...]}`
//!
//! Times are RFC 3339 in UTC. A failure exits with status 1 and one line on stderr naming what
//! failed and where (the projection, the dead letter, the table); clap's usage errors exit with 2.
//!
//! # The standalone binary
//!
//! `eventfold` (`cargo install eventfold --features cli,postgres,sqlite`) runs the same commands
//! against `--database-url` (or `DATABASE_URL`, `postgres://...` or `sqlite://...`) with
//! `--prefix` and `--schema`, and an empty registry: everything works except the commands that
//! need the projections' code (`rebuild`, `drop-old`, `run`), which say so; `projections reset` asks the
//! running service to rebuild in place instead. `schema` needs the application's event types, so
//! the standalone binary answers it with [`CliError::NoEventSchemas`].
//
// The code: this file holds the parsers, the errors and the output helpers every command uses;
// one module per command group runs its commands (`migrate`, `status`, `projections`, `outbox`,
// `sagas`, `trace`, `schema`), `store` says what the CLI needs from a backend, `table` and
// `progress` draw.

use std::io::Write;
use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::eventstore::StoreError;
use crate::projections::{ProjectionError, Projections};
use crate::schema::EventSchemas;

mod migrate;
mod outbox;
mod progress;
mod projections;
mod sagas;
mod schema;
mod status;
mod store;
mod table;
mod trace;

pub use migrate::MigrateArgs;
pub use outbox::{OutboxArgs, OutboxCommand};
pub use projections::{ProjectionsArgs, ProjectionsCommand};
pub use sagas::{SagasArgs, SagasCommand};
pub use schema::{SchemaArgs, SchemaCommand};
pub use status::StatusArgs;
pub use store::{AppliedMigration, CliStore};
pub use trace::TraceArgs;

use table::{Align, Table};

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
    /// Orchestrated sagas: list, show, retry a parked one.
    Sagas(SagasArgs),
    /// The causal tree of one flow (a correlation id): events, commands, replies, saga
    /// transitions, timers, parked messages, from this database and `--merge`d ones.
    Trace(TraceArgs),
    /// Event schemas as contracts: check the code against the committed snapshot, or write it.
    Schema(SchemaArgs),
}

/// The output flag every command takes.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct OutputArgs {
    /// Print JSON (one document on stdout) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
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
    /// `projections run` in a program that registers no projection (the standalone binary).
    #[error(
        "projections run: no projection is registered in this program; run it from the \
         application's binary (it embeds `eventfold::cli::Command` with its registry)"
    )]
    NoProjections,
    /// A graceful stop did not end well: its grace elapsed, or a second signal came.
    #[error(transparent)]
    Shutdown(#[from] crate::shutdown::ShutdownError),
    /// No saga instance with that id.
    #[error("saga {saga_id} does not exist (`sagas list` lists them)")]
    UnknownSaga {
        /// The id given.
        saga_id: uuid::Uuid,
    },
    /// `sagas retry` of a saga that is not parked.
    #[error(
        "sagas retry {saga_id}: the saga is {status}, not compensation_failed; only a parked saga is retried"
    )]
    SagaNotParked {
        /// The saga.
        saga_id: uuid::Uuid,
        /// Its state.
        status: String,
    },
    /// Reading a saga instance failed.
    #[error("{action}: {source}")]
    Saga {
        /// What the command was doing.
        action: String,
        /// The saga runtime's error (it names the instance).
        source: Box<crate::saga::runtime::RuntimeError>,
    },
    /// No database holds a record of the flow.
    #[error("trace {correlation_id}: no record of this flow in the {databases} database(s) read")]
    UnknownFlow {
        /// The correlation id given.
        correlation_id: uuid::Uuid,
        /// How many databases were read.
        databases: usize,
    },
    /// Another service's database could not be opened.
    #[error("opening {url}: {reason}")]
    Connect {
        /// The database (without credentials).
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// `schema ...` without the application's event schemas (the standalone binary).
    #[error(
        "`schema` needs the application's event types: run it from the application's binary, \
         which passes its `EventSchemas` to `Command::run_with_schemas` (this program has none)"
    )]
    NoEventSchemas,
    /// `schema check` found a difference, or `schema check|write` could not read the schemas
    /// or the snapshot.
    #[error("schema {command}: {source}")]
    Schema {
        /// `check` or `write`.
        command: &'static str,
        /// What failed (it lists every change).
        source: Box<crate::schema::SchemaCheckError>,
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

impl Command {
    /// Runs the command, prints to stdout, reports a failure on stderr (`error: ...`) and
    /// returns the process's exit code (0, or 1 on failure).
    pub async fn run<S: CliStore>(self, projections: &Projections<S>) -> ExitCode {
        let mut stdout = std::io::stdout();
        let result = self.execute(projections, &mut stdout).await;
        finish(stdout, result)
    }

    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        match self {
            Command::Migrate(a) => a.output.json,
            Command::Status(a) => a.output.json,
            Command::Projections(a) => a.output.json,
            Command::Outbox(a) => a.output.json,
            Command::Sagas(a) => a.output.json,
            Command::Trace(a) => a.output.json,
            Command::Schema(a) => a.output.json,
        }
    }

    /// Like [`run`](Self::run), with the application's event schemas for `schema check` and
    /// `schema write` (without them, those commands fail with [`CliError::NoEventSchemas`]).
    pub async fn run_with_schemas<S: CliStore>(
        self,
        projections: &Projections<S>,
        schemas: &EventSchemas,
    ) -> ExitCode {
        let mut stdout = std::io::stdout();
        let result = self
            .execute_with_schemas(projections, schemas, &mut stdout)
            .await;
        finish(stdout, result)
    }

    /// Runs the command against `projections` (and the store it carries), writing its output to
    /// `out`.
    pub async fn execute<S: CliStore>(
        &self,
        projections: &Projections<S>,
        out: &mut (dyn Write + Send),
    ) -> Result<(), CliError> {
        self.execute_inner(projections, None, out).await
    }

    /// Like [`execute`](Self::execute), with the application's event schemas for `schema check`
    /// and `schema write`.
    pub async fn execute_with_schemas<S: CliStore>(
        &self,
        projections: &Projections<S>,
        schemas: &EventSchemas,
        out: &mut (dyn Write + Send),
    ) -> Result<(), CliError> {
        self.execute_inner(projections, Some(schemas), out).await
    }

    async fn execute_inner<S: CliStore>(
        &self,
        projections: &Projections<S>,
        schemas: Option<&EventSchemas>,
        out: &mut (dyn Write + Send),
    ) -> Result<(), CliError> {
        let json = self.json();
        match self {
            Command::Migrate(_) => migrate::migrate(projections.store(), json, out).await,
            Command::Status(_) => status::overview(projections, json, out).await,
            Command::Projections(args) => {
                projections::run(&args.command, projections, json, out).await
            }
            Command::Outbox(args) => {
                outbox::run(&args.command, projections.store(), json, out).await
            }
            Command::Sagas(args) => sagas::run(&args.command, projections.store(), json, out).await,
            Command::Trace(args) => trace::run(args, projections.store(), out).await,
            Command::Schema(args) => match schemas {
                Some(schemas) => args.execute(schemas, out),
                None => Err(CliError::NoEventSchemas),
            },
        }
    }
}

/// Flushes stdout, reports a failure on stderr, and gives the exit code.
fn finish(mut stdout: std::io::Stdout, result: Result<(), CliError>) -> ExitCode {
    let _ = stdout.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
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

/// The text on one line (a table cell): line breaks become spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(Cli::try_parse_from(["app", "sagas", "list", "--state", "compensated"]).is_ok());
        assert!(Cli::try_parse_from(["app", "sagas", "list", "--all"]).is_err());
    }

    #[test]
    fn cells_stay_on_one_line() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
