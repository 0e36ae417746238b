//! [`SagaState`]: the state of a saga instance, a pure fold of its [`SagaEvent`]s.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::event::SagaEvent;

/// Where a saga instance is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SagaStatus {
    /// No `saga.started` yet.
    #[default]
    NotStarted,
    /// Going forward.
    Running,
    /// Going backward: waiting for in-flight steps, then compensating one step at a time.
    Compensating,
    /// Parked: a compensation failed and its retries are exhausted; an operator's
    /// [`Input::RetryParked`](crate::Input::RetryParked) resumes it.
    CompensationFailed {
        /// The step whose compensation failed.
        step: String,
        /// The last error.
        error: String,
    },
    /// Terminal: every step succeeded.
    Completed,
    /// Terminal: every step that needed it was compensated.
    Compensated,
    /// Terminal: the saga could not go on (see [`SagaEvent::Failed`]).
    Failed {
        /// Why.
        reason: String,
    },
}

impl SagaStatus {
    /// A short name: `not_started`, `running`, `compensating`, `compensation_failed`,
    /// `completed`, `compensated`, `failed` (for listings and metrics labels).
    pub fn as_str(&self) -> &'static str {
        match self {
            SagaStatus::NotStarted => "not_started",
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::CompensationFailed { .. } => "compensation_failed",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            SagaStatus::Failed { .. } => "failed",
        }
    }

    /// `Completed`, `Compensated` or `Failed`: no input changes it any more.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed { .. }
        )
    }

    /// Parked, waiting for an operator.
    pub fn is_parked(&self) -> bool {
        matches!(self, SagaStatus::CompensationFailed { .. })
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SagaStatus::CompensationFailed { step, error } => {
                write!(f, "compensation_failed (step {step}: {error})")
            }
            SagaStatus::Failed { reason } => write!(f, "failed ({reason})"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Where a step's action is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepPhase {
    /// The current attempt waits for its reply (or, for a local step, is being run).
    InFlight,
    /// An attempt failed or timed out; the next one waits for its backoff timer.
    WaitingRetry,
    /// Succeeded.
    Succeeded,
    /// Failed (no more attempts).
    Failed,
    /// Timed out (no more attempts): the outcome is unknown.
    TimedOut,
}

/// Where a step's compensation is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompensationPhase {
    /// Not issued.
    #[default]
    NotStarted,
    /// The current attempt waits for its reply.
    InFlight,
    /// The last attempt failed (momentary: a retry or a park follows in the same transition).
    Failed,
    /// The next attempt waits for its backoff timer.
    WaitingRetry,
    /// Retries exhausted: the saga is parked on this step.
    Parked,
    /// Done.
    Compensated,
}

/// The state of one step that started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepState {
    /// The step's name.
    pub name: String,
    /// Its position in the order of start (0 for the first step that started).
    pub start_index: u32,
    /// The current (or last) attempt of its action.
    pub attempt: u32,
    /// Where its action is.
    pub phase: StepPhase,
    /// Whether its last attempt ended by a timeout (the outcome is unknown).
    pub timed_out: bool,
    /// The error of its last failed attempt.
    pub last_error: Option<String>,
    /// A success arrived after the step had timed out and compensation had begun.
    pub succeeded_late: bool,
    /// Where its compensation is.
    pub compensation: CompensationPhase,
    /// The current (or last) attempt of its compensation (0: none yet).
    pub compensation_attempt: u32,
    /// The compensation attempt after which the current round of retries started (0, or the
    /// attempt at which an operator resumed the parked saga).
    pub compensation_round_start: u32,
    /// The error of the last failed compensation attempt.
    pub compensation_error: Option<String>,
}

/// The state of a saga instance: `SagaState::fold(history)`. It knows nothing of the definition
/// (so tooling can show any instance); the data is kept as JSON.
///
/// ```
/// use eventfold_saga::{SagaEvent, SagaState, SagaStatus};
///
/// let history = vec![
///     SagaEvent::Started {
///         saga_id: uuid::Uuid::nil(), saga_type: "order.place".into(), definition_version: 1,
///         correlation_id: uuid::Uuid::nil(), data: serde_json::json!({}),
///     },
///     SagaEvent::StepStarted { step: "reserve_stock".into(), attempt: 1 },
/// ];
/// let state = SagaState::fold(&history);
/// assert_eq!(state.status, SagaStatus::Running);
/// assert_eq!(state.step("reserve_stock").map(|s| s.attempt), Some(1));
/// assert_eq!(state.version, 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaState {
    /// The instance (nil before `saga.started`).
    pub saga_id: Uuid,
    /// The saga type.
    pub saga_type: String,
    /// The definition version of the data.
    pub definition_version: u32,
    /// The correlation id of the business flow.
    pub correlation_id: Uuid,
    /// The saga data, as JSON.
    pub data: Value,
    /// Where the saga is.
    pub status: SagaStatus,
    /// The steps that started, in order of start.
    pub steps: Vec<StepState>,
    /// Whether the pivot succeeded.
    pub pivot_passed: bool,
    /// The step and reason that made the saga compensate.
    pub compensation_cause: Option<(String, String)>,
    /// How many events were applied: the stream version the runtime expects when it appends the
    /// next transition's events.
    pub version: u64,
}

impl SagaState {
    /// Folds a history.
    pub fn fold<'a>(events: impl IntoIterator<Item = &'a SagaEvent>) -> Self {
        let mut state = SagaState::default();
        for event in events {
            state.apply(event);
        }
        state
    }

    /// A step's state, `None` when it never started.
    pub fn step(&self, name: &str) -> Option<&StepState> {
        self.steps.iter().find(|s| s.name == name)
    }

    fn step_mut(&mut self, name: &str) -> Option<&mut StepState> {
        self.steps.iter_mut().find(|s| s.name == name)
    }

    /// Applies one event. Never fails: an event about a step that never started changes nothing
    /// (the machine never emits one).
    pub fn apply(&mut self, event: &SagaEvent) {
        self.version += 1;
        match event {
            SagaEvent::Started {
                saga_id,
                saga_type,
                definition_version,
                correlation_id,
                data,
            } => {
                self.saga_id = *saga_id;
                self.saga_type = saga_type.clone();
                self.definition_version = *definition_version;
                self.correlation_id = *correlation_id;
                self.data = data.clone();
                self.status = SagaStatus::Running;
            }
            SagaEvent::Migrated {
                to_version, data, ..
            } => {
                self.definition_version = *to_version;
                self.data = data.clone();
            }
            SagaEvent::DataUpdated { data } => self.data = data.clone(),
            SagaEvent::StepStarted { step, attempt } => {
                if let Some(s) = self.step_mut(step) {
                    s.attempt = *attempt;
                    s.phase = StepPhase::InFlight;
                    s.timed_out = false;
                } else {
                    let start_index = self.steps.len() as u32;
                    self.steps.push(StepState {
                        name: step.clone(),
                        start_index,
                        attempt: *attempt,
                        phase: StepPhase::InFlight,
                        timed_out: false,
                        last_error: None,
                        succeeded_late: false,
                        compensation: CompensationPhase::NotStarted,
                        compensation_attempt: 0,
                        compensation_round_start: 0,
                        compensation_error: None,
                    });
                }
            }
            SagaEvent::StepSucceeded { step, .. } => {
                if let Some(s) = self.step_mut(step) {
                    s.phase = StepPhase::Succeeded;
                    s.timed_out = false;
                }
            }
            SagaEvent::StepFailed { step, reason, .. } => {
                if let Some(s) = self.step_mut(step) {
                    s.phase = StepPhase::Failed;
                    s.timed_out = false;
                    s.last_error = Some(reason.clone());
                }
            }
            SagaEvent::StepTimedOut { step, .. } => {
                if let Some(s) = self.step_mut(step) {
                    s.phase = StepPhase::TimedOut;
                    s.timed_out = true;
                    s.last_error = Some("timed out".into());
                }
            }
            SagaEvent::StepRetryScheduled { step, .. } => {
                if let Some(s) = self.step_mut(step) {
                    s.phase = StepPhase::WaitingRetry;
                }
            }
            SagaEvent::StepSucceededLate { step, .. } => {
                if let Some(s) = self.step_mut(step) {
                    s.succeeded_late = true;
                }
            }
            SagaEvent::PivotPassed { .. } => self.pivot_passed = true,
            SagaEvent::CompensationStarted { step, reason } => {
                self.status = SagaStatus::Compensating;
                self.compensation_cause = Some((step.clone(), reason.clone()));
            }
            SagaEvent::StepCompensating { step, attempt } => {
                if let Some(s) = self.step_mut(step) {
                    s.compensation = CompensationPhase::InFlight;
                    s.compensation_attempt = *attempt;
                }
            }
            SagaEvent::StepCompensated { step, .. } => {
                if let Some(s) = self.step_mut(step) {
                    s.compensation = CompensationPhase::Compensated;
                }
            }
            SagaEvent::CompensationFailed { step, error, .. } => {
                if let Some(s) = self.step_mut(step) {
                    s.compensation = CompensationPhase::Failed;
                    s.compensation_error = Some(error.clone());
                }
            }
            SagaEvent::CompensationRetryScheduled { step, .. } => {
                if let Some(s) = self.step_mut(step) {
                    s.compensation = CompensationPhase::WaitingRetry;
                }
            }
            SagaEvent::Parked { step, error } => {
                if let Some(s) = self.step_mut(step) {
                    s.compensation = CompensationPhase::Parked;
                }
                self.status = SagaStatus::CompensationFailed {
                    step: step.clone(),
                    error: error.clone(),
                };
            }
            SagaEvent::Resumed { step } => {
                if let Some(s) = self.step_mut(step) {
                    s.compensation_round_start = s.compensation_attempt;
                }
                self.status = SagaStatus::Compensating;
            }
            SagaEvent::Completed => self.status = SagaStatus::Completed,
            SagaEvent::Compensated => self.status = SagaStatus::Compensated,
            SagaEvent::Failed { reason } => {
                self.status = SagaStatus::Failed {
                    reason: reason.clone(),
                }
            }
        }
    }
}
