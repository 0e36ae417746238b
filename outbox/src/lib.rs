//! # eventfold-outbox
//!
//! The transactional outbox of eventfold: outbox rows written by the unit of work in the **same
//! SQL transaction** as the events, a relay that publishes them to Kafka (or an in-process broker)
//! in per-aggregate order, and a consumer that deduplicates by `event_id` in an inbox written in
//! its own transaction. The guarantees are 1 (atomic, no dual write) and 3 (at-least-once, in
//! order per key) of the design brief.
//!
//! ## What the outbox is
//!
//! Writing an event to the database and then to a broker is a *dual write*: a crash between the
//! two loses the message, and a publish before a failed commit announces something that never
//! happened. With an outbox the message is a row ([`OutboxMessage`]) committed together with the
//! events; a relay later reads the committed rows, publishes them and deletes them. A message is
//! therefore published if and only if its transaction committed, and at least once (a crash after
//! the publish and before the delete publishes it again; consumers deduplicate by message id).
//!
//! The event store writes outbox rows in the append's transaction (`OutboxRouting`,
//! `UnitOfWork::enqueue` and `OutboxStore::outbox_status` in `eventfold-eventstore`). The message carries its
//! metadata as CloudEvents headers ([`headers`]):
//!
//! ```
//! use eventfold_outbox::{OutboxMessage, headers};
//!
//! let message = OutboxMessage::new("billing", "customer-7", "billing.requested", b"{}".to_vec());
//! assert_eq!(message.headers[headers::TYPE], "billing.requested");
//! ```
//!
//! ## Publishers
//!
//! A [`Publisher`] hands a batch of messages to a broker and returns **one result per message,
//! in input order**: a [`Delivery`] (topic, partition, offset) once the broker acknowledged it, or
//! a [`PublishError`] that says whether a retry may succeed ([`PublishError::retriable`]).
//! Messages with the same key in one call are delivered in call order, and once one of them
//! fails, the later ones of that key are *not* delivered (they fail with a retriable
//! `"an earlier message of key K failed"`). That way a relay can retry the failed message without
//! anything of its key having overtaken it: per-key order is never broken. The Kafka publisher
//! and the relay build on this contract.
//!
//! With the feature `kafka`, `kafka::KafkaPublisher` publishes to any Kafka-protocol broker
//! through rdkafka (idempotent producer, per-key order, CloudEvents headers as record headers);
//! see the `kafka` module.
//!
//! ## The in-process broker
//!
//! [`InProcessBroker`] is a Kafka-like broker in memory, for the embedded default and for unit
//! tests: topics with partitions (auto-created, or strict), partitioning by key hash
//! ([`OutboxMessage::slot_of`]), per-partition offsets, a message-size limit, simulated outages,
//! and consumers in groups with committed offsets ([`InProcessConsumer`]).
//!
//! ```
//! use std::time::Duration;
//! use eventfold_outbox::{InProcessBroker, OutboxMessage, Publisher};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = InProcessBroker::new();
//! let results = broker.publish(&[
//!     OutboxMessage::new("shop.order", "42", "order.placed", br#"{"total":3}"#.to_vec()),
//!     OutboxMessage::new("shop.order", "42", "order.paid", b"{}".to_vec()),
//! ]).await;
//! let first = results[0].clone()?;
//! let second = results[1].clone()?;
//! assert_eq!(first.partition, second.partition);   // same key, same partition
//! assert_eq!(second.offset, first.offset + 1);      // in call order
//!
//! let mut consumer = broker.consumer("billing", &["shop.order"]);
//! let records = consumer.poll(10, Duration::from_secs(1)).await;
//! let types: Vec<_> = records.iter().map(|r| r.message_type.as_str()).collect();
//! assert_eq!(types, ["order.placed", "order.paid"]);
//! for record in &records {
//!     consumer.commit(record);                      // the next consumer of "billing" resumes here
//! }
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod consumer;
pub mod in_process;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kafka")]
pub mod kafka_source;
pub mod publisher;
pub mod relay;

pub use consumer::{
    Batch, BatchFailure, Consumer, ConsumerError, ConsumerReport, Handler, MessageSource, Outcome,
};
pub use eventfold_core::Headers;
pub use eventfold_core::outbox::{OutboxMessage, headers};
pub use in_process::{
    BrokerError, DEFAULT_PARTITIONS, InProcessBroker, InProcessConsumer, Record, RecordDecodeError,
};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaError, KafkaPublisher};
#[cfg(feature = "kafka")]
pub use kafka_source::{KafkaSource, KafkaSourceError, RecordProblem};
pub use publisher::{Delivery, FailedKeys, PublishError, Publisher};
pub use relay::{Relay, RelayConfig, RoundReport};
