//! Metadata: what travels with every event besides its payload.
//!
//! * [`CommandMetadata`] is what the caller of a command supplies: an optional command id (which
//!   makes the command idempotent), correlation and causation ids, a tenant and headers (trace
//!   context, for example).
//! * [`NewEvent`] is an encoded event about to be appended.
//! * [`Envelope`] is a stored event with all of its metadata; [`RecordedEvent`] is an envelope
//!   whose payload is still encoded, `Envelope<E>` one whose payload is decoded.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use crate::codec::CodecError;
use crate::event::Event;
use crate::stream::StreamId;

/// Free-form string headers (for example W3C trace context: `traceparent`).
pub type Headers = BTreeMap<String, String>;

/// Metadata supplied with a command.
///
/// ```
/// use eventfold_core::CommandMetadata;
/// use uuid::Uuid;
///
/// let request = Uuid::now_v7();
/// let meta = CommandMetadata::new()
///     .command_id(Uuid::now_v7())
///     .correlation_id(request)
///     .tenant("acme")
///     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// assert_eq!(meta.correlation_id, Some(request));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandMetadata {
    /// Makes the command idempotent: executing the same id twice appends once.
    pub command_id: Option<Uuid>,
    /// Correlates everything caused by one request; defaults to the command id or a new id.
    pub correlation_id: Option<Uuid>,
    /// What caused this command (an event id or a command id); defaults to the command id.
    pub causation_id: Option<Uuid>,
    /// Tenant of a multi-tenant service.
    pub tenant_id: Option<String>,
    /// Free-form headers copied onto every event.
    pub headers: Headers,
}

impl CommandMetadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the command id (idempotency key).
    pub fn command_id(mut self, id: Uuid) -> Self {
        self.command_id = Some(id);
        self
    }
    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }
    /// Sets the causation id.
    pub fn causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }
    /// Sets the tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant.into());
        self
    }
    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }
    /// Metadata for work caused by `cause`: same correlation and tenant, causation = its event id.
    pub fn caused_by<P>(cause: &Envelope<P>) -> Self {
        Self {
            command_id: None,
            correlation_id: Some(cause.correlation_id),
            causation_id: Some(cause.event_id),
            tenant_id: cause.tenant_id.clone(),
            headers: Headers::new(),
        }
    }
}

/// An encoded event about to be appended to a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique id (UUID v7, time ordered).
    pub event_id: Uuid,
    /// Stable type name.
    pub event_type: String,
    /// Schema version of the payload.
    pub schema_version: u32,
    /// Encoded payload.
    pub payload: Vec<u8>,
    /// When the event happened (UTC, microsecond precision).
    pub timestamp: DateTime<Utc>,
    /// The service that recorded it.
    pub source: String,
    /// Correlation id.
    pub correlation_id: Uuid,
    /// Causation id.
    pub causation_id: Option<Uuid>,
    /// Tenant.
    pub tenant_id: Option<String>,
    /// Headers.
    pub headers: Headers,
}

impl NewEvent {
    /// Encodes `event` with the metadata of a command.
    ///
    /// Missing ids are filled in: the correlation id defaults to the command id, then to a new id;
    /// the causation id defaults to the command id. With the feature `otel`, metadata without a
    /// `traceparent` header gets the current `tracing` span's trace context
    /// ([`trace_context::inject_current_if_absent`](crate::trace_context::inject_current_if_absent)).
    pub fn encode<E: Event>(
        event: &E,
        source: &str,
        meta: &CommandMetadata,
    ) -> Result<Self, CodecError> {
        let event_id = Uuid::now_v7();
        #[cfg_attr(not(feature = "otel"), allow(unused_mut))]
        let mut headers = meta.headers.clone();
        #[cfg(feature = "otel")]
        crate::trace_context::inject_current_if_absent(&mut headers);
        Ok(Self {
            event_id,
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload: event.encode()?,
            timestamp: now_micros(),
            source: source.to_owned(),
            correlation_id: meta
                .correlation_id
                .or(meta.command_id)
                .unwrap_or_else(Uuid::now_v7),
            causation_id: meta.causation_id.or(meta.command_id),
            tenant_id: meta.tenant_id.clone(),
            headers,
        })
    }

    /// An event with raw parts and default metadata (new ids, now, no tenant).
    pub fn raw(event_type: impl Into<String>, schema_version: u32, payload: Vec<u8>) -> Self {
        let event_id = Uuid::now_v7();
        Self {
            event_id,
            event_type: event_type.into(),
            schema_version,
            payload,
            timestamp: now_micros(),
            source: String::new(),
            correlation_id: event_id,
            causation_id: None,
            tenant_id: None,
            headers: Headers::new(),
        }
    }

    /// Turns this event into its stored form at the given position.
    pub fn into_recorded(
        self,
        stream_id: StreamId,
        stream_version: u64,
        global_position: u64,
    ) -> RecordedEvent {
        Envelope {
            event_id: self.event_id,
            event_type: self.event_type,
            schema_version: self.schema_version,
            stream_id,
            stream_version,
            global_position,
            timestamp: self.timestamp,
            source: self.source,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            tenant_id: self.tenant_id,
            headers: self.headers,
            payload: self.payload,
        }
    }
}

/// The current time in UTC, cut to microseconds (the precision databases keep).
pub fn now_micros() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A stored event with all of its metadata. `P` is the payload: bytes ([`RecordedEvent`]) or the
/// decoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<P> {
    /// Unique id (UUID v7).
    pub event_id: Uuid,
    /// Stable type name, e.g. `order.placed`.
    pub event_type: String,
    /// Schema version: as stored for a [`RecordedEvent`], the current one once decoded.
    pub schema_version: u32,
    /// The stream (aggregate type and id).
    pub stream_id: StreamId,
    /// Position in the stream, starting at 1.
    pub stream_version: u64,
    /// Position in the store's global log, starting at 1.
    pub global_position: u64,
    /// When the event was recorded (UTC).
    pub timestamp: DateTime<Utc>,
    /// The service that recorded it.
    pub source: String,
    /// Correlation id.
    pub correlation_id: Uuid,
    /// Causation id.
    pub causation_id: Option<Uuid>,
    /// Tenant.
    pub tenant_id: Option<String>,
    /// Headers.
    pub headers: Headers,
    /// The payload.
    pub payload: P,
}

/// A stored event whose payload is still encoded.
pub type RecordedEvent = Envelope<Vec<u8>>;

impl<P> Envelope<P> {
    /// A copy of the metadata with another payload (the current payload is not copied).
    pub fn map_payload_ref<Q>(&self, payload: Q) -> Envelope<Q> {
        Envelope {
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            global_position: self.global_position,
            timestamp: self.timestamp,
            source: self.source.clone(),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            tenant_id: self.tenant_id.clone(),
            headers: self.headers.clone(),
            payload,
        }
    }

    /// Replaces the payload, keeping the metadata.
    pub fn with_payload<Q>(self, payload: Q) -> Envelope<Q> {
        Envelope {
            event_id: self.event_id,
            event_type: self.event_type,
            schema_version: self.schema_version,
            stream_id: self.stream_id,
            stream_version: self.stream_version,
            global_position: self.global_position,
            timestamp: self.timestamp,
            source: self.source,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            tenant_id: self.tenant_id,
            headers: self.headers,
            payload,
        }
    }
}
