//! Errors of the event store and the repository. Each names what failed and where.

use std::fmt;

use eventfold_core::{BoxError, CodecError, DecodeError, InvalidStreamId, StreamId};
use uuid::Uuid;

/// The version a stream is expected to have before an append (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check: append after whatever is there.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version (`Exact(0)` is the same as `NoStream`).
    Exact(u64),
}

impl ExpectedVersion {
    /// Does a stream at `current` version satisfy this expectation?
    pub fn matches(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(v) => current == v,
        }
    }

    /// The exact version expected, if any.
    pub fn exact(self) -> Option<u64> {
        match self {
            ExpectedVersion::Any => None,
            ExpectedVersion::NoStream => Some(0),
            ExpectedVersion::Exact(v) => Some(v),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// An error of the event store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream was not at the expected version: someone else appended first.
    #[error("version conflict on stream {stream_id}: expected {expected}, found {}", fmt_actual(.actual))]
    VersionConflict {
        /// The stream.
        stream_id: StreamId,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The version found, when known (PostgreSQL reports a concurrent insert without it).
        actual: Option<u64>,
    },
    /// An append with no events.
    #[error("cannot append an empty list of events to stream {stream_id}")]
    EmptyAppend {
        /// The stream.
        stream_id: StreamId,
    },
    /// A stream id that cannot be used.
    #[error(transparent)]
    InvalidStreamId(#[from] InvalidStreamId),
    /// An event that cannot be stored as it is.
    #[error("cannot append event {event_id} (`{event_type}`) to stream {stream_id}: {reason}")]
    InvalidEvent {
        /// The stream.
        stream_id: StreamId,
        /// The event.
        event_id: Uuid,
        /// Its type.
        event_type: String,
        /// What is wrong.
        reason: String,
    },
    /// An outbox message that cannot be stored as it is (see `UnitOfWork::enqueue`).
    #[error("cannot write message {message_id} for topic `{topic}` to the outbox: {reason}")]
    InvalidMessage {
        /// The message id.
        message_id: Uuid,
        /// Its topic (with any NUL character as it was given).
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// An event id that is already stored.
    #[error("event {event_id} already exists (while appending to stream {stream_id})")]
    DuplicateEventId {
        /// The stream appended to.
        stream_id: StreamId,
        /// The duplicate id.
        event_id: Uuid,
    },
    /// A table prefix or schema name that is not a safe SQL identifier, or a name the store
    /// cannot keep (a consumer name with a control character, or too long).
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidIdentifier {
        /// `table prefix`, `schema`, `consumer name`, ...
        what: &'static str,
        /// The value given.
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A stored event that does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// An event that does not encode.
    #[error("cannot encode an event for stream {stream_id}: {source}")]
    Encode {
        /// The stream.
        stream_id: StreamId,
        /// The codec error.
        source: CodecError,
    },
    /// A snapshot that could not be written or read.
    #[error("snapshot of stream {stream_id} at version {version}: {source}")]
    Snapshot {
        /// The stream.
        stream_id: StreamId,
        /// The snapshot's version.
        version: u64,
        /// The serializer's error.
        source: BoxError,
    },
    /// A command id used before for another stream.
    #[error("command {command_id} was already executed on stream {recorded}, not {stream_id}")]
    CommandIdReused {
        /// The command id.
        command_id: Uuid,
        /// The stream this execution targeted.
        stream_id: StreamId,
        /// The stream it was recorded for.
        recorded: StreamId,
    },
    /// A row that breaks the store's invariants (for example a gap in a stream).
    #[error("corrupt data in table {table}: {reason}")]
    Corrupt {
        /// The table.
        table: String,
        /// What is wrong.
        reason: String,
    },
    /// A migration failed or does not match what was applied before.
    #[error("migration {version} ({name}) in {table}: {reason}")]
    Migration {
        /// The migration table.
        table: String,
        /// Migration number.
        version: i64,
        /// Migration name.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// The database failed.
    #[error("database error while {operation} (table {table}): {source}")]
    Database {
        /// What the store was doing.
        operation: &'static str,
        /// The table involved.
        table: String,
        /// The driver's error (a `sqlx::Error` for the SQL backends).
        source: BoxError,
    },
}

fn fmt_actual(actual: &Option<u64>) -> String {
    match actual {
        Some(0) => "no stream".to_owned(),
        Some(v) => format!("version {v}"),
        None => "a concurrent append".to_owned(),
    }
}

impl StoreError {
    /// Is this a version conflict (worth retrying the command)?
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::VersionConflict { .. })
    }

    /// Is it worth trying the whole unit of work again: a version conflict, or a transient
    /// database failure (a lost or refused connection, a pool timeout, PostgreSQL's deadlock and
    /// serialization failures, SQLite's busy and locked)?
    pub fn is_retriable(&self) -> bool {
        match self {
            StoreError::VersionConflict { .. } => true,
            #[cfg(any(feature = "postgres", feature = "sqlite"))]
            StoreError::Database { source, .. } => source
                .downcast_ref::<sqlx::Error>()
                .is_some_and(transient_sqlx),
            _ => false,
        }
    }
}

/// A driver error that a new attempt may not meet.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            // PostgreSQL: serialization failure, deadlock, admin shutdown, connection failures.
            Some("40001" | "40P01" | "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006")
            // SQLite: busy, locked (and their extended codes).
            | Some("5" | "6" | "261" | "517" | "262")
        ),
        _ => false,
    }
}

/// An error of [`crate::Repository::execute`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecuteError<E: std::error::Error + 'static> {
    /// The aggregate rejected the command (its domain error).
    #[error("command rejected by {stream_id}: {source}")]
    Rejected {
        /// The stream.
        stream_id: StreamId,
        /// The aggregate's error.
        source: E,
    },
    /// The stream kept changing under the command; it was tried `attempts` times.
    #[error("version conflict on stream {stream_id} after {attempts} attempt(s)")]
    Conflict {
        /// The stream.
        stream_id: StreamId,
        /// How many times the command was tried.
        attempts: u32,
        /// The last conflict.
        source: StoreError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<E: std::error::Error + 'static> From<InvalidStreamId> for ExecuteError<E> {
    fn from(e: InvalidStreamId) -> Self {
        ExecuteError::Store(StoreError::InvalidStreamId(e))
    }
}

impl<E: std::error::Error + 'static> From<DecodeError> for ExecuteError<E> {
    fn from(e: DecodeError) -> Self {
        ExecuteError::Store(StoreError::Decode(e))
    }
}
