//! The Kafka publisher (feature `kafka`): publishes outbox messages to any Kafka-protocol broker
//! with rdkafka (the bundled librdkafka).
//!
//! [`KafkaPublisher`] keeps the [`Publisher`] contract:
//!
//! - the producer is **idempotent** (`enable.idempotence=true`, `acks=all`,
//!   `max.in.flight.requests.per.connection=5`): broker-side retries never duplicate or reorder a
//!   partition's records;
//! - a message is `Ok` only once the broker acknowledged it (the delivery report), and a message
//!   that was not acknowledged within `message.timeout.ms` is a retriable error;
//! - the messages of one key are sent **one after the other**: the next one only after the
//!   previous one was acknowledged, so once one fails the later ones of its key are not sent
//!   (they fail with [`PublishError::blocked_by_earlier`]); different keys are sent
//!   concurrently;
//! - the message key is the Kafka record key, so librdkafka's key partitioner (`murmur2_random`,
//!   the same as the Java client's) sends every message of a key to the same partition;
//! - the CloudEvents headers of the message become Kafka record headers.
//!
//! Errors that will fail the same way every time (the message is too large, the topic name is
//! invalid, the client is not authorized) are non-retriable, so a relay parks the row;
//! everything else (timeouts, an unreachable broker, a leader election) is retriable. So is an
//! unknown topic or partition, as in Kafka's own clients: it is also what a topic answers while
//! the metadata of its creation spreads, and a row must not be parked because its topic is
//! created a moment later. Every failed message is counted in
//! `eventfold_outbox_publish_errors_total{kind}` (`kind`: the error code in snake case, for
//! example `unknown_topic_or_partition`, `message_timed_out`; `client` without a code).
//!
//! The producer is replaced by a new one when librdkafka reports a fatal error, and when it
//! delivered nothing for twice the message timeout while messages timed out: a producer that
//! outlived its brokers' state (a broker restarted without its data) never recovers by itself.
//! Both are counted in `eventfold_outbox_producer_renewed_total{reason}` (`fatal`, `stalled`).
//!
//! Brokers without topic auto-creation (tansu, many production clusters) need the topics first:
//! [`KafkaPublisher::create_topics`] creates them (replication factor 1;
//! [`KafkaPublisher::create_topics_replicated`] takes one), and is a no-op for topics that
//! exist. Until a topic exists, its rows are retried with the relay's backoff and parked after
//! `max_attempts`.
//!
//! ```no_run
//! use eventfold_outbox::kafka::KafkaPublisher;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventfold_outbox::kafka::KafkaError> {
//! let publisher = KafkaPublisher::new("127.0.0.1:9092")?;
//! publisher.create_topics(&[("shop.order", 6)]).await?;
//! // Relay::new(store, publisher) publishes the store's outbox to Kafka.
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

/// The rdkafka crate this module is built on, for [`KafkaPublisher::from_config`] and for
/// consumers of the published topics.
pub use rdkafka;

use crate::OutboxMessage;
use crate::publisher::{Delivery, FailedKeys, PublishError, Publisher};

/// The default `message.timeout.ms`: how long a message may wait for its acknowledgement before
/// it fails with a retriable error.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// An error of the Kafka client itself (not of a single message; those are [`PublishError`]s).
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The producer or admin client could not be created (usually an invalid configuration).
    #[error("creating the Kafka client for {brokers} failed: {source}")]
    Client {
        /// The bootstrap servers of the client.
        brokers: String,
        /// The error of rdkafka.
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The create-topics request failed as a whole (for example the broker is unreachable).
    #[error("creating topics {topics:?} on {brokers} failed: {source}")]
    CreateTopics {
        /// The bootstrap servers of the client.
        brokers: String,
        /// The topics of the request.
        topics: Vec<String>,
        /// The error of rdkafka.
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// A topic that cannot be asked for: no partitions, or a replication factor below 1.
    #[error("cannot create topic {topic} on {brokers}: {reason}")]
    InvalidTopic {
        /// The bootstrap servers of the client.
        brokers: String,
        /// The topic.
        topic: String,
        /// What is wrong with the request.
        reason: String,
    },
    /// The broker refused to create one topic.
    #[error("creating topic {topic} on {brokers} failed: {code}")]
    CreateTopic {
        /// The bootstrap servers of the client.
        brokers: String,
        /// The topic.
        topic: String,
        /// The error code of the broker.
        code: RDKafkaErrorCode,
    },
}

/// A [`Publisher`] to a Kafka-protocol broker. See the [module docs](self).
#[derive(Clone)]
pub struct KafkaPublisher {
    /// Replaced when librdkafka reports a fatal error (for example a fenced idempotent producer
    /// after an outage): a fatal producer never sends again.
    producer: std::sync::Arc<std::sync::RwLock<FutureProducer>>,
    config: ClientConfig,
    brokers: String,
    message_timeout: Duration,
    /// Since when no publish delivered anything and some timed out (see `renew_if_stalled`).
    stalled_since: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("brokers", &self.brokers)
            .field("message_timeout", &self.message_timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// A publisher to the brokers `bootstrap_servers` (`host:port[,host:port...]`) with the
    /// default producer configuration (see [`from_config`](Self::from_config)).
    pub fn new(bootstrap_servers: &str) -> Result<Self, KafkaError> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap_servers);
        Self::from_config(config)
    }

    /// A publisher from an rdkafka configuration (which must name `bootstrap.servers`).
    ///
    /// The settings the [`Publisher`] contract relies on are always set: `enable.idempotence=true`,
    /// `acks=all`, `max.in.flight.requests.per.connection=5`. These are set only when `config`
    /// does not set them: `message.timeout.ms` (30000, see
    /// [`with_message_timeout`](Self::with_message_timeout)), `linger.ms=1`,
    /// `compression.type=none`, `partitioner=murmur2_random`. Anything else (`message.max.bytes`,
    /// security settings, ...) is passed through.
    pub fn from_config(mut config: ClientConfig) -> Result<Self, KafkaError> {
        let brokers = config
            .get("bootstrap.servers")
            .unwrap_or("<no bootstrap.servers>")
            .to_owned();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5");
        for (key, value) in [
            ("linger.ms", "1"),
            ("compression.type", "none"),
            ("partitioner", "murmur2_random"),
        ] {
            if config.get(key).is_none() {
                config.set(key, value);
            }
        }
        let message_timeout = match config.get("message.timeout.ms") {
            Some(ms) => ms
                .parse::<u64>()
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_MESSAGE_TIMEOUT),
            None => DEFAULT_MESSAGE_TIMEOUT,
        };
        Self::build(config, brokers, message_timeout)
    }

    /// The same publisher with `message.timeout.ms` set to `timeout`: how long a message may
    /// wait for its acknowledgement (including librdkafka's own retries) before it fails with a
    /// retriable error. Creates a new producer.
    pub fn with_message_timeout(self, timeout: Duration) -> Result<Self, KafkaError> {
        Self::build(self.config, self.brokers, timeout)
    }

    fn build(
        mut config: ClientConfig,
        brokers: String,
        message_timeout: Duration,
    ) -> Result<Self, KafkaError> {
        config.set(
            "message.timeout.ms",
            message_timeout.as_millis().max(1).to_string(),
        );
        let producer = config
            .create::<FutureProducer>()
            .map_err(|source| KafkaError::Client {
                brokers: brokers.clone(),
                source: Box::new(source),
            })?;
        Ok(Self {
            producer: std::sync::Arc::new(std::sync::RwLock::new(producer)),
            config,
            brokers,
            message_timeout,
            stalled_since: std::sync::Arc::default(),
        })
    }

    /// The bootstrap servers of this publisher.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The `message.timeout.ms` of the producer.
    pub fn message_timeout(&self) -> Duration {
        self.message_timeout
    }

    /// The current rdkafka producer (a handle; it is replaced after a fatal error).
    pub fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the producer when librdkafka reports a fatal error: the failed messages were
    /// returned as retriable, and the relay retries them with the new producer.
    fn renew_if_fatal(&self, used: &FutureProducer, fenced: bool) {
        use rdkafka::producer::Producer as _;
        let fatal = used.client().fatal_error();
        if fatal.is_none() && !fenced {
            return;
        }
        let (code, reason) =
            fatal.unwrap_or((RDKafkaErrorCode::ProducerFenced, "fenced".to_owned()));
        tracing::warn!(brokers = %self.brokers, ?code, %reason, "the Kafka producer failed fatally; creating a new one");
        self.renew("fatal");
    }

    /// Replaces the producer when nothing was delivered for twice the message timeout while
    /// messages kept timing out. A producer that outlived its brokers' state (a broker restarted
    /// without its data, as a development container without a volume is) keeps metadata and an
    /// idempotent producer id the new brokers do not know, and times out every message without
    /// ever reporting a fatal error; a new producer delivers at once. Every message of the old one
    /// was settled (timed out, returned as retriable) before it is dropped, and a key never has
    /// more than one message in flight, so per-key order holds: at worst a message the old
    /// producer had in flight lands again later, a duplicate the consumers' inbox absorbs. During a
    /// plain outage the renewals are harmless: the new producer waits for the brokers like the
    /// old one.
    fn renew_if_stalled(&self, delivered: bool, timed_out: bool) {
        let mut since = self
            .stalled_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if delivered {
            *since = None;
            return;
        }
        if !timed_out {
            return;
        }
        let first = *since.get_or_insert_with(std::time::Instant::now);
        if first.elapsed() < self.message_timeout * 2 {
            return;
        }
        *since = None;
        drop(since);
        tracing::warn!(
            brokers = %self.brokers,
            stalled_for = ?first.elapsed(),
            "no Kafka message delivered and every one timed out; creating a new producer"
        );
        self.renew("stalled");
    }

    /// Creates a new producer in place of the current one (`reason` labels the metric).
    fn renew(&self, reason: &'static str) {
        metrics::counter!("eventfold_outbox_producer_renewed_total", "reason" => reason)
            .increment(1);
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                *self
                    .producer
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
            }
            Err(e) => {
                tracing::warn!(brokers = %self.brokers, error = %e, "creating a new Kafka producer failed")
            }
        }
    }

    /// Creates the topics `(name, partitions)` with replication factor 1; topics that already
    /// exist are left as they are (idempotent). Needed on brokers that do not auto-create
    /// topics, such as tansu. See [`create_topics_replicated`](Self::create_topics_replicated).
    pub async fn create_topics(&self, topics: &[(&str, i32)]) -> Result<(), KafkaError> {
        self.create_topics_replicated(topics, 1).await
    }

    /// Creates the topics `(name, partitions)`, each partition on `replication_factor` brokers;
    /// topics that already exist are left as they are (their partitions and replication are not
    /// changed). Fails with [`KafkaError::InvalidTopic`] for fewer than one partition or
    /// replica (nothing is sent then), [`KafkaError::CreateTopics`] when the request fails as a
    /// whole (an unreachable broker, a timeout of 30 s) and [`KafkaError::CreateTopic`] naming
    /// the first topic the broker refused (for example a replication factor above the number of
    /// brokers, or no authorization).
    pub async fn create_topics_replicated(
        &self,
        topics: &[(&str, i32)],
        replication_factor: i32,
    ) -> Result<(), KafkaError> {
        if topics.is_empty() {
            return Ok(());
        }
        for (topic, partitions) in topics {
            let reason = if *partitions < 1 {
                format!("{partitions} partitions (at least 1)")
            } else if replication_factor < 1 {
                format!("replication factor {replication_factor} (at least 1)")
            } else {
                continue;
            };
            return Err(KafkaError::InvalidTopic {
                brokers: self.brokers.clone(),
                topic: (*topic).to_owned(),
                reason,
            });
        }
        let names: Vec<String> = topics.iter().map(|(t, _)| (*t).to_owned()).collect();
        let admin = self
            .config
            .create::<AdminClient<DefaultClientContext>>()
            .map_err(|source| KafkaError::Client {
                brokers: self.brokers.clone(),
                source: Box::new(source),
            })?;
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, partitions)| {
                NewTopic::new(
                    name,
                    *partitions,
                    TopicReplication::Fixed(replication_factor),
                )
            })
            .collect();
        let options = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(30)))
            .request_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics(&new_topics, &options)
            .await
            .map_err(|source| KafkaError::CreateTopics {
                brokers: self.brokers.clone(),
                topics: names,
                source: Box::new(source),
            })?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaError::CreateTopic {
                        brokers: self.brokers.clone(),
                        topic,
                        code,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Whether an error code of a failed produce may succeed when tried again. An unknown topic or
/// partition may: the topic may be created (or its metadata reach the client) later.
fn retriable(code: Option<RDKafkaErrorCode>) -> bool {
    use RDKafkaErrorCode as C;
    !matches!(
        code,
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::MessageBatchTooLarge
                | C::InvalidMessage
                | C::InvalidRecord
                | C::InvalidTopic
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::PolicyViolation
        )
    )
}

/// The `kind` label of `eventfold_outbox_publish_errors_total` for an error code: the code's
/// name in snake case (`UnknownTopicOrPartition` → `unknown_topic_or_partition`), `client` for
/// an error without a code.
fn error_kind(code: Option<RDKafkaErrorCode>) -> String {
    let Some(code) = code else {
        return "client".to_owned();
    };
    let name = format!("{code:?}");
    let mut kind = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                kind.push('_');
            }
            kind.push(c.to_ascii_lowercase());
        } else {
            kind.push(c);
        }
    }
    kind
}

/// The Kafka record of `message` (its headers become Kafka headers).
fn record_of(message: &OutboxMessage) -> FutureRecord<'_, str, [u8]> {
    let headers = message.headers.iter().fold(
        OwnedHeaders::new_with_capacity(message.headers.len()),
        |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value.as_str()),
            })
        },
    );
    FutureRecord::to(&message.topic)
        .key(message.key.as_str())
        .payload(message.payload.as_slice())
        .headers(headers)
}

/// A key's first message, handed to librdkafka when `publish` starts.
enum Enqueued {
    /// Queued: its delivery report will come.
    Queued(DeliveryFuture),
    /// librdkafka's queue is full: sent (waiting for room) when the key's turn comes.
    Full,
    /// Refused at once (an unknown topic, a message above the client's size limit).
    Refused(RdKafkaError),
}

fn enqueue(producer: &FutureProducer, message: &OutboxMessage) -> Enqueued {
    match producer.send_result(record_of(message)) {
        Ok(delivery) => Enqueued::Queued(delivery),
        Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Enqueued::Full,
        Err((error, _)) => Enqueued::Refused(error),
    }
}

/// Sends the messages of one key, in order, each after the previous one was acknowledged (the
/// first one was enqueued by `publish` already); after a failure the rest of the key is refused
/// without being sent.
async fn publish_key(
    producer: FutureProducer,
    brokers: &str,
    queue_timeout: Duration,
    first: Enqueued,
    messages: Vec<(usize, &OutboxMessage)>,
) -> KeyOutcome {
    let mut failed = FailedKeys::default();
    let mut fenced = false;
    let mut timed_out = false;
    let mut results = Vec::with_capacity(messages.len());
    let mut first = Some(first);
    for (index, message) in messages {
        if let Err(blocked) = failed.check(message) {
            results.push((index, Err(blocked)));
            continue;
        }
        let sent = match first.take() {
            Some(Enqueued::Queued(delivery)) => match delivery.await {
                Ok(sent) => sent.map_err(|(error, _)| error),
                Err(_) => Err(RdKafkaError::Canceled),
            },
            Some(Enqueued::Refused(error)) => Err(error),
            Some(Enqueued::Full) | None => producer
                .send(record_of(message), queue_timeout)
                .await
                .map_err(|(error, _)| error),
        };
        let result = match sent {
            Ok(delivery) => Ok(Delivery {
                topic: message.topic.clone(),
                partition: u32::try_from(delivery.partition).unwrap_or_default(),
                offset: u64::try_from(delivery.offset).unwrap_or_default(),
            }),
            Err(error) => {
                let code = error.rdkafka_error_code();
                metrics::counter!("eventfold_outbox_publish_errors_total", "kind" => error_kind(code))
                    .increment(1);
                fenced |= matches!(
                    code,
                    Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::Fatal)
                );
                timed_out |= code == Some(RDKafkaErrorCode::MessageTimedOut);
                let reason = format!(
                    "{error} (broker {brokers}, {} bytes payload)",
                    message.payload.len()
                );
                let error = PublishError::new(message, reason, retriable(code));
                Err(failed.record(message, error))
            }
        };
        results.push((index, result));
    }
    KeyOutcome {
        results,
        fenced,
        timed_out,
    }
}

/// What [`publish_key`] settled for one key.
struct KeyOutcome {
    /// Each message's result, by its index in the call.
    results: Vec<(usize, Result<Delivery, PublishError>)>,
    /// The producer was fenced or failed fatally.
    fenced: bool,
    /// A message timed out.
    timed_out: bool,
}

impl Publisher for KafkaPublisher {
    /// Hands the first message of every key to librdkafka at once, so that a batch leaves in as
    /// few produce requests as the partitions allow; a key's later messages in the same call
    /// are sent one after the other, each once the previous one is acknowledged.
    async fn publish(&self, messages: &[OutboxMessage]) -> Vec<Result<Delivery, PublishError>> {
        // Group by key, keeping call order within a key.
        let mut by_key: HashMap<&str, Vec<(usize, &OutboxMessage)>> = HashMap::new();
        for (index, message) in messages.iter().enumerate() {
            by_key
                .entry(message.key.as_str())
                .or_default()
                .push((index, message));
        }
        let producer = self.producer();
        let keys: FuturesUnordered<_> = by_key
            .into_values()
            .filter_map(|group| {
                let first = enqueue(&producer, group.first()?.1);
                Some(publish_key(
                    producer.clone(),
                    &self.brokers,
                    self.message_timeout,
                    first,
                    group,
                ))
            })
            .collect();
        let mut results: Vec<Option<Result<Delivery, PublishError>>> = vec![None; messages.len()];
        let (mut fenced, mut timed_out, mut delivered) = (false, false, false);
        let mut keys = std::pin::pin!(keys);
        while let Some(key) = keys.next().await {
            fenced |= key.fenced;
            timed_out |= key.timed_out;
            for (index, result) in key.results {
                delivered |= result.is_ok();
                results[index] = Some(result);
            }
        }
        self.renew_if_fatal(&producer, fenced);
        self.renew_if_stalled(delivered, timed_out);
        results
            .into_iter()
            .zip(messages)
            .map(|(result, message)| {
                result.unwrap_or_else(|| {
                    Err(PublishError::retriable(
                        message,
                        "the Kafka publisher settled no result for the message",
                    ))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_and_topic_errors_are_not_retriable() {
        assert!(!retriable(Some(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(!retriable(Some(RDKafkaErrorCode::InvalidTopic)));
        assert!(!retriable(Some(RDKafkaErrorCode::TopicAuthorizationFailed)));
        // As in Kafka's own clients: the topic may exist (or its metadata arrive) later.
        assert!(retriable(Some(RDKafkaErrorCode::UnknownTopicOrPartition)));
        assert!(retriable(Some(RDKafkaErrorCode::UnknownTopic)));
        assert!(retriable(Some(RDKafkaErrorCode::UnknownPartition)));
        assert!(retriable(Some(RDKafkaErrorCode::MessageTimedOut)));
        assert!(retriable(Some(RDKafkaErrorCode::BrokerTransportFailure)));
        assert!(retriable(Some(RDKafkaErrorCode::NotLeaderForPartition)));
        assert!(retriable(None));
    }

    #[test]
    fn error_kinds_are_snake_case_code_names() {
        assert_eq!(
            error_kind(Some(RDKafkaErrorCode::UnknownTopicOrPartition)),
            "unknown_topic_or_partition"
        );
        assert_eq!(
            error_kind(Some(RDKafkaErrorCode::MessageTimedOut)),
            "message_timed_out"
        );
        assert_eq!(error_kind(None), "client");
    }

    #[tokio::test]
    async fn invalid_topic_requests_are_refused_before_sending() {
        let publisher = KafkaPublisher::new("127.0.0.1:1").unwrap();
        let e = publisher
            .create_topics_replicated(&[("orders", 0)], 1)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, KafkaError::InvalidTopic { topic, .. } if topic == "orders"),
            "{e}"
        );
        let e = publisher
            .create_topics_replicated(&[("orders", 3)], 0)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("replication factor 0"), "{e}");
    }

    #[test]
    fn config_keeps_the_contract_settings() {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("acks", "1")
            .set("linger.ms", "50");
        let publisher = KafkaPublisher::from_config(config).unwrap();
        assert_eq!(publisher.config.get("acks"), Some("all"));
        assert_eq!(publisher.config.get("enable.idempotence"), Some("true"));
        assert_eq!(publisher.config.get("linger.ms"), Some("50"));
        assert_eq!(publisher.config.get("message.timeout.ms"), Some("30000"));
        let publisher = publisher
            .with_message_timeout(Duration::from_secs(5))
            .unwrap();
        assert_eq!(publisher.config.get("message.timeout.ms"), Some("5000"));
        assert_eq!(publisher.brokers(), "127.0.0.1:1");
    }
}
