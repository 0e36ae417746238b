//! The trace of a business flow: every record a service's database keeps of one correlation id
//! (events, messages sent and received, parked messages, dead letters, pending saga timers),
//! linked into a causal tree and drawn as text, Mermaid, DOT or JSON.
//!
//! The records come from the stores (`TraceStore::trace` in `eventfold-eventstore`); this module
//! only links and draws them, so records of several services' databases can be merged: a
//! message is one node, whether it was found as the sender's event or outbox message, as the
//! receiver's inbox entry, or both. Nothing here does I/O, and nothing here fails: any set of
//! records, however inconsistent, gives a trace.
//!
//! # Nodes
//!
//! [`Trace::build`] groups the [`TraceRecord`]s by id. A **node** is one id:
//!
//! * its **origin** is the record that created it: an [`Event`](TraceKind::Event) appended, a
//!   message [`Sent`](TraceKind::Sent) through the outbox, or a pending
//!   [`Timer`](TraceKind::Timer);
//! * its **deliveries** are the [`Received`](TraceKind::Received) and
//!   [`Parked`](TraceKind::Parked) records of the same id: a message keeps its id from sender to
//!   receivers, and each consumer that handled it (or gave up on it) recorded it once;
//! * its **dead letters** are the [`DeadLetter`](TraceKind::DeadLetter) records of the same id
//!   (the relay could not publish it).
//!
//! When only the receiver's database is given, a node has deliveries and no origin; it is still
//! a node, drawn as "origin not in these databases". Records equal in every field (the same
//! database given twice) are kept once. A second origin record for an id (normally impossible)
//! is kept as [`TraceNode::also_recorded`], so that no record is ever dropped.
//!
//! # The forest
//!
//! A node's **parent** is the node of its causation id (the origin's, else a delivery's). A node
//! is a **root** when it has no causation id, when its cause is not among the records
//! ([`TraceNode::missing_parent`]: "caused by X, not in these databases", typically because
//! that service's database was not given), or when it closed a causal cycle. Cycles only come
//! from bad data (a record naming itself or one of its effects as its cause); the cycle is cut
//! above its earliest node, which remembers the lost cause ([`TraceNode::cycle_cut`]). Pending
//! timers usually have no causation id and so are roots of their own.
//!
//! Roots and children are ordered by time (the origin's, else the earliest record's), then by
//! id, so the result does not depend on the order in which the records or the databases were
//! given. Building and rendering never recurse: a causal chain of any length is fine.
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use eventfold_core::trace::{Trace, TraceKind, TraceRecord};
//! use uuid::Uuid;
//!
//! let flow = Uuid::from_u128(7);
//! let at = |ms: i64| Utc.timestamp_millis_opt(1_714_557_600_000 + ms).unwrap();
//! let record = |kind, id: u128, cause: Option<u128>, name: &str, service: &str, ms| TraceRecord {
//!     kind, id: Uuid::from_u128(id), correlation_id: flow,
//!     causation_id: cause.map(Uuid::from_u128), name: name.into(), service: service.into(),
//!     at: at(ms), subject: String::new(), from_service: Some("order".into()), error: None,
//! };
//! // Only the payment service's database: it received `order.placed` (whose origin is in the
//! // order service's database) and appended `payment.charged` in reaction.
//! let trace = Trace::build(flow, [
//!     record(TraceKind::Received, 1, Some(0), "order.placed", "payment", 5),
//!     record(TraceKind::Event, 2, Some(1), "payment.charged", "payment", 6),
//! ]);
//! let root = trace.roots().next().unwrap();
//! assert!(root.origin().is_none()); // known from its delivery only
//! assert_eq!(root.service(), Some("order")); // the sender the delivery names
//! assert_eq!(root.missing_parent(), Some(Uuid::from_u128(0)));
//! assert_eq!(trace.find("payment.charged").unwrap().parent().unwrap().id(), root.id());
//! let names: Vec<&str> = trace.iter().map(|node| node.name()).collect();
//! assert_eq!(names, ["order.placed", "payment.charged"]);
//! ```
//!
//! # Renderings
//!
//! * [`Trace::to_text`] (also `Display`): an indented tree for a terminal, one line per record,
//!   times relative to the flow's start;
//! * [`Trace::to_mermaid`]: a Mermaid sequence diagram (services as participants, messages as
//!   arrows between them) to paste into a Markdown page;
//! * [`Trace::to_dot`]: a Graphviz digraph (cause to effect, one cluster per service);
//! * [`Trace::to_json`] and `impl Serialize for Trace`: the shape below.
//!
//! # JSON
//!
//! ```text
//! {
//!   "correlation_id": "<uuid>",
//!   "records": 17,                     // distinct records
//!   "services": ["order", ...],        // in order of first appearance
//!   "first_at": "<RFC 3339>" | null,   // earliest and latest record
//!   "last_at": "<RFC 3339>" | null,
//!   "roots": ["<uuid>", ...],          // ids of the roots, in time order
//!   "nodes": [                         // every node once, depth first (a root, its subtree, ...)
//!     {
//!       "id": "<uuid>",
//!       "depth": 0,                    // 0 for a root
//!       "parent": "<uuid>" | null,
//!       "children": ["<uuid>", ...],   // in time order
//!       "kind": "event" | "sent" | "timer" | null,   // the origin's; null when not recorded
//!       "name": "order.placed",
//!       "service": "order" | null,     // the origin's, else the sender named by a delivery
//!       "at": "<RFC 3339>",            // the origin's time, else the earliest record's
//!       "subject": "order-42 v1" | null,             // the origin's
//!       "causation_id": "<uuid>" | null,
//!       "missing_parent": "<uuid>" | null,           // cause not among the records
//!       "cycle_cut": "<uuid>" | null,                // cause cut out of a cycle
//!       "deliveries": [<record>, ...],               // received and parked, in time order
//!       "dead_letters": [<record>, ...],
//!       "also_recorded": [<record>, ...]             // extra origin records (normally empty)
//!     }
//!   ]
//! }
//! ```
//!
//! A `<record>` is a [`TraceRecord`] as serde writes it (`kind`, `id`, `correlation_id`,
//! `causation_id`, `name`, `service`, `at`, `subject`, `from_service`, `error`; kinds in
//! snake case). Every distinct record is in the JSON exactly once: as the origin of a node
//! whose `kind` is not null, or in one of its three lists.
//!
//! The nodes are a flat list linked by id rather than nested objects: a flow's causal chain
//! (four levels per saga step) easily grows deeper than JSON readers nest (`serde_json` stops at
//! 128 levels by default), and a flat list is as easy to walk with `jq`.

mod dot;
mod json;
mod mermaid;
mod text;
mod tree;

pub use tree::{Trace, TraceNode};

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

impl TraceKind {
    /// How the renderings name the kind: `event`, `sent`, `received`, `parked`,
    /// `dead letter`, `timer due` (a pending timer's time is its due time).
    pub fn label(self) -> &'static str {
        match self {
            TraceKind::Event => "event",
            TraceKind::Sent => "sent",
            TraceKind::Received => "received",
            TraceKind::Parked => "parked",
            TraceKind::DeadLetter => "dead letter",
            TraceKind::Timer => "timer due",
        }
    }
}

impl TraceRecord {
    /// The sending service of a [`Received`](TraceKind::Received) or
    /// [`Parked`](TraceKind::Parked) record, when recorded and not empty.
    pub fn sender(&self) -> Option<&str> {
        match self.kind {
            TraceKind::Received | TraceKind::Parked => {
                self.from_service.as_deref().filter(|s| !s.is_empty())
            }
            _ => None,
        }
    }
}
