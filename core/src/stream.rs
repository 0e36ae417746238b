//! Stream identifiers: which aggregate instance an event belongs to.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies one event stream: the aggregate type (`order`) and the aggregate id (`42`).
///
/// Both parts are validated when the id is made, so an oversized or empty id is refused before
/// anything is written:
///
/// ```
/// use eventfold_core::StreamId;
///
/// let id = StreamId::new("order", "42").unwrap();
/// assert_eq!(id.to_string(), "order-42");
/// assert!(StreamId::new("order", "x".repeat(StreamId::MAX_ID_LEN + 1)).is_err());
/// assert!(StreamId::new("Order Type", "1").is_err());
/// ```
///
/// A stream id read with serde is validated the same way:
///
/// ```
/// use eventfold_core::StreamId;
///
/// assert!(serde_json::from_str::<StreamId>(r#"{"stream_type":"order","id":"42"}"#).is_ok());
/// assert!(serde_json::from_str::<StreamId>(r#"{"stream_type":"order","id":"4\u00002"}"#).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "StreamIdParts")]
pub struct StreamId {
    stream_type: String,
    id: String,
}

/// A stream type or id that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stream id `{stream_type}-{id}`: {reason}")]
pub struct InvalidStreamId {
    /// The stream type that was given.
    pub stream_type: String,
    /// The id that was given (cut to 64 characters in this error).
    pub id: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The serialized form of a [`StreamId`], validated by [`StreamId::new`] when it is read.
#[derive(Deserialize)]
struct StreamIdParts {
    stream_type: String,
    id: String,
}

impl TryFrom<StreamIdParts> for StreamId {
    type Error = InvalidStreamId;

    fn try_from(parts: StreamIdParts) -> Result<Self, Self::Error> {
        Self::new(parts.stream_type, parts.id)
    }
}

impl StreamId {
    /// Longest stream type, in bytes.
    pub const MAX_TYPE_LEN: usize = 64;
    /// Longest aggregate id, in bytes.
    pub const MAX_ID_LEN: usize = 200;

    /// Makes a stream id from an aggregate type and an aggregate id.
    ///
    /// The type must be 1 to 64 bytes of lowercase ASCII letters, digits, `_`, `.` or `-`, starting
    /// with a letter; the id 1 to 200 bytes without control characters.
    pub fn new(
        stream_type: impl Into<String>,
        id: impl Into<String>,
    ) -> Result<Self, InvalidStreamId> {
        let stream_type = stream_type.into();
        let id = id.into();
        let fail = |reason: String| InvalidStreamId {
            stream_type: stream_type.clone(),
            id: id.chars().take(64).collect(),
            reason,
        };
        if stream_type.is_empty() || stream_type.len() > Self::MAX_TYPE_LEN {
            return Err(fail(format!(
                "stream type must be 1 to {} bytes, got {}",
                Self::MAX_TYPE_LEN,
                stream_type.len()
            )));
        }
        let valid_type = stream_type.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase() || (i > 0 && (b.is_ascii_digit() || b"_.-".contains(&b)))
        });
        if !valid_type {
            return Err(fail(
                "stream type must be lowercase ASCII letters, digits, `_`, `.` or `-`, starting with a letter"
                    .to_owned(),
            ));
        }
        if id.is_empty() || id.len() > Self::MAX_ID_LEN {
            return Err(fail(format!(
                "aggregate id must be 1 to {} bytes, got {}",
                Self::MAX_ID_LEN,
                id.len()
            )));
        }
        if id.chars().any(char::is_control) {
            return Err(fail(
                "aggregate id must not contain control characters".to_owned(),
            ));
        }
        Ok(Self { stream_type, id })
    }

    /// The aggregate type, e.g. `order`.
    pub fn stream_type(&self) -> &str {
        &self.stream_type
    }

    /// The aggregate id, e.g. `42`.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.stream_type, self.id)
    }
}
