//! The [`Publisher`] abstraction: how a relay hands committed outbox messages to a broker.
//!
//! A publisher takes a batch of [`OutboxMessage`]s and answers with one result per message, in
//! input order: a [`Delivery`] (the broker acknowledged it: topic, partition, offset) or a
//! [`PublishError`] (the broker refused it, or never acknowledged it). See [`Publisher`] for the
//! full contract that every implementation keeps and that a relay relies on.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use uuid::Uuid;

use crate::OutboxMessage;

/// Where the broker stored an acknowledged message.
///
/// ```
/// use eventfold_outbox::Delivery;
///
/// let delivery = Delivery { topic: "shop.order".into(), partition: 2, offset: 17 };
/// assert_eq!(delivery.to_string(), "shop.order/2@17");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Delivery {
    /// The topic the message was written to.
    pub topic: String,
    /// The partition of the topic (chosen from the message key).
    pub partition: u32,
    /// The offset of the record in its partition.
    pub offset: u64,
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// A message that was not delivered.
///
/// `retriable` tells a relay what to do with the row: a retriable error (the broker is
/// unreachable, a timeout, a leader election, a topic or partition not known yet, an earlier
/// message of the same key failed) leaves the row in the outbox to be tried again later; a
/// non-retriable one (the message is too large, the topic name is invalid, the broker refuses it
/// for good) will fail the same way every time, so the relay parks the row as a dead letter instead of
/// retrying it forever.
///
/// ```
/// use eventfold_outbox::{OutboxMessage, PublishError};
///
/// let message = OutboxMessage::new("payments", "p-1", "payment.captured", b"{}".to_vec());
/// let error = PublishError::fatal(&message, "message too large: 2000 bytes > 1000");
/// assert!(!error.retriable);
/// assert_eq!(error.message_id, message.id);
/// assert!(error.to_string().contains("payments"));
/// assert!(error.to_string().contains(&message.id.to_string()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message {message_id} to topic {topic} was not delivered: {reason}")]
pub struct PublishError {
    /// The id of the message ([`OutboxMessage::id`]).
    pub message_id: Uuid,
    /// The topic it was meant for.
    pub topic: String,
    /// Why it was not delivered, as the broker or the client said it.
    pub reason: String,
    /// Whether trying again later may succeed (see the type's docs).
    pub retriable: bool,
}

impl PublishError {
    /// An error for `message`.
    pub fn new(message: &OutboxMessage, reason: impl Into<String>, retriable: bool) -> Self {
        Self {
            message_id: message.id,
            topic: message.topic.clone(),
            reason: reason.into(),
            retriable,
        }
    }

    /// A retriable error for `message`: trying again later may succeed.
    pub fn retriable(message: &OutboxMessage, reason: impl Into<String>) -> Self {
        Self::new(message, reason, true)
    }

    /// A non-retriable error for `message`: it will fail the same way every time.
    pub fn fatal(message: &OutboxMessage, reason: impl Into<String>) -> Self {
        Self::new(message, reason, false)
    }

    /// The retriable error of a message that was not sent because an earlier message with the
    /// same key failed in the same call (`"an earlier message of key K failed"`).
    pub fn blocked_by_earlier(message: &OutboxMessage) -> Self {
        Self::retriable(
            message,
            format!("an earlier message of key {} failed", message.key),
        )
    }
}

/// Sends outbox messages to a broker.
///
/// # The contract
///
/// Every implementation keeps these rules, and a relay relies on them to give guarantee 3
/// (at-least-once, in order per key):
///
/// 1. **One result per message, in input order.** `publish(&messages)` returns a vector with
///    exactly `messages.len()` results; result `i` belongs to `messages[i]`.
/// 2. **Only settled results.** It returns when every message is acknowledged by the broker
///    ([`Delivery`]) or refused ([`PublishError`]). An `Ok` means the broker has the message
///    durably (as durably as the broker is configured to be); the relay may then delete the row.
///    A message whose fate is unknown (a timeout) is an `Err` with `retriable: true`: the relay
///    sends it again, which may duplicate it. That is at-least-once; consumers deduplicate by
///    message id.
/// 3. **Per-key order.** Messages with the same [`key`](OutboxMessage::key) in one call are
///    delivered in call order (and, on a partitioned broker, to the same partition, chosen with
///    [`OutboxMessage::slot_of`]).
/// 4. **No overtaking after a failure.** Once a message of key `K` fails, the later messages of
///    key `K` in the same call are **not delivered**; each fails with a retriable error
///    `"an earlier message of key K failed"` ([`PublishError::blocked_by_earlier`]). Messages of
///    other keys are not affected. So when the relay retries the failed message, nothing of its
///    key has gone ahead of it, and per-key order is never broken. Keys are compared as strings,
///    across topics: the outbox orders rows by key, not by (topic, key).
///
/// Several calls may run at the same time; order between concurrent calls is not defined (the
/// relay does not publish a key's next row before the previous one is settled).
///
/// The trait uses `async fn` in traits (it returns `impl Future + Send`), so it is used through
/// generics (`R: Publisher`), not as `dyn Publisher`. An `Arc<P>` is a publisher too.
///
/// # Example
///
/// A publisher that prints messages, keeping the contract:
///
/// ```
/// use eventfold_outbox::{Delivery, OutboxMessage, PublishError, Publisher};
///
/// struct Stdout;
///
/// impl Publisher for Stdout {
///     async fn publish(&self, messages: &[OutboxMessage]) -> Vec<Result<Delivery, PublishError>> {
///         messages
///             .iter()
///             .enumerate()
///             .map(|(i, m)| {
///                 println!("{} {} {}", m.topic, m.key, m.message_type);
///                 Ok(Delivery { topic: m.topic.clone(), partition: 0, offset: i as u64 })
///             })
///             .collect()
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let messages = vec![OutboxMessage::new("orders", "42", "order.placed", b"{}".to_vec())];
/// let results = Stdout.publish(&messages).await;
/// assert_eq!(results.len(), messages.len());
/// # }
/// ```
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `messages`; one result per message, in input order (see the trait's contract).
    fn publish(
        &self,
        messages: &[OutboxMessage],
    ) -> impl Future<Output = Vec<Result<Delivery, PublishError>>> + Send;
}

impl<P: Publisher> Publisher for Arc<P> {
    fn publish(
        &self,
        messages: &[OutboxMessage],
    ) -> impl Future<Output = Vec<Result<Delivery, PublishError>>> + Send {
        P::publish(self, messages)
    }
}

/// Keeps rule 4 of the [`Publisher`] contract while a publisher walks through a call's
/// messages: it remembers the keys that failed, so that later messages of those keys are
/// refused without being sent.
///
/// ```
/// use eventfold_outbox::{FailedKeys, OutboxMessage, PublishError};
///
/// let first = OutboxMessage::new("t", "k", "a", vec![]);
/// let second = OutboxMessage::new("t", "k", "b", vec![]);
/// let mut failed = FailedKeys::default();
/// assert!(failed.check(&first).is_ok());
/// failed.record(&first, PublishError::fatal(&first, "too large"));
/// let blocked = failed.check(&second).unwrap_err();
/// assert!(blocked.retriable);
/// assert_eq!(blocked.reason, "an earlier message of key k failed");
/// ```
#[derive(Debug, Default, Clone)]
pub struct FailedKeys {
    keys: HashSet<String>,
}

impl FailedKeys {
    /// `Err(blocked_by_earlier)` when an earlier message of the same key failed in this call.
    pub fn check(&self, message: &OutboxMessage) -> Result<(), PublishError> {
        if self.keys.contains(&message.key) {
            Err(PublishError::blocked_by_earlier(message))
        } else {
            Ok(())
        }
    }

    /// Remembers that `message` failed with `error` and gives the error back.
    pub fn record(&mut self, message: &OutboxMessage, error: PublishError) -> PublishError {
        self.keys.insert(message.key.clone());
        error
    }

    /// Whether a message of `key` failed in this call.
    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }
}
