//! The transactional outbox, store side: routing events to topics, and the outbox rows that a
//! unit of work writes in the same transaction as its events.
//!
//! With routing on ([`OutboxRouting`], set on a store with [`OutboxStore::with_outbox`]), every
//! append also writes one outbox row per routed event, in the same transaction: a message exists
//! if and only if its event committed (no dual write). Every backend turns an append's events into
//! their messages with the same function and at the same moment of the append: once the append
//! passed the checks that come before its first write, and before that write. The application
//! adds its own messages (commands, integration events) with
//! [`UnitOfWork::enqueue`](crate::UnitOfWork::enqueue), in the same transaction as its own SQL.
//! The rows use Debezium's Outbox Event Router column names, so Debezium can relay them too.

use std::collections::HashMap;
use std::future::Future;

use chrono::{DateTime, Utc};
use eventfold_core::{NewEvent, OutboxMessage, RecordedEvent, StreamId};

use crate::error::StoreError;

/// Number of relay slots keys are hashed into ([`OutboxMessage::slot_of`]).
pub const OUTBOX_SLOTS: u32 = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
enum DefaultTopic {
    StreamType { prefix: String },
    Fixed(String),
    None,
}

/// Which events go to which topic.
///
/// The default sends every event to a topic named after its stream type (`order` events to
/// `order`); routes by event type win over routes by stream type, which win over the default.
///
/// ```
/// use eventfold_eventstore::OutboxRouting;
/// use eventfold_core::{NewEvent, StreamId};
///
/// let routing = OutboxRouting::new()
///     .topic_prefix("shop.")                      // order events -> "shop.order"
///     .route_stream_type("payment", "payments")   // payment events -> "payments"
///     .skip_event_type("order.audited")           // not published
///     .content_type("application/json");
///
/// let event = NewEvent::raw("payment.captured", 1, b"{}".to_vec())
///     .into_recorded(StreamId::new("payment", "9").unwrap(), 1, 1);
/// assert_eq!(routing.topic_for(&event).as_deref(), Some("payments"));
/// let event = NewEvent::raw("order.placed", 1, b"{}".to_vec())
///     .into_recorded(StreamId::new("order", "9").unwrap(), 1, 2);
/// assert_eq!(routing.topic_for(&event).as_deref(), Some("shop.order"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRouting {
    by_event_type: HashMap<String, Option<String>>,
    by_stream_type: HashMap<String, Option<String>>,
    default: DefaultTopic,
    content_type: String,
}

impl Default for OutboxRouting {
    fn default() -> Self {
        Self::new()
    }
}

impl OutboxRouting {
    /// Every event to the topic named after its stream type; payloads are `application/json`.
    pub fn new() -> Self {
        Self {
            by_event_type: HashMap::new(),
            by_stream_type: HashMap::new(),
            default: DefaultTopic::StreamType {
                prefix: String::new(),
            },
            content_type: "application/json".to_owned(),
        }
    }

    /// Default topic = `prefix` + stream type.
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.default = DefaultTopic::StreamType {
            prefix: prefix.into(),
        };
        self
    }

    /// Default topic for every event without a route.
    pub fn default_topic(mut self, topic: impl Into<String>) -> Self {
        self.default = DefaultTopic::Fixed(topic.into());
        self
    }

    /// Publish only events that have a route.
    pub fn only_routed(mut self) -> Self {
        self.default = DefaultTopic::None;
        self
    }

    /// Events of this type go to `topic`.
    pub fn route_event_type(
        mut self,
        event_type: impl Into<String>,
        topic: impl Into<String>,
    ) -> Self {
        self.by_event_type
            .insert(event_type.into(), Some(topic.into()));
        self
    }

    /// Events of this type are not published.
    pub fn skip_event_type(mut self, event_type: impl Into<String>) -> Self {
        self.by_event_type.insert(event_type.into(), None);
        self
    }

    /// Events of streams of this type go to `topic`.
    pub fn route_stream_type(
        mut self,
        stream_type: impl Into<String>,
        topic: impl Into<String>,
    ) -> Self {
        self.by_stream_type
            .insert(stream_type.into(), Some(topic.into()));
        self
    }

    /// Events of streams of this type are not published.
    pub fn skip_stream_type(mut self, stream_type: impl Into<String>) -> Self {
        self.by_stream_type.insert(stream_type.into(), None);
        self
    }

    /// The content type announced in the `content-type` header.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// The topic of an event, or `None` when it is not published.
    pub fn topic_for(&self, event: &RecordedEvent) -> Option<String> {
        self.topic(&event.event_type, event.stream_id.stream_type())
    }

    /// The topic of an event of `event_type` in a stream of `stream_type`.
    pub(crate) fn topic(&self, event_type: &str, stream_type: &str) -> Option<String> {
        if let Some(route) = self.by_event_type.get(event_type) {
            return route.clone();
        }
        if let Some(route) = self.by_stream_type.get(stream_type) {
            return route.clone();
        }
        match &self.default {
            DefaultTopic::StreamType { prefix } => Some(format!("{prefix}{stream_type}")),
            DefaultTopic::Fixed(topic) => Some(topic.clone()),
            DefaultTopic::None => None,
        }
    }

    /// The messages for appended events, in their order.
    pub fn messages_for(&self, events: &[RecordedEvent]) -> Vec<OutboxMessage> {
        events
            .iter()
            .filter_map(|e| {
                self.topic_for(e)
                    .map(|topic| OutboxMessage::from_event(e, &topic, &self.content_type))
            })
            .collect()
    }
}

/// The outbox messages of an append: one per routed event, in the events' order, each carrying
/// the stream version its event gets when the first one gets `first_version`. No message when
/// `routing` is `None`.
///
/// The one place where routing is applied. Every backend calls it at the same moment of an
/// append: after the append passed the checks that come before its first write (the batch is
/// valid, the events carry their source, and where the backend reads the stream's version
/// first, that version matched), and before that first write. The messages carry no global
/// position, as none is known yet. PostgreSQL, whose single statement learns the version of an
/// `Any` append only when it inserts, passes the expected version plus one and lets the statement
/// write the stream version it gave each event (see `postgres/statements.rs`).
pub(crate) fn append_messages(
    routing: Option<&OutboxRouting>,
    stream_id: &StreamId,
    first_version: u64,
    events: &[NewEvent],
) -> Vec<OutboxMessage> {
    let Some(routing) = routing else {
        return Vec::new();
    };
    events
        .iter()
        .enumerate()
        .filter_map(|(i, event)| {
            let topic = routing.topic(&event.event_type, stream_id.stream_type())?;
            let version = first_version + i as u64;
            let recorded = event.clone().into_recorded(stream_id.clone(), version, 0);
            Some(OutboxMessage::from_event(
                &recorded,
                &topic,
                &routing.content_type,
            ))
        })
        .collect()
}

/// A stored outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Order of the row in the outbox (commit order within a key).
    pub seq: u64,
    /// The message.
    pub message: OutboxMessage,
    /// The relay slot of its key.
    pub slot: u32,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// How many times publishing it failed.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// After a failure: not to be tried again before this time.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// How full the outbox is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutboxStatus {
    /// Rows waiting to be published.
    pub pending: u64,
    /// When the oldest waiting row was written.
    pub oldest: Option<DateTime<Utc>>,
    /// Rows parked in the dead-letter table.
    pub dead_letters: u64,
    /// PostgreSQL: how far the outbox floor (ADR 0017) trails the oldest waiting row, in
    /// sequence numbers (or trails the next row when none waits). It bounds the index entries
    /// of deleted rows that a claim walks past. Normally it stays near the rows delivered in the
    /// last few hundred milliseconds; a lag that keeps growing while rows are delivered means
    /// that a transaction left open somewhere in the cluster holds the floor back. `None` on
    /// backends without a floor (SQLite, memory).
    pub floor_lag: Option<u64>,
}

/// A parked outbox row: it failed for good, and later rows of its key wait until an operator
/// retries or skips it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The row as it was when parked (its `seq` is kept).
    pub row: OutboxRow,
    /// Why it was parked.
    pub error: String,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

/// A store's outbox: routing appended events into it, and reading what waits in it. Implemented
/// by every backend; [`OutboxRelayStore`] adds what a relay needs.
///
/// ```
/// use eventfold_core::{NewEvent, StreamId};
/// use eventfold_eventstore::memory::MemoryStore;
/// use eventfold_eventstore::{EventStore, ExpectedVersion, OutboxRouting, OutboxStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MemoryStore::new().with_outbox(OutboxRouting::new());
/// let order = StreamId::new("order", "7")?;
/// let placed = NewEvent::raw("order.placed", 1, b"{}".to_vec());
/// store.append(&order, ExpectedVersion::NoStream, vec![placed]).await?;
/// assert_eq!(store.outbox_status().await?.pending, 1);
/// assert_eq!(store.read_outbox(10).await?[0].message.topic, "order");
/// # Ok(())
/// # }
/// ```
pub trait OutboxStore: crate::EventStore {
    /// This store, writing an outbox row for every routed event in the same transaction as the
    /// append (see [`crate::outbox`]).
    fn with_outbox(self, routing: OutboxRouting) -> Self;

    /// How many outbox rows wait, since when, and how many are parked.
    fn outbox_status(&self) -> impl Future<Output = Result<OutboxStatus, StoreError>> + Send;

    /// Up to `limit` waiting outbox rows, oldest first.
    fn read_outbox(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<OutboxRow>, StoreError>> + Send;
}

/// What a relay needs from a store's outbox (ADR 0009): slot leases, claims, and the outcome of
/// each publish. Implemented by every backend.
pub trait OutboxRelayStore: OutboxStore {
    /// Heartbeats `owner` and (re)leases its fair share of the [`OUTBOX_SLOTS`] slots for
    /// `ttl`; returns the slots it holds now.
    fn lease_slots(
        &self,
        owner: uuid::Uuid,
        ttl: std::time::Duration,
    ) -> impl std::future::Future<Output = Result<Vec<u32>, crate::StoreError>> + Send;

    /// Gives up every lease of `owner` (graceful shutdown).
    fn release_slots(
        &self,
        owner: uuid::Uuid,
    ) -> impl std::future::Future<Output = Result<(), crate::StoreError>> + Send;

    /// Up to `limit` publishable rows of `slots`, oldest first, at most one per key: the first
    /// waiting row of each key, if it is due and its key has no parked row.
    ///
    /// `in_flight` lists the keys of rows the caller claimed earlier and is still publishing:
    /// those keys are left out (a key has one row in flight at a time, which keeps its order),
    /// and their rows do not take room in the window of `limit` rows the claim looks at.
    fn claim_outbox(
        &self,
        slots: &[u32],
        limit: usize,
        in_flight: &[&str],
    ) -> impl std::future::Future<Output = Result<Vec<OutboxRow>, crate::StoreError>> + Send;

    /// Deletes published rows whose slot `owner` still leases; returns how many were deleted.
    fn complete_outbox(
        &self,
        owner: uuid::Uuid,
        seqs: &[u64],
    ) -> impl std::future::Future<Output = Result<u64, crate::StoreError>> + Send;

    /// Records a failed attempt: the row is due again after `retry_after`.
    fn fail_outbox(
        &self,
        seq: u64,
        error: &str,
        retry_after: std::time::Duration,
    ) -> impl std::future::Future<Output = Result<(), crate::StoreError>> + Send;

    /// Moves a row to the dead letters with its error.
    fn park_outbox(
        &self,
        seq: u64,
        error: &str,
    ) -> impl std::future::Future<Output = Result<(), crate::StoreError>> + Send;

    /// Up to `limit` dead letters, oldest first.
    fn dead_letters(
        &self,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Vec<DeadLetter>, crate::StoreError>> + Send;

    /// Moves a dead letter back into the outbox, with its `seq` and no attempts; `false` when
    /// there is no such dead letter.
    fn retry_dead_letter(
        &self,
        seq: u64,
    ) -> impl std::future::Future<Output = Result<bool, crate::StoreError>> + Send;

    /// Deletes a dead letter, so its key flows again; `false` when there is no such dead letter.
    fn skip_dead_letter(
        &self,
        seq: u64,
    ) -> impl std::future::Future<Output = Result<bool, crate::StoreError>> + Send;
}

/// The fair share of slots for `live` relay instances.
pub(crate) fn fair_share(live: u64) -> usize {
    let live = live.max(1);
    usize::try_from(u64::from(OUTBOX_SLOTS).div_ceil(live)).unwrap_or(OUTBOX_SLOTS as usize)
}

#[cfg(test)]
mod tests {
    use eventfold_core::outbox::headers;
    use eventfold_core::{NewEvent, StreamId};

    use super::{OutboxRouting, append_messages};

    /// Routing is applied to the events before they are written: skipped events take their
    /// version but no message, and no message knows a global position.
    #[test]
    fn append_messages_number_routed_events_from_the_first_version() {
        let stream = StreamId::new("order", "9").expect("a stream id");
        let events = vec![
            NewEvent::raw("order.placed", 1, b"{}".to_vec()),
            NewEvent::raw("order.viewed", 1, b"{}".to_vec()),
            NewEvent::raw("order.paid", 1, b"{}".to_vec()),
        ];
        assert!(append_messages(None, &stream, 4, &events).is_empty());
        let routing = OutboxRouting::new().skip_event_type("order.viewed");
        let messages = append_messages(Some(&routing), &stream, 4, &events);
        let seen: Vec<_> = messages
            .iter()
            .map(|m| {
                (
                    m.message_type.as_str(),
                    m.headers[headers::STREAM_VERSION].as_str(),
                )
            })
            .collect();
        assert_eq!(seen, [("order.placed", "4"), ("order.paid", "6")]);
        assert_eq!(messages[0].id, events[0].event_id);
        assert_eq!(messages[1].topic, "order");
    }
}
