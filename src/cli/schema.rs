//! `schema check` and `schema write`: the application's event schemas against the committed
//! snapshot ([`crate::schema`]). They need the application's event types, so they run from its
//! binary, which hands its [`EventSchemas`] to [`Command::run_with_schemas`](super::Command::run_with_schemas);
//! they do not touch the store.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use super::{CliError, OutputArgs, write_json};
use crate::schema::{EventSchemas, SchemaChange, SchemaCheckError, Written};

/// Where the snapshot is unless `--path` says otherwise: `event-schemas.json` in the current
/// directory.
const DEFAULT_PATH: &str = "event-schemas.json";

/// `schema ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct SchemaArgs {
    /// The schema command.
    #[command(subcommand)]
    pub command: SchemaCommand,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The `schema` commands.
#[derive(Debug, Clone, clap::Subcommand)]
#[non_exhaustive]
pub enum SchemaCommand {
    /// Compare the code's event schemas with the snapshot: fails on a breaking change, and on a
    /// compatible change the snapshot does not record yet.
    Check {
        /// The snapshot file.
        #[arg(long, default_value = DEFAULT_PATH)]
        path: PathBuf,
    },
    /// Write the snapshot of the code's event schemas, on purpose (breaking changes included),
    /// keeping the old versions that the upcasters still read.
    Write {
        /// The snapshot file.
        #[arg(long, default_value = DEFAULT_PATH)]
        path: PathBuf,
    },
}

#[derive(Serialize)]
struct ChangeJson<'a> {
    #[serde(flatten)]
    change: &'a SchemaChange,
    breaking: bool,
    message: String,
}

fn changes_json(changes: &[SchemaChange]) -> Vec<ChangeJson<'_>> {
    changes
        .iter()
        .map(|change| ChangeJson {
            change,
            breaking: change.is_breaking(),
            message: change.to_string(),
        })
        .collect()
}

#[derive(Serialize)]
struct CheckJson<'a> {
    path: String,
    status: &'static str,
    schemas: usize,
    changes: Vec<ChangeJson<'a>>,
}

#[derive(Serialize)]
struct WriteJson<'a> {
    path: String,
    schemas: usize,
    created: bool,
    unchanged: bool,
    changes: Vec<ChangeJson<'a>>,
}

impl SchemaArgs {
    /// Runs the command with the application's event schemas, writing its output to `out`; the
    /// store is not needed. A check that fails is [`CliError::Schema`] (with `--json`, the report
    /// is printed first).
    pub fn execute(
        &self,
        schemas: &EventSchemas,
        out: &mut (dyn Write + Send),
    ) -> Result<(), CliError> {
        let json = self.output.json;
        match &self.command {
            SchemaCommand::Check { path } => check(schemas, path, json, out),
            SchemaCommand::Write { path } => {
                let written = schemas
                    .write_file(path)
                    .map_err(|e| failed("write")(e.into()))?;
                write(&written, json, out)
            }
        }
    }
}

fn check(
    schemas: &EventSchemas,
    path: &std::path::Path,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let result = schemas.check_file(path);
    let status = match &result {
        Ok(()) => "ok",
        Err(SchemaCheckError::Breaking { .. }) => "breaking",
        Err(SchemaCheckError::Unrecorded { .. }) => "unrecorded",
        Err(_) => return result.map_err(failed("check")),
    };
    // The check has described the code's schemas already, so this does not fail.
    let count = schemas.snapshot(None).map_or(0, |s| s.events.len());
    if json {
        let changes = result.as_ref().err().map_or(&[][..], |e| e.changes());
        write_json(
            out,
            &CheckJson {
                path: path.display().to_string(),
                status,
                schemas: count,
                changes: changes_json(changes),
            },
        )?;
    } else if result.is_ok() {
        writeln!(
            out,
            "{}: the code's {count} event schema(s) match the snapshot",
            path.display()
        )?;
    }
    result.map_err(failed("check"))
}

fn failed(command: &'static str) -> impl FnOnce(SchemaCheckError) -> CliError {
    move |source| CliError::Schema {
        command,
        source: Box::new(source),
    }
}

fn write(written: &Written, json: bool, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    if json {
        return write_json(
            out,
            &WriteJson {
                path: written.path.display().to_string(),
                schemas: written.schemas,
                created: written.created,
                unchanged: written.unchanged,
                changes: changes_json(&written.changes),
            },
        );
    }
    writeln!(out, "{written}")?;
    Ok(())
}
