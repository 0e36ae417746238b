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

    fn command(
        &self,
        step: &str,
        attempt: u32,
        kind: CommandKind,
        cmd: crate::Command,
    ) -> SagaCommand {
        SagaCommand {
            saga_id: self.state.saga_id,
            saga_type: self.state.saga_type.clone(),
            step: step.to_owned(),
            attempt,
            kind,
            request_key: SagaCommand::request_key_for(self.state.saga_id, step, kind),
            correlation_id: self.state.correlation_id,
            topic: cmd.topic,
            message_type: cmd.message_type,
            payload: cmd.payload,
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

    // ---- inputs -------------------------------------------------------------------------

    fn on_reply(&mut self, reply: Reply) -> Result<(), SagaError> {
        let Some((step, step_def)) = self.known_step(&reply.step) else {
            return Ok(());
        };
        match reply.kind {
            CommandKind::Action => {
                if step.phase != StepPhase::InFlight {
                    // the success of an attempt that had timed out (the fence let only that in)
                    if self.state.status == SagaStatus::Running {
                        self.cancel(&step.name, step.attempt, TimerKind::RetryBackoff);
                        return self.succeed(step_def, step.attempt, &reply.outcome);
                    }
                    self.emit(SagaEvent::StepSucceededLate {
                        step: step.name,
                        attempt: reply.attempt,
                    });
                    return Ok(());
                }
                if step_def.timeout.is_some() {
                    self.cancel(&step.name, step.attempt, TimerKind::Timeout);
                }
                match &reply.outcome {
                    Outcome::Success { .. } => self.succeed(step_def, step.attempt, &reply.outcome),
                    Outcome::Failure { reason, retryable } => {
                        self.attempt_failed(
                            step_def,
                            step.attempt,
                            reason.clone(),
                            *retryable,
                            false,
                        );
                        Ok(())
                    }
                }
            }
            CommandKind::Compensation => {
                if step_def.timeout.is_some() {
                    self.cancel(&step.name, reply.attempt, TimerKind::CompensationTimeout);
                }
                match reply.outcome {
                    Outcome::Success { .. } => {
                        self.emit(SagaEvent::StepCompensated {
                            step: step.name,
                            attempt: reply.attempt,
                        });
                    }
                    Outcome::Failure { reason, .. } => {
                        self.compensation_failed(step_def, reply.attempt, reason);
                    }
                }
                Ok(())
            }
        }
    }

    /// Attempt `attempt` of `step` succeeded (a reply, or a local run) with `data`: the data is
    /// kept, the step succeeded, and a pivot step is passed.
    fn step_succeeded(
        &mut self,
        step: &StepDef<D>,
        attempt: u32,
        data: D,
    ) -> Result<(), SagaError> {
        self.set_data(data)?;
        self.emit(SagaEvent::StepSucceeded {
            step: step.name.clone(),
            attempt,
        });
        if step.pivot {
            self.emit(SagaEvent::PivotPassed {
                step: step.name.clone(),
            });
        }
        Ok(())
    }

    /// A success reply for the current attempt of a step.
    fn succeed(
        &mut self,
        step: &StepDef<D>,
        attempt: u32,
        outcome: &Outcome,
    ) -> Result<(), SagaError> {
        if self.state.status != SagaStatus::Running {
            // compensation began: the step is done, it will be compensated, never continued
            self.emit(SagaEvent::StepSucceeded {
                step: step.name.clone(),
                attempt,
            });
            return Ok(());
        }
        let payload = match outcome {
            Outcome::Success { payload } => payload.clone(),
            Outcome::Failure { .. } => Value::Null,
        };
        let handled = match &step.on_reply {
            Some(handle) => {
                let mut data = self.data.clone();
                handle(&mut data, &payload).map(|()| data)
            }
            None => Ok(self.data.clone()),
        };
        match handled {
            Ok(data) => self.step_succeeded(step, attempt, data)?,
            Err(error) => {
                // the participant acted, the saga refuses the result
                self.emit(SagaEvent::StepSucceeded {
                    step: step.name.clone(),
                    attempt,
                });
                let reason = format!("the reply of step {} was refused: {error}", step.name);
                if self.state.pivot_passed {
                    self.fail(format!(
                        "{reason} (after the pivot, nothing is compensated)"
                    ));
                } else {
                    self.emit(SagaEvent::CompensationStarted {
                        step: step.name.clone(),
                        reason,
                    });
                    self.cancel_retries();
                }
            }
        }
        Ok(())
    }

    /// An attempt of a step failed (`timed_out`: its outcome is unknown).
    fn attempt_failed(
        &mut self,
        step: &StepDef<D>,
        attempt: u32,
        reason: String,
        retryable: bool,
        timed_out: bool,
    ) {
        let name = step.name.clone();
        if timed_out {
            self.emit(SagaEvent::StepTimedOut {
                step: name.clone(),
                attempt,
            });
        } else {
            self.emit(SagaEvent::StepFailed {
                step: name.clone(),
                attempt,
                reason: reason.clone(),
            });
        }
        if self.state.status != SagaStatus::Running {
            return; // compensating: no new attempt
        }
        let forward_only = self.state.pivot_passed;
        let retry = forward_only || ((retryable || timed_out) && attempt < step.retry.max_attempts);
        if retry {
            let after = step.retry.delay_after(attempt);
            let due_at = due(self.now, after);
            self.emit(SagaEvent::StepRetryScheduled {
                step: name.clone(),
                attempt,
                due_at,
            });
            self.timer(&name, attempt, TimerKind::RetryBackoff, after);
        } else {
            let reason = if timed_out {
                format!("step {name} timed out (attempt {attempt})")
            } else {
                format!("step {name} failed (attempt {attempt}): {reason}")
            };
            self.emit(SagaEvent::CompensationStarted { step: name, reason });
            self.cancel_retries();
        }
    }

    /// Compensation began: steps waiting for a retry will not be retried.
    fn cancel_retries(&mut self) {
        let waiting: Vec<(String, u32)> = self
            .state
            .steps
            .iter()
            .filter(|s| s.phase == StepPhase::WaitingRetry)
            .map(|s| (s.name.clone(), s.attempt))
            .collect();
        for (step, attempt) in waiting {
            self.cancel(&step, attempt, TimerKind::RetryBackoff);
        }
    }

    fn on_timer(&mut self, key: TimerKey) -> Result<(), SagaError> {
        let Some((step, step_def)) = self.known_step(&key.step) else {
            return Ok(());
        };
        match key.kind {
            TimerKind::Timeout => {
                self.attempt_failed(step_def, step.attempt, "timed out".into(), true, true);
                Ok(())
            }
            TimerKind::RetryBackoff => self.start_attempt(step_def, step.attempt + 1),
            TimerKind::CompensationTimeout => {
                self.compensation_failed(step_def, key.attempt, "timed out".into());
                Ok(())
            }
            TimerKind::CompensationRetry => {
                self.start_compensation(step_def, step.compensation_attempt + 1)
            }
        }
    }

    fn on_retry_parked(&mut self) -> Result<(), SagaError> {
        let SagaStatus::CompensationFailed { step, .. } = self.state.status.clone() else {
            return Ok(());
        };
        let Some(step_def) = self.step_def(&step) else {
            return Ok(());
        };
        let attempt = self
            .step_state(&step)
            .map(|s| s.compensation_attempt)
            .unwrap_or(0);
        self.emit(SagaEvent::Resumed { step: step.clone() });
        tracing::info!(saga_type = self.def.saga_type(), saga_id = %self.state.saga_id, %step, "parked saga resumed");
        self.start_compensation(step_def, attempt + 1)
    }

    // ---- going forward --------------------------------------------------------------------

    /// Starts an attempt of a step's action: a command (with its timeout) or a local run.
    fn start_attempt(&mut self, step: &StepDef<D>, attempt: u32) -> Result<(), SagaError> {
        self.emit(SagaEvent::StepStarted {
            step: step.name.clone(),
            attempt,
        });
        match &step.action {
            Work::Invoke(build) => match build(&self.data) {
                Ok(cmd) => {
                    let command = self.command(&step.name, attempt, CommandKind::Action, cmd);
                    self.out.commands.push(command);
                    if let Some(timeout) = step.timeout {
                        self.timer(&step.name, attempt, TimerKind::Timeout, timeout);
                    }
                }
                Err(StepError { message, retryable }) => {
                    let reason = format!("the command could not be built: {message}");
                    self.attempt_failed(step, attempt, reason, retryable, false);
                }
            },
            Work::Local(run) => {
                let mut data = self.data.clone();
                match run(&mut data) {
                    Ok(()) => self.step_succeeded(step, attempt, data)?,
                    Err(StepError { message, retryable }) => {
                        self.attempt_failed(step, attempt, message, retryable, false);
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs the saga as far as it goes without waiting.
    fn drive(&mut self) -> Result<(), SagaError> {
        loop {
            let progressed = match self.state.status {
                SagaStatus::Running => self.forward_once()?,
                SagaStatus::Compensating => self.compensate_once()?,
                _ => false,
            };
            if !progressed {
                return Ok(());
            }
        }
    }

    /// Starts what can start; `true` if anything changed.
    fn forward_once(&mut self) -> Result<bool, SagaError> {
        let stages = &self.def.inner.stages;
        let current = match self.state.steps.iter().max_by_key(|s| s.start_index) {
            None => 0,
            Some(latest) => match self.def.stage_of(&latest.name) {
                Some(stage) => stage,
                None => {
                    let name = latest.name.clone();
                    self.step_def(&name);
                    return Ok(true);
                }
            },
        };
        // steps of the current stage that never started (the first stage; or a step a newer
        // definition added to the running parallel group)
        let mut progressed = false;
        for &index in &stages[current] {
            let step = &self.def.inner.steps[index];
            if self.state.status != SagaStatus::Running {
                break;
            }
            if self.step_state(&step.name).is_none() {
                self.start_attempt(step, 1)?;
                progressed = true;
            }
        }
        if progressed || self.state.status != SagaStatus::Running {
            return Ok(true);
        }
        let done = stages[current].iter().all(|&index| {
            self.step_state(&self.def.inner.steps[index].name)
                .is_some_and(|s| s.phase == StepPhase::Succeeded)
        });
        if !done {
            return Ok(false);
        }
        match stages.get(current + 1) {
            None => self.emit(SagaEvent::Completed),
            Some(next) => {
                for &index in next {
                    if self.state.status != SagaStatus::Running {
                        break;
                    }
                    self.start_attempt(&self.def.inner.steps[index], 1)?;
                }
            }
        }
        Ok(true)
    }

    // ---- going backward -------------------------------------------------------------------

    /// Whether a step that started needs its compensation.
    fn needs_compensation(step: &StepState, def: &StepDef<D>) -> bool {
        if def.compensation.is_none() {
            return false;
        }
        match step.phase {
            StepPhase::Succeeded => true,
            StepPhase::InFlight => false,
            StepPhase::TimedOut | StepPhase::WaitingRetry | StepPhase::Failed => {
                step.succeeded_late || step.timed_out || def.compensate_on_failure
            }
        }
    }

    /// Issues the next compensation; `true` if anything changed.
    fn compensate_once(&mut self) -> Result<bool, SagaError> {
        // siblings still in flight are awaited (until they reply or time out)
        if self
            .state
            .steps
            .iter()
            .any(|s| s.phase == StepPhase::InFlight)
        {
            return Ok(false);
        }
        let mut pending: Vec<&StepState> = Vec::new();
        for step in &self.state.steps {
            if step.compensation == CompensationPhase::Compensated {
                continue;
            }
            let Some(def) = self.def.step(&step.name) else {
                let name = step.name.clone();
                self.step_def(&name);
                return Ok(true);
            };
            if Self::needs_compensation(step, def) {
                pending.push(step);
            }
        }
        // reverse order of start
        pending.sort_by_key(|s| std::cmp::Reverse(s.start_index));
        let Some(next) = pending.first() else {
            self.emit(SagaEvent::Compensated);
            return Ok(true);
        };
        if next.compensation != CompensationPhase::NotStarted {
            return Ok(false); // in flight, waiting for a retry, or parked
        }
        let name = next.name.clone();
        let Some(def) = self.step_def(&name) else {
            return Ok(true);
        };
        self.start_compensation(def, 1)?;
        Ok(true)
    }

    fn start_compensation(&mut self, step: &StepDef<D>, attempt: u32) -> Result<(), SagaError> {
        let Some(work) = &step.compensation else {
            return Ok(());
        };
        self.emit(SagaEvent::StepCompensating {
            step: step.name.clone(),
            attempt,
        });
        match work {
            Work::Invoke(build) => match build(&self.data) {
                Ok(cmd) => {
                    let command = self.command(&step.name, attempt, CommandKind::Compensation, cmd);
                    self.out.commands.push(command);
                    if let Some(timeout) = step.timeout {
                        self.timer(&step.name, attempt, TimerKind::CompensationTimeout, timeout);
                    }
                }
                Err(error) => self.compensation_failed(
                    step,
                    attempt,
                    format!("the compensation command could not be built: {error}"),
                ),
            },
            Work::Local(run) => {
                let mut data = self.data.clone();
                match run(&mut data) {
                    Ok(()) => {
                        self.set_data(data)?;
                        self.emit(SagaEvent::StepCompensated {
                            step: step.name.clone(),
                            attempt,
                        });
                    }
                    Err(error) => self.compensation_failed(step, attempt, error.message),
                }
            }
        }
        Ok(())
    }

    fn compensation_failed(&mut self, step: &StepDef<D>, attempt: u32, error: String) {
        self.emit(SagaEvent::CompensationFailed {
            step: step.name.clone(),
            attempt,
            error: error.clone(),
        });
        let round_start = self
            .step_state(&step.name)
            .map(|s| s.compensation_round_start)
            .unwrap_or(0);
        let tries = attempt.saturating_sub(round_start);
        if tries < step.compensation_retry.max_attempts {
            let after = step.compensation_retry.delay_after(tries);
            let due_at = due(self.now, after);
            self.emit(SagaEvent::CompensationRetryScheduled {
                step: step.name.clone(),
                attempt,
                due_at,
            });
            self.timer(&step.name, attempt, TimerKind::CompensationRetry, after);
        } else {
            tracing::warn!(saga_type = self.def.saga_type(), saga_id = %self.state.saga_id, step = %step.name, %error, "saga parked: compensation failed");
            self.emit(SagaEvent::Parked {
                step: step.name.clone(),
                error,
            });
        }
    }
}
