//! `projections ...`: list, status, rebuild, pause, resume, dead letters, reset, drop old tables.

use std::io::Write;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::progress::progress_bar;
use super::table::{Align, Table};
use super::{CliError, CliStore, OutputArgs, one_line, rfc3339, store_err, write_json, write_list};
use crate::projections::{ProjectionError, Projections, RebuildMode, RebuildProgress};

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
    /// Run the registered projections until SIGTERM or SIGINT, then stop gracefully: each
    /// projection finishes (commits) its batch and returns; exits 0. When the stop takes
    /// longer than `--grace-ms`, or a second signal comes, exits 1 at once.
    Run {
        /// How long a graceful stop may take, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        grace_ms: u64,
        /// Longest wait for new events when no wake-up arrives, in milliseconds.
        #[arg(long, default_value_t = 500)]
        poll_ms: u64,
    },
}

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
pub(super) struct ProjectionStatusJson {
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

pub(super) async fn projection_statuses<S: CliStore>(
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

pub(super) fn write_projection_statuses(
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

/// Runs a `projections` command.
pub(super) async fn run<S: CliStore>(
    command: &ProjectionsCommand,
    projections: &Projections<S>,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        ProjectionsCommand::List => list(projections, json, out),
        ProjectionsCommand::Status => status(projections, json, out).await,
        ProjectionsCommand::Rebuild {
            name,
            blue_green,
            drop_old,
        } => rebuild(projections, name, *blue_green, *drop_old, json, out).await,
        ProjectionsCommand::Pause { name } => {
            pause_or_resume(projections, name, true, json, out).await
        }
        ProjectionsCommand::Resume { name } => {
            pause_or_resume(projections, name, false, json, out).await
        }
        ProjectionsCommand::DeadLetters { name, limit } => {
            dead_letters(projections, name, *limit, json, out).await
        }
        ProjectionsCommand::Reset { name } => reset(projections, name, json, out).await,
        ProjectionsCommand::DropOld { name } => drop_old(projections, name, json, out).await,
        ProjectionsCommand::Run { grace_ms, poll_ms } => {
            run_until_signal(projections, *grace_ms, *poll_ms, json, out).await
        }
    }
}

#[derive(Serialize)]
struct RunJson<'a> {
    projections: &'a [String],
    signal: Option<&'static str>,
}

/// `projections run`: the registered projections until a signal (see [`crate::shutdown`]).
async fn run_until_signal<S: CliStore>(
    projections: &Projections<S>,
    grace_ms: u64,
    poll_ms: u64,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let names = projections.names();
    if names.is_empty() {
        return Err(CliError::NoProjections);
    }
    let runner = projections
        .runner()
        .poll_interval(Duration::from_millis(poll_ms.max(1)));
    let grace = Duration::from_millis(grace_ms);
    if !json {
        writeln!(
            out,
            "projections running: {} (SIGTERM or SIGINT stops them)",
            names.join(", ")
        )?;
        out.flush()?;
    }
    let stopped = crate::shutdown::run_until_signal(grace, |stop| runner.run(stop)).await?;
    stopped.output.map_err(|source| CliError::Projection {
        action: "projections run".to_owned(),
        source: Box::new(source),
    })?;
    let signal = stopped.signal.map(|s| s.name());
    if json {
        return write_json(
            out,
            &RunJson {
                projections: &names,
                signal,
            },
        );
    }
    writeln!(
        out,
        "projections stopped ({}; each finished its batch)",
        signal.unwrap_or("no signal")
    )?;
    Ok(())
}

/// Fails unless `name` is registered in this program: [`CliError::UnknownProjection`] when the
/// registry has others, [`CliError::NeedsRegistry`] when it is empty (the standalone binary).
async fn require_registered<S: CliStore>(
    projections: &Projections<S>,
    name: &str,
    command: &'static str,
) -> Result<(), CliError> {
    if is_registered(projections, name) {
        return Ok(());
    }
    if !projections.names().is_empty() {
        return Err(unknown_projection(projections, name).await);
    }
    Err(CliError::NeedsRegistry {
        command,
        name: name.to_owned(),
    })
}

/// `projections list`.
fn list<S: CliStore>(
    projections: &Projections<S>,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
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

/// `projections status`.
async fn status<S: CliStore>(
    projections: &Projections<S>,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let statuses = projection_statuses(projections).await?;
    if json {
        return write_json(out, &statuses);
    }
    write_projection_statuses(&statuses, out)
}

/// `projections rebuild <name> [--blue-green [--drop-old]]`.
async fn rebuild<S: CliStore>(
    projections: &Projections<S>,
    name: &str,
    blue_green: bool,
    drop_old: bool,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    require_registered(projections, name, "rebuild").await?;
    let mode = if blue_green {
        RebuildMode::BlueGreen { drop_old }
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
            return Err(
                projection_err(projections, format!("projections rebuild {name}"), source).await,
            );
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
                mode: if blue_green { "blue_green" } else { "in_place" },
                generation: report.generation,
                applied: report.applied,
                seconds,
                events_per_second: rate,
                dropped: &report.dropped,
            },
        );
    }
    if blue_green {
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

/// `projections pause <name>` (`paused`) or `projections resume <name>`.
async fn pause_or_resume<S: CliStore>(
    projections: &Projections<S>,
    name: &str,
    paused: bool,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let verb = if paused { "pause" } else { "resume" };
    let result = if paused {
        projections.pause(name).await
    } else {
        projections.resume(name).await
    };
    if let Err(source) = result {
        return Err(
            projection_err(projections, format!("projections {verb} {name}"), source).await,
        );
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

/// `projections dead-letters <name> [--limit N]`.
async fn dead_letters<S: CliStore>(
    projections: &Projections<S>,
    name: &str,
    limit: usize,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let store = projections.store();
    let parked = store
        .parked_projection_events(name, limit)
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

/// `projections reset <name>`.
async fn reset<S: CliStore>(
    projections: &Projections<S>,
    name: &str,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let store = projections.store();
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

/// `projections drop-old <name>`.
async fn drop_old<S: CliStore>(
    projections: &Projections<S>,
    name: &str,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    require_registered(projections, name, "drop-old").await?;
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
