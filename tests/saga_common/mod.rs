//! The saga runtime tests' world: a three-step order saga (reserve stock, charge payment,
//! schedule shipment), participants whose effects are events in the participant's transaction,
//! and a pump that moves messages (relay, consumers, scheduler) until every saga is terminal.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use eventfold::eventstore::{
    EventStore, ExpectedVersion, InboxStore, OutboxRelayStore, SagaStore, StreamAppend, UnitOfWork,
};
use eventfold::outbox::{
    BatchFailure, Consumer, InProcessBroker, InProcessConsumer, Relay, RelayConfig,
};
use eventfold::saga::runtime::{
    Orchestrator, Participant, ParticipantContext, ParticipantHandler, ReplyHandler, Scheduler,
};
use eventfold::saga::{Command, CommandKind, Outcome, RetryPolicy, Saga, SagaDefinition};
use eventfold::{BoxError, NewEvent, StreamId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const SAGA_TYPE: &str = "test.order";

/// The saga data; `fail` names a step whose action the participant refuses, `fail_compensation`
/// a step whose compensation fails `compensation_failures` times.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub cents: u64,
    #[serde(default)]
    pub fail: Option<String>,
    #[serde(default)]
    pub fail_compensation: Option<String>,
}

/// reserve (compensated by release) → charge (refund) → ship, each with `timeout` per attempt,
/// on the command topics of [`SERVICES`].
pub fn definition(timeout: Duration) -> SagaDefinition<Order> {
    definition_on_at("", timeout, 1)
}

/// The same saga at definition `version`; from version 2 on, data of version 1 is migrated
/// (it gains `"migrated": true`, which `Order` ignores).
pub fn definition_at(timeout: Duration, version: u32) -> SagaDefinition<Order> {
    definition_on_at("", timeout, version)
}

/// [`definition`] with every command topic prefixed by `prefix` (`{prefix}inventory.commands`,
/// ...: [`command_topic`]), for tests that share a broker between runs.
pub fn definition_on(prefix: &str, timeout: Duration) -> SagaDefinition<Order> {
    definition_on_at(prefix, timeout, 1)
}

/// [`definition_at`] on the command topics under `prefix` (see [`definition_on`]).
pub fn definition_on_at(prefix: &str, timeout: Duration, version: u32) -> SagaDefinition<Order> {
    let fast = RetryPolicy::fixed(3, Duration::from_millis(20));
    let topic = |service: &str| command_topic(prefix, service);
    let (inventory, payments, shipping) =
        (topic("inventory"), topic("payments"), topic("shipping"));
    let to = |topic: &String, message_type: &'static str| {
        let topic = topic.clone();
        move |o: &Order| Command::new(topic.as_str(), message_type, o)
    };
    let mut builder = Saga::<Order>::define(SAGA_TYPE, version);
    if version >= 2 {
        builder = builder.migrate_from(1, |mut data| {
            data["migrated"] = serde_json::Value::Bool(true);
            Ok(data)
        });
    }
    builder
        .step("reserve", |s| {
            s.invoke(to(&inventory, "inventory.reserve"))
                .compensate(to(&inventory, "inventory.release"))
                .timeout(timeout)
                .compensation_retry(fast.clone())
        })
        .step("charge", |s| {
            s.invoke(to(&payments, "payment.charge"))
                .compensate(to(&payments, "payment.refund"))
                .timeout(timeout)
                .compensation_retry(fast.clone())
        })
        .step("ship", |s| {
            s.invoke(to(&shipping, "shipment.schedule"))
                .timeout(timeout)
        })
        .build()
        .expect("a valid definition")
}

/// The command topic of `service` (a name of [`SERVICES`]) under `prefix`.
pub fn command_topic(prefix: &str, service: &str) -> String {
    let (_, topic) = SERVICES
        .iter()
        .find(|(name, _)| *name == service)
        .unwrap_or_else(|| panic!("no service {service} in SERVICES"));
    format!("{prefix}{topic}")
}

/// One step, `wait`, that nobody answers: it times out after `timeout` and, having no
/// compensation, the saga ends `compensated`. Exactly one timer per instance.
pub fn waiting_definition(timeout: Duration) -> SagaDefinition<Order> {
    Saga::<Order>::define("test.wait", 1)
        .step("wait", |s| {
            s.invoke(|o: &Order| Command::new("nobody.commands", "nobody.answers", o))
                .timeout(timeout)
        })
        .build()
        .expect("a valid definition")
}

/// A participant whose effect is one event per executed command, of the command's message type,
/// in the stream `effect/{saga_id}`, in the consumer's transaction.
pub struct Effects {
    /// How many compensation attempts fail before one succeeds (for `fail_compensation`).
    pub compensation_failures: u32,
}

impl Effects {
    /// What `cx` asks: a refusal or a failing compensation (`Err`), or the effect to append.
    fn effect(&self, cx: &ParticipantContext) -> Result<Result<StreamAppend, Outcome>, BoxError> {
        let order: Order = cx.payload()?;
        let command = &cx.command;
        if command.kind == CommandKind::Action && order.fail.as_deref() == Some(&command.step) {
            return Ok(Err(Outcome::failure(format!("{} refused", command.step))));
        }
        if command.kind == CommandKind::Compensation
            && order.fail_compensation.as_deref() == Some(&command.step)
            && command.attempt <= self.compensation_failures
        {
            return Ok(Err(Outcome::retryable(format!(
                "{} compensation failed (attempt {})",
                command.step, command.attempt
            ))));
        }
        let stream = StreamId::new("effect", command.saga_id.to_string())?;
        let mut event = NewEvent::raw(command.message_type.clone(), 1, b"{}".to_vec());
        event.causation_id = Some(cx.message_id);
        event.correlation_id = command.correlation_id;
        Ok(Ok(StreamAppend::new(
            stream,
            ExpectedVersion::Any,
            vec![event],
        )))
    }

    fn done(cx: &ParticipantContext) -> Outcome {
        Outcome::success(serde_json::json!({ "done": cx.command.message_type }))
    }
}

/// `execute` appends each effect alone; `execute_batch` (what the participants' shared
/// transactions call) appends a batch's effects with one `append_many`.
impl<U: UnitOfWork> Participant<U> for Effects {
    async fn execute(&self, uow: &mut U, cx: &ParticipantContext) -> Result<Outcome, BoxError> {
        match self.effect(cx)? {
            Err(outcome) => Ok(outcome),
            Ok(a) => {
                uow.append(&a.stream_id, a.expected, a.events).await?;
                Ok(Self::done(cx))
            }
        }
    }

    async fn execute_batch(
        &self,
        uow: &mut U,
        contexts: &[ParticipantContext],
    ) -> Result<Vec<Outcome>, BatchFailure> {
        let mut outcomes = Vec::with_capacity(contexts.len());
        let mut appends = Vec::new();
        for (index, cx) in contexts.iter().enumerate() {
            match self.effect(cx).map_err(|e| BatchFailure::at(index, e))? {
                Err(outcome) => outcomes.push(outcome),
                Ok(a) => {
                    appends.push(a);
                    outcomes.push(Self::done(cx));
                }
            }
        }
        uow.append_many(appends).await?;
        Ok(outcomes)
    }
}

/// The effects recorded for a saga, in order (`inventory.reserve`, `payment.charge`, ...).
pub async fn effects<S: EventStore>(store: &S, saga_id: Uuid) -> Vec<String> {
    let stream = StreamId::new("effect", saga_id.to_string()).unwrap();
    store
        .read_stream(&stream, 1, u64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

/// Everything that moves messages in one process: the relay, the three participants' consumers,
/// the orchestrator's reply consumer and its scheduler.
pub struct World<S: SagaStore + InboxStore + OutboxRelayStore> {
    pub store: S,
    pub broker: InProcessBroker,
    pub orchestrator: Orchestrator<S, Order>,
    pub relay: Relay<S, InProcessBroker>,
    pub replies: Consumer<S, InProcessConsumer, ReplyHandler<S, Order>>,
    pub participants: Vec<Consumer<S, InProcessConsumer, ParticipantHandler<S, Effects>>>,
    pub scheduler: Scheduler<S, Order>,
    /// Participants not run by [`pump`](Self::pump) (to make their steps time out).
    pub paused: Vec<&'static str>,
    /// With [`copy_commands`](Self::copy_commands): every command delivered twice.
    pub copies: Option<Copies>,
}

/// Every command published again under a new message id (what a step's retry looks like to the
/// inbox): half at once (the original and its copy in one batch), half a round later (the copy
/// finds the outcome its original recorded). Copies carry the header `test-copy` and are not
/// copied again.
pub struct Copies {
    spies: Vec<InProcessConsumer>,
    later: Vec<eventfold::outbox::OutboxMessage>,
    /// Copies published so far.
    pub published: usize,
}

pub const SERVICES: [(&str, &str); 3] = [
    ("inventory", "inventory.commands"),
    ("payments", "payments.commands"),
    ("shipping", "shipping.commands"),
];

impl<S: SagaStore + InboxStore + OutboxRelayStore> World<S> {
    pub fn new(store: S, timeout: Duration, compensation_failures: u32) -> Self {
        Self::on_broker(
            store,
            InProcessBroker::new(),
            timeout,
            compensation_failures,
        )
    }

    /// A world on an existing broker: what a restarted process finds (the broker kept its
    /// topics and the consumer groups' committed offsets).
    pub fn on_broker(
        store: S,
        broker: InProcessBroker,
        timeout: Duration,
        compensation_failures: u32,
    ) -> Self {
        let orchestrator = Orchestrator::new(store.clone(), definition(timeout));
        let replies =
            orchestrator.reply_consumer(broker.consumer("orders", &[orchestrator.reply_topic()]));
        let participants = SERVICES
            .iter()
            .map(|(name, topic)| {
                ParticipantHandler::new(
                    *name,
                    store.clone(),
                    Effects {
                        compensation_failures,
                    },
                )
                .consumer(broker.consumer(name, &[topic]))
            })
            .collect();
        let scheduler = orchestrator
            .scheduler()
            .lease(Duration::from_secs(5))
            .poll_interval(Duration::from_millis(10));
        // A short lease: a world made after another (a restart) takes the slots over quickly.
        let relay = Relay::new(store.clone(), broker.clone()).with_config(RelayConfig {
            lease_ttl: Duration::from_millis(300),
            ..RelayConfig::default()
        });
        Self {
            store,
            broker,
            orchestrator,
            relay,
            replies,
            participants,
            scheduler,
            paused: Vec::new(),
            copies: None,
        }
    }

    /// From now on every command is delivered twice ([`Copies`]).
    pub fn copy_commands(&mut self) {
        let spies = SERVICES
            .iter()
            .map(|(_, topic)| self.broker.consumer("spy", &[topic]))
            .collect();
        self.copies = Some(Copies {
            spies,
            later: Vec::new(),
            published: 0,
        });
    }

    /// Publishes the copies of the commands relayed since the last round.
    async fn publish_copies(&mut self) {
        use eventfold::outbox::Publisher;
        let Some(copies) = &mut self.copies else {
            return;
        };
        self.broker
            .publish(&std::mem::take(&mut copies.later))
            .await;
        for spy in &mut copies.spies {
            let records = spy.poll(1000, Duration::from_millis(1)).await;
            let mut now = Vec::new();
            for (i, r) in records
                .iter()
                .filter(|r| !r.headers.contains_key("test-copy"))
                .enumerate()
            {
                let mut m = eventfold::outbox::OutboxMessage::new(
                    r.topic.clone(),
                    r.key.clone(),
                    r.message_type.clone(),
                    r.payload.clone(),
                );
                m.headers = r.headers.clone();
                m.headers.insert("test-copy".into(), "1".into());
                copies.published += 1;
                if i % 2 == 0 {
                    now.push(m);
                } else {
                    copies.later.push(m);
                }
            }
            self.broker.publish(&now).await;
            if let Some(last) = records.last() {
                spy.commit(last);
            }
        }
    }

    /// One round of everything.
    pub async fn round(&mut self) {
        self.relay.run_once().await.expect("relay");
        self.publish_copies().await;
        for (consumer, (name, _)) in self.participants.iter_mut().zip(SERVICES) {
            if !self.paused.contains(&name) {
                consumer
                    .run_once(Duration::from_millis(1))
                    .await
                    .expect("participant");
            }
        }
        self.relay.run_once().await.expect("relay");
        self.replies
            .run_once(Duration::from_millis(1))
            .await
            .expect("replies");
        self.scheduler.tick().await.expect("scheduler");
    }

    /// Rounds until every saga in `ids` is terminal (or parked, with `parked_ok`), at most
    /// `limit`.
    pub async fn pump_until_terminal(&mut self, ids: &[Uuid], limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            self.round().await;
            let mut open = 0;
            for id in ids {
                let state = self.orchestrator.state(*id).await.unwrap().unwrap();
                if !state.status.is_terminal() {
                    open += 1;
                }
            }
            if open == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{open} of {} sagas not terminal after {limit:?}",
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Rounds for `d`.
    pub async fn pump_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            self.round().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Saga event types of an instance's history, in order, with the step where there is one.
pub async fn history<S: SagaStore>(store: &S, saga_id: Uuid) -> Vec<String> {
    let instance = eventfold::saga::runtime::load(store, saga_id)
        .await
        .unwrap()
        .expect("the saga exists");
    instance
        .history
        .iter()
        .map(|h| {
            let value = serde_json::to_value(&h.event).unwrap();
            match value.get("step").and_then(|s| s.as_str()) {
                Some(step) => format!("{}:{step}", h.event_type),
                None => h.event_type.clone(),
            }
        })
        .collect()
}

/// Counts of each effect over many sagas.
pub async fn effect_totals<S: EventStore>(store: &S, ids: &[Uuid]) -> BTreeMap<String, usize> {
    let mut totals = BTreeMap::new();
    for id in ids {
        for e in effects(store, *id).await {
            *totals.entry(e).or_insert(0) += 1;
        }
    }
    totals
}

/// An orchestrator of [`waiting_definition`] (each saga's one step times out after `timeout`)
/// and its scheduler, running (lease 500 ms, polled every 10 ms, 16 timers a round) until the
/// returned sender says `true`; the fault tests start sagas on it while they break the store.
pub fn waiting_scheduler<S: SagaStore>(
    store: S,
    timeout: Duration,
) -> (
    Orchestrator<S, Order>,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let orchestrator = Orchestrator::new(store, waiting_definition(timeout));
    let scheduler = orchestrator
        .scheduler()
        .lease(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(10))
        .batch(16);
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(scheduler.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    (orchestrator, stop, running)
}

/// The end state of [`waiting_scheduler`]'s sagas in a PostgreSQL database: `sagas` instances
/// (one per business key), every one `compensated`, each deadline fired exactly once, no timer
/// left.
#[cfg(feature = "postgres")]
pub async fn assert_each_waiting_saga_timed_out_once(pool: &sqlx::PgPool, sagas: i64) {
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    };
    assert_eq!(
        count("SELECT count(*) FROM eventfold_sagas").await,
        sagas,
        "one saga per business key"
    );
    assert_eq!(
        count("SELECT count(*) FROM eventfold_sagas WHERE status <> 'compensated'").await,
        0,
        "every saga ended compensated"
    );
    assert_eq!(
        count("SELECT count(*) FROM eventfold_saga_timers").await,
        0,
        "no timer left"
    );
    let timeouts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT stream_id, count(*) FROM eventfold_events \
         WHERE event_type = 'saga.step_timed_out' GROUP BY stream_id",
    )
    .fetch_all(pool)
    .await
    .expect("timeouts per saga");
    let twice: Vec<_> = timeouts.iter().filter(|(_, n)| *n != 1).collect();
    assert!(
        twice.is_empty(),
        "a deadline fired more than once: {twice:?}"
    );
    assert_eq!(timeouts.len() as i64, sagas, "every saga timed out once");
}
