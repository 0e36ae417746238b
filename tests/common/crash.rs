//! What the crash tests share: this test binary run again in child mode, a child process that is
//! killed with SIGKILL (also when the test fails first), the kills' randomness, reproducible from
//! a printed seed, and (feature `kafka`) a consumer group member that a kill drops within seconds.

use std::process::{Child, Command};
use std::time::Instant;

/// A command that runs `test` of this test binary alone, printing its output: the test's child
/// mode, which the caller picks with the environment it adds.
pub fn child_command(test: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command.args([test, "--exact", "--nocapture", "--test-threads", "1"]);
    command
}

/// A child process named `name`, running `role` since `started_at`; killed (SIGKILL) when dropped.
pub struct ChildProcess<R> {
    child: Child,
    pub name: String,
    pub role: R,
    pub started_at: Instant,
}

impl<R> ChildProcess<R> {
    /// A child that has just started.
    pub fn new(child: Child, name: String, role: R) -> Self {
        Self {
            child,
            name,
            role,
            started_at: Instant::now(),
        }
    }

    /// Panics when the child ended by itself (a panic in child mode).
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("the child's status") {
            panic!(
                "{} exited by itself with {status} (see its stderr above)",
                self.name
            );
        }
    }

    /// SIGKILL (`Child::kill` on Unix) and reap.
    pub fn kill(mut self) {
        self.assert_alive();
        self.child.kill().expect("SIGKILL a child");
        self.child.wait().expect("reap a child");
    }
}

impl<R> Drop for ChildProcess<R> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// xorshift64*: the kills' randomness, reproducible from the printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// Seeded from the variable `seed_env` when it is set, else at random; with its seed, to be
    /// printed.
    pub fn from_env(seed_env: &str) -> (u64, Self) {
        let seed = std::env::var(seed_env)
            .ok()
            .map(|s| {
                s.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|e| panic!("{seed_env} is a number: {e}"))
            })
            .unwrap_or_else(random_seed);
        (seed, Self::new(seed))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A seed taken from the random bits of a UUID v7.
pub fn random_seed() -> u64 {
    let random: [u8; 8] = uuid::Uuid::now_v7().as_bytes()[8..]
        .try_into()
        .expect("8 bytes");
    u64::from_le_bytes(random)
}

/// A Kafka source of `topic` in `group`, with the session `session` (a member that dies without
/// leaving keeps its partitions this long) and, given one, `heartbeat` (well below the session),
/// and short fetch waits: tansu answers a fetch with nothing to return only at its maximum wait,
/// and new records wait for that answer (librdkafka's default of 500 ms would add half a second
/// to every hop).
#[cfg(feature = "kafka")]
pub fn kafka_source(
    brokers: &str,
    group: &str,
    topic: &str,
    session: std::time::Duration,
    heartbeat: Option<std::time::Duration>,
) -> eventfold::outbox::KafkaSource {
    let mut config = eventfold::outbox::kafka::rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("session.timeout.ms", session.as_millis().to_string())
        .set("fetch.wait.max.ms", "50");
    if let Some(heartbeat) = heartbeat {
        config.set("heartbeat.interval.ms", heartbeat.as_millis().to_string());
    }
    eventfold::outbox::KafkaSource::from_config(config, &[topic])
        .unwrap_or_else(|e| panic!("a Kafka source of {topic} in group {group}: {e}"))
}

/// A Kafka publisher for the tests whose consumers are killed or stopped and resume from a
/// committed offset: one record per record batch. tansu 0.6 (its object-store engine, which
/// `scripts/test.sh` runs in memory) answers a fetch from an offset inside a batch with the
/// batches after it, so a consumer resuming in the middle of a batch (after a kill, a rebalance,
/// or a refetch of librdkafka's) would never get the rest of that batch. Kafka returns the whole
/// batch and the client skips the records before the offset.
#[cfg(feature = "kafka")]
pub fn publisher_one_record_per_batch(brokers: &str) -> eventfold::outbox::kafka::KafkaPublisher {
    let mut config = eventfold::outbox::kafka::rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("batch.num.messages", "1");
    eventfold::outbox::kafka::KafkaPublisher::from_config(config)
        .unwrap_or_else(|e| panic!("a Kafka publisher on {brokers}: {e}"))
}

/// Per partition `0..partitions` of `topic`: the offset `group` committed (`None` where the
/// broker did not say) and the partition's high watermark (-1 where it did not say). Blocking.
#[cfg(feature = "kafka")]
pub fn partition_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(Option<eventfold::outbox::kafka::rdkafka::Offset>, i64)> {
    use eventfold::outbox::kafka::rdkafka::TopicPartitionList;
    use eventfold::outbox::kafka::rdkafka::consumer::{BaseConsumer, Consumer as _};
    use std::time::Duration;
    let consumer: BaseConsumer = eventfold::outbox::kafka::rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("a consumer for offsets");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .map(|c| c.elements().iter().map(|e| e.offset()).collect::<Vec<_>>())
        .unwrap_or_default();
    (0..partitions)
        .map(|p| {
            let high = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_or(-1, |(_, high)| high);
            (committed.get(p as usize).cloned(), high)
        })
        .collect()
}
