//! Graceful shutdown over a real Kafka-protocol broker (tansu, started by `scripts/test.sh`),
//! with real processes: a consumer with its inbox in a consumer group, and an orchestrated saga
//! (the orders service: relay, reply consumer and timer scheduler; the services: the
//! participants' consumers and their relay).
//!
//! As in `tests/shutdown_postgres.rs`, this test binary is re-executed in child mode
//! (`EVENTFOLD_SHUTDOWN_KAFKA_ROLE`), the child runs its pieces through
//! [`eventfold::shutdown::run_until_signal`], gets SIGTERM mid-work and must exit 0 within
//! [`EXIT_BOUND`]; a successor takes over within [`TAKEOVER_BOUND`], below the consumers'
//! session timeout (45 s: a member that did not leave its group holds its partitions that long)
//! and the relays' lease (30 s); the end state is exact. The broker is `KAFKA_BOOTSTRAP`
//! (default 127.0.0.1:9092); an unreachable broker fails the test.
#![cfg(all(feature = "kafka", feature = "postgres"))]
mod common;
mod saga_common;
mod shutdown_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use eventfold::eventstore::postgres::PgStore;
use eventfold::outbox::kafka::rdkafka::ClientConfig;
use eventfold::outbox::kafka::rdkafka::consumer::{BaseConsumer, Consumer as _};
use eventfold::outbox::kafka::rdkafka::{Offset, TopicPartitionList};
use eventfold::outbox::{Consumer, KafkaSource, OutboxMessage, Publisher, Relay, RelayConfig};
use eventfold::saga::runtime::{Orchestrator, ParticipantHandler};
use eventfold::shutdown::run_until_signal;
use saga_common::{Effects, Order, SERVICES, command_topic, definition_on};
use shutdown_common::ChildProcess;
use uuid::Uuid;

const ROLE_ENV: &str = "EVENTFOLD_SHUTDOWN_KAFKA_ROLE";
const DATABASE_ENV: &str = "EVENTFOLD_SHUTDOWN_KAFKA_DATABASE_URL";
const RUN_ENV: &str = "EVENTFOLD_SHUTDOWN_KAFKA_RUN";
const STARTED: &str = "shutdown kafka child started";
const TAKEOVER_BOUND: Duration = Duration::from_secs(20);
const GRACE: Duration = Duration::from_secs(8);
/// librdkafka's default session: a member that dies without leaving keeps its partitions this
/// long, longer than [`TAKEOVER_BOUND`].
const SESSION_TIMEOUT: Duration = Duration::from_secs(45);
/// The relays' slot leases, longer than [`TAKEOVER_BOUND`].
const LEASE: Duration = Duration::from_secs(30);
/// No step times out in these tests.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// A Kafka source in `group` with the default session ([`SESSION_TIMEOUT`]).
fn kafka_source(brokers: &str, group: &str, topic: &str) -> KafkaSource {
    common::crash::kafka_source(brokers, group, topic, SESSION_TIMEOUT, None)
}

fn relay_config() -> RelayConfig {
    RelayConfig {
        lease_ttl: LEASE,
        idle_wait: Duration::from_millis(50),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_secs(1),
        ..RelayConfig::default()
    }
}

/// The names of one run (tansu keeps topics and groups between tests).
struct Run(String);

impl Run {
    fn payments(&self) -> String {
        format!("sd{}.payments", self.0)
    }
    fn prefix(&self) -> String {
        format!("sd{}.", self.0)
    }
    fn replies(&self) -> String {
        format!("{}replies", self.prefix())
    }
    fn group(&self, consumer: &str) -> String {
        format!("{}{consumer}", self.prefix())
    }
    fn orchestrator(&self, store: PgStore) -> Orchestrator<PgStore, Order> {
        Orchestrator::new(store, definition_on(&self.prefix(), STEP_TIMEOUT))
            .with_reply_topic(self.replies())
    }
}

/// Child mode: runs the role until a signal, then exits the process (0 after a graceful stop,
/// 1 when the grace elapsed or a second signal came, 2 when a piece failed). Returns at once
/// outside child mode.
async fn child_mode() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let url = std::env::var(DATABASE_ENV).expect("the child's database");
    let run = Run(std::env::var(RUN_ENV).expect("the run"));
    let brokers = common::kafka_bootstrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .expect("connect");
    let store = PgStore::builder(pool)
        .migrate(false)
        .build()
        .await
        .expect("store");
    type Failed = Result<(), String>;
    let stopped = match role.as_str() {
        "consumer" => {
            let source = kafka_source(&brokers, &run.group("ledger"), &run.payments());
            let consumer = Consumer::new("ledger", store, source, common::Ledger::default());
            println!("{STARTED}: consumer");
            run_until_signal(GRACE, |stop| async move {
                consumer.run(stop).await.map_err(|e| e.to_string())
            })
            .await
        }
        "orders" => {
            let orchestrator = run.orchestrator(store.clone());
            let relay = Relay::new(
                store.clone(),
                common::crash::publisher_one_record_per_batch(&brokers),
            )
            .with_config(relay_config());
            let replies = orchestrator.reply_consumer(kafka_source(
                &brokers,
                &run.group("orders"),
                &run.replies(),
            ));
            let scheduler = orchestrator
                .scheduler()
                .poll_interval(Duration::from_millis(20));
            println!("{STARTED}: orders");
            run_until_signal(GRACE, |stop| async move {
                let (relayed, replied, ()) = tokio::join!(
                    relay.run(stop.clone()),
                    replies.run(stop.clone()),
                    scheduler.run(stop),
                );
                relayed.map_err(|e| e.to_string())?;
                replied.map_err(|e| e.to_string())?;
                Failed::Ok(())
            })
            .await
        }
        "services" => {
            let relay = Relay::new(
                store.clone(),
                common::crash::publisher_one_record_per_batch(&brokers),
            )
            .with_config(relay_config());
            let consumers: Vec<_> = SERVICES
                .iter()
                .map(|(service, _)| {
                    ParticipantHandler::new(
                        *service,
                        store.clone(),
                        Effects {
                            compensation_failures: 0,
                        },
                    )
                    .consumer(kafka_source(
                        &brokers,
                        &run.group(service),
                        &command_topic(&run.prefix(), service),
                    ))
                })
                .collect();
            println!("{STARTED}: services");
            run_until_signal(GRACE, |stop| async move {
                let mut participants = tokio::task::JoinSet::new();
                for consumer in consumers {
                    let stop = stop.clone();
                    participants
                        .spawn(async move { consumer.run(stop).await.map_err(|e| e.to_string()) });
                }
                let participants = participants.join_all();
                let (relayed, participated) = tokio::join!(relay.run(stop.clone()), participants);
                relayed.map_err(|e| e.to_string())?;
                participated.into_iter().collect::<Failed>()
            })
            .await
        }
        other => panic!("unknown role {other}"),
    };
    let code = match stopped {
        Ok(stopped) => match stopped.output {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("a piece failed: {e}");
                2
            }
        },
        Err(e) => {
            eprintln!("{e}");
            1
        }
    };
    println!("shutdown kafka child exits with {code}");
    std::process::exit(code);
}

/// A child running `role` of `test` on the database `url`, in the run `run`.
fn child(test: &str, role: &'static str, url: &str, run: &str) -> ChildProcess {
    ChildProcess::spawn(
        test,
        role,
        &[
            (ROLE_ENV, role.to_owned()),
            (DATABASE_ENV, url.to_owned()),
            (RUN_ENV, run.to_owned()),
        ],
        STARTED,
    )
}

/// [`shutdown_common::within`], naming what a successor would be stuck behind.
async fn within<F, Fut>(bound: Duration, what: &str, done: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let why = format!(
        "a consumer that did not leave its group holds its partitions for {SESSION_TIMEOUT:?}, \
         a relay that kept its leases its slots for {LEASE:?}"
    );
    shutdown_common::within(bound, what, &why, done).await
}

/// The offset committed by `group` on partition 0 of `topic` (0 when none is).
fn committed(brokers: &str, group: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer to read the committed offsets");
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(topic, 0);
    let offsets = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .expect("the committed offsets");
    match offsets.find_partition(topic, 0).map(|p| p.offset()) {
        Some(Offset::Offset(n)) => n,
        _ => 0,
    }
}

const CONSUMER_TEST: &str =
    "kafka_consumer_stops_on_sigterm_commits_what_it_handled_and_leaves_its_group";

/// A consumer of a group: SIGTERM while messages stream in → exit 0 with the offset of every
/// handled message committed (the committed offset equals the effects); a successor in the
/// group starts well within the session timeout (the first left its group) and handles the
/// rest; every message takes effect once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_consumer_stops_on_sigterm_commits_what_it_handled_and_leaves_its_group() {
    child_mode().await;
    let brokers = common::kafka_bootstrap();
    let run = Run(Uuid::now_v7().simple().to_string());
    let topic = run.payments();
    let publisher = common::crash::publisher_one_record_per_batch(&brokers);
    publisher
        .create_topics(&[(&topic, 1)])
        .await
        .unwrap_or_else(|e| panic!("creating {topic}: {e}"));
    let (store, db) = common::postgres().await;
    let url = common::database_url(db.name());
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (stop, topic) = (stop.clone(), topic.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut i = 0u64;
            // Bursts of 25, so that a polled batch is still being handled when the signal comes.
            while !stop.load(Ordering::SeqCst) {
                let burst: Vec<OutboxMessage> = (i..i + 25)
                    .map(|n| {
                        OutboxMessage::new(
                            topic.as_str(),
                            format!("p-{}", n % 7),
                            "payment.captured",
                            format!("{{\"n\":{n}}}").into_bytes(),
                        )
                    })
                    .collect();
                for result in publisher.publish(&burst).await {
                    result.unwrap_or_else(|e| panic!("publishing: {e}"));
                }
                ids.extend(burst.iter().map(|m| (m.id, m.key.clone())));
                i += 25;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ids
        })
    };
    let effects = || async { common::effects(&store).await.len() as i64 };
    let mut first = child(CONSUMER_TEST, "consumer", &url, &run.0);
    within(
        Duration::from_secs(60),
        "the first consumer handling 100 messages",
        || async { effects().await >= 100 },
    )
    .await;
    first.stop("TERM").await;
    let handled = effects().await;
    let offset = committed(&brokers, &run.group("ledger"), &topic);
    assert_eq!(
        offset, handled,
        "the stopped consumer committed the offset of every message it handled"
    );
    let mut second = child(CONSUMER_TEST, "consumer", &url, &run.0);
    let takeover = within(TAKEOVER_BOUND, "the second consumer handling", || async {
        effects().await > handled
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let ids = feeder.await.expect("the feeder");
    let all = within(Duration::from_secs(60), "every message handled", || async {
        effects().await == ids.len() as i64
    })
    .await;
    println!(
        "{} messages; the first consumer handled {handled}; the second took over in \
         {takeover:?}, finished in {all:?}",
        ids.len()
    );
    second.stop("INT").await;
    // Once each, in order per key (the publisher keeps the order of a key, not across keys).
    let effects = common::effects(&store).await;
    let key_of: std::collections::HashMap<Uuid, String> = ids.iter().cloned().collect();
    let per_key = |order: &[Uuid]| {
        let mut keys: std::collections::BTreeMap<String, Vec<Uuid>> = Default::default();
        for id in order {
            keys.entry(key_of.get(id).cloned().unwrap_or_default())
                .or_default()
                .push(*id);
        }
        keys
    };
    let sent: Vec<Uuid> = ids.iter().map(|(id, _)| *id).collect();
    let mut sorted = effects.clone();
    sorted.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert!(sorted == expected, "every message took effect exactly once");
    assert!(
        per_key(&effects) == per_key(&sent),
        "the effects of each key are in the order it was published"
    );
    assert_eq!(
        committed(&brokers, &run.group("ledger"), &topic),
        ids.len() as i64
    );
}

const SAGA_TEST: &str =
    "saga_orchestrator_and_participants_stop_on_sigterm_and_every_saga_completes";

/// The orders service (relay, reply consumer, scheduler) and the services (participants and
/// their relay), each in a process: while sagas keep starting, each is stopped with SIGTERM
/// (exit 0) and replaced; the replacements go on at once; every saga completes with each
/// participant's effect exactly once, in step order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_orchestrator_and_participants_stop_on_sigterm_and_every_saga_completes() {
    child_mode().await;
    let brokers = common::kafka_bootstrap();
    let run = Run(Uuid::now_v7().simple().to_string());
    let mut topics = vec![run.replies()];
    topics.extend(
        SERVICES
            .iter()
            .map(|(service, _)| command_topic(&run.prefix(), service)),
    );
    let publisher = common::crash::publisher_one_record_per_batch(&brokers);
    let specs: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), 1)).collect();
    publisher
        .create_topics(&specs)
        .await
        .unwrap_or_else(|e| panic!("creating {topics:?}: {e}"));
    let (orders, orders_db) = common::postgres().await;
    let (services, services_db) = common::postgres().await;
    let orders_url = common::database_url(orders_db.name());
    let services_url = common::database_url(services_db.name());
    let pool = orders.pool().clone();
    let completed = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM eventfold_sagas WHERE status = 'completed'",
        )
        .fetch_one(&pool)
        .await
        .expect("count")
    };
    let stop = Arc::new(AtomicBool::new(false));
    let starter = {
        let (stop, orchestrator) = (stop.clone(), run.orchestrator(orders.clone()));
        tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let order = Order {
                    id: format!("o-{i}"),
                    cents: 100,
                    ..Order::default()
                };
                let saga = orchestrator
                    .start(&format!("order-{i}"), order, None)
                    .await
                    .expect("start a saga");
                ids.push(saga.saga_id);
                i += 1;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            ids
        })
    };
    let mut orders_child = child(SAGA_TEST, "orders", &orders_url, &run.0);
    let mut services_child = child(SAGA_TEST, "services", &services_url, &run.0);
    within(Duration::from_secs(90), "20 sagas completed", || async {
        completed().await >= 20
    })
    .await;
    // The orders service stops mid-work and is replaced.
    orders_child.stop("TERM").await;
    let before = completed().await;
    let mut orders_child = child(SAGA_TEST, "orders", &orders_url, &run.0);
    let takeover = within(
        TAKEOVER_BOUND,
        "sagas completing after the orders service's restart",
        || async { completed().await > before + 5 },
    )
    .await;
    println!("orders service replaced: sagas complete again after {takeover:?}");
    // The services stop mid-work and are replaced.
    services_child.stop("TERM").await;
    let before = completed().await;
    let mut services_child = child(SAGA_TEST, "services", &services_url, &run.0);
    let takeover = within(
        TAKEOVER_BOUND,
        "sagas completing after the services' restart",
        || async { completed().await > before + 5 },
    )
    .await;
    println!("services replaced: sagas complete again after {takeover:?}");
    stop.store(true, Ordering::SeqCst);
    let ids = starter.await.expect("the starter");
    let all = within(Duration::from_secs(60), "every saga completed", || async {
        completed().await == ids.len() as i64
    })
    .await;
    println!(
        "{} sagas, all completed {all:?} after the last start",
        ids.len()
    );
    orders_child.stop("INT").await;
    services_child.stop("INT").await;
    for id in &ids {
        assert_eq!(
            saga_common::effects(&services, *id).await,
            vec!["inventory.reserve", "payment.charge", "shipment.schedule"],
            "saga {id}: each participant's effect once, in step order"
        );
    }
}
