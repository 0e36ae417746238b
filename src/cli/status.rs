//! `status`: projections, the outbox and the log head in one view.

use std::io::Write;

use serde::Serialize;

use super::outbox::{OutboxStatusJson, write_outbox_status};
use super::projections::{ProjectionStatusJson, projection_statuses, write_projection_statuses};
use super::table::write_pairs;
use super::{CliError, CliStore, OutputArgs, store_err, write_json};
use crate::projections::Projections;

/// `status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub output: OutputArgs,
}

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

pub(super) async fn overview<S: CliStore>(
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
