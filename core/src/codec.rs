//! Codecs: how an event's payload becomes bytes and back.
//!
//! JSON (serde) is the default; Protobuf (prost) is available with the `proto` feature. An event
//! enum chooses its codec with `#[event(codec = "json")]` (the default) or
//! `#[event(codec = "protobuf")]` on the enum; the derive macro then calls the functions of
//! [`json`] or `protobuf` for each variant. The metadata never goes through the codec: it is
//! stored in columns (and travels as headers on Kafka).

use crate::error::BoxError;

/// A payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The event set has no type of this name.
    #[error("unknown event type `{event_type}`")]
    UnknownEventType {
        /// The type name that was not found.
        event_type: String,
    },
    /// Encoding failed.
    #[error("cannot encode `{event_type}` as {codec}: {source}")]
    Encode {
        /// The event type.
        event_type: String,
        /// The codec (`json`, `protobuf`).
        codec: &'static str,
        /// The codec's error.
        source: BoxError,
    },
    /// Decoding failed.
    #[error("cannot decode `{event_type}` from {codec}: {source}")]
    Decode {
        /// The event type.
        event_type: String,
        /// The codec (`json`, `protobuf`).
        codec: &'static str,
        /// The codec's error.
        source: BoxError,
    },
}

/// The JSON codec (serde_json).
pub mod json {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::CodecError;

    /// Content type of JSON payloads.
    pub const CONTENT_TYPE: &str = "application/json";

    /// Encodes a value as JSON.
    ///
    /// ```
    /// let bytes = eventfold_core::codec::json::encode("order.placed", &serde_json::json!({"a": 1})).unwrap();
    /// assert_eq!(bytes, br#"{"a":1}"#);
    /// ```
    pub fn encode<T: Serialize + ?Sized>(
        event_type: &str,
        value: &T,
    ) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(|e| CodecError::Encode {
            event_type: event_type.to_owned(),
            codec: "json",
            source: Box::new(e),
        })
    }

    /// Decodes a value from JSON.
    ///
    /// ```
    /// let err = eventfold_core::codec::json::decode::<u32>("order.placed", b"oops").unwrap_err();
    /// assert!(err.to_string().contains("order.placed"));
    /// ```
    pub fn decode<T: DeserializeOwned>(event_type: &str, payload: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(payload).map_err(|e| CodecError::Decode {
            event_type: event_type.to_owned(),
            codec: "json",
            source: Box::new(e),
        })
    }
}

/// The Protobuf codec (prost). Variants of a protobuf event enum wrap one `prost::Message` each.
#[cfg(feature = "proto")]
pub mod protobuf {
    use super::CodecError;

    /// Content type of Protobuf payloads.
    pub const CONTENT_TYPE: &str = "application/protobuf";

    /// Encodes a message.
    pub fn encode<T: prost::Message>(_event_type: &str, value: &T) -> Result<Vec<u8>, CodecError> {
        Ok(value.encode_to_vec())
    }

    /// Decodes a message.
    pub fn decode<T: prost::Message + Default>(
        event_type: &str,
        payload: &[u8],
    ) -> Result<T, CodecError> {
        T::decode(payload).map_err(|e| CodecError::Decode {
            event_type: event_type.to_owned(),
            codec: "protobuf",
            source: Box::new(e),
        })
    }
}
