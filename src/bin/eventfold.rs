//! `eventfold`: operate an eventfold database without the application's code (features `cli`,
//! `postgres` and `sqlite`).
//!
//! ```text
//! eventfold --database-url postgres://... [--prefix eventfold_] [--schema app] <command>
//! ```
//!
//! The database comes from `--database-url` or `DATABASE_URL` (`postgres://...` or
//! `sqlite://path`); `--prefix` and `--schema` name eventfold's tables as the application does.
//! The commands are those of `eventfold::cli::Command` with an empty registry of projections:
//! `migrate`, `status`, `outbox status|dead-letters|retry|skip`, `projections
//! list|status|pause|resume|dead-letters|reset`. `projections rebuild` and `drop-old` run the
//! projection's code, so they explain that they belong to the application's binary;
//! `projections reset <name>` asks the running service to rebuild in place instead.
//!
//! Only `migrate` changes the schema (and only `migrate` creates a missing SQLite file); every
//! other command works on the tables as they are. A failure exits with status 1 and a message on
//! stderr naming what failed, the database (password hidden) and the table prefix.

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use eventfold::cli::{CliStore, Command};
use eventfold::eventstore::Naming;
use eventfold::eventstore::postgres::PgStore;
use eventfold::eventstore::sqlite::SqliteStore;
use eventfold::projections::Projections;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

/// Operate an eventfold database: migrations, projections, the outbox.
#[derive(Debug, Parser)]
#[command(name = "eventfold", version)]
struct Args {
    /// The database: `postgres://user@host/db` or `sqlite://path/to/file.db`. `trace` takes
    /// several (one per service, `URL#PREFIX` for another table prefix) and merges their trees.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Vec<String>,
    /// The prefix of eventfold's tables, as the application configures it.
    #[arg(long, global = true, default_value = "eventfold_")]
    prefix: String,
    /// The PostgreSQL schema of eventfold's tables, as the application configures it.
    #[arg(long, global = true)]
    schema: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// `scheme://user:password@host/...` with the password hidden.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A hint for the usual mistakes, from an error's text.
fn hint(message: &str, prefix: &str) -> Option<String> {
    let lower = message.to_lowercase();
    if lower.contains("no such table")
        || (lower.contains("relation") && lower.contains("does not exist"))
    {
        Some(format!(
            "eventfold's tables (prefix `{prefix}`) are missing in this database: check --prefix \
             and --schema, or run `eventfold migrate`"
        ))
    } else if lower.contains("unable to open database file") {
        Some("the SQLite file does not exist (only `eventfold migrate` creates it)".to_owned())
    } else {
        None
    }
}

/// The error of a failed connection, as the binary reports it.
fn connecting(e: impl std::fmt::Display) -> String {
    format!("connecting to the database: {e}")
}

/// Builds a `$store` over `$pool` with eventfold's tables named by `$naming`, without migrating
/// (only the `migrate` command does), and runs `$command` on it.
macro_rules! run_on {
    ($store:ident, $pool:expr, $naming:expr, $command:expr) => {{
        let store = $store::builder($pool)
            .naming($naming)
            .source("eventfold-cli")
            .migrate(false)
            .build()
            .await
            .map_err(connecting)?;
        execute(store, $command).await
    }};
}

async fn execute<S: CliStore>(store: S, command: Command) -> Result<(), String> {
    let projections = Projections::new(store);
    let mut stdout = std::io::stdout();
    let result = command.execute(&projections, &mut stdout).await;
    let _ = std::io::Write::flush(&mut stdout);
    result.map_err(|e| e.to_string())
}

async fn run(mut args: Args) -> Result<(), String> {
    let mut urls = std::mem::take(&mut args.database_url).into_iter();
    let first = urls.next().unwrap_or_default();
    // Every other database is read by `trace` only.
    match &mut args.command {
        Command::Trace(trace) => trace.merge.extend(urls),
        _ if urls.len() > 0 => {
            return Err("several --database-url: only `trace` reads several databases".to_owned());
        }
        _ => {}
    }
    let url = first.trim();
    if url.is_empty() {
        return Err(
            "no database: pass --database-url or set DATABASE_URL (postgres://... or sqlite://...)"
                .to_owned(),
        );
    }
    let mut naming = Naming::new(args.prefix.clone()).map_err(|e| format!("--prefix: {e}"))?;
    if let Some(schema) = &args.schema {
        naming = naming
            .with_schema(schema.clone())
            .map_err(|e| format!("--schema: {e}"))?;
    }
    let migrate = matches!(args.command, Command::Migrate(_));
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(15))
            .connect(url)
            .await
            .map_err(connecting)?;
        run_on!(PgStore, pool, naming, args.command)
    } else if url.starts_with("sqlite:") {
        if args.schema.is_some() {
            return Err("--schema: SQLite has no schemas; use --prefix".to_owned());
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(connecting)?
            .create_if_missing(migrate)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(if url.contains(":memory:") { 1 } else { 2 })
            .connect_with(options)
            .await
            .map_err(connecting)?;
        run_on!(SqliteStore, pool, naming, args.command)
    } else {
        Err(format!(
            "unsupported database URL scheme (expected postgres://... or sqlite://...): {}",
            redact(url)
        ))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let url = args
        .database_url
        .first()
        .map(|u| redact(u))
        .unwrap_or_default();
    let prefix = args.prefix.clone();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("eventfold: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eventfold: error: {e}");
            if !url.is_empty() {
                eprintln!("  database: {url} (tables prefixed `{prefix}`)");
            }
            if let Some(hint) = hint(&e, &prefix) {
                eprintln!("  hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/orders"),
            "postgres://app:***@db:5432/orders"
        );
        assert_eq!(
            redact("postgres://app@db/orders"),
            "postgres://app@db/orders"
        );
        assert_eq!(redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }
}
