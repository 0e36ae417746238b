//! Errors of reading events back: each names the stream, the event and what went wrong.

use uuid::Uuid;

use crate::codec::CodecError;
use crate::stream::StreamId;

/// A boxed error from user code or a codec.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A stored event could not be turned into a typed event.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode event {event_id} (version {stream_version} of stream {stream_id}): {kind}")]
pub struct DecodeError {
    /// The stream of the event.
    pub stream_id: StreamId,
    /// The event's id.
    pub event_id: Uuid,
    /// The event's version in its stream.
    pub stream_version: u64,
    /// What went wrong (boxed to keep `Result`s small).
    pub kind: Box<DecodeErrorKind>,
}

/// What went wrong when decoding a stored event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The code does not know this event type (and no upcaster renames it).
    #[error("unknown event type `{event_type}`")]
    UnknownEventType {
        /// The stored type name.
        event_type: String,
    },
    /// The stored schema version is newer than the code: this binary is older than the writer.
    #[error("`{event_type}` has schema version {stored}, newer than the {known} this code knows")]
    SchemaTooNew {
        /// The type name.
        event_type: String,
        /// The stored version.
        stored: u32,
        /// The newest version the code knows.
        known: u32,
    },
    /// An older schema version has no upcaster.
    #[error(
        "`{event_type}` has schema version {stored} but no upcaster from it (current is {known})"
    )]
    MissingUpcaster {
        /// The type name.
        event_type: String,
        /// The stored version.
        stored: u32,
        /// The current version.
        known: u32,
    },
    /// An upcaster failed.
    #[error("upcasting `{event_type}` from version {from} failed: {source}")]
    Upcast {
        /// The type name.
        event_type: String,
        /// The version it was upcast from.
        from: u32,
        /// The upcaster's error.
        source: BoxError,
    },
    /// Upcasters did not make progress (a cycle or a step that keeps the same type and version).
    #[error("upcasters for `{event_type}` do not converge")]
    UpcastLoop {
        /// The type name.
        event_type: String,
    },
    /// The payload did not decode.
    #[error(transparent)]
    Payload(CodecError),
}
