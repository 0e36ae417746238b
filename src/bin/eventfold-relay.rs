//! `eventfold-relay`: a standalone outbox relay process (features `postgres` and `kafka`).
//!
//! Publishes the outbox of a PostgreSQL event store to a Kafka-protocol broker with
//! [`Relay`] and [`KafkaPublisher`]. Run as many instances as needed: they split the outbox's
//! slots between them through leases, and the slots of an instance that dies are taken over
//! once its leases expire (`EVENTFOLD_LEASE_TTL_MS`). Delivery is at-least-once and in order per
//! key.
//!
//! Configuration (environment; a command-line flag overrides its variable):
//!
//! - `DATABASE_URL` (required): the PostgreSQL database of the event store;
//! - `KAFKA_BOOTSTRAP` (default `127.0.0.1:9092`): the broker's bootstrap servers;
//! - `EVENTFOLD_TOPIC` (optional): the default topic of the store's outbox routing (the relay
//!   publishes the topic recorded on each outbox row; the routing only matters for appends);
//! - `EVENTFOLD_LEASE_TTL_MS` (default `15000`): how long a slot lease lasts;
//! - `EVENTFOLD_SHUTDOWN_TIMEOUT_MS` (default `10000`): how long a graceful shutdown may take;
//! - `--create-topics TOPIC[,TOPIC...]` or `EVENTFOLD_CREATE_TOPICS`: topics to create before
//!   relaying (with `EVENTFOLD_TOPIC`, if set), for brokers that do not create topics
//!   themselves; topics that exist are left as they are;
//! - `--partitions N` or `EVENTFOLD_TOPIC_PARTITIONS` (default 1), `--replication-factor N` or
//!   `EVENTFOLD_REPLICATION_FACTOR` (default 1): of the topics it creates.
//!
//! Prints `relay <owner uuid> started` once it runs. SIGTERM or SIGINT stops it gracefully: it
//! claims no more rows, waits for the batches in flight and records their outcomes, releases its
//! leases (other instances take its slots over at once), prints `relay <owner> stopped` and
//! exits with status 0. A row published but not yet recorded stays in the outbox and is
//! published again (at-least-once); nothing stays claimed. When the shutdown takes longer than
//! `EVENTFOLD_SHUTDOWN_TIMEOUT_MS`, or a second signal comes, it exits at once with status 1; its
//! leases then expire after their TTL.
//!
//! Exits with status 1 and a message on stderr when the configuration is invalid, the database
//! or broker client cannot be set up, the topics cannot be created, or the relay fails.

use std::process::ExitCode;
use std::time::Duration;

use eventfold::eventstore::OutboxRouting;
use eventfold::eventstore::postgres::PgStore;
use eventfold::outbox::{KafkaPublisher, Relay, RelayConfig};
use eventfold::shutdown::{ShutdownError, Stop, run_until_signal};

const USAGE: &str = "usage: eventfold-relay [--create-topics TOPIC[,TOPIC...]] [--partitions N] \
    [--replication-factor N]\n(configuration through DATABASE_URL, KAFKA_BOOTSTRAP, \
    EVENTFOLD_TOPIC, EVENTFOLD_LEASE_TTL_MS, EVENTFOLD_SHUTDOWN_TIMEOUT_MS, \
    EVENTFOLD_CREATE_TOPICS, EVENTFOLD_TOPIC_PARTITIONS, EVENTFOLD_REPLICATION_FACTOR)";

/// The relay's configuration, read from the environment and the command line.
struct Settings {
    database_url: String,
    bootstrap: String,
    topic: Option<String>,
    lease_ttl: Duration,
    shutdown_timeout: Duration,
    /// Topics to create before relaying.
    create_topics: Vec<String>,
    partitions: i32,
    replication_factor: i32,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.trim().is_empty())
}

/// A whole number of `what` from `value` (named `name`), at least `min`.
fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    name: &str,
    value: &str,
    what: &str,
    min: T,
) -> Result<T, String> {
    let n: T = value
        .trim()
        .parse()
        .map_err(|_| format!("{name} must be a number of {what}, got {value:?}"))?;
    if n < min {
        return Err(format!("{name} must be at least {min}, got {n}"));
    }
    Ok(n)
}

fn topics(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

fn settings(args: &[String]) -> Result<Settings, String> {
    let database_url = env("DATABASE_URL").ok_or_else(|| {
        "DATABASE_URL is not set (the PostgreSQL event store to relay)".to_owned()
    })?;
    let bootstrap = env("KAFKA_BOOTSTRAP").unwrap_or_else(|| "127.0.0.1:9092".to_owned());
    let topic = env("EVENTFOLD_TOPIC");
    let lease_ttl = match env("EVENTFOLD_LEASE_TTL_MS") {
        Some(ms) => {
            Duration::from_millis(number("EVENTFOLD_LEASE_TTL_MS", &ms, "milliseconds", 30)?)
        }
        None => Duration::from_millis(15_000),
    };
    let shutdown_timeout = match env("EVENTFOLD_SHUTDOWN_TIMEOUT_MS") {
        Some(ms) => Duration::from_millis(number(
            "EVENTFOLD_SHUTDOWN_TIMEOUT_MS",
            &ms,
            "milliseconds",
            1,
        )?),
        None => Duration::from_millis(10_000),
    };
    let mut create = env("EVENTFOLD_CREATE_TOPICS");
    let mut partitions = env("EVENTFOLD_TOPIC_PARTITIONS")
        .map(|n| number("EVENTFOLD_TOPIC_PARTITIONS", &n, "partitions", 1))
        .transpose()?
        .unwrap_or(1);
    let mut replication_factor = env("EVENTFOLD_REPLICATION_FACTOR")
        .map(|n| number("EVENTFOLD_REPLICATION_FACTOR", &n, "replicas", 1))
        .transpose()?
        .unwrap_or(1);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_owned())),
            None => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag {
            "--create-topics" => create = Some(value()?),
            "--partitions" => partitions = number(flag, &value()?, "partitions", 1)?,
            "--replication-factor" => {
                replication_factor = number(flag, &value()?, "replicas", 1)?;
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let mut create_topics = create.as_deref().map(topics).unwrap_or_default();
    if create.is_some() {
        if let Some(topic) = &topic {
            if !create_topics.contains(topic) {
                create_topics.push(topic.clone());
            }
        }
        if create_topics.is_empty() {
            return Err(format!(
                "--create-topics names no topic (and EVENTFOLD_TOPIC is not set)\n{USAGE}"
            ));
        }
    }
    Ok(Settings {
        database_url,
        bootstrap,
        topic,
        lease_ttl,
        shutdown_timeout,
        create_topics,
        partitions,
        replication_factor,
    })
}

async fn run(settings: Settings) -> Result<(), String> {
    let bound = settings.shutdown_timeout;
    // The signal handlers are installed before anything else, so that a signal is never the
    // default action (killing the process mid-batch); a signal during the setup stops the relay
    // as soon as it runs.
    let stopped = run_until_signal(bound, |stop| relay(settings, stop))
        .await
        .map_err(|e| match e {
            ShutdownError::GraceElapsed { .. } => format!(
                "{e}: did not stop within EVENTFOLD_SHUTDOWN_TIMEOUT_MS; exiting (rows in flight \
                 stay in the outbox and are published again; its leases expire after \
                 EVENTFOLD_LEASE_TTL_MS)"
            ),
            ShutdownError::SecondSignal { .. } => format!(
                "{e} (rows in flight stay in the outbox; its leases expire after \
                 EVENTFOLD_LEASE_TTL_MS)"
            ),
            e => e.to_string(),
        })?;
    stopped.output
}

/// Sets the relay up and runs it until `stop` completes.
async fn relay(settings: Settings, stop: Stop) -> Result<(), String> {
    let mut routing = OutboxRouting::new();
    if let Some(topic) = &settings.topic {
        routing = routing.default_topic(topic.clone());
    }
    let store = PgStore::connect(&settings.database_url)
        .await
        .map_err(|e| format!("connecting to the event store (DATABASE_URL): {e}"))?
        .with_outbox(routing);
    let publisher = KafkaPublisher::new(&settings.bootstrap)
        .map_err(|e| format!("creating the Kafka publisher (KAFKA_BOOTSTRAP): {e}"))?;
    if !settings.create_topics.is_empty() {
        let specs: Vec<(&str, i32)> = settings
            .create_topics
            .iter()
            .map(|t| (t.as_str(), settings.partitions))
            .collect();
        publisher
            .create_topics_replicated(&specs, settings.replication_factor)
            .await
            .map_err(|e| {
                format!(
                    "cannot create the topics {:?} ({} partition(s), replication factor {}): {e}; \
                     create them with the broker's tools, or start without --create-topics",
                    settings.create_topics, settings.partitions, settings.replication_factor
                )
            })?;
        println!(
            "topics {} ready ({} partition(s), replication factor {}; existing topics left as they are)",
            settings.create_topics.join(", "),
            settings.partitions,
            settings.replication_factor
        );
    }
    let relay = Relay::new(store, publisher).with_config(RelayConfig {
        lease_ttl: settings.lease_ttl,
        idle_wait: Duration::from_millis(50),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_secs(2),
        ..RelayConfig::default()
    });
    let owner = relay.owner();
    let bound = settings.shutdown_timeout;
    println!("relay {owner} started");
    let announce = stop.clone();
    relay
        .run(async move {
            announce.await;
            let received = stop.received().map_or("a stop", |s| s.name());
            println!(
                "relay {owner}: {received} received; stopping (claiming no more rows, settling \
                 those in flight, releasing leases; at most {} ms)",
                bound.as_millis()
            );
        })
        .await
        .map_err(|e| format!("relay {owner} failed: {e}"))?;
    println!("relay {owner} stopped");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let settings = match settings(&args) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("eventfold-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("eventfold-relay: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(settings));
    // Tasks still running after a timed-out shutdown must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eventfold-relay: {e}");
            ExitCode::FAILURE
        }
    }
}
