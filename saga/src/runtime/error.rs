//! The runtime's errors. Every variant names the saga instance (or the message) it is about.

use eventfold_eventstore::StoreError;
use uuid::Uuid;

use crate::error::SagaError;

/// An error of the saga runtime: the orchestrator, the scheduler or a participant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// Another transition of the same instance committed first (two replies at once, a timer
    /// racing a reply). Retriable: reload and decide again; the consumer and the scheduler do.
    #[error("saga {saga_id}: another transition committed first (version {expected} expected)")]
    Conflict {
        /// The instance.
        saga_id: Uuid,
        /// The stream version this transition expected.
        expected: u64,
    },
    /// The store failed.
    #[error("saga {saga_id}: {source}")]
    Store {
        /// The instance (nil when the error is not about one instance, e.g. a timer claim).
        saga_id: Uuid,
        /// The store's error.
        #[source]
        source: Box<StoreError>,
    },
    /// The machine refused the input (a misrouted reply, an instance of a newer definition).
    #[error(transparent)]
    Machine(#[from] SagaError),
    /// A stored saga event does not decode.
    #[error("saga {saga_id}: event {event_id} at version {version} does not decode: {reason}")]
    CorruptHistory {
        /// The instance.
        saga_id: Uuid,
        /// The event.
        event_id: Uuid,
        /// Its stream version.
        version: u64,
        /// The codec's error.
        reason: String,
    },
    /// A message (command or reply) does not decode.
    #[error("message {message_id} on topic {topic} is not {what}: {reason}")]
    Decode {
        /// The message id.
        message_id: Uuid,
        /// Its topic.
        topic: String,
        /// What it should have been.
        what: &'static str,
        /// The decoder's error.
        reason: String,
    },
    /// Something the runtime writes cannot be encoded.
    #[error("saga {saga_id}: cannot encode {what}: {reason}")]
    Encode {
        /// The instance.
        saga_id: Uuid,
        /// What.
        what: String,
        /// The encoder's error.
        reason: String,
    },
    /// A command record without the header that says where to reply.
    #[error(
        "saga {saga_id}: the command of step {step} (message {message_id}) has no {header} header"
    )]
    MissingReplyTo {
        /// The instance.
        saga_id: Uuid,
        /// The step.
        step: String,
        /// The message.
        message_id: Uuid,
        /// The header's name.
        header: &'static str,
    },
    /// No such saga instance.
    #[error("saga {saga_id} does not exist")]
    NotFound {
        /// The instance.
        saga_id: Uuid,
    },
    /// The participant's handler failed (not a business refusal: those are replies).
    #[error("participant {participant}: saga {saga_id} step {step} attempt {attempt}: {source}")]
    Participant {
        /// The participant's name.
        participant: String,
        /// The instance.
        saga_id: Uuid,
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
        /// The handler's error.
        #[source]
        source: eventfold_core::BoxError,
    },
}

impl RuntimeError {
    /// `true` when trying again may succeed: a conflict with another transition, a version
    /// conflict reported by the store, or a transient failure of the store (a lost connection,
    /// a deadlock, a pool timeout: [`StoreError::is_retriable`]). A transition tried again after
    /// a lost connection is safe even when its commit happened: the transition is fenced on
    /// (instance, step, attempt), so the second try finds the input already taken.
    pub fn is_retriable(&self) -> bool {
        match self {
            RuntimeError::Conflict { .. } => true,
            RuntimeError::Store { source, .. } => source.is_retriable(),
            _ => false,
        }
    }

    pub(crate) fn store(saga_id: Uuid) -> impl FnOnce(StoreError) -> RuntimeError {
        move |source| RuntimeError::Store {
            saga_id,
            source: Box::new(source),
        }
    }
}
