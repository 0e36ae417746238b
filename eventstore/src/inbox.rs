//! The consumer inbox, store side: which messages a consumer has already processed, and the
//! messages it gave up on.
//!
//! A consumer handles a message inside a unit of work that also marks `(consumer, message id)`
//! in the inbox ([`UnitOfWork::mark_inbox`](crate::UnitOfWork::mark_inbox)). The mark commits
//! with the handler's effects, so a message delivered twice (at-least-once) takes effect once:
//! the second time the mark already exists and the handler is not run.

use chrono::{DateTime, Utc};
use eventfold_core::Headers;
use uuid::Uuid;

/// A message a consumer could not handle after its attempts, kept with the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedMessage {
    /// The consumer's name.
    pub consumer: String,
    /// The message id (`ce_id`).
    pub message_id: Uuid,
    /// Where it came from.
    pub topic: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// Its key.
    pub key: String,
    /// Its type.
    pub message_type: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its headers.
    pub headers: Headers,
    /// How many times the handler failed.
    pub attempts: u32,
    /// The last error.
    pub error: String,
    /// When it was parked (set by the store).
    pub parked_at: DateTime<Utc>,
}

/// Parked consumer messages, per backend.
pub trait InboxStore: crate::EventStore {
    /// Parks a message and marks it processed in the consumer's inbox, in one transaction.
    fn park_message(
        &self,
        message: ParkedMessage,
    ) -> impl std::future::Future<Output = Result<(), crate::StoreError>> + Send;

    /// Up to `limit` parked messages of `consumer`, oldest first.
    fn parked_messages(
        &self,
        consumer: &str,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Vec<ParkedMessage>, crate::StoreError>> + Send;
}
