//! # eventfold-outbox
//!
//! The transactional outbox of eventfold: outbox rows written by the unit of work in the **same SQL
//! transaction** as the events, a relay that publishes them to Kafka (or an in-process broker) in
//! per-aggregate order, and a consumer that deduplicates by `event_id` in an inbox written in its own
//! transaction.
//!
//! This crate is the room for that work; it holds no public items yet. The guarantees it will
//! provide are guarantees 1 (atomic, no dual write) and 3 (at-least-once, in order per key) of the
//! design brief.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
