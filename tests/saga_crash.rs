//! Crash recovery of orchestrated sagas with real processes, on PostgreSQL and a real
//! Kafka-protocol broker (tansu, started by `scripts/test.sh`).
//!
//! Two services, each with its own fresh database: **orders** runs the orchestrator (the outbox
//! relay, the reply consumer and the timer scheduler), **services** runs the participants
//! (inventory, payments, shipping: one consumer per command topic, and the relay of their
//! replies; every other participants process with shared commits, which hand the participant
//! a batch's commands at once). Both run in two processes at once: this test binary re-executed in child mode
//! (`EVENTFOLD_SAGA_CRASH_ROLE`). While the test starts sagas (at most 100 running at a time;
//! most complete, some are refused at each step, some of whose compensations fail once and are
//! retried through the scheduler's durable timers), a random child is killed with SIGKILL, one
//! every few seconds (when both processes of its role have joined their groups and work), and
//! replaced.
//!
//! Afterwards every saga must be `completed` or `compensated` as its scenario says, the
//! participants' effects (events in the services database, written in the consumer's
//! transaction) must be exactly the expected ones, each once, compensations in reverse order,
//! and stock and money must balance. Duplicates that the crashes caused (relay re-publishes,
//! redeliveries of unacknowledged records) are absorbed by the inboxes, the participants'
//! request keys and the saga machine's fences; the children report how many they saw.
//!
//! `EVENTFOLD_SAGA_CRASH_SAGAS` (default 300) sets the number of sagas,
//! `EVENTFOLD_SAGA_CRASH_KILLS` (default 6, at least 2) the number of kills,
//! `EVENTFOLD_SAGA_CRASH_SEED` the seed of the random kills (printed by every run). The broker is
//! `KAFKA_BOOTSTRAP` (default 127.0.0.1:9092); an unreachable broker fails the test.
#![cfg(all(feature = "kafka", feature = "postgres"))]
mod common;
mod saga_common;
mod saga_crash_diagnosis;
use saga_crash_diagnosis as diagnosis;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Read;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventfold::eventstore::postgres::PgStore;
use eventfold::eventstore::{InboxStore, OutboxStore, SagaStore};
use eventfold::outbox::{KafkaSource, Relay, RelayConfig};
use eventfold::saga::runtime::{Orchestrator, ParticipantHandler};
use saga_common::{Effects, Order, SAGA_TYPE, SERVICES, command_topic, definition_on};
use uuid::Uuid;

/// This test's name: the children run it again, in child mode.
const TEST_NAME: &str =
    "killed_orchestrators_and_participants_leave_every_saga_terminal_with_effects_once";
const ROLE_ENV: &str = "EVENTFOLD_SAGA_CRASH_ROLE";
const DATABASE_ENV: &str = "EVENTFOLD_SAGA_CRASH_DATABASE_URL";
const RUN_ENV: &str = "EVENTFOLD_SAGA_CRASH_RUN";
const NAME_ENV: &str = "EVENTFOLD_SAGA_CRASH_CHILD";
/// The line a child prints once everything runs.
const STARTED: &str = "saga crash child started";

const PARTITIONS: i32 = 3;
/// Per attempt of every step: long enough that no crash makes a step time out (the expected
/// effects assume none does: a step can wait for a dead consumer's replacement and a rebalance
/// on the way out and again on the way back); the scheduler still runs, for the compensation
/// retries.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The consumers' Kafka session: a killed member leaves its group after this.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
/// A killed child's replacement starts this long after the kill, once the dead member's session
/// has expired. tansu 0.6 does not give a dead member's partitions to the survivors when its
/// session expires (they stay unconsumed until another member joins), and a member that joins
/// before then shares the partitions with the dead one, whose share then stays unconsumed for
/// good (both seen on this machine).
const REPLACE_AFTER: Duration = Duration::from_millis(7000);
/// A child is killed only when both processes of its role have run this long: they have joined
/// their groups (tansu makes a joining follower wait 3 s) and work, so that the kill interrupts
/// batches in flight.
const SETTLED_AFTER: Duration = Duration::from_secs(5);
/// Sagas running at once, at most.
const MAX_IN_FLIGHT: usize = 100;
/// The relays' slot leases: a killed relay's slots are taken over after this.
const LEASE_TTL: Duration = Duration::from_millis(1500);
/// The schedulers' timer claims: a killed scheduler's claimed timers come due again after this.
const TIMER_LEASE: Duration = Duration::from_secs(2);
/// How long the parent waits for every saga to end, after the last start and kill.
const SETTLE: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Orchestrator,
    Participants,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Orchestrator => "orchestrator",
            Role::Participants => "participants",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "orchestrator" => Role::Orchestrator,
            "participants" => Role::Participants,
            other => panic!("{ROLE_ENV} must be orchestrator or participants, not {other:?}"),
        }
    }
}

/// The topics of one run (tansu keeps topics between tests): `sc{run}.inventory.commands`, ...
/// and `sc{run}.replies`.
struct Topics {
    prefix: String,
}

impl Topics {
    fn new(run: &str) -> Self {
        Self {
            prefix: format!("sc{run}."),
        }
    }

    fn replies(&self) -> String {
        format!("{}replies", self.prefix)
    }

    fn command(&self, service: &str) -> String {
        command_topic(&self.prefix, service)
    }

    fn group(&self, consumer: &str) -> String {
        format!("{}{consumer}", self.prefix)
    }

    /// Each topic of the run with the group that consumes it: the replies with the orders
    /// service's, each command topic with its participant's.
    fn consumed(&self) -> Vec<(String, String)> {
        let mut pairs = vec![(self.replies(), self.group("orders"))];
        pairs.extend(
            SERVICES
                .iter()
                .map(|(service, _)| (self.command(service), self.group(service))),
        );
        pairs
    }

    /// The orchestrator of the orders service, on this run's topics.
    fn orchestrator(&self, store: PgStore) -> Orchestrator<PgStore, Order> {
        Orchestrator::new(store, definition_on(&self.prefix, STEP_TIMEOUT))
            .with_reply_topic(self.replies())
    }
}

// ---------------------------------------------------------------------------------------------
// Child mode

/// A Kafka source in `group` with a short session ([`SESSION_TIMEOUT`]: the group drops a
/// killed member within seconds, not after librdkafka's default 45 s).
fn kafka_source(brokers: &str, group: &str, topic: &str) -> KafkaSource {
    common::crash::kafka_source(
        brokers,
        group,
        topic,
        SESSION_TIMEOUT,
        Some(Duration::from_millis(500)),
    )
}

/// Runs what `start` returns again and again: a consumer whose offset commit fails after a
/// rebalance, or a relay whose store failed, is started afresh, as a service would (and as
/// `metric child_restarts{..}` reported to the parent).
async fn keep_running<F, Fut, E>(what: String, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    loop {
        if let Err(e) = start().await {
            eprintln!("saga crash child: {what} failed, restarting it: {e}");
            println!("metric child_restarts{{{what}}} 1");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The counters a child reports to the parent, as `metric <name>{<labels>} <n>` lines.
const REPORTED: [&str; 5] = [
    "eventfold_consumer_duplicates_total",
    "eventfold_consumer_parked_total",
    "eventfold_saga_ignored_total",
    "eventfold_saga_timers_fired_total",
    "eventfold_outbox_retried_total",
];

/// The printed name of a [`REPORTED`] counter: its name and labels (but the saga type).
fn reported(key: &metrics::Key) -> Option<String> {
    if !REPORTED.contains(&key.name()) {
        return None;
    }
    Some(common::printed_metrics::labelled_name(key, |label| {
        label == "saga_type"
    }))
}

/// A child process: the orders service's orchestrator or the services' participants, each with
/// the relay of its database, until it is killed (or the parent goes away: its stdin closes).
async fn child(role: Role) -> Infallible {
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        loop {
            match std::io::stdin().read(&mut buf) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    });
    common::printed_metrics::install(reported);
    let url = std::env::var(DATABASE_ENV).expect("the database of the child");
    let topics = Topics::new(&std::env::var(RUN_ENV).expect("the run id"));
    let name = std::env::var(NAME_ENV).unwrap_or_else(|_| role.as_str().to_owned());
    let brokers = common::kafka_bootstrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{name}: connecting to {url}: {e}"));
    let source = match role {
        Role::Orchestrator => "orders",
        Role::Participants => "services",
    };
    // The parent migrated both databases before starting any child.
    let store = PgStore::builder(pool)
        .source(source)
        .migrate(false)
        .build()
        .await
        .unwrap_or_else(|e| panic!("{name}: the store: {e}"));

    let mut tasks = tokio::task::JoinSet::new();
    let relay_store = store.clone();
    let relay_brokers = brokers.clone();
    tasks.spawn(keep_running("relay".to_owned(), move || {
        let publisher = common::crash::publisher_one_record_per_batch(&relay_brokers);
        Relay::new(relay_store.clone(), publisher)
            .with_config(RelayConfig {
                lease_ttl: LEASE_TTL,
                idle_wait: Duration::from_millis(50),
                backoff_base: Duration::from_millis(20),
                backoff_max: Duration::from_secs(1),
                ..RelayConfig::default()
            })
            .run(std::future::pending())
    }));
    match role {
        Role::Orchestrator => {
            let orchestrator = topics.orchestrator(store.clone());
            let (o, group, replies) = (
                orchestrator.clone(),
                topics.group("orders"),
                topics.replies(),
            );
            let brokers = brokers.clone();
            tasks.spawn(keep_running("replies".to_owned(), move || {
                o.reply_consumer(kafka_source(&brokers, &group, &replies))
                    .run(std::future::pending())
            }));
            tasks.spawn(
                orchestrator
                    .scheduler()
                    .lease(TIMER_LEASE)
                    .poll_interval(Duration::from_millis(20))
                    .run(std::future::pending()),
            );
        }
        Role::Participants => {
            // Every other participants process shares commits (its handler takes a batch's
            // commands at once), so both ways run side by side, each on some partitions.
            let shared = name
                .rsplit('-')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n % 2 == 1);
            for (service, _) in SERVICES {
                let (store, brokers) = (store.clone(), brokers.clone());
                let (group, topic) = (topics.group(service), topics.command(service));
                tasks.spawn(keep_running(service.to_owned(), move || {
                    let participant = Effects {
                        compensation_failures: 1,
                    };
                    ParticipantHandler::new(service, store.clone(), participant)
                        .consumer(kafka_source(&brokers, &group, &topic))
                        .shared_commits(shared)
                        .run(std::future::pending())
                }));
            }
        }
    }
    println!("{STARTED}: {name}");
    // Nothing ends by itself: a task that does has panicked.
    let ended = tasks.join_next().await.expect("tasks");
    panic!("{name}: a task ended: {ended:?}");
}

// ---------------------------------------------------------------------------------------------
// The parent

/// Counters summed over every child's `metric` lines.
type Counters = common::printed_metrics::Counters;

/// A child process in its role; killed (SIGKILL) when dropped.
type ChildProcess = common::crash::ChildProcess<Role>;

/// Starts a child and waits (at most 60 s) for its started line; its `metric` lines are added to
/// `counters`.
fn spawn_child(role: Role, name: String, url: &str, run: &str, counters: Counters) -> ChildProcess {
    let (child, _line) = common::spawn_until_started_with(
        common::crash::child_command(TEST_NAME)
            .env(ROLE_ENV, role.as_str())
            .env(DATABASE_ENV, url)
            .env(RUN_ENV, run)
            .env(NAME_ENV, &name),
        Stdio::piped(), // closed when the parent goes away: the child then exits
        &name,
        Duration::from_secs(60),
        move |line| {
            common::printed_metrics::add_line(&counters, line);
            // libtest prints `test <name> ... ` before it, on the same line.
            line.contains(STARTED)
        },
    );
    ChildProcess::new(child, name, role)
}

/// Where children of each role connect, and what they are called.
#[derive(Clone)]
struct Spawner {
    orders_url: String,
    services_url: String,
    run: String,
    counters: Counters,
    spawned: Arc<Mutex<usize>>,
}

impl Spawner {
    async fn spawn(&self, role: Role) -> ChildProcess {
        let n = {
            let mut spawned = self.spawned.lock().unwrap();
            *spawned += 1;
            *spawned
        };
        let name = format!("{}-{n}", role.as_str());
        let url = match role {
            Role::Orchestrator => self.orders_url.clone(),
            Role::Participants => self.services_url.clone(),
        };
        let (run, counters) = (self.run.clone(), self.counters.clone());
        tokio::task::spawn_blocking(move || spawn_child(role, name, &url, &run, counters))
            .await
            .expect("spawning a child")
    }
}

/// What a saga is made to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scenario {
    /// The step whose participant refuses it (`None`: the saga completes).
    refused_at: Option<&'static str>,
    /// The step whose compensation fails once (retried through a durable timer).
    failing_compensation: Option<&'static str>,
}

impl Scenario {
    /// 60% complete, 15% are refused at reserve, 15% at charge, 10% at ship; of the refused at
    /// charge or ship, 4 in 5 have a compensation that fails once.
    fn of(i: usize) -> Self {
        let (refused_at, failing_compensation) = match i % 20 {
            0..12 => (None, None),
            12..15 => (Some("reserve"), None),
            15 | 16 => (Some("charge"), Some("reserve")),
            17 => (Some("charge"), None),
            18 => (Some("ship"), Some("charge")),
            _ => (Some("ship"), Some("reserve")),
        };
        Self {
            refused_at,
            failing_compensation,
        }
    }

    fn order(self, i: usize) -> Order {
        Order {
            id: format!("order-{i}"),
            cents: 100 + i as u64,
            fail: self.refused_at.map(str::to_owned),
            fail_compensation: self.failing_compensation.map(str::to_owned),
        }
    }

    fn status(self) -> &'static str {
        match self.refused_at {
            None => "completed",
            Some(_) => "compensated",
        }
    }

    /// The participants' effects, in order: each once, compensations in reverse order.
    fn effects(self) -> &'static [&'static str] {
        match self.refused_at {
            None => &["inventory.reserve", "payment.charge", "shipment.schedule"],
            Some("reserve") => &[],
            Some("charge") => &["inventory.reserve", "inventory.release"],
            Some(_) => &[
                "inventory.reserve",
                "payment.charge",
                "payment.refund",
                "inventory.release",
            ],
        }
    }

    /// The steps compensated (each exactly once).
    fn compensated_steps(self) -> &'static [&'static str] {
        match self.refused_at {
            None | Some("reserve") => &[],
            Some("charge") => &["reserve"],
            Some(_) => &["charge", "reserve"],
        }
    }
}

/// Instances per status (of this test's saga type).
async fn statuses(store: &PgStore) -> BTreeMap<String, u64> {
    store
        .count_sagas()
        .await
        .expect("count sagas")
        .into_iter()
        .filter(|(saga_type, _, _)| saga_type == SAGA_TYPE)
        .map(|(_, status, n)| (status, n))
        .collect()
}

fn sum_of(counters: &BTreeMap<String, u64>, name: &str) -> u64 {
    counters
        .iter()
        .filter(|(key, _)| key.starts_with(name))
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_orchestrators_and_participants_leave_every_saga_terminal_with_effects_once() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        match child(Role::parse(&role)).await {}
    }
    let started = Instant::now();
    let sagas = common::env_number("EVENTFOLD_SAGA_CRASH_SAGAS", 300);
    let kills = common::env_number("EVENTFOLD_SAGA_CRASH_KILLS", 6);
    assert!(
        kills >= 2,
        "EVENTFOLD_SAGA_CRASH_KILLS must be at least 2 (one per role)"
    );
    let (seed, mut rng) = common::crash::Rng::from_env("EVENTFOLD_SAGA_CRASH_SEED");
    let brokers = common::kafka_bootstrap();
    let run = Uuid::now_v7().simple().to_string();
    let topics = Topics::new(&run);
    let mut names = vec![topics.replies()];
    names.extend(SERVICES.iter().map(|(service, _)| topics.command(service)));
    let publisher = common::crash::publisher_one_record_per_batch(&brokers);
    let with_partitions: Vec<(&str, i32)> =
        names.iter().map(|t| (t.as_str(), PARTITIONS)).collect();
    publisher
        .create_topics(&with_partitions)
        .await
        .unwrap_or_else(|e| panic!("creating the topics {names:?}: {e}"));

    let (orders, orders_db) = common::postgres().await;
    let (services, services_db) = common::postgres().await;
    let spawner = Spawner {
        orders_url: common::database_url(orders_db.name()),
        services_url: common::database_url(services_db.name()),
        run: run.clone(),
        counters: Counters::default(),
        spawned: Arc::default(),
    };
    let mut children = Vec::new();
    for role in [Role::Orchestrator, Role::Participants] {
        for _ in 0..2 {
            children.push(spawner.spawn(role).await);
        }
    }
    eprintln!(
        "saga crash: run {run}, seed {seed}, {sagas} sagas, {kills} kills; 4 children started \
         ({:?})",
        started.elapsed()
    );

    // The sagas, at most MAX_IN_FLIGHT running at a time: a step's wait for its reply is then
    // bounded by the crashes, not by a backlog that grows with the number of sagas.
    let orchestrator = topics.orchestrator(orders.clone());
    let starter_store = orders.clone();
    let starter = tokio::spawn(async move {
        let mut ids = Vec::with_capacity(sagas);
        let mut open = 0;
        for i in 0..sagas {
            while open >= MAX_IN_FLIGHT {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let by_status = statuses(&starter_store).await;
                open = ["running", "compensating"]
                    .iter()
                    .filter_map(|s| by_status.get(*s))
                    .sum::<u64>() as usize;
            }
            let scenario = Scenario::of(i);
            let key = format!("order-{i}");
            let saga = orchestrator
                .start(&key, scenario.order(i), None)
                .await
                .unwrap_or_else(|e| panic!("starting saga {key}: {e}"));
            assert!(saga.created, "{key} is a new business key");
            ids.push((saga.saga_id, scenario));
            open += 1;
        }
        ids
    });

    // A kill 1 to 2 s after the previous one, of a random child of a role whose two processes
    // have both run SETTLED_AFTER (the last kill takes the role no kill took yet, if any); each
    // victim's replacement starts REPLACE_AFTER its kill. (Every replacement makes its groups
    // rebalance, which stops their consumers for seconds on tansu: more kills, less progress.)
    let mut killed = BTreeMap::<&str, usize>::new();
    let mut replacements: Vec<(Instant, Role)> = Vec::new();
    let mut next_kill = Instant::now() + Duration::from_millis(1000 + rng.below(1000));
    let mut k = 0;
    while k < kills || !replacements.is_empty() {
        for child in &mut children {
            child.assert_alive();
        }
        if let Some(due) = replacements
            .iter()
            .position(|(at, _)| *at <= Instant::now())
        {
            let (_, role) = replacements.remove(due);
            let child = spawner.spawn(role).await;
            eprintln!("{} started at {:?}", child.name, started.elapsed());
            children.push(child);
            continue;
        }
        if k < kills && Instant::now() >= next_kill {
            // Both processes of the role have run long enough to hold partitions and work.
            let settled = |role: Role| {
                children
                    .iter()
                    .filter(|c| c.role == role && c.started_at.elapsed() >= SETTLED_AFTER)
                    .count()
            };
            let untouched = [Role::Orchestrator, Role::Participants]
                .into_iter()
                .find(|role| !killed.contains_key(role.as_str()));
            let eligible: Vec<usize> = (0..children.len())
                .filter(|i| settled(children[*i].role) == 2)
                .filter(|i| k + 1 < kills || untouched.is_none_or(|r| children[*i].role == r))
                .collect();
            if !eligible.is_empty() {
                let victim = eligible[rng.below(eligible.len() as u64) as usize];
                let child = children.remove(victim);
                let (role, name) = (child.role, child.name.clone());
                child.kill();
                k += 1;
                *killed.entry(role.as_str()).or_default() += 1;
                replacements.push((Instant::now() + REPLACE_AFTER, role));
                eprintln!(
                    "kill {k}: {name} at {:?}; sagas by status {:?}",
                    started.elapsed(),
                    statuses(&orders).await
                );
                next_kill = Instant::now() + Duration::from_millis(1000 + rng.below(1000));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids = starter.await.expect("the starter");
    eprintln!(
        "saga crash: {} sagas started, {kills} kills done at {:?}",
        ids.len(),
        started.elapsed()
    );

    // Every saga ends (bounded).
    let deadline = Instant::now() + SETTLE;
    let mut reported = Instant::now();
    loop {
        for child in &mut children {
            child.assert_alive();
        }
        let by_status = statuses(&orders).await;
        let open: u64 = ["running", "compensating"]
            .iter()
            .filter_map(|s| by_status.get(*s))
            .sum();
        let total: u64 = by_status.values().sum();
        assert_eq!(
            total, sagas as u64,
            "every started saga is stored: {by_status:?}"
        );
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} of {sagas} sagas are still running or compensating {SETTLE:?} after the last \
             kill: {by_status:?}; outboxes pending {:?} / {:?}; committed/end offsets: {}",
            orders.outbox_status().await.map(|s| s.pending),
            services.outbox_status().await.map(|s| s.pending),
            diagnosis::lag_report(&brokers, topics.consumed(), PARTITIONS).await
        );
        if reported.elapsed() >= Duration::from_secs(5) {
            reported = Instant::now();
            eprintln!(
                "at {:?}: sagas by status {by_status:?}; outboxes pending {:?} / {:?}; \
                 committed/end offsets: {}",
                started.elapsed(),
                orders.outbox_status().await.map(|s| s.pending),
                services.outbox_status().await.map(|s| s.pending),
                diagnosis::lag_report(&brokers, topics.consumed(), PARTITIONS).await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let settled_at = started.elapsed();
    drop(children);

    // Each saga: its status, its effects, its compensations.
    let mut done: BTreeMap<&str, usize> = BTreeMap::new();
    let mut retried_compensations = 0;
    let mut longest = Duration::ZERO;
    let mut longest_wait = Duration::ZERO;
    for (id, scenario) in &ids {
        let record = orders
            .saga(*id)
            .await
            .expect("read a saga")
            .expect("the saga exists");
        let history = saga_common::history(&orders, *id).await;
        let instance = eventfold::saga::runtime::load(&orders, *id)
            .await
            .expect("load a saga")
            .expect("the saga exists");
        let first_at = instance.history.first().map(|h| h.at);
        let timeline: Vec<String> = history
            .iter()
            .zip(&instance.history)
            .map(|(h, e)| {
                let ms = first_at.map_or(0, |at| (e.at - at).num_milliseconds());
                format!("{h} +{ms}ms")
            })
            .collect();
        for pair in instance.history.windows(2) {
            let wait = (pair[1].at - pair[0].at).to_std().unwrap_or_default();
            longest_wait = longest_wait.max(wait);
        }
        if history.iter().any(|h| h.starts_with("saga.step_timed_out")) {
            let (flow, unreceived) =
                diagnosis::flow_report(&orders, &services, instance.state.correlation_id).await;
            panic!(
                "saga {id} ({scenario:?}): a step timed out, so the crashes stalled it longer than \
                 {STEP_TIMEOUT:?} (the expected effects assume no timeout): {timeline:?}\n\
                 its flow, as both databases recorded it (which hop lost the message):\n{flow}\n\
                 sent and never received: {unreceived:?}, found on the topics: {}\n\
                 committed/end offsets: {}",
                diagnosis::where_in_topics(
                    &brokers,
                    topics.consumed().into_iter().map(|(topic, _)| topic),
                    PARTITIONS,
                    &unreceived,
                )
                .await,
                diagnosis::lag_report(&brokers, topics.consumed(), PARTITIONS).await
            );
        }
        assert_eq!(
            record.status,
            scenario.status(),
            "saga {id} ({}, {scenario:?}) ended {} ({:?}): {timeline:?}",
            record.business_key,
            record.status,
            record.detail
        );
        *done.entry(scenario.status()).or_default() += 1;
        let took = (record.updated_at - record.started_at)
            .to_std()
            .unwrap_or_default();
        longest = longest.max(took);
        let effects = saga_common::effects(&services, *id).await;
        for effect in &effects {
            assert_eq!(
                effects.iter().filter(|e| *e == effect).count(),
                1,
                "saga {id} ({scenario:?}): effect {effect} more than once: {effects:?}"
            );
        }
        assert_eq!(
            effects,
            scenario.effects(),
            "saga {id} ({scenario:?}): the participants' effects"
        );
        for step in ["reserve", "charge", "ship"] {
            let compensated = history
                .iter()
                .filter(|h| **h == format!("saga.step_compensated:{step}"))
                .count();
            assert_eq!(
                compensated,
                usize::from(scenario.compensated_steps().contains(&step)),
                "saga {id} ({scenario:?}): compensations of {step}: {history:?}"
            );
        }
        if let Some(step) = scenario.failing_compensation {
            assert!(
                history.contains(&format!("saga.compensation_retry_scheduled:{step}")),
                "saga {id} ({scenario:?}): the failed compensation of {step} was retried by a \
                 timer: {history:?}"
            );
            retried_compensations += 1;
        }
    }

    // Stock and money balance.
    let just_ids: Vec<Uuid> = ids.iter().map(|(id, _)| *id).collect();
    let totals = saga_common::effect_totals(&services, &just_ids).await;
    let n = |effect: &str| totals.get(effect).copied().unwrap_or(0) as i64;
    let completed = done.get("completed").copied().unwrap_or(0) as i64;
    assert_eq!(
        (
            n("inventory.reserve") - n("inventory.release"),
            n("payment.charge") - n("payment.refund"),
            n("shipment.schedule")
        ),
        (completed, completed, completed),
        "reserved - released, charged - refunded and scheduled equal the {completed} completed \
         sagas: {totals:?}"
    );

    // Nothing was parked on the way: no consumer message, no outbox row.
    let mut consumers = vec![(&orders, format!("saga:{SAGA_TYPE}"))];
    consumers.extend(
        SERVICES
            .iter()
            .map(|(name, _)| (&services, (*name).to_owned())),
    );
    for (store, consumer) in consumers {
        let parked = store
            .parked_messages(&consumer, 10)
            .await
            .expect("parked messages");
        assert!(
            parked.is_empty(),
            "consumer {consumer} parked messages: {:?}",
            parked
                .iter()
                .map(|p| (&p.message_type, &p.error))
                .collect::<Vec<_>>()
        );
    }
    for (name, store) in [("orders", &orders), ("services", &services)] {
        let status = store.outbox_status().await.expect("outbox status");
        assert_eq!(
            status.dead_letters, 0,
            "the {name} outbox parked rows: {status:?}"
        );
    }

    let counters = spawner.counters.lock().unwrap().clone();
    let duplicates = sum_of(&counters, "eventfold_consumer_duplicates_total");
    let by_consumer: Vec<String> = counters
        .iter()
        .filter_map(|(key, n)| {
            key.strip_prefix("eventfold_consumer_duplicates_total{consumer=")
                .map(|c| format!("{}: {n}", c.trim_end_matches('}')))
        })
        .collect();
    eprintln!(
        "saga crash: {} sagas ({} completed, {} compensated, {retried_compensations} with a \
         compensation retried by a timer), {kills} kills ({killed:?}), {duplicates} duplicates \
         seen by the inboxes ({}), {} inputs ignored by the sagas' fences, {} timers fired, {} \
         relay retries, {} child restarts, longest saga {longest:?}, longest wait \
         for a reply or timer {longest_wait:?} (step timeout {STEP_TIMEOUT:?}), settled at \
         {settled_at:?}, {:.1} s in all",
        ids.len(),
        done.get("completed").copied().unwrap_or(0),
        done.get("compensated").copied().unwrap_or(0),
        by_consumer.join(", "),
        sum_of(&counters, "eventfold_saga_ignored_total"),
        sum_of(&counters, "eventfold_saga_timers_fired_total"),
        sum_of(&counters, "eventfold_outbox_retried_total"),
        sum_of(&counters, "child_restarts"),
        started.elapsed().as_secs_f64()
    );
    println!(
        "FAULTS fault=sigkill component=saga_orchestrator+participants \
         injected=kills:{kills},orchestrator_kills:{},participant_kills:{} \
         checked=sagas:{},completed:{},compensated:{},not_terminal:0,wrong_effects:0,\
         double_effects:0,compensations_out_of_order:0,inbox_duplicates:{duplicates} result=pass",
        killed.get("orchestrator").copied().unwrap_or(0),
        killed.get("participants").copied().unwrap_or(0),
        ids.len(),
        done.get("completed").copied().unwrap_or(0),
        done.get("compensated").copied().unwrap_or(0),
    );
}
