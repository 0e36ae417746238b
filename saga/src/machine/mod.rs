//! The deterministic state machine: [`decide`] takes a definition, a state, one [`Input`] and
//! the time, and returns a [`Decision`]. It never mutates, never reads a clock, never does I/O.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::definition::{SagaData, SagaDefinition, StepDef, Work};
use crate::error::{SagaError, StepError};
use crate::event::SagaEvent;
use crate::message::{CommandKind, Outcome, Reply, SagaCommand};
use crate::state::{CompensationPhase, SagaState, SagaStatus, StepPhase, StepState};

mod compensation;
mod forward;

/// One input to a saga instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Input<D> {
    /// Start the saga (the runtime does it in the caller's unit of work, idempotent on a
    /// business key that maps to `saga_id`).
    Start {
        /// The instance id (the runtime's choice; the stream of the instance).
        saga_id: Uuid,
        /// The correlation id of the business flow; copied onto every command.
        correlation_id: Uuid,
        /// The initial data.
        data: D,
    },
    /// A participant's reply.
    Reply(Reply),
    /// A durable timer fired.
    TimerFired(TimerKey),
    /// An operator resumes a parked saga: its failed compensation is tried again.
    RetryParked,
}

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// An action attempt waits too long for its reply.
    Timeout,
    /// The backoff before the next action attempt is over.
    RetryBackoff,
    /// A compensation attempt waits too long for its reply.
    CompensationTimeout,
    /// The backoff before the next compensation attempt is over.
    CompensationRetry,
}

/// Identifies a timer of an instance: the fence a firing is checked against.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TimerKey {
    /// The step.
    pub step: String,
    /// The attempt it belongs to (of the action or of the compensation, after `kind`).
    pub attempt: u32,
    /// What it is for.
    pub kind: TimerKind,
}

/// A timer the runtime stores (in its timers table, in the transition's transaction) and fires
/// as [`Input::TimerFired`] once the database clock passes `due_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRequest {
    /// Which timer.
    pub key: TimerKey,
    /// When it falls due.
    pub due_at: DateTime<Utc>,
}

/// Everything one transition produces; the runtime commits it in one transaction: the events
/// appended to the instance's stream at the expected version it loaded, the commands written to
/// the outbox, the timers inserted, the cancelled timers deleted, and the inbox mark of the input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transition {
    /// The events to append; `state.apply` of each gives the next state.
    pub events: Vec<SagaEvent>,
    /// The commands to send.
    pub commands: Vec<SagaCommand>,
    /// The timers to store.
    pub timers: Vec<TimerRequest>,
    /// Timers no longer needed (an optimisation: a timer that fires anyway is ignored).
    pub cancel_timers: Vec<TimerKey>,
}

/// Why an input changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ignored {
    /// `Start` for an instance that already started (idempotent start).
    AlreadyStarted,
    /// An input other than `Start` for an instance that never started.
    NotStarted,
    /// The saga is finished (`Completed`, `Compensated` or `Failed`).
    Finished {
        /// The terminal status.
        status: &'static str,
    },
    /// A reply that is not the one awaited: a duplicate, an older attempt, or a reply for a step
    /// the saga no longer waits for.
    StaleReply {
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
        /// Action or compensation.
        kind: CommandKind,
    },
    /// A timer that is not the one awaited (already handled, or its attempt is over).
    StaleTimer(TimerKey),
    /// `RetryParked` for a saga that is not parked.
    NotParked,
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ignored::AlreadyStarted => f.write_str("the saga already started"),
            Ignored::NotStarted => f.write_str("the saga has not started"),
            Ignored::Finished { status } => write!(f, "the saga is {status}"),
            Ignored::StaleReply {
                step,
                attempt,
                kind,
            } => write!(
                f,
                "stale or duplicate {kind} reply for step {step} attempt {attempt}"
            ),
            Ignored::StaleTimer(key) => write!(
                f,
                "stale or duplicate {:?} timer for step {} attempt {}",
                key.kind, key.step, key.attempt
            ),
            Ignored::NotParked => f.write_str("the saga is not parked"),
        }
    }
}

/// The machine's answer to one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A transition to commit.
    Transition(Transition),
    /// Nothing changes (a stale or duplicate input): commit only the inbox mark, or nothing.
    Ignored {
        /// Why.
        why: Ignored,
    },
}

impl Decision {
    /// The transition, `None` when ignored.
    pub fn transition(&self) -> Option<&Transition> {
        match self {
            Decision::Transition(t) => Some(t),
            Decision::Ignored { .. } => None,
        }
    }

    /// `true` when ignored.
    pub fn is_ignored(&self) -> bool {
        matches!(self, Decision::Ignored { .. })
    }
}

impl<D: SagaData> SagaDefinition<D> {
    /// Decides one input: see [`decide`].
    pub fn decide(
        &self,
        state: &SagaState,
        input: Input<D>,
        now: DateTime<Utc>,
    ) -> Result<Decision, SagaError> {
        decide(self, state, input, now)
    }
}

/// Decides what one input does to a saga instance at time `now` (the database's clock).
///
/// Deterministic: the same definition, state, input and time give the same decision. Pure: the
/// state is not touched; apply [`Transition::events`] to get the next state. Local steps and local
/// compensations run inside this call (on a copy of the data).
///
/// Errors are for misrouted inputs and a newer instance version ([`SagaError`]); stale and
/// duplicate inputs are [`Decision::Ignored`]; failures of steps are transitions.
///
/// ```
/// use chrono::Utc;
/// use eventfold_saga::{Command, Decision, Input, Outcome, Saga, SagaState, SagaStatus};
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Data { n: u32 }
///
/// let def = Saga::<Data>::define("demo", 1)
///     .step("ask", |s| s.invoke(|d: &Data| Command::new("t", "ask", &d.n)))
///     .build()?;
/// let now = Utc::now();
/// let mut state = SagaState::default();
/// let start = Input::Start { saga_id: uuid::Uuid::now_v7(), correlation_id: uuid::Uuid::now_v7(), data: Data { n: 1 } };
/// let Decision::Transition(t) = def.decide(&state, start, now)? else { unreachable!() };
/// t.events.iter().for_each(|e| state.apply(e));
/// let reply = t.commands[0].reply(Outcome::success(serde_json::json!({})));
/// let Decision::Transition(t) = def.decide(&state, Input::Reply(reply.clone()), now)? else { unreachable!() };
/// t.events.iter().for_each(|e| state.apply(e));
/// assert_eq!(state.status, SagaStatus::Completed);
/// // the same reply again changes nothing
/// assert!(def.decide(&state, Input::Reply(reply), now)?.is_ignored());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decide<D: SagaData>(
    def: &SagaDefinition<D>,
    state: &SagaState,
    input: Input<D>,
    now: DateTime<Utc>,
) -> Result<Decision, SagaError> {
    if let Input::Start {
        saga_id,
        correlation_id,
        data,
    } = input
    {
        if state.status != SagaStatus::NotStarted {
            return Ok(ignored(Ignored::AlreadyStarted));
        }
        let json = serde_json::to_value(&data).map_err(|e| SagaError::DataEncode {
            saga_type: def.saga_type().to_owned(),
            reason: e.to_string(),
        })?;
        let mut machine = Machine::new(def, state.clone(), data, now);
        machine.emit(SagaEvent::Started {
            saga_id,
            saga_type: def.saga_type().to_owned(),
            definition_version: def.version(),
            correlation_id,
            data: json,
        });
        machine.drive()?;
        tracing::debug!(saga_type = def.saga_type(), %saga_id, "saga started");
        return Ok(Decision::Transition(machine.out));
    }

    if state.status == SagaStatus::NotStarted {
        return Ok(ignored(Ignored::NotStarted));
    }
    if state.saga_type != def.saga_type() {
        return Err(SagaError::WrongSagaType {
            saga_id: state.saga_id,
            instance_type: state.saga_type.clone(),
            definition_type: def.saga_type().to_owned(),
        });
    }
    if let Input::Reply(reply) = &input
        && reply.saga_id != state.saga_id
    {
        return Err(SagaError::WrongSagaId {
            saga_id: state.saga_id,
            reply_saga_id: reply.saga_id,
        });
    }
    if state.status.is_terminal() {
        return Ok(ignored(Ignored::Finished {
            status: state.status.as_str(),
        }));
    }
    if state.definition_version > def.version() {
        return Err(SagaError::NewerDefinition {
            saga_type: def.saga_type().to_owned(),
            saga_id: state.saga_id,
            instance_version: state.definition_version,
            known_version: def.version(),
        });
    }
    if let Some(why) = fence(state, &input) {
        tracing::debug!(saga_type = def.saga_type(), saga_id = %state.saga_id, %why, "saga input ignored");
        return Ok(ignored(why));
    }

    // Load the data (migrating it to this definition's version), then handle the input.
    let mut out = Transition::default();
    let mut working = state.clone();
    let data = match load_data(def, &working) {
        Ok((data, migrated)) => {
            if let Some(event) = migrated {
                working.apply(&event);
                out.events.push(event);
            }
            data
        }
        Err(reason) => {
            let event = SagaEvent::Failed { reason };
            out.events.push(event);
            return Ok(Decision::Transition(out));
        }
    };
    let mut machine = Machine::new(def, working, data, now);
    machine.out = out;
    match input {
        Input::Start { .. } => {}
        Input::Reply(reply) => machine.on_reply(reply)?,
        Input::TimerFired(key) => machine.on_timer(key)?,
        Input::RetryParked => machine.on_retry_parked()?,
    }
    machine.drive()?;
    tracing::debug!(
        saga_type = def.saga_type(),
        saga_id = %state.saga_id,
        status = machine.state.status.as_str(),
        events = machine.out.events.len(),
        commands = machine.out.commands.len(),
        "saga transition"
    );
    Ok(Decision::Transition(machine.out))
}

fn ignored(why: Ignored) -> Decision {
    Decision::Ignored { why }
}

/// Is the input the one awaited? `None` when yes.
fn fence<D>(state: &SagaState, input: &Input<D>) -> Option<Ignored> {
    match input {
        Input::Start { .. } => None,
        Input::RetryParked => (!state.status.is_parked()).then_some(Ignored::NotParked),
        Input::Reply(reply) => {
            let stale = || Ignored::StaleReply {
                step: reply.step.clone(),
                attempt: reply.attempt,
                kind: reply.kind,
            };
            let Some(step) = state.step(&reply.step) else {
                return Some(stale());
            };
            let accepted = match reply.kind {
                CommandKind::Action => {
                    step.attempt == reply.attempt
                        && match step.phase {
                            StepPhase::InFlight => true,
                            // the success of an attempt that timed out
                            StepPhase::WaitingRetry | StepPhase::TimedOut => {
                                step.timed_out && !step.succeeded_late && reply.outcome.is_success()
                            }
                            StepPhase::Succeeded | StepPhase::Failed => false,
                        }
                }
                CommandKind::Compensation => {
                    step.compensation == CompensationPhase::InFlight
                        && step.compensation_attempt == reply.attempt
                }
            };
            (!accepted).then(stale)
        }
        Input::TimerFired(key) => {
            let stale = || Ignored::StaleTimer(key.clone());
            let Some(step) = state.step(&key.step) else {
                return Some(stale());
            };
            let accepted = match key.kind {
                TimerKind::Timeout => {
                    step.phase == StepPhase::InFlight && step.attempt == key.attempt
                }
                TimerKind::RetryBackoff => {
                    step.phase == StepPhase::WaitingRetry
                        && step.attempt == key.attempt
                        && state.status == SagaStatus::Running
                }
                TimerKind::CompensationTimeout => {
                    step.compensation == CompensationPhase::InFlight
                        && step.compensation_attempt == key.attempt
                }
                TimerKind::CompensationRetry => {
                    step.compensation == CompensationPhase::WaitingRetry
                        && step.compensation_attempt == key.attempt
                        && state.status == SagaStatus::Compensating
                }
            };
            (!accepted).then(stale)
        }
    }
}

/// The data at this definition's version, and the `saga.migrated` event if it was migrated.
fn load_data<D: SagaData>(
    def: &SagaDefinition<D>,
    state: &SagaState,
) -> Result<(D, Option<SagaEvent>), String> {
    let mut value = state.data.clone();
    let from = state.definition_version;
    let mut version = from;
    while version < def.version() {
        if let Some(migrate) = def.inner.migrations.get(&version) {
            value = migrate(value).map_err(|e| {
                format!(
                    "the data of saga {} cannot be migrated from definition version {version} to {}: {e}",
                    def.saga_type(),
                    version + 1
                )
            })?;
        }
        version += 1;
    }
    let data = D::deserialize(&value).map_err(|e| {
        format!(
            "the data of saga {} (definition version {from}) does not decode at version {}: {e}",
            def.saga_type(),
            def.version()
        )
    })?;
    let migrated = (from != def.version()).then(|| SagaEvent::Migrated {
        from_version: from,
        to_version: def.version(),
        data: value,
    });
    Ok((data, migrated))
}

fn due(now: DateTime<Utc>, after: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(after)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// One decision in progress: a working copy of the state that every emitted event is applied to
/// (so `state == fold(history + events)` by construction), the typed data, and the output.
struct Machine<'a, D> {
    def: &'a SagaDefinition<D>,
    state: SagaState,
    data: D,
    now: DateTime<Utc>,
    out: Transition,
}

impl<'a, D: SagaData> Machine<'a, D> {
    fn new(def: &'a SagaDefinition<D>, state: SagaState, data: D, now: DateTime<Utc>) -> Self {
        Self {
            def,
            state,
            data,
            now,
            out: Transition::default(),
        }
    }

    fn emit(&mut self, event: SagaEvent) {
        self.state.apply(&event);
        self.out.events.push(event);
    }

    fn fail(&mut self, reason: String) {
        tracing::warn!(saga_type = self.def.saga_type(), saga_id = %self.state.saga_id, %reason, "saga failed");
        self.emit(SagaEvent::Failed { reason });
    }

    fn step_state(&self, name: &str) -> Option<&StepState> {
        self.state.step(name)
    }

    /// A step the instance knows, with its definition: `None` for a step the instance does not
    /// know (the input is ignored) and for one missing from the definition (which fails the
    /// saga, see [`Self::step_def`]).
    fn known_step(&mut self, name: &str) -> Option<(StepState, &'a StepDef<D>)> {
        let step = self.step_state(name).cloned()?;
        let def = self.step_def(name)?;
        Some((step, def))
    }

    /// The definition of a step the instance knows; a missing one fails the saga.
    fn step_def(&mut self, name: &str) -> Option<&'a StepDef<D>> {
        let def: &'a SagaDefinition<D> = self.def;
        match def.step(name) {
            Some(step) => Some(step),
            None => {
                self.fail(format!(
                    "step {name} of this instance is not in definition version {} of saga {}",
                    def.version(),
                    def.saga_type()
                ));
                None
            }
        }
    }

    fn set_data(&mut self, data: D) -> Result<(), SagaError> {
        let json = serde_json::to_value(&data).map_err(|e| SagaError::DataEncode {
            saga_type: self.def.saga_type().to_owned(),
            reason: e.to_string(),
        })?;
        self.data = data;
        if json != self.state.data {
            self.emit(SagaEvent::DataUpdated { data: json });
        }
        Ok(())
    }

    /// Sends `cmd`, the command of attempt `attempt` of `step`'s action or compensation
    /// (`kind`), and, when the step has a timeout, sets the timer `timeout` for its reply.
    fn send(
        &mut self,
        step: &StepDef<D>,
        attempt: u32,
        kind: CommandKind,
        timeout: TimerKind,
        cmd: crate::Command,
    ) {
        let name = step.name.as_str();
        self.out.commands.push(SagaCommand {
            saga_id: self.state.saga_id,
            saga_type: self.state.saga_type.clone(),
            step: name.to_owned(),
            attempt,
            kind,
            request_key: SagaCommand::request_key_for(self.state.saga_id, name, kind),
            correlation_id: self.state.correlation_id,
            topic: cmd.topic,
            message_type: cmd.message_type,
            payload: cmd.payload,
        });
        if let Some(after) = step.timeout {
            self.timer(name, attempt, timeout, after);
        }
    }

    fn timer(&mut self, step: &str, attempt: u32, kind: TimerKind, after: Duration) {
        self.out.timers.push(TimerRequest {
            key: TimerKey {
                step: step.to_owned(),
                attempt,
                kind,
            },
            due_at: due(self.now, after),
        });
    }

    fn cancel(&mut self, step: &str, attempt: u32, kind: TimerKind) {
        self.out.cancel_timers.push(TimerKey {
            step: step.to_owned(),
            attempt,
            kind,
        });
    }
}
