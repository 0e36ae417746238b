//! What a store records for the trace of a flow, and how it is read back.
//!
//! A business flow leaves records in every service's database it passes through, all with the
//! flow's correlation id: the events it appended (the events table), the messages the
//! application, a saga or a participant sent (a small journal, `{prefix}sent`, written in the
//! same statement as the outbox rows), the messages a consumer handled (the inbox, which keeps
//! the received message's type, topic, correlation and causation ids and sender), the messages a
//! consumer parked, the outbox rows the relay gave up on, and the saga timers still pending.
//! [`TraceStore::trace`] reads them all for one correlation id; `eventfold_core::trace::Trace`
//! links them into a causal tree (merging the records of several services' databases) and draws
//! it. ADR 0022 says what is recorded and what it costs.
//!
//! ```
//! use eventfold_core::{NewEvent, OutboxMessage, StreamId};
//! use eventfold_core::outbox::headers;
//! use eventfold_core::trace::TraceKind;
//! use eventfold_eventstore::{memory::MemoryStore, EventStore, ExpectedVersion, TraceStore, UnitOfWork};
//! use uuid::Uuid;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventfold_eventstore::StoreError> {
//! let store = MemoryStore::new().with_source("orders");
//! let flow = Uuid::now_v7();
//! let mut placed = NewEvent::raw("order.placed", 1, b"{}".to_vec());
//! placed.correlation_id = flow;
//! let placed_id = placed.event_id;
//! let mut uow = store.begin().await?;
//! uow.append(&StreamId::new("order", "7").unwrap(), ExpectedVersion::NoStream, vec![placed]).await?;
//! // A command caused by the event, with the flow's headers: journaled as sent.
//! let command = OutboxMessage::new("payments", "7", "payment.charge", b"{}".to_vec())
//!     .header(headers::CORRELATION_ID, flow.to_string())
//!     .header(headers::CAUSATION_ID, placed_id.to_string());
//! uow.enqueue(vec![command]).await?;
//! uow.commit().await?;
//!
//! let records = store.trace(flow).await?;
//! let kinds: Vec<TraceKind> = records.iter().map(|r| r.kind).collect();
//! assert_eq!(kinds, [TraceKind::Event, TraceKind::Sent]);
//! assert_eq!(records[1].causation_id, Some(placed_id));
//! # Ok(())
//! # }
//! ```

use std::future::Future;

use eventfold_core::outbox::headers;
use eventfold_core::trace::TraceRecord;
use eventfold_core::{Headers, OutboxMessage};
use uuid::Uuid;

use crate::error::StoreError;
use crate::store::EventStore;

/// What a consumer's inbox keeps of a message it handles, for the trace. Only `message_id` is
/// needed for deduplication; the rest says what the message was and where it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxEntry {
    /// The message id (`ce_id`).
    pub message_id: Uuid,
    /// Its type (`ce_type`).
    pub message_type: Option<String>,
    /// The topic it came from.
    pub topic: Option<String>,
    /// Its correlation id (`ce_correlationid`).
    pub correlation_id: Option<Uuid>,
    /// Its causation id (`ce_causationid`).
    pub causation_id: Option<Uuid>,
    /// The service that sent it (`ce_source`).
    pub sent_by: Option<String>,
}

impl InboxEntry {
    /// An entry that only deduplicates (nothing for the trace).
    pub fn id(message_id: Uuid) -> Self {
        Self {
            message_id,
            ..Self::default()
        }
    }

    /// The entry of a received message: its type and topic, and the flow read from its
    /// CloudEvents headers (values that are not UUIDs are left out).
    ///
    /// ```
    /// use eventfold_core::outbox::headers;
    /// use eventfold_core::Headers;
    /// use eventfold_eventstore::InboxEntry;
    /// use uuid::Uuid;
    ///
    /// let flow = Uuid::now_v7();
    /// let mut h = Headers::new();
    /// h.insert(headers::CORRELATION_ID.into(), flow.to_string());
    /// h.insert(headers::CAUSATION_ID.into(), "not a uuid".into());
    /// h.insert(headers::SOURCE.into(), "orders".into());
    /// let entry = InboxEntry::received(Uuid::now_v7(), "order.placed", "orders", &h);
    /// assert_eq!(entry.correlation_id, Some(flow));
    /// assert_eq!(entry.causation_id, None);
    /// assert_eq!(entry.sent_by.as_deref(), Some("orders"));
    /// ```
    pub fn received(
        message_id: Uuid,
        message_type: &str,
        topic: &str,
        message_headers: &Headers,
    ) -> Self {
        let (correlation_id, causation_id) = flow_of(message_headers);
        Self {
            message_id,
            message_type: Some(message_type.to_owned()),
            topic: Some(topic.to_owned()),
            correlation_id,
            causation_id,
            sent_by: message_headers
                .get(headers::SOURCE)
                .filter(|s| !s.is_empty())
                .cloned(),
        }
    }
}

/// The correlation and causation ids of a message's headers (`None` where absent or not a
/// UUID).
pub fn flow_of(message_headers: &Headers) -> (Option<Uuid>, Option<Uuid>) {
    let id = |name: &str| {
        message_headers
            .get(name)
            .and_then(|v| Uuid::parse_str(v).ok())
    };
    (id(headers::CORRELATION_ID), id(headers::CAUSATION_ID))
}

/// One row of the sent-messages journal: an outbox message that belongs to a flow (it has a
/// `ce_correlationid` header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentEntry {
    pub id: Uuid,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub message_type: String,
    pub topic: String,
    pub key: String,
    pub source: String,
}

impl SentEntry {
    /// The journal row of `message`, `None` when it carries no correlation id (it belongs to no
    /// flow). The sender is its `ce_source` header, else `source`.
    pub(crate) fn of(message: &OutboxMessage, source: &str) -> Option<Self> {
        let (correlation_id, causation_id) = flow_of(&message.headers);
        Some(Self {
            id: message.id,
            correlation_id: correlation_id?,
            causation_id,
            message_type: message.message_type.clone(),
            topic: message.topic.clone(),
            key: message.key.clone(),
            source: message
                .headers
                .get(headers::SOURCE)
                .filter(|s| !s.is_empty())
                .map_or_else(|| source.to_owned(), Clone::clone),
        })
    }
}

/// The subject of a message record: `topic/key`.
pub(crate) fn message_subject(topic: &str, key: &str) -> String {
    format!("{topic}/{key}")
}

/// A stable id for a pending saga timer (timers have no id of their own): the saga's id mixed
/// with an FNV-1a hash of step, attempt and kind.
pub(crate) fn timer_id(saga_id: Uuid, step: &str, attempt: u32, kind: &str) -> Uuid {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in step
        .bytes()
        .chain([0])
        .chain(attempt.to_le_bytes())
        .chain(kind.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    Uuid::from_u128(saga_id.as_u128() ^ u128::from(hash))
}

/// The subject of a pending saga timer.
pub(crate) fn timer_subject(saga_type: &str, saga_id: Uuid, step: &str, attempt: u32) -> String {
    format!("saga {saga_type} {saga_id}, step {step} attempt {attempt}")
}

/// Reads everything a store recorded about one flow. Implemented by every backend.
pub trait TraceStore: EventStore {
    /// Every record of `correlation_id` in this store: events, sent messages, received
    /// messages, parked messages, dead letters and pending saga timers, ordered by time (then
    /// kind and id). Committed data only.
    fn trace(
        &self,
        correlation_id: Uuid,
    ) -> impl Future<Output = Result<Vec<TraceRecord>, StoreError>> + Send;
}

/// Orders the records of a trace: by time, then kind, then id.
pub(crate) fn sort_records(records: &mut [TraceRecord]) {
    records.sort_by_key(|r| (r.at, r.kind, r.id));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_ids_differ_by_step_attempt_and_kind() {
        let saga = Uuid::now_v7();
        let a = timer_id(saga, "pay", 1, "timeout");
        assert_eq!(a, timer_id(saga, "pay", 1, "timeout"));
        assert_ne!(a, timer_id(saga, "pay", 2, "timeout"));
        assert_ne!(a, timer_id(saga, "pay", 1, "retry"));
        assert_ne!(a, timer_id(saga, "ship", 1, "timeout"));
    }

    #[test]
    fn a_message_without_correlation_is_not_journaled() {
        let m = OutboxMessage::new("t", "k", "x", Vec::new());
        assert_eq!(SentEntry::of(&m, "svc"), None);
        let flow = Uuid::now_v7();
        let m = m.header(headers::CORRELATION_ID, flow.to_string());
        let e = SentEntry::of(&m, "svc").unwrap();
        assert_eq!((e.correlation_id, e.source.as_str()), (flow, "svc"));
    }
}
