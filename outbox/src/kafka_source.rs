//! The Kafka message source (feature `kafka`): a [`MessageSource`] over an rdkafka consumer in a
//! consumer group, for a [`Consumer`](crate::Consumer) reading what a relay published.
//!
//! [`KafkaSource`] subscribes to its topics in the consumer group `group.id`, with
//! `enable.auto.commit=false` (an offset is committed only by [`MessageSource::commit`], that is
//! after the handler's transaction committed) and `auto.offset.reset=earliest` (a new group
//! starts at the beginning of every partition). A second source in the same group resumes after
//! the last committed offset of each partition.
//!
//! Every Kafka record becomes a [`Record`]: topic, partition, offset, key (UTF-8, lossy),
//! payload, headers (UTF-8, lossy), the message id from the `ce_id` header, the message type
//! from `ce_type` (empty when absent) and the record's timestamp (now when the broker gave none).
//! A record without a valid `ce_id` cannot be deduplicated by the inbox, so [`poll`] reports it
//! as an error ([`KafkaSourceError::InvalidRecord`], naming topic, partition, offset and the
//! [`RecordProblem`]) instead of delivering it; so is a record with a NUL character in its key or
//! headers, or headers rdkafka cannot read ([`record_from_message`] is the conversion, a pure
//! function). The records polled before it are returned first and the error comes
//! with the next `poll`; the bad record itself is never committed by the source, but committing
//! a later record of its partition moves the group past it.
//!
//! Tested against tansu 0.6 (the broker of `scripts/test.sh`): group subscription, synchronous
//! offset commits and a second consumer of the group resuming after the committed offsets work.
//!
//! ```no_run
//! use std::time::Duration;
//! use eventfold_outbox::kafka_source::KafkaSource;
//! use eventfold_outbox::MessageSource;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let mut source = KafkaSource::new("127.0.0.1:9092", "billing", &["shop.order"])?;
//! for record in source.poll(100, Duration::from_secs(1)).await? {
//!     // ... handle it, then acknowledge it:
//!     source.commit(&record).await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`poll`]: MessageSource::poll

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventfold_core::BoxError;
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::consumer::MessageSource;
use crate::in_process::Record;
use crate::{Headers, headers};

/// An error of a [`KafkaSource`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaSourceError {
    /// The consumer could not be created (usually an invalid configuration).
    #[error("creating the Kafka consumer of group {group} for {brokers} failed: {source}")]
    Client {
        /// The bootstrap servers of the client.
        brokers: String,
        /// The consumer group.
        group: String,
        /// The error of rdkafka.
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The configuration names no `group.id`.
    #[error("the Kafka consumer configuration for {brokers} names no group.id")]
    NoGroup {
        /// The bootstrap servers of the client.
        brokers: String,
    },
    /// Subscribing to the topics failed.
    #[error("subscribing group {group} to {topics:?} failed: {source}")]
    Subscribe {
        /// The consumer group.
        group: String,
        /// The topics.
        topics: Vec<String>,
        /// The error of rdkafka.
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// Receiving records failed.
    #[error("receiving records of group {group} failed: {source}")]
    Receive {
        /// The consumer group.
        group: String,
        /// The error of rdkafka.
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// A record that cannot become a [`Record`]: no valid `ce_id` header (the inbox could not
    /// deduplicate it), a negative partition or offset, headers that rdkafka cannot read, or a
    /// NUL character in a text field (PostgreSQL cannot store it). See [`record_from_message`].
    #[error("the record at {topic}/{partition}@{offset} is invalid: {problem}")]
    InvalidRecord {
        /// The topic.
        topic: String,
        /// The partition, as the broker gave it.
        partition: i32,
        /// The offset, as the broker gave it.
        offset: i64,
        /// What is wrong with it.
        problem: RecordProblem,
    },
    /// Committing an offset failed.
    #[error("committing offset {offset} of {topic}/{partition} for group {group} failed: {source}")]
    Commit {
        /// The consumer group.
        group: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset committed (the record's offset + 1).
        offset: u64,
        /// The error of rdkafka.
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// Committing the offsets of several partitions in one request failed (nothing of it may
    /// have been committed: the records are delivered again, and the inbox skips them).
    #[error("committing offsets {offsets} for group {group} failed: {source}")]
    CommitOffsets {
        /// The consumer group.
        group: String,
        /// Each `topic/partition@offset` committed (each record's offset + 1).
        offsets: String,
        /// The error of rdkafka.
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// An offset or partition does not fit Kafka's signed integers.
    #[error("{what} {value} is out of Kafka's range")]
    OutOfRange {
        /// What it is (`"partition"` or `"offset"`).
        what: &'static str,
        /// The value.
        value: i128,
    },
    /// The blocking commit task did not finish (it panicked or the runtime shut down).
    #[error("the commit task of group {group} failed: {reason}")]
    CommitTask {
        /// The consumer group.
        group: String,
        /// Why.
        reason: String,
    },
}

/// A [`MessageSource`] reading Kafka topics in a consumer group. See the [module docs](self).
pub struct KafkaSource {
    consumer: Arc<StreamConsumer>,
    group: String,
    topics: Vec<String>,
    /// An error found after records were already collected: reported by the next `poll`.
    pending_error: Option<KafkaSourceError>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("group", &self.group)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// A source reading `topics` from the brokers `bootstrap_servers` (`host:port[,...]`) in the
    /// consumer group `group_id`, with the default configuration (see
    /// [`from_config`](Self::from_config)).
    pub fn new(
        bootstrap_servers: &str,
        group_id: &str,
        topics: &[&str],
    ) -> Result<Self, KafkaSourceError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap_servers)
            .set("group.id", group_id);
        Self::from_config(config, topics)
    }

    /// A source from an rdkafka configuration, which must name `bootstrap.servers` and
    /// `group.id`, subscribed to `topics`.
    ///
    /// Always set: `enable.auto.commit=false` (offsets are committed by
    /// [`MessageSource::commit`] only) and `enable.auto.offset.store=false`. Set only when
    /// `config` does not set it: `auto.offset.reset=earliest`. Anything else is passed through.
    pub fn from_config(
        mut config: ClientConfig,
        topics: &[&str],
    ) -> Result<Self, KafkaSourceError> {
        let brokers = config
            .get("bootstrap.servers")
            .unwrap_or("<no bootstrap.servers>")
            .to_owned();
        let group = config
            .get("group.id")
            .ok_or_else(|| KafkaSourceError::NoGroup {
                brokers: brokers.clone(),
            })?
            .to_owned();
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        if config.get("auto.offset.reset").is_none() {
            config.set("auto.offset.reset", "earliest");
        }
        let consumer: StreamConsumer =
            config.create().map_err(|source| KafkaSourceError::Client {
                brokers,
                group: group.clone(),
                source: Box::new(source),
            })?;
        consumer
            .subscribe(topics)
            .map_err(|source| KafkaSourceError::Subscribe {
                group: group.clone(),
                topics: topics.iter().map(|t| (*t).to_owned()).collect(),
                source: Box::new(source),
            })?;
        Ok(Self {
            consumer: Arc::new(consumer),
            group,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            pending_error: None,
        })
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The subscribed topics.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// The underlying rdkafka consumer.
    pub fn consumer(&self) -> &StreamConsumer {
        &self.consumer
    }

    fn receive_error(&self, source: rdkafka::error::KafkaError) -> KafkaSourceError {
        KafkaSourceError::Receive {
            group: self.group.clone(),
            source: Box::new(source),
        }
    }

    /// Up to `max` records, waiting up to `wait` for the first one and then taking only what is
    /// already there. See [`MessageSource::poll`].
    pub async fn poll_records(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, KafkaSourceError> {
        if let Some(error) = self.pending_error.take() {
            return Err(error);
        }
        let mut records = Vec::new();
        if max == 0 {
            return Ok(records);
        }
        let first = match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_) => return Ok(records),
            Ok(received) => received.map_err(|e| self.receive_error(e))?,
        };
        records.push(record_from_message(&first)?);
        drop(first);
        while records.len() < max {
            // A zero timeout still polls `recv` once: it takes what is queued, never waits.
            let next = match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                Err(_) => break,
                Ok(received) => received.map_err(|e| self.receive_error(e)),
            };
            match next.and_then(|message| record_from_message(&message)) {
                Ok(record) => records.push(record),
                Err(error) => {
                    self.pending_error = Some(error);
                    break;
                }
            }
        }
        Ok(records)
    }

    /// Commits `record.offset + 1` for its topic and partition in the group, synchronously.
    pub async fn commit_record(&mut self, record: &Record) -> Result<(), KafkaSourceError> {
        self.commit_records(&[record]).await
    }

    /// Commits `offset + 1` of each record for its topic and partition in the group, all in one
    /// synchronous request to the group's coordinator (one round trip for a batch that spans
    /// several partitions). Each record should be the last of its partition among them; of two
    /// records of one partition, the later one in `records` wins.
    pub async fn commit_records(&mut self, records: &[&Record]) -> Result<(), KafkaSourceError> {
        let Some(first) = records.first() else {
            return Ok(());
        };
        let commit_error = |source| {
            if let [record] = records {
                KafkaSourceError::Commit {
                    group: self.group.clone(),
                    topic: record.topic.clone(),
                    partition: record.partition,
                    offset: record.offset.saturating_add(1),
                    source: Box::new(source),
                }
            } else {
                KafkaSourceError::CommitOffsets {
                    group: self.group.clone(),
                    offsets: records
                        .iter()
                        .map(|r| {
                            format!("{}/{}@{}", r.topic, r.partition, r.offset.saturating_add(1))
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    source: Box::new(source),
                }
            }
        };
        let mut offsets = TopicPartitionList::new();
        for record in records {
            let partition =
                i32::try_from(record.partition).map_err(|_| KafkaSourceError::OutOfRange {
                    what: "partition",
                    value: i128::from(record.partition),
                })?;
            let next = record
                .offset
                .checked_add(1)
                .and_then(|next| i64::try_from(next).ok())
                .ok_or(KafkaSourceError::OutOfRange {
                    what: "offset",
                    value: i128::from(record.offset),
                })?;
            match offsets.find_partition(&record.topic, partition) {
                Some(mut element) => element
                    .set_offset(Offset::Offset(next))
                    .map_err(&commit_error)?,
                None => offsets
                    .add_partition_offset(&record.topic, partition, Offset::Offset(next))
                    .map_err(&commit_error)?,
            }
        }
        let consumer = Arc::clone(&self.consumer);
        // A synchronous commit blocks until the broker answered: off the async worker threads.
        tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync))
            .await
            .map_err(|e| KafkaSourceError::CommitTask {
                group: self.group.clone(),
                reason: format!("{e} (committing from {}/{})", first.topic, first.partition),
            })?
            .map_err(commit_error)
    }
}

/// What is wrong with a Kafka record that [`record_from_message`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordProblem {
    /// No `ce_id` header holding a UUID (of a repeated header, the last one counts).
    #[error("no valid {} header ({found:?})", headers::ID)]
    MissingMessageId {
        /// The header's value (UTF-8, lossy), if there was one.
        found: Option<String>,
    },
    /// The partition is negative.
    #[error("negative partition")]
    NegativePartition,
    /// The offset is negative.
    #[error("negative offset")]
    NegativeOffset,
    /// rdkafka could not read the record's topic or headers (it panics on a header name that is
    /// not UTF-8); the panic is caught and reported here.
    #[error("unreadable {what}: {reason}")]
    Unreadable {
        /// `"topic"` or `"headers"`.
        what: &'static str,
        /// rdkafka's panic message.
        reason: String,
    },
    /// A text field holds a NUL character, which PostgreSQL cannot store in the inbox.
    #[error("the {field} holds a NUL character")]
    Nul {
        /// `"key"`, `"header name"` or `"header <name>"`.
        field: String,
    },
}

/// The message of a caught panic.
fn panic_reason(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "rdkafka panicked".to_owned())
}

/// Runs `f`, turning a panic inside rdkafka into [`RecordProblem::Unreadable`].
fn guarded<T>(what: &'static str, f: impl FnOnce() -> T) -> Result<T, RecordProblem> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        RecordProblem::Unreadable {
            what,
            reason: panic_reason(panic.as_ref()),
        }
    })
}

/// The headers of `message`, each value decoded as UTF-8 (invalid bytes replaced), a header
/// without a value as the empty string; of a repeated name the last wins. A header name that is
/// not UTF-8 makes rdkafka panic: that is caught and returned as
/// [`RecordProblem::Unreadable`].
fn read_headers<M: Message>(message: &M) -> Result<Headers, RecordProblem> {
    guarded("headers", || {
        let mut record_headers = Headers::new();
        if let Some(hs) = message.headers() {
            for header in hs.iter() {
                let value = header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                record_headers.insert(header.key.to_owned(), value);
            }
        }
        record_headers
    })
}

/// The record headers of a Kafka message as text: each value decoded as UTF-8 (invalid bytes
/// replaced), a header without a value as the empty string; of a repeated key the last wins.
/// Headers that rdkafka cannot read (a name that is not UTF-8) are left out; use
/// [`record_from_message`] to have them reported.
pub fn message_headers<M: Message>(message: &M) -> Headers {
    read_headers(message).unwrap_or_default()
}

/// Converts a Kafka message into a [`Record`], without touching a consumer: topic, partition,
/// offset, key (UTF-8, lossy), payload, headers (see [`message_headers`]), the message id from
/// `ce_id`, the type from `ce_type` (empty when absent) and the timestamp (now when the broker
/// gave none or one out of range).
///
/// A record that cannot be handled safely is a [`KafkaSourceError::InvalidRecord`] naming topic,
/// partition and offset, with the [`RecordProblem`]: no `ce_id` holding a UUID, a negative
/// partition or offset, headers rdkafka cannot read, or a NUL character in the key or a header.
/// It never panics.
///
/// ```
/// use eventfold_outbox::kafka_source::{record_from_message, RecordProblem};
/// use eventfold_outbox::KafkaSourceError;
/// use eventfold_outbox::kafka::rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
/// use eventfold_outbox::kafka::rdkafka::Timestamp;
///
/// let id = uuid::Uuid::now_v7().to_string();
/// let headers = OwnedHeaders::new()
///     .insert(Header { key: "ce_id", value: Some(id.as_str()) })
///     .insert(Header { key: "ce_type", value: Some("order.placed") });
/// let message = OwnedMessage::new(
///     Some(b"{}".to_vec()), Some(b"42".to_vec()), "orders".into(),
///     Timestamp::NotAvailable, 0, 7, Some(headers),
/// );
/// let record = record_from_message(&message).unwrap();
/// assert_eq!((record.key.as_str(), record.message_type.as_str(), record.offset), ("42", "order.placed", 7));
///
/// let no_id = OwnedMessage::new(None, None, "orders".into(), Timestamp::NotAvailable, 0, 8, None);
/// assert!(matches!(
///     record_from_message(&no_id),
///     Err(KafkaSourceError::InvalidRecord { offset: 8, problem: RecordProblem::MissingMessageId { found: None }, .. })
/// ));
/// ```
pub fn record_from_message<M: Message>(message: &M) -> Result<Record, KafkaSourceError> {
    let (partition, offset) = (message.partition(), message.offset());
    let topic = guarded("topic", || message.topic().to_owned());
    let invalid = |topic: String, problem| KafkaSourceError::InvalidRecord {
        topic,
        partition,
        offset,
        problem,
    };
    let topic = match topic {
        Ok(topic) => topic,
        Err(problem) => return Err(invalid("<unreadable>".to_owned(), problem)),
    };
    let record_headers = match read_headers(message) {
        Ok(headers) => headers,
        Err(problem) => return Err(invalid(topic, problem)),
    };
    let found = record_headers.get(headers::ID);
    let Some(message_id) = found.and_then(|id| id.parse::<Uuid>().ok()) else {
        let found = found.cloned();
        return Err(invalid(topic, RecordProblem::MissingMessageId { found }));
    };
    let Ok(record_partition) = u32::try_from(partition) else {
        return Err(invalid(topic, RecordProblem::NegativePartition));
    };
    let Ok(record_offset) = u64::try_from(offset) else {
        return Err(invalid(topic, RecordProblem::NegativeOffset));
    };
    let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
    let nul = if key.contains('\0') {
        Some("key".to_owned())
    } else {
        record_headers.iter().find_map(|(name, value)| {
            if name.contains('\0') {
                Some("header name".to_owned())
            } else if value.contains('\0') {
                Some(format!("header {name}"))
            } else {
                None
            }
        })
    };
    if let Some(field) = nul {
        return Err(invalid(topic, RecordProblem::Nul { field }));
    }
    let timestamp = message
        .timestamp()
        .to_millis()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .unwrap_or_else(Utc::now);
    Ok(Record {
        topic,
        partition: record_partition,
        offset: record_offset,
        key,
        message_id,
        message_type: record_headers
            .get(headers::TYPE)
            .cloned()
            .unwrap_or_default(),
        payload: message.payload().unwrap_or_default().to_vec(),
        headers: record_headers,
        timestamp,
    })
}

impl MessageSource for KafkaSource {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BoxError> {
        Ok(self.poll_records(max, wait).await?)
    }

    async fn commit(&mut self, record: &Record) -> Result<(), BoxError> {
        Ok(self.commit_record(record).await?)
    }

    async fn commit_all(&mut self, records: &[&Record]) -> Result<(), BoxError> {
        Ok(self.commit_records(records).await?)
    }
}
