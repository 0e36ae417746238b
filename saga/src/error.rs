//! Errors: of a step ([`StepError`]), of a definition ([`DefinitionError`]), of a data migration
//! ([`MigrationError`]) and of the machine ([`SagaError`]).

/// The error of a step's closure: a local step, an `on_reply`, a command builder or a local
/// compensation. Definitive by default; [`StepError::retryable`] lets the step's retry policy
/// apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// What went wrong.
    pub message: String,
    /// `true` when trying again may succeed.
    pub retryable: bool,
}

impl StepError {
    /// A definitive error.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    /// A transient error: the step's retry policy applies.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }
}

/// The error of a data migration registered with
/// [`SagaBuilder::migrate_from`](crate::SagaBuilder::migrate_from).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MigrationError(pub String);

/// A saga definition that [`SagaBuilder::build`](crate::SagaBuilder::build) refuses. Every
/// variant names the saga type, and the step where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionError {
    /// The saga type is empty.
    #[error("a saga definition needs a non-empty type name")]
    EmptySagaType,
    /// The definition version is 0.
    #[error("saga {saga_type}: the definition version must be at least 1")]
    ZeroVersion {
        /// The saga type.
        saga_type: String,
    },
    /// The definition has no step.
    #[error("saga {saga_type}: a saga needs at least one step")]
    NoSteps {
        /// The saga type.
        saga_type: String,
    },
    /// A step name is empty.
    #[error("saga {saga_type}: a step has an empty name")]
    EmptyStepName {
        /// The saga type.
        saga_type: String,
    },
    /// Two steps have the same name.
    #[error("saga {saga_type}: step {step} is defined twice (step names must be unique)")]
    DuplicateStep {
        /// The saga type.
        saga_type: String,
        /// The step.
        step: String,
    },
    /// A step neither invokes a participant nor runs locally.
    #[error("saga {saga_type}: step {step} has no action (call invoke or local)")]
    MissingAction {
        /// The saga type.
        saga_type: String,
        /// The step.
        step: String,
    },
    /// `on_reply` was given to a local step, which gets no reply.
    #[error("saga {saga_type}: step {step} is local, it gets no reply (remove on_reply)")]
    ReplyHandlerOnLocalStep {
        /// The saga type.
        saga_type: String,
        /// The step.
        step: String,
    },
    /// A step after the pivot has a compensation: after the pivot the saga only goes forward.
    #[error(
        "saga {saga_type}: step {step} comes after the pivot, so it cannot have a compensation"
    )]
    CompensationAfterPivot {
        /// The saga type.
        saga_type: String,
        /// The step.
        step: String,
    },
    /// A second pivot.
    #[error("saga {saga_type}: step {step} is a second pivot (a saga has at most one)")]
    SecondPivot {
        /// The saga type.
        saga_type: String,
        /// The step.
        step: String,
    },
    /// A parallel group without steps.
    #[error("saga {saga_type}: parallel group number {group} has no step")]
    EmptyParallelGroup {
        /// The saga type.
        saga_type: String,
        /// The group's position among the saga's stages (1-based).
        group: usize,
    },
    /// An invalid retry policy.
    #[error("saga {saga_type}: step {step}: invalid retry policy: {reason}")]
    InvalidRetryPolicy {
        /// The saga type.
        saga_type: String,
        /// The step.
        step: String,
        /// Why.
        reason: String,
    },
    /// A data migration from a version that is not older than the definition.
    #[error(
        "saga {saga_type}: a migration from version {from} is registered, but the definition is version {version}"
    )]
    InvalidMigration {
        /// The saga type.
        saga_type: String,
        /// The migration's source version.
        from: u32,
        /// The definition's version.
        version: u32,
    },
    /// Two data migrations from the same version.
    #[error("saga {saga_type}: two migrations from version {from}")]
    DuplicateMigration {
        /// The saga type.
        saga_type: String,
        /// The migration's source version.
        from: u32,
    },
}

/// An input the machine refuses without deciding anything: the runtime routed it to the wrong
/// definition, or the instance was started by a newer definition. Stale and duplicate inputs are
/// *not* errors (they are [`Decision::Ignored`](crate::Decision::Ignored)), and failures of steps
/// are transitions, not errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// The instance is of another saga type than the definition.
    #[error("saga instance {saga_id} is of type {instance_type}, not {definition_type}")]
    WrongSagaType {
        /// The instance.
        saga_id: uuid::Uuid,
        /// The instance's type.
        instance_type: String,
        /// The definition's type.
        definition_type: String,
    },
    /// A reply addressed to another instance.
    #[error("a reply for saga {reply_saga_id} was given to saga {saga_id}")]
    WrongSagaId {
        /// The instance.
        saga_id: uuid::Uuid,
        /// The reply's saga id.
        reply_saga_id: uuid::Uuid,
    },
    /// The instance was started (or migrated) by a newer version of the definition than this
    /// process knows: leave it to a process that runs the newer code (a rolling deployment).
    #[error(
        "saga {saga_type} instance {saga_id} is at definition version {instance_version}, this process knows version {known_version}"
    )]
    NewerDefinition {
        /// The saga type.
        saga_type: String,
        /// The instance.
        saga_id: uuid::Uuid,
        /// The instance's definition version.
        instance_version: u32,
        /// The definition's version.
        known_version: u32,
    },
    /// The saga data given to `Start`, or produced by a step, cannot be serialised.
    #[error("saga {saga_type}: the saga data cannot be serialised: {reason}")]
    DataEncode {
        /// The saga type.
        saga_type: String,
        /// The serde error.
        reason: String,
    },
}
