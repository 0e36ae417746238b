//! `eventfold-relay`: a standalone outbox relay process (features `postgres` and `kafka`).
//!
//! Publishes the outbox of a PostgreSQL event store to a Kafka-protocol broker with
//! [`Relay`] and [`KafkaPublisher`]. Run as many instances as needed: they split the outbox's
//! slots between them through leases, and the slots of an instance that dies are taken over
//! once its leases expire (`EVENTFOLD_LEASE_TTL_MS`). Delivery is at-least-once and in order per
//! key.
//!
//! Configuration (environment):
//!
//! - `DATABASE_URL` (required): the PostgreSQL database of the event store;
//! - `KAFKA_BOOTSTRAP` (default `127.0.0.1:9092`): the broker's bootstrap servers;
//! - `EVENTFOLD_TOPIC` (optional): the default topic of the store's outbox routing (the relay
//!   publishes the topic recorded on each outbox row; the routing only matters for appends);
//! - `EVENTFOLD_LEASE_TTL_MS` (default `15000`): how long a slot lease lasts.
//!
//! Prints `relay <owner uuid> started` once it runs, then runs until it is killed (the
//! workspace's tokio has no `signal` feature, so there is no graceful shutdown; leases of a
//! killed instance expire after the TTL). Exits with status 1 and a message on stderr when the
//! configuration is invalid, the database or broker client cannot be set up, or the relay fails.

use std::process::ExitCode;
use std::time::Duration;

use eventfold::eventstore::OutboxRouting;
use eventfold::eventstore::postgres::PgStore;
use eventfold::outbox::{KafkaPublisher, Relay, RelayConfig};

/// The relay's configuration, read from the environment.
struct Settings {
    database_url: String,
    bootstrap: String,
    topic: Option<String>,
    lease_ttl: Duration,
}

fn settings() -> Result<Settings, String> {
    let database_url = std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL is not set (the PostgreSQL event store to relay)".to_owned())?;
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:9092".to_owned());
    let topic = std::env::var("EVENTFOLD_TOPIC")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let lease_ttl = match std::env::var("EVENTFOLD_LEASE_TTL_MS") {
        Ok(ms) => {
            let ms: u64 = ms.trim().parse().map_err(|_| {
                format!("EVENTFOLD_LEASE_TTL_MS must be a number of milliseconds, got {ms:?}")
            })?;
            if ms < 30 {
                return Err(format!(
                    "EVENTFOLD_LEASE_TTL_MS must be at least 30, got {ms}"
                ));
            }
            Duration::from_millis(ms)
        }
        Err(_) => Duration::from_millis(15_000),
    };
    Ok(Settings {
        database_url,
        bootstrap,
        topic,
        lease_ttl,
    })
}

async fn run(settings: Settings) -> Result<(), String> {
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
    let relay = Relay::new(store, publisher).with_config(RelayConfig {
        lease_ttl: settings.lease_ttl,
        idle_wait: Duration::from_millis(50),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_secs(2),
        ..RelayConfig::default()
    });
    let owner = relay.owner();
    println!("relay {owner} started");
    relay
        .run(std::future::pending())
        .await
        .map_err(|e| format!("relay {owner} failed: {e}"))
}

fn main() -> ExitCode {
    let settings = match settings() {
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
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eventfold-relay: {e}");
            ExitCode::FAILURE
        }
    }
}
