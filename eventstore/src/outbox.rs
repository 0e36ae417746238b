//! The transactional outbox, store side: routing events to topics, and the outbox rows that a
//! unit of work writes in the same transaction as its events.
//!
//! With routing on ([`OutboxRouting`], set on a store with `with_outbox`), every append also
//! writes one outbox row per routed event, in the same transaction: a message exists if and only
//! if its event committed (no dual write). The application adds its own messages (commands,
//! integration events) with [`UnitOfWork::enqueue`](crate::UnitOfWork::enqueue), in the same
//! transaction as its own SQL. The rows use Debezium's Outbox Event Router column names, so
//! Debezium can relay them too.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use eventfold_core::{OutboxMessage, RecordedEvent};

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
        if let Some(route) = self.by_event_type.get(&event.event_type) {
            return route.clone();
        }
        if let Some(route) = self.by_stream_type.get(event.stream_id.stream_type()) {
            return route.clone();
        }
        match &self.default {
            DefaultTopic::StreamType { prefix } => {
                Some(format!("{prefix}{}", event.stream_id.stream_type()))
            }
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
}
