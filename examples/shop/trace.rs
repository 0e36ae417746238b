//! The trace of one order's flow across the three services, from their databases alone.
//!
//! HOOK: eventfold's own flow trace (`eventfold::trace`, the CLI's `trace <correlation-id>` with
//! `--mermaid`) is being built. Until it is in this version, the shop prints what it can find
//! itself: every event of every service that carries the flow's correlation id (the saga's
//! transitions are events of the order service too), merged in time order.

use std::io::Write;

use chrono::{DateTime, Utc};
use eventfold::eventstore::{Checkpoint, EventStore, LogFilter};
use eventfold::saga::SagaEvent;
use eventfold::{BoxError, Event, RecordedEvent};
use uuid::Uuid;

use crate::services::{Services, ShopStore};

/// Prints the flow of `correlation_id`; `false` when no service knows it.
pub async fn print<S: ShopStore>(
    services: &Services<S>,
    correlation_id: Uuid,
    out: &mut dyn Write,
) -> Result<bool, BoxError> {
    let mut lines: Vec<(DateTime<Utc>, &str, String)> = Vec::new();
    for (service, store) in services.each() {
        for event in flow_events(store, correlation_id).await? {
            lines.push((event.timestamp, service, describe(&event)));
        }
    }
    let Some(start) = lines.iter().map(|(at, _, _)| *at).min() else {
        return Ok(false);
    };
    lines.sort_by_key(|(at, _, _)| *at);
    writeln!(out, "flow {correlation_id}:")?;
    for (at, service, what) in lines {
        let ms = (at - start).num_microseconds().unwrap_or(0) as f64 / 1_000.0;
        writeln!(out, "  {ms:>9.1} ms  {service:<9}  {what}")?;
    }
    Ok(true)
}

/// The events of a service's log that belong to the flow.
async fn flow_events<S: EventStore>(
    store: &S,
    correlation_id: Uuid,
) -> Result<Vec<RecordedEvent>, BoxError> {
    let mut found = Vec::new();
    let mut from = Checkpoint::START;
    loop {
        let batch = store.read_log(from, 5_000, &LogFilter::all()).await?;
        found.extend(
            batch
                .events
                .into_iter()
                .map(|e| e.event)
                .filter(|e| e.correlation_id == correlation_id),
        );
        from = batch.checkpoint;
        if batch.reached_end && !batch.held_back {
            return Ok(found);
        }
    }
}

/// One line about an event: the saga's transitions by step, the others by stream.
fn describe(event: &RecordedEvent) -> String {
    if event.stream_id.stream_type() == eventfold::saga::runtime::SAGA_STREAM_TYPE {
        let detail = match SagaEvent::decode(&event.event_type, &event.payload) {
            Ok(
                SagaEvent::StepStarted { step, attempt }
                | SagaEvent::StepSucceeded { step, attempt, .. }
                | SagaEvent::StepTimedOut { step, attempt }
                | SagaEvent::StepCompensating { step, attempt },
            ) => format!("{step} (attempt {attempt})"),
            Ok(SagaEvent::StepFailed { step, reason, .. }) => format!("{step}: {reason}"),
            Ok(SagaEvent::CompensationStarted { reason, .. }) => reason,
            Ok(
                SagaEvent::StepSucceededLate { step, .. } | SagaEvent::StepCompensated { step, .. },
            ) => step,
            _ => String::new(),
        };
        return format!("saga {}  {detail}", event.event_type);
    }
    format!(
        "{} v{}  {}",
        event.stream_id, event.stream_version, event.event_type
    )
}
