//! The trace of a business flow: every record a service's database keeps of one correlation id
//! (events, messages sent and received, parked messages, dead letters, pending saga timers),
//! linked into a causal tree and drawn as text, Mermaid, DOT or JSON.
//!
//! The records come from the stores (`TraceStore::trace` in `eventfold-eventstore`); this module
//! only links and draws them, so records of several services' databases can be merged: a
//! message is one node, whether it was found as the sender's event or outbox message, as the
//! receiver's inbox entry, or both.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a [`TraceRecord`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceKind {
    /// An event appended to a stream (also saga transitions: a saga instance is a stream).
    Event,
    /// A message written to the outbox by the application, a saga or a participant (a command,
    /// a reply, an integration message). Events the outbox routing publishes are not repeated:
    /// the message of an event has the event's id.
    Sent,
    /// A message a consumer handled (its inbox entry).
    Received,
    /// A message a consumer gave up on after its attempts (parked with its error).
    Parked,
    /// An outbox row the relay gave up on (a dead letter, with its error).
    DeadLetter,
    /// A saga timer that has not fired yet.
    Timer,
}

/// One thing a database recorded about a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// What it is.
    pub kind: TraceKind,
    /// The event id or message id. A message keeps its id from sender to receiver, so records
    /// with the same id in different databases are the same message. A timer's id is derived
    /// from its saga, step, attempt and kind.
    pub id: Uuid,
    /// The flow's correlation id.
    pub correlation_id: Uuid,
    /// What caused it (an event id or a message id), when known.
    pub causation_id: Option<Uuid>,
    /// The event type or message type (`order.placed`, `saga.reply`), or the timer's kind.
    pub name: String,
    /// The service that wrote the record: the event's or message's source, the receiving
    /// service for [`TraceKind::Received`] and [`TraceKind::Parked`].
    pub service: String,
    /// When it was recorded (appended, enqueued, handled, parked; a timer's due time).
    pub at: DateTime<Utc>,
    /// Where: the stream and version (`order-42 v3`), the topic and key (`payments/42`), the
    /// consumer's name, or the saga and step of a timer.
    pub subject: String,
    /// The sending service of a received or parked message (`ce_source`), when known.
    pub from_service: Option<String>,
    /// The error of a parked message or a dead letter.
    pub error: Option<String>,
}
