//! One transition of an instance whose row the unit of work locked: load its history (from the
//! state cache when the row names the cached state), let the machine decide at the database's
//! clock, encode what the decision writes ([`Planned`]), write it, then keep the new state in
//! the cache and count it in the metrics.
//!
//! The write is one call: [`SagaStore::write_saga_transition`] for one transition, or
//! [`SagaStore::write_saga_transitions`] for the transitions of several instances that a batch
//! of replies decided one after the other ([`Orchestrator::write_planned`]; one statement on
//! PostgreSQL). Deciding needs nothing of the other instances' writes, so a batch decides each
//! instance's transition first and writes them together; a second input of the same instance
//! waits for the write of the first.

use chrono::{DateTime, Utc};
use eventfold_core::{CommandMetadata, NewEvent, OutboxMessage, StreamId};
use eventfold_eventstore::{
    SagaRecord, SagaStore, SagaTimer, SagaTimerId, SagaTransitionItem, SagaTransitionWrite,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::definition::SagaData;
use crate::event::SagaEvent;
use crate::machine::{Decision, Input};
use crate::runtime::cache::History;
use crate::runtime::error::RuntimeError;
use crate::runtime::history::{self, saga_stream};
use crate::runtime::orchestrator::{Applied, Orchestrator, kind_name, status_detail};
use crate::runtime::wire;
use crate::state::SagaState;

/// Where a transition's history comes from.
pub(crate) enum Known {
    /// Read it (or take it from the cache when the locked row names it).
    Load,
    /// The instance was inserted by this unit of work a moment ago: it has no events yet.
    New,
}

/// What an input did before anything was written: nothing to write (the machine ignored it),
/// or a transition to write.
pub(crate) enum Prepared {
    /// Nothing to write.
    Done(Applied),
    /// A transition, decided and encoded.
    Write(Box<Planned>),
}

/// A transition decided and encoded, not yet written: what the store writes, and what the
/// cache and the metrics take once it is written.
pub(crate) struct Planned {
    stream: StreamId,
    /// The version the transition was decided at.
    expected: u64,
    new_events: Vec<NewEvent>,
    messages: Vec<OutboxMessage>,
    /// The instance's row after the transition.
    record: SagaRecord,
    cancel: Vec<SagaTimerId>,
    put: Vec<SagaTimer>,
    /// The saga events of the transition.
    events: Vec<SagaEvent>,
    /// The history before the transition.
    loaded: History,
    /// The transition's events as the history keeps them.
    written: History,
    payload_bytes: usize,
    state: SagaState,
    now: DateTime<Utc>,
    /// How many commands it sends.
    commands: usize,
}

impl Planned {
    /// The instance.
    pub(crate) fn saga_id(&self) -> Uuid {
        self.record.saga_id
    }

    /// The transition's write, borrowing its timers and row: the events and messages move out.
    fn item(&mut self) -> SagaTransitionItem<'_> {
        SagaTransitionItem {
            stream_id: self.stream.clone(),
            expected: self.expected,
            events: std::mem::take(&mut self.new_events),
            messages: std::mem::take(&mut self.messages),
            write: SagaTransitionWrite {
                record: &self.record,
                cancel: &self.cancel,
                put: &self.put,
                clear: self.state.status.is_terminal(),
            },
        }
    }
}

impl<S: SagaStore, D: SagaData> Orchestrator<S, D> {
    /// The transition of an instance whose row this unit of work locked, at the database's
    /// clock of the lock, in a span: load, decide, write.
    pub(crate) async fn apply_locked(
        &self,
        uow: &mut S::UnitOfWork,
        locked: (SagaRecord, DateTime<Utc>),
        known: Known,
        input: Input<D>,
        cause: Option<Uuid>,
    ) -> Result<Applied, RuntimeError> {
        let span = self.transition_span(locked.0.saga_id, &input);
        async move {
            match self.prepare(uow, locked, known, input, cause).await? {
                Prepared::Done(applied) => Ok(applied),
                Prepared::Write(planned) => self.write_one(uow, *planned).await,
            }
        }
        .instrument(span)
        .await
    }

    /// [`apply_locked`](Self::apply_locked) without the write: what the caller writes with the
    /// transitions of other instances ([`write_planned`](Self::write_planned)).
    pub(crate) async fn prepare_locked(
        &self,
        uow: &mut S::UnitOfWork,
        locked: (SagaRecord, DateTime<Utc>),
        known: Known,
        input: Input<D>,
        cause: Option<Uuid>,
    ) -> Result<Prepared, RuntimeError> {
        let span = self.transition_span(locked.0.saga_id, &input);
        self.prepare(uow, locked, known, input, cause)
            .instrument(span)
            .await
    }

    fn transition_span(&self, saga_id: Uuid, input: &Input<D>) -> tracing::Span {
        let input_name = match input {
            Input::Start { .. } => "start",
            Input::Reply(_) => "reply",
            Input::TimerFired(_) => "timer",
            Input::RetryParked => "retry_parked",
        };
        tracing::info_span!(
            "saga.transition",
            saga_type = self.saga_type(),
            %saga_id,
            input = input_name,
        )
    }

    /// Load, decide, encode.
    async fn prepare(
        &self,
        uow: &mut S::UnitOfWork,
        (mut record, now): (SagaRecord, DateTime<Utc>),
        known: Known,
        input: Input<D>,
        cause: Option<Uuid>,
    ) -> Result<Prepared, RuntimeError> {
        let store = &self.inner.store;
        let saga_id = record.saga_id;
        let stream = saga_stream(saga_id)?;
        let (loaded, mut payload_bytes) = match known {
            Known::New => (History::new(), 0),
            Known::Load => self.history(uow, &stream, &record).await?,
        };
        let mut state = SagaState::fold(loaded.iter().map(|(e, ..)| e));
        // A timer has no id of its own: what it fires is caused by the instance's latest
        // transition (which set or moved the timer), so the trace keeps one causal chain.
        let cause = cause.or_else(|| loaded.last().map(|(.., id)| *id));
        let transition = match self.inner.definition.decide(&state, input, now)? {
            Decision::Ignored { why } => {
                metrics::counter!("eventfold_saga_ignored_total", "saga_type" => self.saga_type().to_owned())
                    .increment(1);
                // Nothing changed: the history is still the one the row names.
                if let (Some(last), false) = (record.last_event_id, state.status.is_terminal()) {
                    self.inner
                        .cache
                        .put(saga_id, record.version, last, loaded, payload_bytes);
                }
                return Ok(Prepared::Done(Applied::Ignored(why)));
            }
            Decision::Transition(t) => t,
        };
        let expected = state.version;
        for event in &transition.events {
            state.apply(event);
        }
        // The saga's events.
        let source = store.source().to_owned();
        let meta = CommandMetadata {
            correlation_id: Some(state.correlation_id),
            causation_id: cause,
            headers: [(wire::SAGA_ID.to_owned(), saga_id.to_string())].into(),
            ..CommandMetadata::default()
        };
        let mut new_events: Vec<NewEvent> = Vec::with_capacity(transition.events.len());
        for event in &transition.events {
            let mut encoded =
                NewEvent::encode(event, &source, &meta).map_err(|e| RuntimeError::Encode {
                    saga_id,
                    what: format!("event {}", event.event_type()),
                    reason: e.to_string(),
                })?;
            // The events of one transition follow from each other (the step started because
            // the saga started, ...): the first is caused by the input, each next by the one
            // before, so that the trace of the flow is one chain.
            if let Some(previous) = new_events.last() {
                encoded.causation_id = Some(previous.event_id);
            }
            new_events.push(encoded);
        }
        let causation = new_events.last().map(|e| e.event_id);
        let written: History = transition
            .events
            .iter()
            .zip(&new_events)
            .map(|(event, new)| (event.clone(), new.timestamp, new.event_id))
            .collect();
        payload_bytes += new_events.iter().map(|e| e.payload.len()).sum::<usize>();
        // The commands, through the outbox, after the events' own rows.
        let mut messages = Vec::with_capacity(transition.commands.len());
        for command in &transition.commands {
            messages.push(wire::command_message(
                command,
                &self.inner.reply_topic,
                &source,
                causation,
            )?);
        }
        // The timers and the instance's row.
        let cancel: Vec<SagaTimerId> = transition
            .cancel_timers
            .iter()
            .map(|key| SagaTimerId {
                step: key.step.clone(),
                attempt: key.attempt,
                kind: kind_name(key.kind).to_owned(),
            })
            .collect();
        let put: Vec<SagaTimer> = transition
            .timers
            .iter()
            .map(|t| SagaTimer {
                saga_id,
                saga_type: self.saga_type().to_owned(),
                step: t.key.step.clone(),
                attempt: t.key.attempt,
                kind: kind_name(t.key.kind).to_owned(),
                due_at: t.due_at,
            })
            .collect();
        let (status, detail) = status_detail(&state);
        record.status = status;
        record.detail = detail;
        record.correlation_id = state.correlation_id;
        record.definition_version = state.definition_version;
        record.version = state.version;
        if let Some(last) = causation {
            record.last_event_id = Some(last);
        }
        Ok(Prepared::Write(Box::new(Planned {
            stream,
            expected,
            new_events,
            messages,
            record,
            cancel,
            put,
            events: transition.events,
            loaded,
            written,
            payload_bytes,
            state,
            now,
            commands: transition.commands.len(),
        })))
    }

    /// Writes one transition: all of it in one call (one statement on PostgreSQL), the events
    /// at the version loaded (the optimistic check), the commands after them, the timers and
    /// the row.
    async fn write_one(
        &self,
        uow: &mut S::UnitOfWork,
        mut planned: Planned,
    ) -> Result<Applied, RuntimeError> {
        let (saga_id, expected) = (planned.saga_id(), planned.expected);
        let item = planned.item();
        let written = self
            .inner
            .store
            .write_saga_transition(
                uow,
                &item.stream_id,
                item.expected,
                item.events,
                item.messages,
                item.write,
            )
            .await;
        match written {
            Ok(true) => Ok(self.written(planned)),
            Ok(false) => Err(RuntimeError::NotFound { saga_id }),
            Err(e) if e.is_conflict() => Err(RuntimeError::Conflict { saga_id, expected }),
            Err(e) => Err(RuntimeError::store(saga_id)(e)),
        }
    }

    /// Writes the transitions of distinct instances in one call
    /// ([`SagaStore::write_saga_transitions`]), in order. On an error, the index of the
    /// transition it belongs to when it is one transition's (a conflict, an instance not
    /// registered), and the unit of work must be rolled back.
    pub(crate) async fn write_planned(
        &self,
        uow: &mut S::UnitOfWork,
        mut planned: Vec<Planned>,
    ) -> Result<Vec<Applied>, (Option<usize>, RuntimeError)> {
        let Some(first) = planned.first().map(Planned::saga_id) else {
            return Ok(Vec::new());
        };
        let items: Vec<SagaTransitionItem<'_>> = planned.iter_mut().map(Planned::item).collect();
        let written = self.inner.store.write_saga_transitions(uow, items).await;
        let registered = match written {
            Ok(registered) => registered,
            Err(e) => {
                let at = match &e {
                    eventfold_eventstore::StoreError::VersionConflict { stream_id, .. } => {
                        planned.iter().position(|p| &p.stream == stream_id)
                    }
                    _ => None,
                };
                let error = match at.map(|i| &planned[i]) {
                    Some(p) => RuntimeError::Conflict {
                        saga_id: p.saga_id(),
                        expected: p.expected,
                    },
                    None => RuntimeError::store(first)(e),
                };
                return Err((at, error));
            }
        };
        if let Some(i) = registered.iter().position(|r| !r) {
            let saga_id = planned[i].saga_id();
            return Err((Some(i), RuntimeError::NotFound { saga_id }));
        }
        Ok(planned.into_iter().map(|p| self.written(p)).collect())
    }

    /// After the write: the metrics, and the new state in the cache (used by the next
    /// transition only if this one commits, ADR 0029).
    fn written(&self, planned: Planned) -> Applied {
        let Planned {
            record,
            events,
            mut loaded,
            written,
            payload_bytes,
            state,
            now,
            commands,
            ..
        } = planned;
        self.record_metrics(&events, &loaded, now);
        if let (Some(last), false) = (record.last_event_id, state.status.is_terminal()) {
            loaded.extend(written);
            self.inner
                .cache
                .put(record.saga_id, state.version, last, loaded, payload_bytes);
        }
        Applied::Transitioned {
            status: state.status.clone(),
            version: state.version,
            events: events.len(),
            commands,
        }
    }

    /// The history of the instance whose row this unit of work locked: from the state cache
    /// when the row names the cached state, else read from its stream. In debug builds a cached
    /// history is checked against the stream, so every test of the runtime checks the cache.
    async fn history(
        &self,
        uow: &mut S::UnitOfWork,
        stream: &StreamId,
        record: &SagaRecord,
    ) -> Result<(History, usize), RuntimeError> {
        let saga_id = record.saga_id;
        let Some((cached, payload_bytes)) =
            self.inner
                .cache
                .take(saga_id, record.version, record.last_event_id)
        else {
            metrics::counter!("eventfold_saga_cache_misses_total", "saga_type" => self.saga_type().to_owned())
                .increment(1);
            return history::read_in(uow, stream, saga_id).await;
        };
        metrics::counter!("eventfold_saga_cache_hits_total", "saga_type" => self.saga_type().to_owned())
            .increment(1);
        #[cfg(debug_assertions)]
        {
            let (stored, _) = history::read_in(uow, stream, saga_id).await?;
            let ids = |h: &History| {
                h.iter()
                    .map(|(e, _, id)| (e.clone(), *id))
                    .collect::<Vec<_>>()
            };
            debug_assert_eq!(
                ids(&cached),
                ids(&stored),
                "the state cache of saga {saga_id} differs from its stream at version {}",
                record.version
            );
        }
        Ok((cached, payload_bytes))
    }

    fn record_metrics(
        &self,
        events: &[SagaEvent],
        history: &[(SagaEvent, DateTime<Utc>, Uuid)],
        now: DateTime<Utc>,
    ) {
        let saga_type = self.saga_type().to_owned();
        metrics::counter!("eventfold_saga_transitions_total", "saga_type" => saga_type.clone())
            .increment(1);
        for event in events {
            match event {
                SagaEvent::Started { .. } => {
                    metrics::counter!("eventfold_saga_started_total", "saga_type" => saga_type.clone())
                        .increment(1);
                }
                SagaEvent::StepSucceeded { step, .. } => {
                    let started = history.iter().rev().find_map(|(e, at, _)| match e {
                        SagaEvent::StepStarted { step: s, .. } if s == step => Some(*at),
                        _ => None,
                    });
                    if let Some(at) = started {
                        let seconds =
                            (now - at).num_microseconds().unwrap_or(0).max(0) as f64 / 1_000_000.0;
                        metrics::histogram!("eventfold_saga_step_seconds", "saga_type" => saga_type.clone(), "step" => step.clone())
                            .record(seconds);
                    }
                }
                SagaEvent::StepTimedOut { .. } => {
                    metrics::counter!("eventfold_saga_timeouts_total", "saga_type" => saga_type.clone())
                        .increment(1);
                }
                SagaEvent::StepCompensated { .. } => {
                    metrics::counter!("eventfold_saga_compensations_total", "saga_type" => saga_type.clone())
                        .increment(1);
                }
                SagaEvent::Parked { .. } => {
                    metrics::counter!("eventfold_saga_parked_total", "saga_type" => saga_type.clone())
                        .increment(1);
                }
                SagaEvent::Completed | SagaEvent::Compensated | SagaEvent::Failed { .. } => {
                    let status = match event {
                        SagaEvent::Completed => "completed",
                        SagaEvent::Compensated => "compensated",
                        _ => "failed",
                    };
                    metrics::counter!("eventfold_saga_finished_total", "saga_type" => saga_type.clone(), "status" => status)
                        .increment(1);
                }
                _ => {}
            }
        }
    }
}
