//! # eventfold-saga
//!
//! The pure core of orchestrated sagas (placeholder doc, expanded below).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod definition;
pub mod error;
pub mod event;
pub mod machine;
pub mod message;
pub mod state;
#[cfg(feature = "test-util")]
pub mod testing;

pub use definition::{
    ParallelBuilder, RetryPolicy, Saga, SagaBuilder, SagaData, SagaDefinition, StepBuilder,
    StepInfo,
};
pub use error::{DefinitionError, MigrationError, SagaError, StepError};
pub use event::SagaEvent;
pub use machine::{Decision, Ignored, Input, TimerKey, TimerKind, TimerRequest, Transition, decide};
pub use message::{Command, CommandKind, Outcome, Reply, SagaCommand};
pub use state::{CompensationPhase, SagaState, SagaStatus, StepPhase, StepState};
