//! Outbox messages: what the transactional outbox stores and a relay publishes.
//!
//! A unit of work writes outbox rows in the **same transaction** as its events (and as the
//! application's own SQL), so a message exists if and only if the transaction committed. The
//! rows keep Debezium's Outbox Event Router column names (`id`, `aggregatetype`, `aggregateid`,
//! `type`, `payload`), so a team can relay them with Debezium instead of eventfold's relay.
//!
//! An event becomes a message with [`OutboxMessage::from_event`]: the key is the aggregate id
//! (so a Kafka partition keeps one aggregate's order), the value is the payload, and the metadata
//! travels as headers following the CloudEvents Kafka binding ([`headers`]).
//!
//! ```
//! use eventfold_core::{NewEvent, OutboxMessage, StreamId};
//! use eventfold_core::outbox::headers;
//!
//! let event = NewEvent::raw("order.placed", 1, br#"{"total":3}"#.to_vec())
//!     .into_recorded(StreamId::new("order", "42").unwrap(), 1, 7);
//! let message = OutboxMessage::from_event(&event, "orders", "application/json");
//! assert_eq!(message.key, "42");
//! assert_eq!(message.headers[headers::TYPE], "order.placed");
//! assert_eq!(message.headers[headers::ID], event.event_id.to_string());
//!
//! // An application's own message (a command, an integration event) in the same transaction:
//! let own = OutboxMessage::new("billing-commands", "customer-7", "billing.invoice_requested", b"{}".to_vec());
//! assert_eq!(own.aggregate_id, "customer-7");
//! ```

use uuid::Uuid;

use crate::metadata::{Headers, RecordedEvent};

/// Header names of the CloudEvents Kafka binding (binary content mode) and eventfold's
/// extensions.
pub mod headers {
    /// CloudEvents spec version (`1.0`).
    pub const SPECVERSION: &str = "ce_specversion";
    /// The event id.
    pub const ID: &str = "ce_id";
    /// The event type, e.g. `order.placed`.
    pub const TYPE: &str = "ce_type";
    /// The service that recorded it.
    pub const SOURCE: &str = "ce_source";
    /// When it happened (RFC 3339).
    pub const TIME: &str = "ce_time";
    /// The stream, e.g. `order-42`.
    pub const SUBJECT: &str = "ce_subject";
    /// The payload's content type.
    pub const CONTENT_TYPE: &str = "content-type";
    /// Correlation id (extension).
    pub const CORRELATION_ID: &str = "ce_correlationid";
    /// Causation id (extension).
    pub const CAUSATION_ID: &str = "ce_causationid";
    /// Tenant (extension).
    pub const TENANT_ID: &str = "ce_tenantid";
    /// Schema version of the payload (extension).
    pub const SCHEMA_VERSION: &str = "ce_schemaversion";
    /// Aggregate type of the stream (extension).
    pub const STREAM_TYPE: &str = "ce_streamtype";
    /// Version of the event in its stream (extension).
    pub const STREAM_VERSION: &str = "ce_streamversion";
}

/// One message of the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Unique id (the event id for an event; Debezium `id`).
    pub id: Uuid,
    /// The topic to publish to.
    pub topic: String,
    /// The message key: rows with the same key are published in order.
    pub key: String,
    /// Debezium `aggregatetype`: the stream type, or what the application says.
    pub aggregate_type: String,
    /// Debezium `aggregateid`: the aggregate id, or what the application says.
    pub aggregate_id: String,
    /// Debezium `type`: the event or message type.
    pub message_type: String,
    /// The message value.
    pub payload: Vec<u8>,
    /// Headers (CloudEvents binding, trace context, ...).
    pub headers: Headers,
}

impl OutboxMessage {
    /// An application message for `topic` with `key` (also used as the aggregate id).
    pub fn new(
        topic: impl Into<String>,
        key: impl Into<String>,
        message_type: impl Into<String>,
        payload: Vec<u8>,
    ) -> Self {
        let key = key.into();
        let message_type = message_type.into();
        let id = Uuid::now_v7();
        let mut headers = Headers::new();
        headers.insert(headers::SPECVERSION.to_owned(), "1.0".to_owned());
        headers.insert(headers::ID.to_owned(), id.to_string());
        headers.insert(headers::TYPE.to_owned(), message_type.clone());
        Self {
            id,
            topic: topic.into(),
            aggregate_type: String::new(),
            aggregate_id: key.clone(),
            key,
            message_type,
            payload,
            headers,
        }
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// The message for a stored event: key = aggregate id, metadata as CloudEvents headers, the
    /// event's own headers (trace context) kept.
    pub fn from_event(event: &RecordedEvent, topic: &str, content_type: &str) -> Self {
        let mut headers = event.headers.clone();
        let mut put = |k: &str, v: String| {
            headers.insert(k.to_owned(), v);
        };
        put(headers::SPECVERSION, "1.0".to_owned());
        put(headers::ID, event.event_id.to_string());
        put(headers::TYPE, event.event_type.clone());
        put(headers::SOURCE, event.source.clone());
        put(
            headers::TIME,
            event
                .timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        );
        put(headers::SUBJECT, event.stream_id.to_string());
        put(headers::CONTENT_TYPE, content_type.to_owned());
        put(headers::CORRELATION_ID, event.correlation_id.to_string());
        if let Some(causation) = event.causation_id {
            put(headers::CAUSATION_ID, causation.to_string());
        }
        if let Some(tenant) = &event.tenant_id {
            put(headers::TENANT_ID, tenant.clone());
        }
        put(headers::SCHEMA_VERSION, event.schema_version.to_string());
        put(
            headers::STREAM_TYPE,
            event.stream_id.stream_type().to_owned(),
        );
        put(headers::STREAM_VERSION, event.stream_version.to_string());
        Self {
            id: event.event_id,
            topic: topic.to_owned(),
            key: event.stream_id.id().to_owned(),
            aggregate_type: event.stream_id.stream_type().to_owned(),
            aggregate_id: event.stream_id.id().to_owned(),
            message_type: event.event_type.clone(),
            payload: event.payload.clone(),
            headers,
        }
    }

    /// The relay slot of this message's key (`0..slots`): a stable hash (FNV-1a), the same on
    /// every backend and every process, so one slot owner sees all messages of a key.
    pub fn slot_of(key: &str, slots: u32) -> u32 {
        let mut hash: u32 = 0x811c_9dc5;
        for byte in key.bytes() {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        hash % slots.max(1)
    }
}
