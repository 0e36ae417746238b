//! How messages travel between the services: the in-process broker by default (nothing to
//! install), or Kafka with `--brokers host:port` (feature `kafka`). The relays publish each
//! service's outbox to it; the consumers read their topics from it.

use std::future::Future;

use eventfold::BoxError;
use eventfold::outbox::{InProcessBroker, MessageSource, Publisher};

/// A broker the shop can run on.
pub trait Transport: Send + Sync + 'static {
    /// What a consumer reads from.
    type Source: MessageSource + 'static;
    /// What a relay publishes to.
    type Publisher: Publisher + Clone;

    /// For people: `in-process` or `kafka (host:port)`.
    fn describe(&self) -> String;

    /// A publisher for a service's relay.
    fn publisher(&self) -> Self::Publisher;

    /// A consumer in `group` reading `topics`.
    fn source(&self, group: &str, topics: &[&str]) -> Result<Self::Source, BoxError>;

    /// Creates the topics where the broker does not create them on first use.
    fn create_topics(&self, topics: &[String])
    -> impl Future<Output = Result<(), BoxError>> + Send;
}

impl Transport for InProcessBroker {
    type Source = eventfold::outbox::InProcessConsumer;
    type Publisher = InProcessBroker;

    fn describe(&self) -> String {
        "in-process broker".to_owned()
    }

    fn publisher(&self) -> InProcessBroker {
        self.clone()
    }

    fn source(&self, group: &str, topics: &[&str]) -> Result<Self::Source, BoxError> {
        Ok(self.consumer(group, topics))
    }

    async fn create_topics(&self, _topics: &[String]) -> Result<(), BoxError> {
        Ok(())
    }
}

#[cfg(feature = "kafka")]
pub use kafka::Kafka;

#[cfg(feature = "kafka")]
mod kafka {
    use std::sync::Arc;

    use eventfold::BoxError;
    use eventfold::outbox::KafkaSource;
    use eventfold::outbox::kafka::KafkaPublisher;
    use eventfold::outbox::kafka::rdkafka::ClientConfig;

    use super::Transport;

    /// Partitions of every topic the shop creates.
    const PARTITIONS: i32 = 4;

    /// A Kafka cluster (any Kafka-protocol broker, such as tansu).
    pub struct Kafka {
        brokers: String,
        publisher: Arc<KafkaPublisher>,
    }

    impl Kafka {
        pub fn new(brokers: &str) -> Result<Self, BoxError> {
            Ok(Self {
                brokers: brokers.to_owned(),
                publisher: Arc::new(KafkaPublisher::new(brokers)?),
            })
        }
    }

    impl Transport for Kafka {
        type Source = KafkaSource;
        type Publisher = Arc<KafkaPublisher>;

        fn describe(&self) -> String {
            format!("Kafka at {}", self.brokers)
        }

        fn publisher(&self) -> Arc<KafkaPublisher> {
            Arc::clone(&self.publisher)
        }

        fn source(&self, group: &str, topics: &[&str]) -> Result<KafkaSource, BoxError> {
            let mut config = ClientConfig::new();
            config
                .set("bootstrap.servers", &self.brokers)
                .set("group.id", group)
                // librdkafka waits up to 500 ms for a fetch to fill by default: every hop of a
                // saga would cost that. The shop's messages are few and small.
                .set("fetch.wait.max.ms", "10");
            Ok(KafkaSource::from_config(config, topics)?)
        }

        async fn create_topics(&self, topics: &[String]) -> Result<(), BoxError> {
            let with_partitions: Vec<(&str, i32)> =
                topics.iter().map(|t| (t.as_str(), PARTITIONS)).collect();
            self.publisher.create_topics(&with_partitions).await?;
            Ok(())
        }
    }
}
