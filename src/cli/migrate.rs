//! `migrate`: applies eventfold's embedded migrations and lists the applied ones.

use std::io::Write;

use serde::Serialize;

use super::table::{Align, Table};
use super::{AppliedMigration, CliError, CliStore, OutputArgs, store_err, write_json};

/// `migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Serialize)]
struct MigrateJson<'a> {
    backend: &'a str,
    migrations: &'a [AppliedMigration],
}

pub(super) async fn migrate<S: CliStore>(
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
