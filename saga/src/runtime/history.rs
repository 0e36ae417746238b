//! Reading saga instances back: the stream of an instance, its fold, its history with times, and
//! what `sagas show` prints. Needs no definition, so tools can show any instance.

use chrono::{DateTime, Utc};
use eventfold_core::{Event, RecordedEvent, StreamId};
use eventfold_eventstore::{EventStore, SagaRecord, SagaStore, SagaTimer, UnitOfWork};
use uuid::Uuid;

use crate::event::SagaEvent;
use crate::runtime::error::RuntimeError;
use crate::state::SagaState;

/// The stream type of saga instances: the stream of instance `id` is `saga-{id}`.
pub const SAGA_STREAM_TYPE: &str = "saga";

const PAGE: u64 = 1_000;

/// The stream that holds an instance's transitions.
pub(crate) fn saga_stream(saga_id: Uuid) -> Result<StreamId, RuntimeError> {
    StreamId::new(SAGA_STREAM_TYPE, saga_id.to_string())
        .map_err(|e| RuntimeError::store(saga_id)(e.into()))
}

fn decode(saga_id: Uuid, event: &RecordedEvent) -> Result<SagaEvent, RuntimeError> {
    SagaEvent::decode(&event.event_type, &event.payload).map_err(|e| RuntimeError::CorruptHistory {
        saga_id,
        event_id: event.event_id,
        version: event.stream_version,
        reason: e.to_string(),
    })
}

/// Reads an instance's history as the unit of work sees it, with the size of its payloads in
/// bytes.
pub(crate) async fn read_in<U: UnitOfWork>(
    uow: &mut U,
    stream: &StreamId,
    saga_id: Uuid,
) -> Result<(Vec<(SagaEvent, DateTime<Utc>, Uuid)>, usize), RuntimeError> {
    let mut out = Vec::new();
    let mut bytes = 0;
    loop {
        let from = out.len() as u64 + 1;
        let page = uow
            .read_stream(stream, from, PAGE)
            .await
            .map_err(RuntimeError::store(saga_id))?;
        let full = page.len() as u64 == PAGE;
        for event in &page {
            bytes += event.payload.len();
            out.push((decode(saga_id, event)?, event.timestamp, event.event_id));
        }
        if !full {
            return Ok((out, bytes));
        }
    }
}

/// One recorded transition of an instance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryEntry {
    /// The stream version of the event.
    pub version: u64,
    /// When it was committed.
    pub at: DateTime<Utc>,
    /// The event's type (`saga.step_started`, ...).
    pub event_type: String,
    /// The event id.
    pub event_id: Uuid,
    /// What caused it (a reply's message id, or nothing for starts and timers).
    pub causation_id: Option<Uuid>,
    /// The event.
    pub event: SagaEvent,
}

/// Everything the store knows of one instance: its row, its fold, its history and its pending
/// timers. What `sagas show` prints.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SagaInstance {
    /// The instance's row (`None` if only the stream exists).
    pub record: Option<SagaRecord>,
    /// The fold of its history.
    pub state: SagaState,
    /// Its transitions, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Its pending timers, soonest first.
    pub timers: Vec<SagaTimer>,
}

/// Loads an instance from any store, `None` when it has no stream.
pub async fn load<S: SagaStore>(
    store: &S,
    saga_id: Uuid,
) -> Result<Option<SagaInstance>, RuntimeError> {
    let stream = saga_stream(saga_id)?;
    let mut history = Vec::new();
    loop {
        let from = history.len() as u64 + 1;
        let page = EventStore::read_stream(store, &stream, from, PAGE)
            .await
            .map_err(RuntimeError::store(saga_id))?;
        let full = page.len() as u64 == PAGE;
        for event in &page {
            history.push(HistoryEntry {
                version: event.stream_version,
                at: event.timestamp,
                event_type: event.event_type.clone(),
                event_id: event.event_id,
                causation_id: event.causation_id,
                event: decode(saga_id, event)?,
            });
        }
        if !full {
            break;
        }
    }
    if history.is_empty() {
        return Ok(None);
    }
    let state = SagaState::fold(history.iter().map(|h| &h.event));
    let record = store
        .saga(saga_id)
        .await
        .map_err(RuntimeError::store(saga_id))?;
    let timers = store
        .saga_timers(saga_id)
        .await
        .map_err(RuntimeError::store(saga_id))?;
    Ok(Some(SagaInstance {
        record,
        state,
        history,
        timers,
    }))
}
