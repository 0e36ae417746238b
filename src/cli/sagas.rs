//! `sagas ...`: list instances, show one (data, steps, history, timers), retry a parked one.

use std::io::Write;

use chrono::{TimeDelta, Utc};
use serde::Serialize;

use super::table::{Align, Table, write_pairs};
use super::{CliError, CliStore, OutputArgs, one_line, rfc3339, store_err, write_json, write_list};
use crate::eventstore::{SagaFilter, SagaRecord, SagaTimer};
use crate::saga::runtime::{self, RETRY_PARKED};

/// `sagas ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct SagasArgs {
    /// The sagas command.
    #[command(subcommand)]
    pub command: SagasCommand,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The `sagas` commands.
#[derive(Debug, Clone, clap::Subcommand)]
#[non_exhaustive]
pub enum SagasCommand {
    /// Saga instances, most recently updated first, and the count per type and state.
    List {
        /// Only this state: running, compensating, compensation_failed, completed, compensated,
        /// failed.
        #[arg(long)]
        state: Option<String>,
        /// Only this saga type.
        #[arg(long = "type")]
        saga_type: Option<String>,
        /// Only this correlation id.
        #[arg(long)]
        correlation_id: Option<uuid::Uuid>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One instance: its data, state, each step with its attempts, its history with times, and
    /// its pending timers.
    Show {
        /// The saga id.
        saga_id: uuid::Uuid,
    },
    /// Resume a saga parked on a failing compensation: the running service's scheduler gives
    /// the compensation a fresh round of retries.
    Retry {
        /// The saga id.
        saga_id: uuid::Uuid,
    },
}

pub(super) async fn run<S: CliStore>(
    command: &SagasCommand,
    store: &S,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        SagasCommand::List {
            state,
            saga_type,
            correlation_id,
            limit,
        } => {
            let filter = SagaFilter {
                saga_type: saga_type.clone(),
                status: state.clone(),
                correlation_id: *correlation_id,
                limit: *limit,
            };
            list(store, &filter, json, out).await
        }
        SagasCommand::Show { saga_id } => show(store, *saga_id, json, out).await,
        SagasCommand::Retry { saga_id } => retry(store, *saga_id, json, out).await,
    }
}

#[derive(Serialize)]
struct SagaJson<'a> {
    saga_id: String,
    saga_type: &'a str,
    business_key: &'a str,
    status: &'a str,
    detail: Option<&'a str>,
    correlation_id: String,
    definition_version: u32,
    version: u64,
    started_at: String,
    updated_at: String,
}

fn saga_json(r: &SagaRecord) -> SagaJson<'_> {
    SagaJson {
        saga_id: r.saga_id.to_string(),
        saga_type: &r.saga_type,
        business_key: &r.business_key,
        status: &r.status,
        detail: r.detail.as_deref(),
        correlation_id: r.correlation_id.to_string(),
        definition_version: r.definition_version,
        version: r.version,
        started_at: rfc3339(&r.started_at),
        updated_at: rfc3339(&r.updated_at),
    }
}

async fn list<S: CliStore>(
    store: &S,
    filter: &SagaFilter,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let records = store
        .list_sagas(filter)
        .await
        .map_err(store_err("sagas list"))?;
    let items: Vec<SagaJson<'_>> = records.iter().map(saga_json).collect();
    write_list(
        out,
        json,
        &items,
        "no saga instances",
        &[
            ("SAGA", Align::Left),
            ("TYPE", Align::Left),
            ("KEY", Align::Left),
            ("STATE", Align::Left),
            ("UPDATED", Align::Left),
            ("DETAIL", Align::Left),
        ],
        |s| {
            vec![
                s.saga_id.clone(),
                s.saga_type.to_owned(),
                s.business_key.to_owned(),
                s.status.to_owned(),
                s.updated_at.clone(),
                one_line(s.detail.unwrap_or("")),
            ]
        },
    )?;
    if !json {
        let counts = store
            .count_sagas()
            .await
            .map_err(store_err("sagas list: counting instances"))?;
        if !counts.is_empty() {
            let summary: Vec<String> = counts
                .iter()
                .map(|(t, s, n)| format!("{t} {s}: {n}"))
                .collect();
            writeln!(out, "\n{}", summary.join(", "))?;
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct TimerJson<'a> {
    step: &'a str,
    attempt: u32,
    kind: &'a str,
    due_at: String,
}

fn timer_json(t: &SagaTimer) -> TimerJson<'_> {
    TimerJson {
        step: &t.step,
        attempt: t.attempt,
        kind: &t.kind,
        due_at: rfc3339(&t.due_at),
    }
}

async fn show<S: CliStore>(
    store: &S,
    saga_id: uuid::Uuid,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let instance = runtime::load(store, saga_id)
        .await
        .map_err(|e| CliError::Saga {
            action: format!("sagas show {saga_id}"),
            source: Box::new(e),
        })?
        .ok_or(CliError::UnknownSaga { saga_id })?;
    if json {
        let value = serde_json::json!({
            "saga": instance.record.as_ref().map(saga_json),
            "state": instance.state,
            "history": instance.history.iter().map(|h| serde_json::json!({
                "version": h.version,
                "at": rfc3339(&h.at),
                "type": h.event_type,
                "event_id": h.event_id.to_string(),
                "causation_id": h.causation_id.map(|c| c.to_string()),
                "event": h.event,
            })).collect::<Vec<_>>(),
            "timers": instance.timers.iter().map(timer_json).collect::<Vec<_>>(),
        });
        return write_json(out, &value);
    }
    let state = &instance.state;
    let mut pairs: Vec<(&str, String)> = vec![
        ("saga", saga_id.to_string()),
        ("type", state.saga_type.clone()),
        ("state", state.status.to_string()),
        ("correlation", state.correlation_id.to_string()),
        ("definition version", state.definition_version.to_string()),
        ("stream version", state.version.to_string()),
    ];
    if let Some(r) = &instance.record {
        pairs.insert(2, ("key", r.business_key.clone()));
        pairs.push(("started", rfc3339(&r.started_at)));
        pairs.push(("updated", rfc3339(&r.updated_at)));
    }
    if let Some((step, reason)) = &state.compensation_cause {
        pairs.push(("compensating because", format!("{step}: {reason}")));
    }
    pairs.push(("data", one_line(&state.data.to_string())));
    write_pairs(out, &pairs)?;
    writeln!(out)?;
    let mut steps = Table::new(&[
        ("STEP", Align::Left),
        ("#", Align::Right),
        ("ATTEMPTS", Align::Right),
        ("ACTION", Align::Left),
        ("COMPENSATION", Align::Left),
        ("LAST ERROR", Align::Left),
    ]);
    for s in &state.steps {
        let compensation = if s.compensation_attempt > 0 {
            format!("{:?} ({})", s.compensation, s.compensation_attempt)
        } else {
            format!("{:?}", s.compensation)
        };
        let error = s
            .compensation_error
            .as_deref()
            .or(s.last_error.as_deref())
            .unwrap_or("");
        steps.row(vec![
            s.name.clone(),
            s.start_index.to_string(),
            s.attempt.to_string(),
            format!(
                "{:?}{}",
                s.phase,
                if s.succeeded_late { " (late)" } else { "" }
            ),
            compensation,
            one_line(error),
        ]);
    }
    steps.write(out)?;
    writeln!(out)?;
    let mut history = Table::new(&[
        ("V", Align::Right),
        ("AT", Align::Left),
        ("EVENT", Align::Left),
        ("DETAIL", Align::Left),
    ]);
    for h in &instance.history {
        let mut detail = serde_json::to_value(&h.event).unwrap_or_default();
        if let Some(map) = detail.as_object_mut() {
            map.remove("type");
            map.remove("data");
        }
        let detail = match detail.as_object() {
            Some(map) if map.is_empty() => String::new(),
            _ => one_line(&detail.to_string()),
        };
        history.row(vec![
            h.version.to_string(),
            rfc3339(&h.at),
            h.event_type.clone(),
            detail,
        ]);
    }
    history.write(out)?;
    if !instance.timers.is_empty() {
        writeln!(out)?;
        let mut timers = Table::new(&[
            ("TIMER", Align::Left),
            ("STEP", Align::Left),
            ("ATTEMPT", Align::Right),
            ("DUE", Align::Left),
        ]);
        for t in &instance.timers {
            timers.row(vec![
                t.kind.clone(),
                t.step.clone(),
                t.attempt.to_string(),
                rfc3339(&t.due_at),
            ]);
        }
        timers.write(out)?;
    }
    Ok(())
}

async fn retry<S: CliStore>(
    store: &S,
    saga_id: uuid::Uuid,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let action = format!("sagas retry {saga_id}");
    let record = store
        .saga(saga_id)
        .await
        .map_err(store_err(action.clone()))?
        .ok_or(CliError::UnknownSaga { saga_id })?;
    if record.status != "compensation_failed" {
        return Err(CliError::SagaNotParked {
            saga_id,
            status: record.status,
        });
    }
    // Due at once on any clock: the scheduler of the running service fires it.
    let timer = SagaTimer {
        saga_id,
        saga_type: record.saga_type.clone(),
        step: String::new(),
        attempt: 0,
        kind: RETRY_PARKED.to_owned(),
        due_at: Utc::now() - TimeDelta::hours(1),
    };
    if !store
        .request_saga_timer(&timer)
        .await
        .map_err(store_err(action))?
    {
        return Err(CliError::UnknownSaga { saga_id });
    }
    if json {
        return write_json(
            out,
            &serde_json::json!({ "saga_id": saga_id.to_string(), "retry_requested": true }),
        );
    }
    writeln!(
        out,
        "saga {saga_id}: retry requested; the scheduler of the service running {} resumes its compensation",
        record.saga_type
    )?;
    Ok(())
}
