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
    /// A failure that a new attempt of the whole unit of work may not meet: a deadlock, a
    /// serialization failure, a lost connection, a pool timeout, a busy SQLite database. Nothing
    /// of the unit of work was committed, except possibly for [`TransientKind::ConnectionLost`]
    /// during a commit (retry that only when the work is idempotent, for example a command with
    /// an id).
    #[error("transient database error ({kind}) while {operation} (table {table}): {source}")]
    Transient {
        /// What kind of transient failure.
        kind: TransientKind,
        /// What the store was doing.
        operation: &'static str,
        /// The table involved.
        table: String,
        /// The driver's error (a `sqlx::Error`).
        source: BoxError,
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

    /// The kind of transient failure, if this is one ([`StoreError::Transient`]).
    pub fn transient_kind(&self) -> Option<TransientKind> {
        match self {
            StoreError::Transient { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Is it worth trying the whole unit of work again: a version conflict, or a transient
    /// database failure ([`StoreError::Transient`]: a lost connection, a pool timeout,
    /// PostgreSQL's deadlock and serialization failures, SQLite's busy and locked)? A closed pool
    /// is not: it stays closed.
    ///
    /// A lost connection is worth retrying only when the work is idempotent: the commit may have
    /// happened before the connection dropped.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            StoreError::VersionConflict { .. } | StoreError::Transient { .. }
        )
    }

    /// The error of application code (a consumer's handler, a projection, a saga participant)
    /// as a [`StoreError::Transient`] when a transient failure of the database caused it
    /// ([`TransientKind::of_error`]: a lost connection under the handler's own statements, a
    /// deadlock); the error given back otherwise.
    ///
    /// The runners use it so that a database that failed under application code is retried
    /// like any other transient failure of the store, not counted against the message or event
    /// as if the code had refused it (which would park it after a few attempts). A transient
    /// [`StoreError`] in the chain is returned as it is; `operation` and `table` name where the
    /// failure was met when the cause is a driver error.
    ///
    /// ```
    /// use eventfold_eventstore::{StoreError, TransientKind};
    ///
    /// let refused: eventfold_core::BoxError = "no such account".into();
    /// assert!(StoreError::transient_cause(refused, "applying events", "ledger").is_err());
    /// ```
    pub fn transient_cause(
        error: BoxError,
        operation: &'static str,
        table: impl Into<String>,
    ) -> Result<StoreError, BoxError> {
        let Some(kind) = TransientKind::of_error(&*error) else {
            return Err(error);
        };
        Ok(match error.downcast::<StoreError>() {
            Ok(store) if store.transient_kind().is_some() => *store,
            Ok(store) => StoreError::Transient {
                kind,
                operation,
                table: table.into(),
                source: store,
            },
            Err(error) => StoreError::Transient {
                kind,
                operation,
                table: table.into(),
                source: error,
            },
        })
    }
}

/// What kind of transient database failure a [`StoreError::Transient`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransientKind {
    /// PostgreSQL chose this transaction as a deadlock's victim (SQLSTATE `40P01`); it was rolled
    /// back.
    Deadlock,
    /// PostgreSQL could not serialize this transaction with a concurrent one (SQLSTATE `40001`);
    /// it was rolled back.
    SerializationFailure,
    /// The connection dropped (an I/O error, SQLSTATE class `08`, or the server shutting the
    /// session down: `57P01`, `57P02`, `57P03`). A commit in flight may or may not have happened.
    ConnectionLost,
    /// No pooled connection became free within the pool's acquire timeout.
    PoolTimedOut,
    /// SQLite's database was busy or locked (`SQLITE_BUSY`, `SQLITE_LOCKED` and their extended
    /// codes) beyond its busy timeout.
    Busy,
}

impl TransientKind {
    /// A short stable name (`deadlock`, `serialization_failure`, `connection_lost`,
    /// `pool_timed_out`, `busy`), used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            TransientKind::Deadlock => "deadlock",
            TransientKind::SerializationFailure => "serialization_failure",
            TransientKind::ConnectionLost => "connection_lost",
            TransientKind::PoolTimedOut => "pool_timed_out",
            TransientKind::Busy => "busy",
        }
    }

    /// The kind of a driver error, if a new attempt may not meet it. A closed pool is not
    /// transient.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub fn of_sqlx(e: &sqlx::Error) -> Option<TransientKind> {
        match e {
            sqlx::Error::Io(_) => Some(TransientKind::ConnectionLost),
            sqlx::Error::PoolTimedOut => Some(TransientKind::PoolTimedOut),
            sqlx::Error::Database(db) => Self::of_code(db.code().as_deref()?),
            _ => None,
        }
    }

    /// The kind of the first transient failure in `error` and its chain of sources: a
    /// [`StoreError::Transient`], or (with a SQL backend) a `sqlx::Error` that
    /// [`TransientKind::of_sqlx`] classifies. `None` when nothing in the chain is transient.
    pub fn of_error(error: &(dyn std::error::Error + 'static)) -> Option<TransientKind> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(kind) = e
                .downcast_ref::<StoreError>()
                .and_then(StoreError::transient_kind)
            {
                return Some(kind);
            }
            #[cfg(any(feature = "postgres", feature = "sqlite"))]
            if let Some(kind) = e.downcast_ref::<sqlx::Error>().and_then(Self::of_sqlx) {
                return Some(kind);
            }
            next = e.source();
        }
        None
    }

    /// The kind of a database error code: a PostgreSQL SQLSTATE (five characters) or a SQLite
    /// result code (a decimal number of at most four digits, primary or extended).
    pub fn of_code(code: &str) -> Option<TransientKind> {
        if code.len() == 5 {
            // PostgreSQL.
            return match code {
                "40P01" => Some(TransientKind::Deadlock),
                "40001" => Some(TransientKind::SerializationFailure),
                "57P01" | "57P02" | "57P03" => Some(TransientKind::ConnectionLost),
                c if c.starts_with("08") => Some(TransientKind::ConnectionLost),
                _ => None,
            };
        }
        // SQLite: the primary code is the low byte of an extended one.
        match code.parse::<u32>().ok()? & 0xff {
            5 | 6 => Some(TransientKind::Busy),
            _ => None,
        }
    }
}

impl fmt::Display for TransientKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransientKind::Deadlock => "deadlock",
            TransientKind::SerializationFailure => "serialization failure",
            TransientKind::ConnectionLost => "connection lost",
            TransientKind::PoolTimedOut => "pool timed out",
            TransientKind::Busy => "database busy",
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_codes_are_classified() {
        use TransientKind::*;
        for (code, kind) in [
            ("40P01", Some(Deadlock)),
            ("40001", Some(SerializationFailure)),
            ("57P01", Some(ConnectionLost)),
            ("57P03", Some(ConnectionLost)),
            ("08006", Some(ConnectionLost)),
            ("08P01", Some(ConnectionLost)),
            ("23505", None),
            ("55P03", None),
            ("5", Some(Busy)),
            ("6", Some(Busy)),
            ("261", Some(Busy)),
            ("517", Some(Busy)),
            ("262", Some(Busy)),
            ("19", None),
            ("2067", None),
            ("", None),
        ] {
            assert_eq!(TransientKind::of_code(code), kind, "code {code:?}");
        }
    }

    #[test]
    fn a_transient_cause_is_found_in_the_chain_of_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("handler of {message}: {source}")]
        struct Wrapped {
            message: &'static str,
            source: StoreError,
        }
        let lost = || StoreError::Transient {
            kind: TransientKind::ConnectionLost,
            operation: "appending",
            table: "events".into(),
            source: "reset by peer".into(),
        };
        let wrapped: BoxError = Box::new(Wrapped {
            message: "m-1",
            source: lost(),
        });
        assert_eq!(
            TransientKind::of_error(&*wrapped),
            Some(TransientKind::ConnectionLost)
        );
        let store = StoreError::transient_cause(wrapped, "handling", "inbox").expect("transient");
        assert!(
            matches!(&store, StoreError::Transient { kind: TransientKind::ConnectionLost, operation: "handling", table, .. } if table == "inbox"),
            "{store:?}"
        );
        let direct: BoxError = Box::new(lost());
        let store = StoreError::transient_cause(direct, "handling", "inbox").expect("transient");
        assert!(
            matches!(
                &store,
                StoreError::Transient {
                    operation: "appending",
                    ..
                }
            ),
            "a transient store error is kept as it is: {store:?}"
        );
        let conflict: BoxError = Box::new(StoreError::VersionConflict {
            stream_id: StreamId::new("a", "1").expect("id"),
            expected: crate::ExpectedVersion::Exact(1),
            actual: Some(2),
        });
        assert!(StoreError::transient_cause(conflict, "handling", "inbox").is_err());
    }

    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    #[test]
    fn a_closed_pool_is_not_transient_a_timed_out_one_is() {
        assert_eq!(TransientKind::of_sqlx(&sqlx::Error::PoolClosed), None);
        assert_eq!(
            TransientKind::of_sqlx(&sqlx::Error::PoolTimedOut),
            Some(TransientKind::PoolTimedOut)
        );
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            TransientKind::of_sqlx(&sqlx::Error::Io(io)),
            Some(TransientKind::ConnectionLost)
        );
        // A driver error returned by application code, as a projection's statements do.
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let boxed: BoxError = Box::new(sqlx::Error::Io(io));
        assert_eq!(
            TransientKind::of_error(&*boxed),
            Some(TransientKind::ConnectionLost)
        );
        let closed: BoxError = Box::new(sqlx::Error::PoolClosed);
        assert_eq!(TransientKind::of_error(&*closed), None);
    }
}
