//! The saga runtime on every backend (memory, SQLite, PostgreSQL) with the in-process broker:
//! the order flow, a failure and a timeout at each step, late successes, idempotent and
//! transactional starts, timers racing replies, two schedulers with many deadlines due at once,
//! restarts with pending deadlines, and parked compensations retried the way the CLI does it.
//!
//! Every test is written once (`saga_runtime_tests!`) and instantiated per backend.
mod common;
mod saga_common;

use std::collections::BTreeSet;
use std::time::Duration;

use eventfold::eventstore::{
    ExpectedVersion, InboxStore, OutboxRelayStore, SagaFilter, SagaStore, SagaTimer, TraceStore,
    UnitOfWork,
};
use eventfold::saga::SagaStatus;
use eventfold::saga::runtime::{Applied, Orchestrator, RETRY_PARKED};
use eventfold::trace::TraceKind;
use eventfold::{NewEvent, StreamId};
use saga_common::*;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

fn order(id: &str) -> Order {
    Order {
        id: id.into(),
        cents: 1200,
        ..Order::default()
    }
}

/// Runs `world` (a participant paused) until the saga `id` has timed out at `step` (at most
/// 20 s), then, with every participant back, until the saga ends and for 300 ms more (the late
/// replies and what they cause).
async fn time_out_then_finish<S: SagaStore + InboxStore + OutboxRelayStore>(
    world: &mut World<S>,
    store: &S,
    id: Uuid,
    step: &str,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !history(store, id)
        .await
        .contains(&format!("saga.step_timed_out:{step}"))
    {
        assert!(std::time::Instant::now() < deadline, "no timeout at {step}");
        world.round().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    world.paused.clear();
    world
        .pump_until_terminal(&[id], Duration::from_secs(20))
        .await;
    world.pump_for(Duration::from_millis(300)).await;
}

/// A success reply to the first attempt of `reserve`.
fn reserved(saga_id: Uuid) -> eventfold::saga::Reply {
    eventfold::saga::Reply {
        saga_id,
        step: "reserve".into(),
        attempt: 1,
        kind: eventfold::saga::CommandKind::Action,
        outcome: eventfold::saga::Outcome::success(serde_json::json!({})),
    }
}

/// The timeout timer of the first attempt of `reserve`, as a scheduler claims it.
fn reserve_timeout(saga_id: Uuid) -> SagaTimer {
    SagaTimer {
        saga_id,
        saga_type: SAGA_TYPE.into(),
        step: "reserve".into(),
        attempt: 1,
        kind: "timeout".into(),
        due_at: chrono::Utc::now(),
    }
}

/// Starts `n` order sagas with keys `{prefix}-{i}`.
async fn start_many<S: SagaStore>(
    orchestrator: &Orchestrator<S, Order>,
    prefix: &str,
    n: usize,
) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("{prefix}-{i}");
        ids.push(
            orchestrator
                .start(&key, order(&key), None)
                .await
                .unwrap()
                .saga_id,
        );
    }
    ids
}

pub async fn order_flow_completes<S: SagaStore + InboxStore + OutboxRelayStore>(store: S) {
    let mut world = World::new(store.clone(), LONG, 0);
    let started = world
        .orchestrator
        .start("o-1", order("o-1"), None)
        .await
        .unwrap();
    world
        .pump_until_terminal(&[started.saga_id], Duration::from_secs(20))
        .await;
    let state = world
        .orchestrator
        .state(started.saga_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.status, SagaStatus::Completed);
    assert_eq!(
        effects(&store, started.saga_id).await,
        ["inventory.reserve", "payment.charge", "shipment.schedule"]
    );
    let record = store.saga(started.saga_id).await.unwrap().unwrap();
    assert_eq!(
        (record.status.as_str(), record.business_key.as_str()),
        ("completed", "o-1")
    );
    assert_eq!(record.version, state.version);
    assert!(
        store.saga_timers(started.saga_id).await.unwrap().is_empty(),
        "a finished saga keeps no timer"
    );
    // The saga's events carry its correlation id; the participants' effects too.
    let stream = StreamId::new("effect", started.saga_id.to_string()).unwrap();
    for e in store.read_stream(&stream, 1, 10).await.unwrap() {
        assert_eq!(e.correlation_id, state.correlation_id);
        assert!(e.causation_id.is_some());
    }
}

pub async fn a_failure_at_each_step_compensates_in_reverse<
    S: SagaStore + InboxStore + OutboxRelayStore,
>(
    store: S,
) {
    let mut world = World::new(store.clone(), LONG, 0);
    let mut ids = Vec::new();
    for step in ["reserve", "charge", "ship"] {
        let data = Order {
            fail: Some(step.into()),
            ..order(step)
        };
        ids.push(
            world
                .orchestrator
                .start(step, data, None)
                .await
                .unwrap()
                .saga_id,
        );
    }
    world
        .pump_until_terminal(&ids, Duration::from_secs(20))
        .await;
    let expected: [&[&str]; 3] = [
        &[],
        &["inventory.reserve", "inventory.release"],
        &[
            "inventory.reserve",
            "payment.charge",
            "payment.refund",
            "inventory.release",
        ],
    ];
    for (id, expected) in ids.iter().zip(expected) {
        let state = world.orchestrator.state(*id).await.unwrap().unwrap();
        assert_eq!(state.status, SagaStatus::Compensated);
        assert_eq!(effects(&store, *id).await, expected, "saga {id}");
    }
    let compensated = store
        .list_sagas(&SagaFilter {
            status: Some("compensated".into()),
            ..SagaFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(compensated.len(), 3);
}

pub async fn a_timeout_at_each_step_compensates_and_late_successes_are_undone<
    S: SagaStore + InboxStore + OutboxRelayStore,
>(
    store: S,
) {
    let mut world = World::new(store.clone(), Duration::from_millis(150), 0);
    for (service, step) in [
        ("inventory", "reserve"),
        ("payments", "charge"),
        ("shipping", "ship"),
    ] {
        world.paused = vec![service];
        let id = world
            .orchestrator
            .start(&format!("timeout-{step}"), order(step), None)
            .await
            .unwrap()
            .saga_id;
        // Wait for the timeout, then bring the participant back: it executes the timed-out
        // command late (and the compensations): the late success is compensated, never
        // continued.
        time_out_then_finish(&mut world, &store, id, step).await;
        let state = world.orchestrator.state(id).await.unwrap().unwrap();
        assert_eq!(state.status, SagaStatus::Compensated, "timeout at {step}");
        let got = effects(&store, id).await;
        let expected: &[&str] = match step {
            "reserve" => &["inventory.reserve", "inventory.release"],
            "charge" => &[
                "inventory.reserve",
                "payment.charge",
                "payment.refund",
                "inventory.release",
            ],
            // No compensation for the shipment: its late effect stays (in any order with the
            // other services' compensations).
            _ => &[
                "inventory.reserve",
                "payment.charge",
                "payment.refund",
                "inventory.release",
                "shipment.schedule",
            ],
        };
        let (mut sorted_got, mut sorted_expected) = (got.clone(), expected.to_vec());
        sorted_got.sort();
        sorted_expected.sort();
        assert_eq!(sorted_got, sorted_expected, "timeout at {step}: {got:?}");
        let at = |t: &str| got.iter().position(|g| g == t);
        if let (Some(refund), Some(release)) = (at("payment.refund"), at("inventory.release")) {
            assert!(refund < release, "compensations in reverse order: {got:?}");
        }
        let h = history(&store, id).await;
        assert!(
            h.contains(&format!("saga.step_timed_out:{step}")),
            "{step}: {h:?}"
        );
        if step != "ship" {
            assert!(
                h.contains(&format!("saga.step_compensated:{step}")),
                "{step}: {h:?}"
            );
        }
        assert_eq!(
            h.iter()
                .filter(|e| e.starts_with("saga.step_compensated"))
                .count(),
            match step {
                "reserve" => 1,
                _ => 2,
            },
            "each started step compensated exactly once: {h:?}"
        );
    }
}

/// The trace of a saga whose charge timed out (`trace <correlation-id>`, read from the store
/// alone): its transitions, the commands it sent and the participants received, their replies,
/// the timeout and the compensations, linked by causation.
pub async fn the_trace_of_a_saga_shows_steps_replies_timeout_and_compensations<
    S: SagaStore + InboxStore + OutboxRelayStore + TraceStore,
>(
    store: S,
) {
    let mut world = World::new(store.clone(), Duration::from_millis(150), 0);
    world.paused = vec!["payments"];
    let id = world
        .orchestrator
        .start("trace-charge", order("charge"), None)
        .await
        .unwrap()
        .saga_id;
    time_out_then_finish(&mut world, &store, id, "charge").await;

    // The correlation id of a saga started without one is its id.
    let records = store.trace(id).await.expect("trace");
    let trace = eventfold::trace::Trace::build(id, records);
    let text = trace.to_text();
    for name in [
        "saga.started",
        "saga.step_started",
        "inventory.reserve",
        "saga.reply",
        "saga.step_timed_out",
        "payment.refund",
        "inventory.release",
        "saga.step_compensated",
        "saga.compensated",
    ] {
        assert!(
            trace.find(name).is_some(),
            "the trace shows {name}:\n{text}"
        );
    }
    // Every command the saga sent was received by its participant, and every reply by the
    // orchestrator: the inbox kept what it received.
    for node in trace.iter() {
        let sent = node.origin().is_some_and(|o| o.kind == TraceKind::Sent);
        if sent {
            assert!(
                !node.deliveries().is_empty(),
                "{} {} was received:\n{text}",
                node.name(),
                node.id()
            );
        }
    }
    // One causal tree from the start: the transitions fired by timers and the events of one
    // transition are linked to what came before them (without that, the timeout and what it
    // caused were roots of their own).
    let roots: Vec<String> = trace.roots().map(|r| r.name().to_owned()).collect();
    assert_eq!(roots, ["saga.started"], "one root:\n{text}");
    let refund = trace.find("payment.refund").expect("refund");
    let timeout = trace.find("saga.step_timed_out").expect("timeout");
    assert!(
        timeout.at() <= refund.at(),
        "the refund follows the timeout:\n{text}"
    );
}

/// The caller's own write in its unit of work: the order whose placement starts the saga.
async fn place<U: UnitOfWork>(uow: &mut U, orders: &StreamId) {
    let placed = NewEvent::raw("order.placed", 1, b"{}".to_vec());
    uow.append(orders, ExpectedVersion::NoStream, vec![placed])
        .await
        .unwrap();
}

pub async fn start_joins_the_callers_unit_of_work_and_is_idempotent<
    S: SagaStore + InboxStore + OutboxRelayStore,
>(
    store: S,
) {
    let world = World::new(store.clone(), LONG, 0);
    let orders = StreamId::new("order", "o-7").unwrap();
    // Rolled back with the caller's own write: no saga, no command.
    let mut uow = store.begin().await.unwrap();
    place(&mut uow, &orders).await;
    let rolled = world
        .orchestrator
        .start_in(&mut uow, "o-7", order("o-7"), None)
        .await
        .unwrap();
    uow.rollback().await.unwrap();
    assert!(store.saga(rolled.saga_id).await.unwrap().is_none());
    assert!(store.saga_by_key(SAGA_TYPE, "o-7").await.unwrap().is_none());
    assert_eq!(store.outbox_status().await.unwrap().pending, 0);
    // Committed with it.
    let mut uow = store.begin().await.unwrap();
    place(&mut uow, &orders).await;
    let first = world
        .orchestrator
        .start_in(&mut uow, "o-7", order("o-7"), None)
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert!(first.created);
    assert_eq!(store.outbox_status().await.unwrap().pending, 1);
    // The same key again, and 16 concurrent starts of a new key: one saga each.
    let again = world
        .orchestrator
        .start("o-7", order("o-7"), None)
        .await
        .unwrap();
    assert_eq!((again.saga_id, again.created), (first.saga_id, false));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let orchestrator = world.orchestrator.clone();
        tasks.push(tokio::spawn(async move {
            orchestrator.start("o-8", order("o-8"), None).await.unwrap()
        }));
    }
    let mut owners = BTreeSet::new();
    let mut created = 0;
    for t in tasks {
        let s = t.await.unwrap();
        owners.insert(s.saga_id);
        created += usize::from(s.created);
    }
    assert_eq!((owners.len(), created), (1, 1), "one saga for one key");
    assert_eq!(store.outbox_status().await.unwrap().pending, 2);
    // New keys started at once with a key started before (the starts of the moment register
    // together): a saga for each new key, the old key its first owner.
    let mut tasks = Vec::new();
    for key in ["o-9", "o-7", "o-10", "o-11"] {
        let orchestrator = world.orchestrator.clone();
        tasks.push(tokio::spawn(async move {
            (
                key,
                orchestrator.start(key, order(key), None).await.unwrap(),
            )
        }));
    }
    let mut new_owners = BTreeSet::new();
    for t in tasks {
        let (key, s) = t.await.unwrap();
        if key == "o-7" {
            assert_eq!((s.saga_id, s.created), (first.saga_id, false), "{key}");
        } else {
            assert!(s.created, "{key} is new");
            new_owners.insert(s.saga_id);
        }
    }
    assert_eq!(new_owners.len(), 3, "one saga per new key");
    assert_eq!(store.outbox_status().await.unwrap().pending, 5);
}

pub async fn a_timer_racing_a_reply_has_one_winner<S: SagaStore + InboxStore + OutboxRelayStore>(
    store: S,
) {
    // 20 sagas whose reserve times out just as its reply comes in: the reply and the timer are
    // applied concurrently; each saga takes exactly one of them for attempt 1.
    let mut world = World::new(store.clone(), Duration::from_millis(30), 0);
    let ids = start_many(&world.orchestrator, "race", 20).await;
    tokio::time::sleep(Duration::from_millis(40)).await;
    let mut tasks = Vec::new();
    for id in &ids {
        let reply = reserved(*id);
        let timer = reserve_timeout(*id);
        let (o1, o2) = (world.orchestrator.clone(), world.orchestrator.clone());
        tasks.push(tokio::spawn(async move {
            o1.handle_reply(reply, Some(Uuid::now_v7())).await.unwrap()
        }));
        tasks.push(tokio::spawn(
            async move { o2.fire_timer(&timer).await.unwrap() },
        ));
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    // A second firing of the same timer changes nothing.
    for id in &ids {
        let timer = reserve_timeout(*id);
        let again = world.orchestrator.fire_timer(&timer).await.unwrap();
        assert!(
            matches!(again, Applied::TimerGone | Applied::Ignored(_)),
            "{again:?}"
        );
    }
    for id in &ids {
        let h = history(&store, *id).await;
        let succeeded = h
            .iter()
            .filter(|e| *e == "saga.step_succeeded:reserve")
            .count();
        let timed_out = h
            .iter()
            .filter(|e| *e == "saga.step_timed_out:reserve")
            .count();
        assert_eq!(succeeded + timed_out, 1, "exactly one winner: {h:?}");
    }
    world.paused.clear();
    world
        .pump_until_terminal(&ids, Duration::from_secs(30))
        .await;
}

pub async fn two_schedulers_fire_many_due_deadlines_once<
    S: SagaStore + InboxStore + OutboxRelayStore,
>(
    store: S,
) {
    let n: usize = std::env::var("EVENTFOLD_SAGA_TIMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let starter = Orchestrator::new(store.clone(), waiting_definition(Duration::from_millis(1)));
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            starter
                .start(&format!("t-{i}"), order("t"), None)
                .await
                .unwrap()
                .saga_id,
        );
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Two schedulers, as in two service instances, each with its own orchestrator.
    let scheduler = || {
        Orchestrator::new(store.clone(), waiting_definition(Duration::from_millis(1)))
            .scheduler()
            .batch(100)
    };
    let (a, b) = (scheduler(), scheduler());
    let (mut fired, mut gone, mut failed, mut rounds) = (0, 0, 0, 0);
    loop {
        let (ra, rb) = tokio::join!(a.tick(), b.tick());
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        fired += ra.fired + rb.fired;
        gone += ra.gone + rb.gone;
        failed += ra.failed + rb.failed;
        rounds += 1;
        assert!(ra.fired > 0 || rb.fired > 0 || ra.claimed + rb.claimed == 0 || rounds < 3 * n);
        if ra.claimed + rb.claimed == 0 {
            break;
        }
    }
    assert_eq!(failed, 0);
    assert_eq!(
        fired, n,
        "every deadline fired exactly once ({gone} lost a race)"
    );
    for id in &ids {
        let h = history(&store, *id).await;
        assert_eq!(
            h.iter()
                .filter(|e| *e == "saga.step_timed_out:wait")
                .count(),
            1,
            "{h:?}"
        );
        assert_eq!(
            h.last().map(String::as_str),
            Some("saga.compensated"),
            "{h:?}"
        );
    }
    let counts = store.count_sagas().await.unwrap();
    assert!(
        counts.contains(&("test.wait".to_owned(), "compensated".to_owned(), n as u64)),
        "{counts:?}"
    );
    eprintln!("{n} deadlines due at once: {fired} fired by two schedulers in {rounds} rounds");
}

pub async fn a_restarted_orchestrator_fires_pending_deadlines<
    S: SagaStore + InboxStore + OutboxRelayStore,
>(
    store: S,
) {
    let ids = {
        let world = World::new(store.clone(), Duration::from_millis(100), 0);
        // The world (orchestrator, scheduler, consumers) is dropped at the end of this block,
        // deadlines pending.
        start_many(&world.orchestrator, "r", 5).await
    };
    for id in &ids {
        assert_eq!(store.saga_timers(*id).await.unwrap().len(), 1);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The new process finds the deadlines due and fires them first: every reserve timed out,
    // is compensated (the release runs after the late reserve), and the saga ends compensated.
    let mut world = World::new(store.clone(), Duration::from_millis(100), 0);
    let fired = world.scheduler.tick().await.unwrap();
    assert_eq!((fired.claimed, fired.fired), (5, 5), "{fired:?}");
    world
        .pump_until_terminal(&ids, Duration::from_secs(20))
        .await;
    for id in &ids {
        let state = world.orchestrator.state(*id).await.unwrap().unwrap();
        assert_eq!(state.status, SagaStatus::Compensated);
    }
}

pub async fn a_parked_compensation_is_retried_through_a_stored_request<
    S: SagaStore + InboxStore + OutboxRelayStore,
>(
    store: S,
) {
    // The refund fails 5 times; its policy allows 3 attempts: the saga parks.
    let mut world = World::new(store.clone(), LONG, 5);
    let data = Order {
        fail: Some("ship".into()),
        fail_compensation: Some("charge".into()),
        ..order("p-1")
    };
    let id = world
        .orchestrator
        .start("p-1", data, None)
        .await
        .unwrap()
        .saga_id;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        world.round().await;
        let state = world.orchestrator.state(id).await.unwrap().unwrap();
        if state.status.is_parked() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{:?}", state.status);
    }
    let record = store.saga(id).await.unwrap().unwrap();
    assert_eq!(record.status, "compensation_failed");
    assert!(record.detail.unwrap().contains("charge"));
    // What `sagas retry` does: a stored request the scheduler fires.
    let now = chrono::Utc::now() - chrono::TimeDelta::seconds(1);
    let request = SagaTimer {
        saga_id: id,
        saga_type: SAGA_TYPE.into(),
        step: String::new(),
        attempt: 0,
        kind: RETRY_PARKED.into(),
        due_at: now,
    };
    assert!(store.request_saga_timer(&request).await.unwrap());
    world
        .pump_until_terminal(&[id], Duration::from_secs(20))
        .await;
    let state = world.orchestrator.state(id).await.unwrap().unwrap();
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(
        effects(&store, id).await,
        [
            "inventory.reserve",
            "payment.charge",
            "payment.refund",
            "inventory.release"
        ]
    );
}

pub async fn a_new_definition_version_resumes_old_instances<
    S: SagaStore + InboxStore + OutboxRelayStore,
>(
    store: S,
) {
    // Started by version 1; the service is redeployed with version 2 before the first reply.
    let v1 = Orchestrator::new(store.clone(), definition_at(LONG, 1));
    let old = v1.start("v-1", order("v-1"), None).await.unwrap().saga_id;
    let mut world = World::new(store.clone(), LONG, 0);
    world.orchestrator = Orchestrator::new(store.clone(), definition_at(LONG, 2));
    world.replies = world.orchestrator.reply_consumer(
        world
            .broker
            .consumer("orders", &[world.orchestrator.reply_topic()]),
    );
    world.scheduler = world.orchestrator.scheduler();
    world
        .pump_until_terminal(&[old], Duration::from_secs(20))
        .await;
    let state = world.orchestrator.state(old).await.unwrap().unwrap();
    assert_eq!(state.status, SagaStatus::Completed);
    assert_eq!(state.definition_version, 2);
    // The migration ran once, on the first input the new code decided, and is recorded.
    let instance = eventfold::saga::runtime::load(&store, old)
        .await
        .unwrap()
        .unwrap();
    let migrated: Vec<_> = instance
        .history
        .iter()
        .filter_map(|h| match &h.event {
            eventfold::saga::SagaEvent::Migrated { data, .. } => Some(data.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(migrated.len(), 1, "{:?}", history(&store, old).await);
    assert_eq!(migrated[0]["migrated"], true, "{}", migrated[0]);
    assert_eq!(
        store.saga(old).await.unwrap().unwrap().definition_version,
        2
    );
    // An instance of version 2 is refused by version 1 code (a rolling deployment leaves it to
    // the new nodes): a typed error naming both versions, nothing written.
    let new = world
        .orchestrator
        .start("v-2", order("v-2"), None)
        .await
        .unwrap()
        .saga_id;
    let reply = reserved(new);
    let before = store.saga(new).await.unwrap().unwrap().version;
    let err = v1
        .handle_reply(reply, None)
        .await
        .expect_err("newer definition");
    assert!(
        matches!(
            err,
            eventfold::saga::runtime::RuntimeError::Machine(
                eventfold::saga::SagaError::NewerDefinition {
                    instance_version: 2,
                    known_version: 1,
                    ..
                }
            )
        ),
        "{err}"
    );
    assert_eq!(store.saga(new).await.unwrap().unwrap().version, before);
}

/// The orchestrator's state cache (ADR 0029) never uses a state that did not commit. The
/// timeout of `reserve` is written by one orchestrator in a unit of work that is then rolled
/// back (its cache kept what it wrote); another orchestrator, with a cache of its own (another
/// process), commits a failure reply of the same step, which ends the saga at the same stream
/// version. The first orchestrator then gets the late success of `reserve`: it must see the
/// ended saga and ignore it, not resume from its own rolled-back timeout; the history holds no
/// trace of the timeout; the row names the stream's last event. (Debug builds also check every
/// cache hit against the stream.)
pub async fn the_state_cache_never_uses_a_rolled_back_transition<S: SagaStore>(store: S) {
    let first = Orchestrator::new(store.clone(), definition(Duration::from_millis(30)));
    let second = Orchestrator::new(store.clone(), definition(Duration::from_millis(30)));
    let id = first
        .start("cache-1", order("cache-1"), None)
        .await
        .unwrap()
        .saga_id;
    tokio::time::sleep(Duration::from_millis(40)).await;

    let mut uow = store.begin().await.unwrap();
    let rolled_back = first
        .fire_timer_in(&mut uow, &reserve_timeout(id))
        .await
        .unwrap();
    uow.rollback().await.unwrap();
    let Applied::Transitioned {
        version: rolled_back_version,
        ..
    } = rolled_back
    else {
        panic!("the timeout moves the saga: {rolled_back:?}");
    };

    let mut failed = reserved(id);
    failed.outcome = eventfold::saga::Outcome::failure("out of stock");
    let committed = second
        .handle_reply(failed, Some(Uuid::now_v7()))
        .await
        .unwrap();
    let Applied::Transitioned {
        version: committed_version,
        ..
    } = committed
    else {
        panic!("the failure moves the saga: {committed:?}");
    };
    assert_eq!(
        committed_version, rolled_back_version,
        "the committed failure takes the version the rolled-back timeout had"
    );

    let late = first
        .handle_reply(reserved(id), Some(Uuid::now_v7()))
        .await
        .unwrap();
    assert!(
        matches!(late, Applied::Ignored(_)),
        "the saga ended with the failure; the late success changes nothing: {late:?}"
    );
    let h = history(&store, id).await;
    assert!(
        !h.iter().any(|e| e.starts_with("saga.step_timed_out")),
        "the rolled-back timeout left nothing: {h:?}"
    );
    let state = first.state(id).await.unwrap().unwrap();
    let record = store.saga(id).await.unwrap().unwrap();
    let stream = eventfold::saga::runtime::instance_stream(id).unwrap();
    let events = store.read_stream(&stream, 1, 1_000).await.unwrap();
    assert_eq!(record.version, state.version);
    assert_eq!(
        record.last_event_id,
        events.last().map(|e| e.event_id),
        "the row names the stream's last event"
    );
}

/// Participants with shared commits handle their commands in batches
/// (`ParticipantHandler::handle_batch`: the stored outcomes read at once, the new ones recorded
/// at once, the replies enqueued at once). Every command is delivered twice, the copy under a
/// new message id (what a step's retry looks like to the inbox), in the same batch or the next: each
/// request is still executed once, the sagas end as their scenarios say, and each effect is
/// written once.
pub async fn participants_in_batches_execute_each_request_once<
    S: SagaStore + InboxStore + OutboxRelayStore,
>(
    store: S,
) {
    let mut world = World::new(store.clone(), LONG, 0);
    world.participants = std::mem::take(&mut world.participants)
        .into_iter()
        .map(|consumer| consumer.shared_commits(true))
        .collect();
    world.copy_commands();
    let scenarios: [(Option<&str>, SagaStatus, &[&str]); 4] = [
        (
            None,
            SagaStatus::Completed,
            &["inventory.reserve", "payment.charge", "shipment.schedule"],
        ),
        (Some("reserve"), SagaStatus::Compensated, &[]),
        (
            Some("charge"),
            SagaStatus::Compensated,
            &["inventory.reserve", "inventory.release"],
        ),
        (
            Some("ship"),
            SagaStatus::Compensated,
            &[
                "inventory.reserve",
                "payment.charge",
                "payment.refund",
                "inventory.release",
            ],
        ),
    ];
    let mut ids = Vec::new();
    for i in 0..24 {
        let key = format!("batch-{i}");
        let data = Order {
            fail: scenarios[i % 4].0.map(str::to_owned),
            ..order(&key)
        };
        ids.push(
            world
                .orchestrator
                .start(&key, data, None)
                .await
                .unwrap()
                .saga_id,
        );
    }
    world
        .pump_until_terminal(&ids, Duration::from_secs(60))
        .await;
    let copies = world.copies.as_ref().map_or(0, |c| c.published);
    assert!(
        copies >= 24 * 2,
        "every command was delivered twice ({copies} copies)"
    );
    for (i, id) in ids.iter().enumerate() {
        let (_, status, expected) = &scenarios[i % 4];
        let state = world.orchestrator.state(*id).await.unwrap().unwrap();
        assert_eq!(&state.status, status, "saga {i}");
        assert_eq!(
            effects(&store, *id).await,
            *expected,
            "saga {i}: each request executed once"
        );
    }
}

macro_rules! saga_runtime_tests {
    ($backend:ident, $fresh:path) => {
        mod $backend {
            use super::*;
            saga_runtime_tests!(@each $fresh;
                order_flow_completes,
                a_failure_at_each_step_compensates_in_reverse,
                a_timeout_at_each_step_compensates_and_late_successes_are_undone,
                start_joins_the_callers_unit_of_work_and_is_idempotent,
                a_timer_racing_a_reply_has_one_winner,
                two_schedulers_fire_many_due_deadlines_once,
                a_restarted_orchestrator_fires_pending_deadlines,
                a_parked_compensation_is_retried_through_a_stored_request,
                a_new_definition_version_resumes_old_instances,
                the_trace_of_a_saga_shows_steps_replies_timeout_and_compensations,
                the_state_cache_never_uses_a_rolled_back_transition,
                participants_in_batches_execute_each_request_once,
            );
        }
    };
    (@each $fresh:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (store, _guard) = $fresh().await;
                super::$name(store).await;
            }
        )*
    };
}

saga_runtime_tests!(memory, common::memory);
saga_runtime_tests!(sqlite, common::sqlite);
saga_runtime_tests!(postgres, common::postgres);
