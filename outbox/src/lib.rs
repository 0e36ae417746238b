//! # eventfold-outbox
//!
//! The transactional outbox of eventfold: outbox rows written by the unit of work in the **same
//! SQL transaction** as the events, a relay that publishes them to Kafka (or an in-process broker)
//! in per-aggregate order, and a consumer that deduplicates by `event_id` in an inbox written in
//! its own transaction.
//!
//! Available now: the message type with its CloudEvents headers ([`OutboxMessage`],
//! [`headers`]). The event store writes outbox rows in the append's transaction
//! (`OutboxRouting`, `UnitOfWork::enqueue` and `outbox_status` in `eventfold-eventstore`). The
//! relay, the publishers and the consumer with its inbox come next. The guarantees are 1 (atomic,
//! no dual write) and 3 (at-least-once, in order per key) of the design brief.
//!
//! ```
//! use eventfold_outbox::{OutboxMessage, headers};
//!
//! let message = OutboxMessage::new("billing", "customer-7", "billing.requested", b"{}".to_vec());
//! assert_eq!(message.headers[headers::TYPE], "billing.requested");
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub use eventfold_core::outbox::{OutboxMessage, headers};
