//! [`SagaEvent`]: the events of a saga instance's own stream, one per fact of a transition.

use chrono::{DateTime, Utc};
use eventfold_core::{CodecError, Event, EventTypeInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// An event of a saga instance's stream. A [`SagaState`](crate::SagaState) is the fold of these
/// events ([`SagaState::apply`](crate::SagaState::apply)); the machine emits them
/// ([`Transition::events`](crate::Transition::events)) and the runtime appends them to the
/// instance's stream with the expected version it loaded.
///
/// Stored as JSON with a `type` field equal to [`SagaEvent::event_type`]. It implements
/// [`eventfold_core::Event`], so the event store takes it as any other event enum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum SagaEvent {
    /// The saga started (`saga.started`).
    #[serde(rename = "saga.started")]
    Started {
        /// The instance.
        saga_id: Uuid,
        /// The saga type.
        saga_type: String,
        /// The definition version that started it.
        definition_version: u32,
        /// The correlation id of the business flow.
        correlation_id: Uuid,
        /// The initial saga data.
        data: Value,
    },
    /// The data was migrated to a newer definition version (`saga.migrated`).
    #[serde(rename = "saga.migrated")]
    Migrated {
        /// The version before.
        from_version: u32,
        /// The version after.
        to_version: u32,
        /// The migrated data.
        data: Value,
    },
    /// A step handler changed the data (`saga.data_updated`).
    #[serde(rename = "saga.data_updated")]
    DataUpdated {
        /// The new data.
        data: Value,
    },
    /// An attempt of a step's action started (`saga.step_started`).
    #[serde(rename = "saga.step_started")]
    StepStarted {
        /// The step.
        step: String,
        /// The attempt (1-based).
        attempt: u32,
    },
    /// The step succeeded (`saga.step_succeeded`).
    #[serde(rename = "saga.step_succeeded")]
    StepSucceeded {
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
    },
    /// An attempt failed (`saga.step_failed`).
    #[serde(rename = "saga.step_failed")]
    StepFailed {
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// An attempt timed out: its outcome is unknown (`saga.step_timed_out`).
    #[serde(rename = "saga.step_timed_out")]
    StepTimedOut {
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
    },
    /// A retry of the step is scheduled after a failed or timed-out attempt
    /// (`saga.step_retry_scheduled`).
    #[serde(rename = "saga.step_retry_scheduled")]
    StepRetryScheduled {
        /// The step.
        step: String,
        /// The attempt that failed (the next one is `attempt + 1`).
        attempt: u32,
        /// When the next attempt starts.
        due_at: DateTime<Utc>,
    },
    /// A success arrived for a step that had timed out after compensation began: it will be (or
    /// was) compensated, never continued (`saga.step_succeeded_late`).
    #[serde(rename = "saga.step_succeeded_late")]
    StepSucceededLate {
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
    },
    /// The pivot succeeded: from now on the saga only goes forward (`saga.pivot_passed`).
    #[serde(rename = "saga.pivot_passed")]
    PivotPassed {
        /// The pivot step.
        step: String,
    },
    /// The saga gave up going forward and will compensate (`saga.compensation_started`). No step
    /// starts after this event.
    #[serde(rename = "saga.compensation_started")]
    CompensationStarted {
        /// The step whose failure or timeout caused it.
        step: String,
        /// Why.
        reason: String,
    },
    /// An attempt of a step's compensation started (`saga.step_compensating`).
    #[serde(rename = "saga.step_compensating")]
    StepCompensating {
        /// The step.
        step: String,
        /// The compensation attempt (1-based).
        attempt: u32,
    },
    /// The step is compensated (`saga.step_compensated`).
    #[serde(rename = "saga.step_compensated")]
    StepCompensated {
        /// The step.
        step: String,
        /// The compensation attempt that succeeded.
        attempt: u32,
    },
    /// A compensation attempt failed or timed out (`saga.compensation_failed`).
    #[serde(rename = "saga.compensation_failed")]
    CompensationFailed {
        /// The step.
        step: String,
        /// The compensation attempt.
        attempt: u32,
        /// Why.
        error: String,
    },
    /// A retry of a compensation is scheduled (`saga.compensation_retry_scheduled`).
    #[serde(rename = "saga.compensation_retry_scheduled")]
    CompensationRetryScheduled {
        /// The step.
        step: String,
        /// The compensation attempt that failed.
        attempt: u32,
        /// When the next attempt starts.
        due_at: DateTime<Utc>,
    },
    /// The compensation's retries are exhausted: the saga waits for an operator (`saga.parked`).
    #[serde(rename = "saga.parked")]
    Parked {
        /// The step whose compensation failed.
        step: String,
        /// The last error.
        error: String,
    },
    /// An operator resumed a parked saga (`saga.resumed`).
    #[serde(rename = "saga.resumed")]
    Resumed {
        /// The step whose compensation is tried again.
        step: String,
    },
    /// Every step succeeded (`saga.completed`).
    #[serde(rename = "saga.completed")]
    Completed,
    /// Every step that needed it is compensated (`saga.compensated`).
    #[serde(rename = "saga.compensated")]
    Compensated,
    /// The saga cannot go on (undecodable data, a step missing from the definition, a reply
    /// refused after the pivot): `saga.failed`.
    #[serde(rename = "saga.failed")]
    Failed {
        /// Why.
        reason: String,
    },
}

const TYPES: &[EventTypeInfo] = &[
    info("saga.started", "Started"),
    info("saga.migrated", "Migrated"),
    info("saga.data_updated", "DataUpdated"),
    info("saga.step_started", "StepStarted"),
    info("saga.step_succeeded", "StepSucceeded"),
    info("saga.step_failed", "StepFailed"),
    info("saga.step_timed_out", "StepTimedOut"),
    info("saga.step_retry_scheduled", "StepRetryScheduled"),
    info("saga.step_succeeded_late", "StepSucceededLate"),
    info("saga.pivot_passed", "PivotPassed"),
    info("saga.compensation_started", "CompensationStarted"),
    info("saga.step_compensating", "StepCompensating"),
    info("saga.step_compensated", "StepCompensated"),
    info("saga.compensation_failed", "CompensationFailed"),
    info(
        "saga.compensation_retry_scheduled",
        "CompensationRetryScheduled",
    ),
    info("saga.parked", "Parked"),
    info("saga.resumed", "Resumed"),
    info("saga.completed", "Completed"),
    info("saga.compensated", "Compensated"),
    info("saga.failed", "Failed"),
];

const fn info(name: &'static str, variant: &'static str) -> EventTypeInfo {
    EventTypeInfo {
        name,
        version: 1,
        variant,
    }
}

impl SagaEvent {
    /// The stable type name, e.g. `saga.step_started`.
    pub fn event_type(&self) -> &'static str {
        match self {
            SagaEvent::Started { .. } => "saga.started",
            SagaEvent::Migrated { .. } => "saga.migrated",
            SagaEvent::DataUpdated { .. } => "saga.data_updated",
            SagaEvent::StepStarted { .. } => "saga.step_started",
            SagaEvent::StepSucceeded { .. } => "saga.step_succeeded",
            SagaEvent::StepFailed { .. } => "saga.step_failed",
            SagaEvent::StepTimedOut { .. } => "saga.step_timed_out",
            SagaEvent::StepRetryScheduled { .. } => "saga.step_retry_scheduled",
            SagaEvent::StepSucceededLate { .. } => "saga.step_succeeded_late",
            SagaEvent::PivotPassed { .. } => "saga.pivot_passed",
            SagaEvent::CompensationStarted { .. } => "saga.compensation_started",
            SagaEvent::StepCompensating { .. } => "saga.step_compensating",
            SagaEvent::StepCompensated { .. } => "saga.step_compensated",
            SagaEvent::CompensationFailed { .. } => "saga.compensation_failed",
            SagaEvent::CompensationRetryScheduled { .. } => "saga.compensation_retry_scheduled",
            SagaEvent::Parked { .. } => "saga.parked",
            SagaEvent::Resumed { .. } => "saga.resumed",
            SagaEvent::Completed => "saga.completed",
            SagaEvent::Compensated => "saga.compensated",
            SagaEvent::Failed { .. } => "saga.failed",
        }
    }

    /// The step the event is about, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            SagaEvent::StepStarted { step, .. }
            | SagaEvent::StepSucceeded { step, .. }
            | SagaEvent::StepFailed { step, .. }
            | SagaEvent::StepTimedOut { step, .. }
            | SagaEvent::StepRetryScheduled { step, .. }
            | SagaEvent::StepSucceededLate { step, .. }
            | SagaEvent::PivotPassed { step }
            | SagaEvent::CompensationStarted { step, .. }
            | SagaEvent::StepCompensating { step, .. }
            | SagaEvent::StepCompensated { step, .. }
            | SagaEvent::CompensationFailed { step, .. }
            | SagaEvent::CompensationRetryScheduled { step, .. }
            | SagaEvent::Parked { step, .. }
            | SagaEvent::Resumed { step } => Some(step),
            _ => None,
        }
    }
}

impl Event for SagaEvent {
    const CONTENT_TYPE: &'static str = "application/json";

    fn event_type(&self) -> &'static str {
        SagaEvent::event_type(self)
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn event_types() -> &'static [EventTypeInfo] {
        TYPES
    }

    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(self).map_err(|e| CodecError::Encode {
            event_type: SagaEvent::event_type(self).to_owned(),
            codec: "json",
            source: Box::new(e),
        })
    }

    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, CodecError> {
        if !TYPES.iter().any(|t| t.name == event_type) {
            return Err(CodecError::UnknownEventType {
                event_type: event_type.to_owned(),
            });
        }
        let decode_error = |e: serde_json::Error| CodecError::Decode {
            event_type: event_type.to_owned(),
            codec: "json",
            source: Box::new(e),
        };
        let mut value: Value = serde_json::from_slice(payload).map_err(decode_error)?;
        if let Value::Object(map) = &mut value {
            map.insert("type".into(), Value::String(event_type.to_owned()));
        }
        serde_json::from_value(value).map_err(decode_error)
    }
}
