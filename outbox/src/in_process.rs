//! An in-process, Kafka-like broker: the embedded default's broker and the one for users' unit
//! tests.
//!
//! [`InProcessBroker`] behaves like a small Kafka cluster that lives in memory:
//!
//! - **topics with partitions**: created on first publish with the default partition count (4),
//!   or only explicitly with [`create_topic`](InProcessBroker::create_topic) after
//!   [`strict_topics`](InProcessBroker::strict_topics), like a broker with
//!   `auto.create.topics.enable=false` (a message to a topic not created yet fails with a
//!   retriable error, as Kafka's unknown topic or partition does);
//! - **partitioning by key**: a message goes to partition
//!   [`OutboxMessage::slot_of`]`(key, partitions)`, so one key stays in one partition, in order;
//!   each partition numbers its records with increasing offsets from 0;
//! - **refusals a real broker makes**: a message larger than
//!   [`with_max_message_bytes`](InProcessBroker::with_max_message_bytes) is refused for good
//!   (non-retriable), and [`set_available(false)`](InProcessBroker::set_available) simulates an
//!   outage (every message fails with a retriable error until it is back);
//! - **consumer groups with committed offsets**: [`consumer`](InProcessBroker::consumer) starts at
//!   its group's committed offsets; a consumer that crashed before committing is replaced by a new
//!   one of the same group that gets the uncommitted records again (at-least-once).
//!
//! It implements [`Publisher`] with the full contract (per-key order, later messages of a failed
//! key are not delivered). Nothing is persisted: the broker lives as long as its last clone.
//!
//! ```
//! use std::time::Duration;
//! use eventfold_outbox::{InProcessBroker, OutboxMessage, Publisher};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let broker = InProcessBroker::new();
//! let results = broker
//!     .publish(&[OutboxMessage::new("orders", "42", "order.placed", b"{}".to_vec())])
//!     .await;
//! assert!(results[0].is_ok());
//!
//! let mut consumer = broker.consumer("billing", &["orders"]);
//! let records = consumer.poll(10, Duration::from_millis(100)).await;
//! assert_eq!(records[0].message_type, "order.placed");
//! consumer.commit(&records[0]);
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::publisher::{Delivery, FailedKeys, PublishError, Publisher};
use crate::{Headers, OutboxMessage};

/// The partition count of auto-created topics, unless
/// [`with_default_partitions`](InProcessBroker::with_default_partitions) says otherwise.
pub const DEFAULT_PARTITIONS: u32 = 4;

/// One record in a partition of the [`InProcessBroker`]: a published [`OutboxMessage`] with its
/// place (topic, partition, offset) and the time the broker appended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The topic.
    pub topic: String,
    /// The partition ([`OutboxMessage::slot_of`] of the key).
    pub partition: u32,
    /// The offset in the partition (0, 1, 2, ...).
    pub offset: u64,
    /// The message key.
    pub key: String,
    /// The message id ([`OutboxMessage::id`]): what a consumer deduplicates by.
    pub message_id: Uuid,
    /// The message type ([`OutboxMessage::message_type`]).
    pub message_type: String,
    /// The message value.
    pub payload: Vec<u8>,
    /// The message headers (CloudEvents binding, trace context, ...).
    pub headers: Headers,
    /// When the broker appended the record.
    pub timestamp: DateTime<Utc>,
}

impl Record {
    /// Decodes the payload as an event of `E`, by its `ce_type`, upcasting older schema versions
    /// (`ce_schemaversion`) with `upcasters`, like a stored event. Errors name the message.
    ///
    /// ```
    /// use eventfold_core::{CodecError, Event, EventTypeInfo, Upcasters};
    /// use eventfold_outbox::Record;
    /// # #[derive(Debug, PartialEq)] struct Placed;
    /// # impl Event for Placed {
    /// #     const CONTENT_TYPE: &'static str = "application/json";
    /// #     fn event_type(&self) -> &'static str { "order.placed" }
    /// #     fn schema_version(&self) -> u32 { 1 }
    /// #     fn event_types() -> &'static [EventTypeInfo] { &[EventTypeInfo { name: "order.placed", version: 1, variant: "Placed" }] }
    /// #     fn encode(&self) -> Result<Vec<u8>, CodecError> { Ok(b"{}".to_vec()) }
    /// #     fn decode(_: &str, _: &[u8]) -> Result<Self, CodecError> { Ok(Placed) }
    /// # }
    /// # let record = Record {
    /// #     topic: "orders".into(), partition: 0, offset: 0, key: "1".into(),
    /// #     message_id: uuid::Uuid::now_v7(), message_type: "order.placed".into(), payload: b"{}".to_vec(),
    /// #     headers: [("ce_type".to_owned(), "order.placed".to_owned()), ("ce_schemaversion".to_owned(), "1".to_owned())].into(),
    /// #     timestamp: chrono::Utc::now(),
    /// # };
    /// let event: Placed = record.decode(&Upcasters::new()).unwrap();
    /// # assert_eq!(event, Placed);
    /// ```
    pub fn decode<E: eventfold_core::Event>(
        &self,
        upcasters: &eventfold_core::Upcasters,
    ) -> Result<E, RecordDecodeError> {
        let fail = |reason: String| RecordDecodeError {
            message_id: self.message_id,
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            reason,
        };
        let event_type = self
            .headers
            .get(crate::headers::TYPE)
            .cloned()
            .unwrap_or_else(|| self.message_type.clone());
        let version: u32 = match self.headers.get(crate::headers::SCHEMA_VERSION) {
            Some(v) => v
                .parse()
                .map_err(|_| fail(format!("invalid ce_schemaversion `{v}`")))?,
            None => E::current_version(&event_type).unwrap_or(1),
        };
        let step = upcasters
            .upcast_to(
                &event_type,
                version,
                self.payload.clone(),
                E::current_version,
            )
            .map_err(|kind| fail(kind.to_string()))?;
        E::decode(&step.event_type, &step.payload).map_err(|e| fail(e.to_string()))
    }
}

/// A consumed record that does not decode into the expected events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode message {message_id} ({topic}/{partition}@{offset}): {reason}")]
pub struct RecordDecodeError {
    /// The message id.
    pub message_id: Uuid,
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// What went wrong (unknown type, newer schema, bad payload).
    pub reason: String,
}

/// An administrative error of the [`InProcessBroker`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The topic exists with another partition count.
    #[error("topic {topic} already exists with {existing} partitions, not {requested}")]
    PartitionMismatch {
        /// The topic.
        topic: String,
        /// Its partition count.
        existing: u32,
        /// The partition count asked for.
        requested: u32,
    },
    /// A topic needs at least one partition.
    #[error("topic {topic} needs at least one partition")]
    NoPartitions {
        /// The topic.
        topic: String,
    },
}

/// An in-process, Kafka-like broker; see the [module docs](self).
///
/// Clones share the same broker (topics, records, committed offsets), so a clone can be given to
/// the relay and another to the consumers.
///
/// ```
/// use eventfold_outbox::{InProcessBroker, OutboxMessage, Publisher};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = InProcessBroker::new().strict_topics().with_max_message_bytes(1024);
/// broker.create_topic("orders", 2)?;
///
/// let results = broker.publish(&[
///     OutboxMessage::new("orders", "42", "order.placed", b"{}".to_vec()),
///     OutboxMessage::new("unknown", "42", "order.placed", b"{}".to_vec()),
/// ]).await;
/// let delivery = results[0].clone()?;
/// assert_eq!(delivery.partition, OutboxMessage::slot_of("42", 2));
/// assert!(results[1].as_ref().unwrap_err().retriable); // no such topic (yet): tried again later
/// assert_eq!(broker.records("orders").len(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct InProcessBroker {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken (all waiters) whenever records are appended.
    appended: Notify,
}

#[derive(Debug)]
struct State {
    default_partitions: u32,
    strict_topics: bool,
    max_message_bytes: Option<usize>,
    available: bool,
    topics: BTreeMap<String, Vec<Vec<Record>>>,
    /// group -> (topic, partition) -> the next offset to read.
    committed: HashMap<String, HashMap<(String, u32), u64>>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            default_partitions: DEFAULT_PARTITIONS,
            strict_topics: false,
            max_message_bytes: None,
            available: true,
            topics: BTreeMap::new(),
            committed: HashMap::new(),
        }
    }
}

impl State {
    /// The size a broker counts for a message: key, payload and headers.
    fn size_of(message: &OutboxMessage) -> usize {
        message.key.len()
            + message.payload.len()
            + message
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    /// Appends one message, or says why not (without the earlier-key rule, see `publish`).
    fn append(&mut self, message: &OutboxMessage) -> Result<Delivery, PublishError> {
        if !self.available {
            return Err(PublishError::retriable(message, "broker unavailable"));
        }
        if let Some(max) = self.max_message_bytes {
            let size = Self::size_of(message);
            if size > max {
                return Err(PublishError::fatal(
                    message,
                    format!("message too large: {size} bytes > {max}"),
                ));
            }
        }
        let partitions = match self.topics.get_mut(&message.topic) {
            Some(partitions) => partitions,
            None if self.strict_topics => {
                return Err(PublishError::retriable(
                    message,
                    format!(
                        "unknown topic {}: topics are not created automatically",
                        message.topic
                    ),
                ));
            }
            None => self
                .topics
                .entry(message.topic.clone())
                .or_insert_with(|| vec![Vec::new(); self.default_partitions as usize]),
        };
        let count = u32::try_from(partitions.len()).unwrap_or(u32::MAX);
        let partition = OutboxMessage::slot_of(&message.key, count);
        let log = &mut partitions[partition as usize];
        let offset = log.len() as u64;
        log.push(Record {
            topic: message.topic.clone(),
            partition,
            offset,
            key: message.key.clone(),
            message_id: message.id,
            message_type: message.message_type.clone(),
            payload: message.payload.clone(),
            headers: message.headers.clone(),
            timestamp: Utc::now(),
        });
        Ok(Delivery {
            topic: message.topic.clone(),
            partition,
            offset,
        })
    }
}

impl InProcessBroker {
    /// An empty broker: topics are created on first publish with [`DEFAULT_PARTITIONS`] (4)
    /// partitions, no size limit, available.
    pub fn new() -> Self {
        Self::default()
    }

    /// Auto-created topics get `partitions` partitions (at least 1).
    pub fn with_default_partitions(self, partitions: u32) -> Self {
        self.lock().default_partitions = partitions.max(1);
        self
    }

    /// Topics are not created on first publish: publishing to a topic that was not created with
    /// [`create_topic`](Self::create_topic) fails with a retriable error (the topic may be
    /// created later), like a Kafka broker with `auto.create.topics.enable=false` answers with
    /// its retriable `UNKNOWN_TOPIC_OR_PARTITION`.
    pub fn strict_topics(self) -> Self {
        self.lock().strict_topics = true;
        self
    }

    /// Refuses, non-retriably, every message whose key, payload and headers (names and values)
    /// together exceed `bytes` (`"message too large: X bytes > N"`), like Kafka's
    /// `message.max.bytes`.
    pub fn with_max_message_bytes(self, bytes: usize) -> Self {
        self.lock().max_message_bytes = Some(bytes);
        self
    }

    /// Changes the size limit of [`with_max_message_bytes`](Self::with_max_message_bytes) on a
    /// running broker (`None`: no limit), like raising `message.max.bytes` after an incident.
    pub fn set_max_message_bytes(&self, bytes: Option<usize>) {
        self.lock().max_message_bytes = bytes;
    }

    /// Simulates an outage (`false`): every message fails with a retriable error until the
    /// broker is available again (`true`). Records and offsets are kept; consumers still read.
    pub fn set_available(&self, available: bool) {
        self.lock().available = available;
    }

    /// Whether the broker accepts messages (see [`set_available`](Self::set_available)).
    pub fn is_available(&self) -> bool {
        self.lock().available
    }

    /// Creates `topic` with `partitions` partitions. Creating an existing topic with the same
    /// count does nothing; with another count it is [`BrokerError::PartitionMismatch`] (Kafka
    /// never re-partitions a topic behind your back: it would move keys between partitions).
    ///
    /// ```
    /// use eventfold_outbox::{BrokerError, InProcessBroker};
    ///
    /// let broker = InProcessBroker::new();
    /// broker.create_topic("orders", 8)?;
    /// broker.create_topic("orders", 8)?; // idempotent
    /// assert!(matches!(broker.create_topic("orders", 3), Err(BrokerError::PartitionMismatch { .. })));
    /// assert_eq!(broker.topics(), vec![("orders".to_string(), 8)]);
    /// # Ok::<(), BrokerError>(())
    /// ```
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BrokerError> {
        if partitions == 0 {
            return Err(BrokerError::NoPartitions {
                topic: topic.to_owned(),
            });
        }
        let mut state = self.lock();
        match state.topics.get(topic) {
            Some(existing) if existing.len() == partitions as usize => Ok(()),
            Some(existing) => Err(BrokerError::PartitionMismatch {
                topic: topic.to_owned(),
                existing: u32::try_from(existing.len()).unwrap_or(u32::MAX),
                requested: partitions,
            }),
            None => {
                state
                    .topics
                    .insert(topic.to_owned(), vec![Vec::new(); partitions as usize]);
                Ok(())
            }
        }
    }

    /// The topics and their partition counts, by name.
    pub fn topics(&self) -> Vec<(String, u32)> {
        self.lock()
            .topics
            .iter()
            .map(|(name, partitions)| {
                (
                    name.clone(),
                    u32::try_from(partitions.len()).unwrap_or(u32::MAX),
                )
            })
            .collect()
    }

    /// All records of `topic` (empty for an unknown topic): partition 0 first, each partition in
    /// offset order. A test helper.
    pub fn records(&self, topic: &str) -> Vec<Record> {
        self.lock()
            .topics
            .get(topic)
            .map(|partitions| partitions.iter().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// The offset that `group` committed for `topic`'s `partition`: the next one it will read
    /// (`None` when it never committed there).
    pub fn committed_offset(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        self.lock()
            .committed
            .get(group)
            .and_then(|offsets| offsets.get(&(topic.to_owned(), partition)))
            .copied()
    }

    /// A consumer in `group` that reads `topics`, starting at the group's committed offsets (the
    /// beginning of a partition where the group committed nothing).
    ///
    /// Groups are independent: each reads every record. Within a group the partitions are not
    /// split between members: run one consumer per group at a time (a second one would read the
    /// same records). A consumer that is dropped without committing loses nothing: the next
    /// consumer of its group starts again at the committed offsets.
    pub fn consumer(&self, group: &str, topics: &[&str]) -> InProcessConsumer {
        let state = self.lock();
        let committed = state.committed.get(group);
        let mut positions = HashMap::new();
        for topic in topics {
            if let Some(partitions) = state.topics.get(*topic) {
                for partition in 0..partitions.len() {
                    let partition = u32::try_from(partition).unwrap_or(u32::MAX);
                    let key = ((*topic).to_owned(), partition);
                    let offset = committed.and_then(|c| c.get(&key)).copied().unwrap_or(0);
                    positions.insert(key, offset);
                }
            }
        }
        drop(state);
        InProcessConsumer {
            broker: self.clone(),
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            positions,
        }
    }

    /// Locks the state.
    ///
    /// A poisoned mutex (a thread panicked while holding it) is recovered with `into_inner`.
    /// This is safe because no critical section leaves the state half-changed: each one either
    /// only reads, or sets one field, or appends whole records one by one (a panic between two
    /// appends leaves a valid log with the earlier records, like a partial publish), or raises
    /// one committed offset.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Publisher for InProcessBroker {
    /// Appends the messages in order, under one lock (a call is atomic with respect to other
    /// calls and consumers), keeping the [`Publisher`] contract: a key that failed in this call
    /// gets its later messages refused with a retriable error.
    async fn publish(&self, messages: &[OutboxMessage]) -> Vec<Result<Delivery, PublishError>> {
        let mut failed = FailedKeys::default();
        let mut delivered = false;
        let results = {
            let mut state = self.lock();
            messages
                .iter()
                .map(|message| {
                    failed.check(message)?;
                    match state.append(message) {
                        Ok(delivery) => {
                            delivered = true;
                            Ok(delivery)
                        }
                        Err(error) => Err(failed.record(message, error)),
                    }
                })
                .collect()
        };
        if delivered {
            self.shared.appended.notify_waiters();
        }
        results
    }
}

/// A consumer of the [`InProcessBroker`] in a consumer group; see
/// [`InProcessBroker::consumer`].
///
/// It keeps its own position per partition (advanced by [`poll`](Self::poll)) and commits the
/// group's offsets with [`commit`](Self::commit). Records that were polled but not committed are
/// delivered again to the next consumer of the group: at-least-once.
#[derive(Debug)]
pub struct InProcessConsumer {
    broker: InProcessBroker,
    group: String,
    topics: Vec<String>,
    /// (topic, partition) -> the next offset to return.
    positions: HashMap<(String, u32), u64>,
}

impl InProcessConsumer {
    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The topics it reads.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Up to `max` records after the current position, from all partitions of its topics (each
    /// partition in offset order; partitions are interleaved so that none starves). When there
    /// are none, waits up to `wait` for new ones (woken by the broker when records are appended,
    /// not by polling in a loop) and returns an empty vector if none came.
    ///
    /// The position advances past the returned records; the group's committed offsets do not
    /// (see [`commit`](Self::commit)).
    pub async fn poll(&mut self, max: usize, wait: Duration) -> Vec<Record> {
        let deadline = tokio::time::Instant::now() + wait;
        let shared = Arc::clone(&self.broker.shared);
        loop {
            // Register for the wake-up before looking, so that an append between the look and
            // the wait is not missed.
            let appended = shared.appended.notified();
            let mut appended = std::pin::pin!(appended);
            appended.as_mut().enable();
            let records = self.take(max);
            if !records.is_empty() || max == 0 {
                return records;
            }
            if tokio::time::timeout_at(deadline, appended).await.is_err() {
                return Vec::new();
            }
        }
    }

    /// Commits `record` for the group: its partition's committed offset becomes `offset + 1`,
    /// unless the group already committed further (a commit never moves backwards).
    pub fn commit(&mut self, record: &Record) {
        let mut state = self.broker.lock();
        let committed = state
            .committed
            .entry(self.group.clone())
            .or_default()
            .entry((record.topic.clone(), record.partition))
            .or_insert(0);
        *committed = (*committed).max(record.offset + 1);
    }

    /// Takes up to `max` records after the positions, round-robin over the partitions.
    fn take(&mut self, max: usize) -> Vec<Record> {
        let state = self.broker.lock();
        let committed = state.committed.get(&self.group);
        let mut pending: Vec<VecDeque<&Record>> = Vec::new();
        for topic in &self.topics {
            let Some(partitions) = state.topics.get(topic) else {
                continue;
            };
            for (partition, log) in partitions.iter().enumerate() {
                let partition = u32::try_from(partition).unwrap_or(u32::MAX);
                // A partition seen for the first time (its topic was created after this
                // consumer) starts at the group's committed offset.
                let position = *self
                    .positions
                    .entry((topic.clone(), partition))
                    .or_insert_with(|| {
                        committed
                            .and_then(|c| c.get(&(topic.clone(), partition)))
                            .copied()
                            .unwrap_or(0)
                    });
                let start = usize::try_from(position).unwrap_or(usize::MAX);
                if start < log.len() {
                    pending.push(log[start..].iter().collect());
                }
            }
        }
        let mut records = Vec::new();
        while records.len() < max && !pending.is_empty() {
            pending.retain_mut(|queue| {
                if records.len() < max {
                    if let Some(record) = queue.pop_front() {
                        records.push(record.clone());
                    }
                }
                !queue.is_empty()
            });
        }
        drop(state);
        for record in &records {
            self.positions
                .insert((record.topic.clone(), record.partition), record.offset + 1);
        }
        records
    }
}
