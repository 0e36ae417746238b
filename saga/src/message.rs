//! The messages a saga exchanges with its participants: the [`Command`] a step builds, the
//! [`SagaCommand`] the machine sends (the command plus the saga's headers), and the [`Reply`]
//! that comes back.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::StepError;

/// What a step asks a participant to do: the participant's command topic, the message type and
/// the JSON payload. Built by the closures given to
/// [`StepBuilder::invoke`](crate::StepBuilder::invoke) and
/// [`StepBuilder::compensate`](crate::StepBuilder::compensate); the machine wraps it into a
/// [`SagaCommand`].
///
/// ```
/// use eventfold_saga::Command;
///
/// #[derive(serde::Serialize)]
/// struct ReserveStock { sku: String, quantity: u32 }
///
/// let command = Command::new("inventory.commands", "inventory.reserve",
///     &ReserveStock { sku: "A-1".into(), quantity: 2 })?;
/// assert_eq!(command.payload["quantity"], 2);
/// # Ok::<(), eventfold_saga::StepError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The topic the participant consumes its commands from.
    pub topic: String,
    /// The message type, e.g. `inventory.reserve`.
    pub message_type: String,
    /// The payload.
    pub payload: Value,
}

impl Command {
    /// A command with a payload serialised to JSON. A payload that cannot be serialised is a
    /// (definitive) [`StepError`].
    pub fn new<T: Serialize + ?Sized>(
        topic: impl Into<String>,
        message_type: impl Into<String>,
        payload: &T,
    ) -> Result<Self, StepError> {
        let message_type = message_type.into();
        let payload = serde_json::to_value(payload).map_err(|e| {
            StepError::new(format!("cannot encode the payload of {message_type}: {e}"))
        })?;
        Ok(Self {
            topic: topic.into(),
            message_type,
            payload,
        })
    }

    /// A command with a payload that already is JSON.
    pub fn from_json(
        topic: impl Into<String>,
        message_type: impl Into<String>,
        payload: Value,
    ) -> Self {
        Self {
            topic: topic.into(),
            message_type: message_type.into(),
            payload,
        }
    }
}

/// Whether a command or reply belongs to a step's action or to its compensation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// The step's action.
    Action,
    /// The step's compensation.
    Compensation,
}

impl CommandKind {
    /// `action` or `compensation`.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Action => "action",
            CommandKind::Compensation => "compensation",
        }
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command the machine sends to a participant: a [`Command`] with the saga's headers. The
/// runtime writes it to the outbox in the transition's transaction.
///
/// The participant deduplicates by [`request_key`](Self::request_key), which is the same for every
/// attempt of a step's action (and, separately, of its compensation), and answers every attempt
/// with a [`Reply`] that copies `saga_id`, `step`, `attempt` and `kind` (see
/// [`SagaCommand::reply`]). On a duplicate request key it repeats the outcome it stored, under the
/// new attempt number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaCommand {
    /// The saga instance.
    pub saga_id: Uuid,
    /// The saga's type (its definition's name).
    pub saga_type: String,
    /// The step's stable name.
    pub step: String,
    /// The attempt (1-based; compensations count their own attempts).
    pub attempt: u32,
    /// Action or compensation.
    pub kind: CommandKind,
    /// `"{saga_id}:{step}"` for the action, `"{saga_id}:{step}:compensation"` for the
    /// compensation: stable across attempts, so participants deduplicate retries.
    pub request_key: String,
    /// The correlation id of the business flow (given when the saga started).
    pub correlation_id: Uuid,
    /// The participant's command topic.
    pub topic: String,
    /// The message type.
    pub message_type: String,
    /// The payload.
    pub payload: Value,
}

impl SagaCommand {
    /// The request key of a step's action or compensation in a saga instance.
    pub fn request_key_for(saga_id: Uuid, step: &str, kind: CommandKind) -> String {
        match kind {
            CommandKind::Action => format!("{saga_id}:{step}"),
            CommandKind::Compensation => format!("{saga_id}:{step}:compensation"),
        }
    }

    /// The reply to this command with the given outcome (the fencing fields copied).
    pub fn reply(&self, outcome: Outcome) -> Reply {
        Reply {
            saga_id: self.saga_id,
            step: self.step.clone(),
            attempt: self.attempt,
            kind: self.kind,
            outcome,
        }
    }
}

/// A participant's answer to a [`SagaCommand`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The saga instance.
    pub saga_id: Uuid,
    /// The step.
    pub step: String,
    /// The attempt this reply answers.
    pub attempt: u32,
    /// Action or compensation.
    pub kind: CommandKind,
    /// What happened.
    pub outcome: Outcome,
}

/// The outcome carried by a [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The participant did it; the payload goes to the step's `on_reply`.
    Success {
        /// The reply's payload.
        payload: Value,
    },
    /// The participant refused or failed.
    Failure {
        /// Why.
        reason: String,
        /// `true` when trying again may succeed (the step's retry policy applies);
        /// `false` for a definitive refusal (no retry: the saga compensates).
        retryable: bool,
    },
}

impl Outcome {
    /// A success with a payload.
    pub fn success(payload: Value) -> Self {
        Outcome::Success { payload }
    }

    /// A definitive failure.
    pub fn failure(reason: impl Into<String>) -> Self {
        Outcome::Failure {
            reason: reason.into(),
            retryable: false,
        }
    }

    /// A transient failure: the step's retry policy applies.
    pub fn retryable(reason: impl Into<String>) -> Self {
        Outcome::Failure {
            reason: reason.into(),
            retryable: true,
        }
    }

    /// `true` for a success.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success { .. })
    }
}
