//! The `sagas` section: completed 3-step sagas per second and start-to-completion latency of
//! the saga runtime (`eventfold::saga::runtime`), on PostgreSQL with the in-process broker, on
//! PostgreSQL with the Kafka-protocol broker and on SQLite with the in-process broker, beside the
//! raw commit rate of the same machine measured in the same run.
//!
//! Every variant runs one orchestrating service and three participants in this process, as tokio
//! tasks running their production `run(shutdown)` loops:
//!
//! * the orders service: an [`Orchestrator`] of the saga `bench.order` (reserve → charge → ship,
//!   the first two with a compensation, every step with a 30 s timeout, so that each transition
//!   sets and cancels a durable timer), its reply consumer, its [`Scheduler`](eventfold::saga::runtime::Scheduler)
//!   (default: polls every 50 ms) and one [`Relay`] (default `RelayConfig`) over the store;
//! * inventory, payments and shipping: a [`ParticipantHandler`] each, whose participant appends
//!   one event to its own stream (`inventory-<saga id>`, ...) in the consumer's unit of work and
//!   replies success.
//!
//! The Kafka variant runs twice: with `KafkaSource::new`'s configuration (what an application gets),
//! and with a low `fetch.wait.max.ms` (`--saga-fetch-wait-ms`, default 1): tansu 0.6 appears to hold a fetch for its whole
//! `fetch.wait.max.ms` (librdkafka's default: 500 ms) even when records arrive meanwhile, which
//! a saga's 6 broker hops then wait for (observed, not read in tansu's code).
//!
//! All four services share **one database** (a fresh PostgreSQL database per variant, created
//! and dropped here; a temporary SQLite file in WAL mode), so the one relay publishes the
//! commands and the replies alike. Latency figures therefore have one relay hop per message,
//! as with one relay per service; the database serves all four services' transactions.
//!
//! Completion is detected without polling the database: the reply consumer's handler is wrapped
//! ([`Completing`]) to note the `ship` step's success reply, and since the consumer settles one
//! record at a time (its transaction commits before it goes on), the saga's completion is
//! durable by the consumer's next step: the next record's handler call (after that record's
//! `BEGIN` and inbox mark) or the batch's acknowledgement. That instant, minus the `Instant`
//! before `Orchestrator::start`, is the client-side start-to-completion latency. For the low-load run
//! the saga's own history gives a second figure (timestamp of `saga.completed` − timestamp of
//! `saga.started`, via `eventfold::saga::runtime::load`); those timestamps are taken when the
//! events are encoded inside their transactions, so that figure leaves out the first statements
//! of the starting transaction and the rest of the completing one, its commit included.
//!
//! Under load, every consumer's busy share (poll with records → next poll) shows which one
//! limits the throughput; per variant, PostgreSQL's `xact_commit` delta gives the transactions
//! per saga and `/proc/<pid>/schedstat` the CPU time per saga of this process and of the
//! variant database's backends.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use eventfold::saga::runtime::{
    self, Orchestrator, Participant, ParticipantContext, ParticipantHandler, wire,
};
use eventfold::saga::{Command, Outcome, Saga, SagaDefinition, SagaStatus};
use eventfold_core::{NewEvent, OutboxMessage, StreamId};
use eventfold_eventstore::postgres::PgStore;
use eventfold_eventstore::sqlite::SqliteStore;
use eventfold_eventstore::{
    ExpectedVersion, InboxStore, OutboxRelayStore, SagaStore, StreamAppend, UnitOfWork,
};
use eventfold_outbox::kafka::KafkaPublisher;
use eventfold_outbox::kafka::rdkafka::ClientConfig;
use eventfold_outbox::kafka_source::KafkaSource;
use eventfold_outbox::{
    BatchFailure, Consumer, Delivery, Handler, InProcessBroker, MessageSource, PublishError,
    Publisher, Record, Relay, RelayConfig,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{ConnectOptions, PgPool};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::relay::percentile;
use crate::{BoxError, Options, Result, sqlite_file};

/// The saga type of the benchmark.
const SAGA_TYPE: &str = "bench.order";
/// The name of the orders service's reply consumer in the tables.
const REPLY_CONSUMER: &str = "orders (replies)";
/// The step whose success reply completes a saga.
const LAST_STEP: &str = "ship";
/// Sagas in flight in the throughput run (each starter starts one, waits for its completion,
/// starts the next).
const IN_FLIGHT: usize = 64;
/// Connections of the PostgreSQL pool that all four services share.
const PG_POOL: u32 = 32;
/// Tasks of the raw PostgreSQL commit baseline (1: the commit time of one connection, the
/// floor of a saga's sequential units of work; the last equals the saga pool).
const PG_RAW_TASKS: [usize; 3] = [1, 8, PG_POOL as usize];
/// Tasks of the raw SQLite commit baseline (the second equals `SqliteStore::connect`'s pool).
/// The first, 1, gives the commit time of one connection.
const SQLITE_RAW_TASKS: [usize; 2] = [1, 8];
/// Partitions of the Kafka topics (the in-process broker's default is 4 too).
const PARTITIONS: i32 = 4;
/// The timeout of every step: long enough never to fire here, so each transition still sets
/// and cancels a durable timer.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait for the first saga of a variant (the Kafka consumers join their groups).
const FIRST_SAGA_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest wait for one saga.
const SAGA_TIMEOUT: Duration = Duration::from_secs(30);
/// Sequential sagas after the first one and before the latency run, not counted.
const WARMUP: Duration = Duration::from_secs(1);
/// Load before the throughput window, not counted (at least this, and at least [`IN_FLIGHT`]
/// completions).
const LOAD_WARMUP: Duration = Duration::from_secs(1);
/// Targets of the issue.
const TARGET_SAGAS_PER_S: f64 = 1000.0;
const TARGET_P50_IN_PROCESS_MS: f64 = 20.0;
const TARGET_P50_BROKER_MS: f64 = 60.0;

// ---------------------------------------------------------------------------------------------
// The saga and its participants.

/// The saga data.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Order {
    id: String,
    cents: u64,
}

/// The topics of one variant (fresh names per run).
#[derive(Debug, Clone)]
struct Topics {
    inventory: String,
    payments: String,
    shipping: String,
    replies: String,
}

impl Topics {
    fn new(tag: &str) -> Self {
        let t = |name: &str| format!("eventfold.bench.saga.{tag}.{name}");
        Self {
            inventory: t("inventory.commands"),
            payments: t("payments.commands"),
            shipping: t("shipping.commands"),
            replies: t("order.replies"),
        }
    }

    fn all(&self) -> [&str; 4] {
        [
            &self.inventory,
            &self.payments,
            &self.shipping,
            &self.replies,
        ]
    }
}

fn command(topic: &str, message_type: &'static str) -> impl Fn(&Order) -> CommandResult + use<> {
    let topic = topic.to_owned();
    move |o: &Order| Command::new(topic.clone(), message_type, o)
}

type CommandResult = std::result::Result<Command, eventfold::saga::StepError>;

/// reserve (compensated by release) → charge (refund) → ship.
fn definition(topics: &Topics) -> Result<SagaDefinition<Order>> {
    Ok(Saga::<Order>::define(SAGA_TYPE, 1)
        .step("reserve", |s| {
            s.invoke(command(&topics.inventory, "inventory.reserve"))
                .compensate(command(&topics.inventory, "inventory.release"))
                .timeout(STEP_TIMEOUT)
        })
        .step("charge", |s| {
            s.invoke(command(&topics.payments, "payment.charge"))
                .compensate(command(&topics.payments, "payment.refund"))
                .timeout(STEP_TIMEOUT)
        })
        .step(LAST_STEP, |s| {
            s.invoke(command(&topics.shipping, "shipment.schedule"))
                .timeout(STEP_TIMEOUT)
        })
        .build()?)
}

/// A participant whose effect is one event in its own stream per command, appended in the
/// consumer's unit of work; it always succeeds. A batch of commands appends its events with one
/// [`UnitOfWork::append_many`] unless `one_by_one` (the participants of
/// [`Variant::PgInProcessParticipantsOneByOne`]).
struct Effect {
    service: &'static str,
    one_by_one: bool,
}

impl Effect {
    fn effect(&self, cx: &ParticipantContext) -> Result<StreamAppend> {
        let command = &cx.command;
        let stream = StreamId::new(self.service, command.saga_id.to_string())?;
        let mut event = NewEvent::raw(command.message_type.clone(), 1, br#"{"ok":true}"#.to_vec());
        event.causation_id = Some(cx.message_id);
        event.correlation_id = command.correlation_id;
        Ok(StreamAppend::new(stream, ExpectedVersion::Any, vec![event]))
    }

    fn done(&self) -> Outcome {
        Outcome::success(serde_json::json!({ "by": self.service }))
    }
}

impl<U: UnitOfWork> Participant<U> for Effect {
    async fn execute(&self, uow: &mut U, cx: &ParticipantContext) -> Result<Outcome> {
        let a = self.effect(cx)?;
        uow.append(&a.stream_id, a.expected, a.events).await?;
        Ok(self.done())
    }

    async fn execute_batch(
        &self,
        uow: &mut U,
        contexts: &[ParticipantContext],
    ) -> std::result::Result<Vec<Outcome>, BatchFailure> {
        let mut outcomes = Vec::with_capacity(contexts.len());
        if self.one_by_one {
            for (index, cx) in contexts.iter().enumerate() {
                let outcome = self.execute(uow, cx).await;
                outcomes.push(outcome.map_err(|e| BatchFailure::at(index, e))?);
            }
            return Ok(outcomes);
        }
        let mut appends = Vec::with_capacity(contexts.len());
        for (index, cx) in contexts.iter().enumerate() {
            appends.push(self.effect(cx).map_err(|e| BatchFailure::at(index, e))?);
            outcomes.push(self.done());
        }
        uow.append_many(appends).await?;
        Ok(outcomes)
    }
}

const SERVICES: [&str; 3] = ["inventory", "payments", "shipping"];

/// The units of work of a completed saga, one after the other: the start, then per step the
/// participant's and the reply's.
const SEQUENTIAL_UNITS: f64 = 7.0;

/// A task of a variant's services: what it ended with, its error as text.
type ServiceTask = tokio::task::JoinHandle<std::result::Result<(), String>>;

/// A future that resolves once `stop` turns true: a service's shutdown signal.
type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Spawns the service `run` onto `tasks`, with a shutdown signal of its own that resolves once
/// `stop` turns true.
fn spawn_service<F, Fut>(tasks: &mut Vec<ServiceTask>, stop: &watch::Receiver<bool>, run: F)
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = std::result::Result<(), String>> + Send + 'static,
{
    let mut stop = stop.clone();
    tasks.push(tokio::spawn(run(Box::pin(async move {
        let _ = stop.wait_for(|s| *s).await;
    }))));
}

/// Spawns the four services of a variant; returns their tasks.
#[expect(
    clippy::too_many_arguments,
    reason = "the wiring of one variant, called once"
)]
fn spawn_services<S, P, Src>(
    store: &S,
    orchestrator: &Orchestrator<S, Order>,
    publisher: P,
    mut source: impl FnMut(&str, &str) -> Result<Src>,
    topics: &Topics,
    probe: &Arc<Probe>,
    stop: &watch::Receiver<bool>,
    variant: Variant,
) -> Result<Vec<ServiceTask>>
where
    S: SagaStore + InboxStore + OutboxRelayStore,
    P: Publisher,
    Src: MessageSource + 'static,
{
    let shared = variant.shared_commits();
    let mut tasks = Vec::new();
    let relay = Relay::new(
        store.clone(),
        Counted {
            inner: publisher,
            probe: probe.clone(),
        },
    )
    .with_config(variant.relay_config());
    spawn_service(&mut tasks, stop, |shutdown| async move {
        relay.run(shutdown).await.map_err(|e| format!("relay: {e}"))
    });
    // What `Orchestrator::reply_consumer` builds (its name, 20 attempts, a 10 ms first
    // backoff, shared and overlapped commits), with the handler wrapped to see completions.
    let replies = Consumer::new(
        orchestrator.reply_consumer_name(),
        store.clone(),
        Tap::new(
            source("orders", &topics.replies)?,
            probe,
            REPLY_CONSUMER,
            true,
        ),
        Completing {
            inner: orchestrator.reply_handler(),
            probe: probe.clone(),
            shared,
        },
    )
    .max_attempts(20)
    .backoff(Duration::from_millis(10))
    .shared_commits(shared)
    .overlap_commits(shared)
    .concurrency(if shared { REPLY_LANES } else { 1 });
    spawn_service(&mut tasks, stop, |shutdown| async move {
        replies
            .run(shutdown)
            .await
            .map_err(|e| format!("reply consumer: {e}"))
    });
    for (service, topic) in
        SERVICES
            .into_iter()
            .zip([&topics.inventory, &topics.payments, &topics.shipping])
    {
        let effect = Effect {
            service,
            one_by_one: variant == Variant::PgInProcessParticipantsOneByOne,
        };
        let consumer = ParticipantHandler::new(service, store.clone(), effect)
            .consumer(Tap::new(source(service, topic)?, probe, service, false))
            .shared_commits(shared)
            .concurrency(if shared { PARTICIPANT_LANES } else { 1 });
        spawn_service(&mut tasks, stop, |shutdown| async move {
            consumer
                .run(shutdown)
                .await
                .map_err(|e| format!("participant {service}: {e}"))
        });
    }
    let scheduler = orchestrator.scheduler();
    spawn_service(&mut tasks, stop, |shutdown| async move {
        scheduler.run(shutdown).await;
        Ok(())
    });
    Ok(tasks)
}

// ---------------------------------------------------------------------------------------------
// Databases and raw baselines.

async fn xact_commit(conn: &mut sqlx::PgConnection) -> Result<u64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(conn)
    .await?;
    Ok(u64::try_from(n)?)
}

/// A PostgreSQL variant in a fresh database `{bench db}_{suffix}`, dropped afterwards.
async fn postgres_variant(
    variant: Variant,
    base: &PgConnectOptions,
    admin: &PgPool,
    bench_db: &str,
    options: &Options,
) -> Result<Measured> {
    let db = format!("{bench_db}_s{}", variant as u8);
    sqlx::query(&format!("CREATE DATABASE \"{db}\""))
        .execute(admin)
        .await?;
    let result = postgres_in(variant, base.clone().database(&db), options).await;
    let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .execute(admin)
        .await;
    let measured = result?;
    dropped?;
    Ok(measured)
}

async fn postgres_in(
    variant: Variant,
    connect: PgConnectOptions,
    options: &Options,
) -> Result<Measured> {
    let mut stats = connect.connect().await?;
    let xact_before = xact_commit(&mut stats).await?;
    let pool = PgPoolOptions::new()
        .max_connections(PG_POOL)
        .test_before_acquire(options.test_before_acquire)
        .connect_with(connect.clone())
        .await?;
    let monitor = Some(crate::Monitor {
        conn: connect.connect().await?,
    });
    let store = PgStore::builder(pool.clone()).build().await?;
    let topics = Topics::new(&Uuid::now_v7().simple().to_string());
    let result = match variant {
        Variant::PgInProcess
        | Variant::PgInProcessPerRecord
        | Variant::PgInProcessNoCache
        | Variant::PgInProcessLinger
        | Variant::PgInProcessAnalyzed
        | Variant::PgInProcessParticipantsOneByOne => {
            let broker = InProcessBroker::new();
            let source = |group: &str, topic: &str| Ok(broker.consumer(group, &[topic]));
            measure(
                variant,
                store,
                broker.clone(),
                source,
                &topics,
                options,
                monitor,
            )
            .await
        }
        Variant::PgKafka | Variant::PgKafkaLowWait => {
            let brokers = crate::relay::bootstrap();
            let publisher = KafkaPublisher::new(&brokers)
                .map_err(|e| format!("Kafka publisher for {brokers}: {e}"))?;
            let partitions: Vec<(&str, i32)> =
                topics.all().into_iter().map(|t| (t, PARTITIONS)).collect();
            publisher.create_topics(&partitions).await.map_err(|e| {
                format!("creating topics on {brokers} (is the broker running?): {e}")
            })?;
            let group_tag = Uuid::now_v7().simple().to_string();
            let source = |group: &str, topic: &str| {
                let mut config = ClientConfig::new();
                config
                    .set("bootstrap.servers", &brokers)
                    .set("group.id", format!("bench-{group}-{group_tag}"));
                if variant == Variant::PgKafkaLowWait {
                    config.set("fetch.wait.max.ms", options.saga_fetch_wait_ms.to_string());
                }
                KafkaSource::from_config(config, &[topic]).map_err(BoxError::from)
            };
            let measured =
                measure(variant, store, publisher, source, &topics, options, monitor).await;
            match measured {
                Ok(mut m) => {
                    let wait =
                        (variant == Variant::PgKafkaLowWait).then_some(options.saga_fetch_wait_ms);
                    raw_broker_hops(&brokers, wait, options.saga_latency_seconds)
                        .await
                        .map(|hops| {
                            m.broker_hops_ms = hops;
                            m
                        })
                }
                Err(e) => Err(e),
            }
        }
        Variant::SqliteInProcess => unreachable!("not a PostgreSQL variant"),
    };
    // Closing the pool ends its backends, which flushes their statistics.
    pool.close().await;
    let mut measured = result?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let xact_after = xact_commit(&mut stats).await?;
    // The two statistics reads are transactions of their own.
    measured.xact_commits = Some(xact_after.saturating_sub(xact_before).saturating_sub(1));
    Ok(measured)
}

async fn sqlite_variant(options: &Options) -> Result<Measured> {
    sqlite_file::with_temp_file("sagas", |path| async move {
        // `SqliteStore::connect`: WAL, synchronous = NORMAL, a pool of 8.
        let store = SqliteStore::connect(&format!("sqlite://{}", path.display())).await?;
        let topics = Topics::new(&Uuid::now_v7().simple().to_string());
        let broker = InProcessBroker::new();
        let source = |group: &str, topic: &str| Ok(broker.consumer(group, &[topic]));
        let measured = measure(
            Variant::SqliteInProcess,
            store.clone(),
            broker.clone(),
            source,
            &topics,
            options,
            None,
        )
        .await;
        store.pool().close().await;
        measured
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The section.

pub(crate) struct SagaResults {
    /// The 1-minute load average at the start and at the end of the section.
    load: (Option<f64>, Option<f64>),
    raw_pg: Vec<(usize, f64)>,
    raw_sqlite: Vec<(usize, f64)>,
    raw_seconds: f64,
    variants: Vec<(Variant, std::result::Result<Measured, String>)>,
    seconds: f64,
    latency_seconds: f64,
    /// `fetch.wait.max.ms` of the low-wait Kafka variant's consumers.
    fetch_wait_ms: u64,
}

/// Runs the section on the server of `pool` (the bench database).
pub(crate) async fn run(pool: &PgPool, options: &Options) -> Result<SagaResults> {
    let base = pool.connect_options().as_ref().clone();
    let (bench_db,): (String,) = sqlx::query_as("SELECT current_database()")
        .fetch_one(pool)
        .await?;
    let load_before = load_average();
    let raw_seconds = if options.quick { 1.0 } else { 2.0 };
    let mut raw_pg = Vec::new();
    for tasks in PG_RAW_TASKS {
        eprintln!("sagas: raw PostgreSQL commits, {tasks} tasks");
        raw_pg.push((tasks, raw_postgres(&base, tasks, raw_seconds).await?));
    }
    let mut raw_sqlite_rates = Vec::new();
    for tasks in SQLITE_RAW_TASKS {
        eprintln!("sagas: raw SQLite commits, {tasks} tasks");
        raw_sqlite_rates.push((tasks, raw_sqlite(tasks, raw_seconds).await?));
    }
    if let Some(unknown) = options
        .saga_variants
        .iter()
        .find(|key| !Variant::ALL.iter().any(|v| v.key() == key.as_str()))
    {
        let keys: Vec<&str> = Variant::ALL.iter().map(|v| v.key()).collect();
        return Err(format!("--saga-variants: unknown `{unknown}` ({})", keys.join(", ")).into());
    }
    let chosen = |variant: &Variant| {
        options.saga_variants.is_empty() || options.saga_variants.iter().any(|k| k == variant.key())
    };
    let mut variants = Vec::new();
    for variant in Variant::ALL.into_iter().filter(chosen) {
        eprintln!("sagas: {}", variant.name());
        let result = if variant.postgres() {
            postgres_variant(variant, &base, pool, &bench_db, options).await
        } else {
            sqlite_variant(options).await
        };
        if let Err(e) = &result {
            eprintln!("sagas: {}: failed: {e}", variant.name());
        }
        variants.push((variant, result.map_err(|e| e.to_string())));
    }
    Ok(SagaResults {
        load: (load_before, load_average()),
        raw_pg,
        raw_sqlite: raw_sqlite_rates,
        raw_seconds,
        variants,
        seconds: options.seconds,
        latency_seconds: options.saga_latency_seconds,
        fetch_wait_ms: options.saga_fetch_wait_ms,
    })
}

/// The 1-minute load average (`/proc/loadavg`).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

mod measure;
mod probes;
mod raw;
mod report;
mod variant;

use measure::measure;

use probes::*;

use raw::{BROKER_HOPS, raw_broker_hops, raw_postgres, raw_sqlite};
use variant::*;
