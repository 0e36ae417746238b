//! Errors of projections; each names the projection and, for an event, where it is.

use eventfold_core::BoxError;
use eventfold_eventstore::StoreError;
use uuid::Uuid;

/// An error of a projection, the registry or the runner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// No projection of that name is registered (or stored).
    #[error("unknown projection `{0}`")]
    UnknownProjection(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The projection failed on an event.
    #[error(
        "projection {projection} failed on event {event_id} (`{event_type}`, stream {stream_id}, global position {global_position}): {source}"
    )]
    Apply {
        /// The projection.
        projection: String,
        /// The event.
        event_id: Uuid,
        /// Its global position.
        global_position: u64,
        /// Its stream.
        stream_id: String,
        /// Its type.
        event_type: String,
        /// The projection's (or the decoder's) error.
        source: BoxError,
    },
    /// The projection could not create its tables.
    #[error(
        "projection {projection}: creating the tables of generation {generation} failed: {source}"
    )]
    Setup {
        /// The projection.
        projection: String,
        /// The generation.
        generation: u32,
        /// The projection's error.
        source: BoxError,
    },
    /// The stored model was built by newer code than this one.
    #[error(
        "projection {projection}: the stored model is version {stored}, newer than this code's {code}"
    )]
    NewerModel {
        /// The projection.
        projection: String,
        /// The stored version.
        stored: u32,
        /// This code's version.
        code: u32,
    },
    /// Readers kept the projection's views or tables locked while they were being replaced;
    /// retried internally, returned only when that kept failing.
    #[error("projection {projection}: readers kept its tables busy; try again")]
    Busy {
        /// The projection.
        projection: String,
    },
    /// No committed event has that global position.
    #[error("no committed event at global position {0}")]
    UnknownPosition(u64),
    /// A batch failed as a whole (`apply_batch`) and names no event.
    #[error("projection {projection}: a batch of {events} events failed: {source}")]
    Batch {
        /// The projection.
        projection: String,
        /// Events in the batch.
        events: usize,
        /// What went wrong.
        source: BoxError,
    },
    /// The projection's task has ended (stopped by its error policy, or the runner stopped).
    #[error("projection {projection} is not running: {reason}")]
    NotRunning {
        /// The projection.
        projection: String,
        /// Why.
        reason: String,
    },
}

impl ProjectionError {
    pub(crate) fn apply(
        projection: &str,
        event: &eventfold_core::RecordedEvent,
        source: BoxError,
    ) -> Self {
        ProjectionError::Apply {
            projection: projection.to_owned(),
            event_id: event.event_id,
            global_position: event.global_position,
            stream_id: event.stream_id.to_string(),
            event_type: event.event_type.clone(),
            source,
        }
    }
}
