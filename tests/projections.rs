//! Projections on SQLite (a temp file per test) and in memory: the runner, read-your-writes,
//! pause/resume, poison events (park, stop, fail fast during rebuilds), in-place and blue/green
//! rebuilds (also resumed after a crash), version bumps, the in-memory flavour and a projection
//! fed from a broker through the consumer's inbox.
#![cfg(feature = "sqlite")]
mod common;
mod projection_common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use eventfold::StreamId;
use eventfold::eventstore::memory::MemoryStore;
use eventfold::eventstore::sqlite::SqliteStore;
use eventfold::eventstore::{
    EventStore, ExpectedVersion, OutboxRouting, OutboxStore, ProjectionStore,
};
use eventfold::outbox::{Consumer, InProcessBroker, Publisher};
use eventfold::projections::{
    ErrorPolicy, MemoryProjection, ProjectionError, ProjectionHandler, ProjectionOptions,
    Projections, RebuildMode, RunnerHandle,
};
use projection_common::{BankEvent, Ledger, POISON, deposit, ledger_state, parked_ledger};

const WAIT: Duration = Duration::from_secs(20);

async fn balances(store: &SqliteStore) -> Vec<(String, i64, i64)> {
    projection_common::balances(store.pool()).await
}

async fn model_equals_fold(store: &SqliteStore) {
    projection_common::assert_balances_equal_fold(store, store.pool()).await;
}

async fn append(store: &impl EventStore, account: &str, amount: i64) -> u64 {
    let stream = StreamId::new("account", account).expect("stream");
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![deposit(account, amount)],
        )
        .await
        .expect("append")
        .positions[0]
}

async fn wait(runner: &RunnerHandle<SqliteStore>, position: u64) {
    tokio::time::timeout(WAIT, runner.wait_for(position))
        .await
        .expect("wait_for in time")
        .expect("wait_for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_catches_up_follows_live_appends_and_pauses() {
    let (store, _file) = common::sqlite().await;
    for i in 0..50 {
        append(&store, &format!("a{}", i % 5), i).await;
    }
    let projections = Projections::new(store.clone())
        .register_with(Ledger::new(1), ProjectionOptions::default().batch_size(7));
    assert_eq!(projections.names(), ["ledger"]);
    assert_eq!(projections.describe()[0].tables, ["balances", "ledger"]);
    let runner = projections
        .runner()
        .poll_interval(Duration::from_millis(100))
        .start();
    let last = append(&store, "a1", 1000).await;
    wait(&runner, last).await;
    model_equals_fold(&store).await;

    let status = projections.status().await.expect("status");
    assert_eq!(status.len(), 1);
    assert_eq!(
        (
            status[0].status.as_str(),
            status[0].position,
            status[0].lag_events,
            status[0].generation
        ),
        ("running", last, 0, 1)
    );

    // Paused through the store (as the CLI does): nothing is applied until resumed.
    projections.pause("ledger").await.expect("pause");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let paused_at = append(&store, "a2", 5).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let state = ledger_state(&store).await;
    assert!(state.paused);
    assert!(
        state.position < paused_at,
        "a paused projection applies nothing"
    );
    let status = projections.status().await.expect("status");
    assert_eq!(
        (status[0].status.as_str(), status[0].lag_events),
        ("paused", 1)
    );
    projections.resume("ledger").await.expect("resume");
    wait(&runner, paused_at).await;
    model_equals_fold(&store).await;
    assert!(matches!(
        projections.pause("nope").await,
        Err(ProjectionError::UnknownProjection(_))
    ));
    runner.stop().await.expect("graceful stop");
}

/// A log of three deposits, the [`POISON`] one in the middle, and the ledger over it: two quick
/// attempts per event, then `policy`. Returns the positions of the poison and the last deposit.
async fn ledger_over_a_poison(
    store: &SqliteStore,
    policy: ErrorPolicy,
) -> (Projections<SqliteStore>, u64, u64) {
    append(store, "a", 1).await;
    let poison = append(store, POISON, 66).await;
    let after = append(store, "b", 2).await;
    let projections = Projections::new(store.clone()).register_with(
        Ledger::new(1),
        ProjectionOptions::default()
            .policy(policy)
            .retries(2, Duration::from_millis(10)),
    );
    (projections, poison, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_is_parked_and_the_projection_goes_on() {
    let (store, _file) = common::sqlite().await;
    let (projections, poison, after) = ledger_over_a_poison(&store, ErrorPolicy::Park).await;
    let runner = projections.runner().start();
    wait(&runner, after).await;
    model_equals_fold(&store).await;
    let parked = parked_ledger(&store).await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].global_position, poison);
    assert!(
        parked[0].error.contains("cannot book"),
        "{}",
        parked[0].error
    );
    let status = projections.status().await.expect("status");
    assert_eq!(
        (status[0].parked, status[0].status.as_str()),
        (1, "running")
    );
    assert!(
        status[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(&parked[0].event_id.to_string()))
    );
    runner.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_stops_the_projection_and_fails_a_rebuild_fast() {
    let (store, _file) = common::sqlite().await;
    let (projections, poison, _) = ledger_over_a_poison(&store, ErrorPolicy::Stop).await;
    let runner = projections.runner().start();
    let err = tokio::time::timeout(WAIT, runner.wait_for(poison + 1))
        .await
        .expect("in time")
        .expect_err("a stopped projection does not reach the end");
    assert!(matches!(err, ProjectionError::NotRunning { .. }), "{err}");
    let state = ledger_state(&store).await;
    assert_eq!(state.status, "failed");
    assert_eq!(
        state.position,
        poison - 1,
        "stopped before the poison event"
    );
    let event_id = store
        .read_stream(&StreamId::new("account", POISON).expect("id"), 1, 1)
        .await
        .expect("read")[0]
        .event_id;
    assert!(
        state
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(&event_id.to_string()))
    );
    assert!(parked_ledger(&store).await.is_empty());
    let err = runner
        .stop()
        .await
        .expect_err("the projection stopped with an error");
    assert!(matches!(err, ProjectionError::Apply { .. }), "{err}");

    // Rebuilds fail fast, naming the event.
    for mode in [
        RebuildMode::InPlace,
        RebuildMode::BlueGreen { drop_old: false },
    ] {
        let err = projections
            .rebuild("ledger", mode, |_| {})
            .await
            .expect_err("fails fast");
        match &err {
            ProjectionError::Apply {
                event_id: id,
                global_position,
                ..
            } => {
                assert_eq!((*id, *global_position), (event_id, poison));
            }
            other => panic!("unexpected error {other}"),
        }
        assert!(err.to_string().contains(&event_id.to_string()), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_rebuild_and_reset_requested_by_another_process() {
    let (store, _file) = common::sqlite().await;
    for i in 0..30 {
        append(&store, &format!("a{}", i % 3), i).await;
    }
    let projections = Projections::new(store.clone()).register(Ledger::new(1));
    let mut seen = Vec::new();
    let progress = std::sync::Mutex::new(&mut seen);
    let report = projections
        .rebuild("ledger", RebuildMode::InPlace, |p| {
            if let Ok(mut seen) = progress.lock() {
                seen.push(p);
            }
        })
        .await
        .expect("rebuild");
    assert_eq!((report.applied, report.generation), (30, 1));
    assert!(
        seen.last()
            .is_some_and(|p| p.applied == 30 && p.position == 30)
    );
    model_equals_fold(&store).await;
    // Again: the tables are reset, nothing is applied twice.
    let report = projections
        .rebuild("ledger", RebuildMode::InPlace, |_| {})
        .await
        .expect("rebuild");
    assert_eq!(report.applied, 30);
    model_equals_fold(&store).await;

    // The standalone CLI only asks; the running service resets and replays.
    let runner = projections.runner().start();
    let last = append(&store, "a0", 7).await;
    wait(&runner, last).await;
    sqlx::query("DELETE FROM balances__g1")
        .execute(store.pool())
        .await
        .expect("damage");
    assert!(
        store
            .request_projection_reset("ledger")
            .await
            .expect("request")
    );
    tokio::time::timeout(WAIT, async {
        loop {
            let state = ledger_state(&store).await;
            if !state.reset_requested && state.position == last && balances(&store).await.len() == 3
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the reset is done by the runner");
    model_equals_fold(&store).await;
    runner.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_build_resumes_after_a_crash_and_switches() {
    let (store, _file) = common::sqlite().await;
    for i in 0..400 {
        append(&store, &format!("a{}", i % 10), 1).await;
    }
    let projections = Projections::new(store.clone())
        .register_with(Ledger::new(1), ProjectionOptions::default().batch_size(20));
    projections
        .rebuild("ledger", RebuildMode::InPlace, |_| {})
        .await
        .expect("first build");

    // A blue/green build that "crashes" (its task is aborted) after a few batches.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let crashing = projections.clone();
    let build = tokio::spawn(async move {
        crashing
            .rebuild(
                "ledger",
                RebuildMode::BlueGreen { drop_old: true },
                move |p| {
                    let _ = tx.send(p.applied);
                },
            )
            .await
    });
    loop {
        let applied = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("progress")
            .expect("progress");
        if applied >= 100 {
            break;
        }
    }
    build.abort();
    let _ = build.await;
    let state = ledger_state(&store).await;
    let building = state.building.expect("the build's generation is kept");
    assert_eq!((state.generation, building.generation), (1, 2));
    assert!(
        building.position >= 100 && building.position < 400,
        "{building:?}"
    );
    model_equals_fold(&store).await;

    // Resumed from its own checkpoint, not from the start.
    let report = projections
        .rebuild("ledger", RebuildMode::BlueGreen { drop_old: true }, |_| {})
        .await
        .expect("resumed build");
    assert_eq!(report.generation, 2);
    assert_eq!(
        report.applied,
        400 - building.position,
        "resumed where it stopped"
    );
    assert_eq!(report.dropped, ["\"balances__g1\"", "\"ledger__g1\""]);
    model_equals_fold(&store).await;
    let state = ledger_state(&store).await;
    assert_eq!((state.generation, state.position), (2, 400));
    assert!(state.building.is_none());
    let old: Vec<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE name LIKE '%__g1'")
            .fetch_all(store.pool())
            .await
            .expect("tables");
    assert!(old.is_empty(), "old tables dropped: {old:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_code_version_is_built_blue_green_by_the_runner() {
    let (store, _file) = common::sqlite().await;
    for i in 0..60 {
        append(&store, &format!("a{}", i % 4), i).await;
    }
    let v1 = Projections::new(store.clone()).register(Ledger::new(1));
    let runner = v1.runner().start();
    wait(&runner, 60).await;
    runner.stop().await.expect("stop");

    let v2 = Projections::new(store.clone()).register(Ledger::new(2));
    let runner = v2.runner().start();
    let last = append(&store, "a9", 9).await;
    tokio::time::timeout(WAIT, async {
        loop {
            let state = ledger_state(&store).await;
            if state.version == 2 && state.generation == 2 && state.position == last {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the runner builds and switches to version 2");
    wait(&runner, last).await;
    model_equals_fold(&store).await;
    runner.stop().await.expect("stop");

    // Old code leaves a newer model alone.
    let runner = v1.runner().start();
    let newest = append(&store, "a1", 1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let state = ledger_state(&store).await;
    assert_eq!(state.version, 2);
    assert!(
        state.position < newest,
        "old code did not apply to the version-2 tables"
    );
    runner.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_projection_folds_and_waits_for_a_position() {
    let store = MemoryStore::new();
    for i in 0..10 {
        append(&store, "a", i).await;
    }
    let totals = MemoryProjection::<std::collections::BTreeMap<String, i64>, BankEvent, _>::new(
        store.clone(),
        |totals, event| {
            let BankEvent::Deposited { account, amount } = &event.payload;
            *totals.entry(account.clone()).or_default() += amount;
        },
    );
    let task = totals.spawn();
    let last = append(&store, "b", 100).await;
    tokio::time::timeout(WAIT, totals.wait_for(last))
        .await
        .expect("in time")
        .expect("wait");
    assert_eq!(totals.read(|t| (t["a"], t["b"])), (45, 100));
    assert!(matches!(
        totals.wait_for(10_000).await,
        Err(ProjectionError::UnknownPosition(10_000))
    ));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_fed_from_a_topic_applies_each_message_once() {
    // Another service's events arrive through the in-process broker, twice.
    let producer = MemoryStore::new().with_outbox(OutboxRouting::new().default_topic("bank"));
    for i in 0..20 {
        append(&producer, &format!("a{}", i % 2), i).await;
    }
    let messages: Vec<_> = producer
        .read_outbox(100)
        .await
        .expect("outbox")
        .into_iter()
        .map(|r| r.message)
        .collect();
    assert_eq!(messages.len(), 20);
    let broker = InProcessBroker::new();
    for result in broker
        .publish(&messages)
        .await
        .into_iter()
        .chain(broker.publish(&messages[..5]).await)
    {
        result.expect("published");
    }

    let (store, _file) = common::sqlite().await;
    let handler = ProjectionHandler::new(&store, Ledger::new(1))
        .await
        .expect("register");
    let mut consumer = Consumer::new(
        "ledger-feed",
        store.clone(),
        broker.consumer("ledger-feed", &["bank"]),
        handler,
    );
    let mut handled = 0;
    let mut duplicates = 0;
    for _ in 0..10 {
        let report = consumer
            .run_once(Duration::from_millis(100))
            .await
            .expect("consume");
        handled += report.handled;
        duplicates += report.duplicates;
    }
    assert_eq!((handled, duplicates), (20, 5));
    let expected = vec![("a0".to_owned(), 90, 10), ("a1".to_owned(), 100, 10)];
    assert_eq!(
        balances(&store).await,
        expected,
        "the view shows each message once"
    );
    let status = Projections::new(store.clone())
        .status()
        .await
        .expect("status");
    assert!(status.iter().any(|s| s.name == "ledger" && !s.registered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_on_one_database_apply_each_event_once() {
    let (store, _file) = common::sqlite().await;
    let projections = Projections::new(store.clone())
        .register_with(Ledger::new(1), ProjectionOptions::default().batch_size(5));
    let a = projections
        .runner()
        .poll_interval(Duration::from_millis(50))
        .start();
    let b = projections
        .runner()
        .poll_interval(Duration::from_millis(50))
        .start();
    let mut writers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut last = 0;
            for i in 0..50 {
                last = append(&store, &format!("w{w}-{}", i % 3), i).await;
            }
            last
        }));
    }
    let mut last = 0;
    for w in writers {
        last = last.max(w.await.expect("writer"));
    }
    wait(&a, last).await;
    wait(&b, last).await;
    model_equals_fold(&store).await;
    assert!(parked_ledger(&store).await.is_empty());
    a.stop().await.expect("stop");
    b.stop().await.expect("stop");
    let _ = Ledger::new(1).poison_fails.load(Ordering::SeqCst);
}

/// The ledger, writing each batch with one `apply_batch` that fails as a whole when the batch
/// holds the poison event (as a multi-row statement would).
struct BatchedLedger {
    inner: Ledger,
    batches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl eventfold::projections::Projection<eventfold::eventstore::sqlite::SqliteUnitOfWork>
    for BatchedLedger
{
    type Event = BankEvent;

    fn name(&self) -> &str {
        "ledger"
    }

    fn tables(&self) -> Vec<String> {
        <Ledger as eventfold::projections::Projection<
            eventfold::eventstore::sqlite::SqliteUnitOfWork,
        >>::tables(&self.inner)
    }

    async fn setup(
        &self,
        uow: &mut eventfold::eventstore::sqlite::SqliteUnitOfWork,
        tables: &eventfold::projections::Tables,
    ) -> Result<(), eventfold::BoxError> {
        self.inner.setup(uow, tables).await
    }

    async fn apply(
        &self,
        uow: &mut eventfold::eventstore::sqlite::SqliteUnitOfWork,
        tables: &eventfold::projections::Tables,
        event: &eventfold::Envelope<BankEvent>,
    ) -> Result<(), eventfold::BoxError> {
        self.inner.apply(uow, tables, event).await
    }

    async fn apply_batch(
        &self,
        uow: &mut eventfold::eventstore::sqlite::SqliteUnitOfWork,
        tables: &eventfold::projections::Tables,
        events: &[eventfold::Envelope<BankEvent>],
    ) -> Result<(), eventfold::BoxError> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        if events.iter().any(
            |e| matches!(&e.payload, BankEvent::Deposited { account, .. } if account == POISON),
        ) {
            return Err("the batch holds an event that cannot be booked".into());
        }
        for event in events {
            self.inner.apply(uow, tables, event).await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_retried_event_by_event_and_only_the_poison_is_parked() {
    let (store, _file) = common::sqlite().await;
    for i in 0..20 {
        append(&store, &format!("a{}", i % 3), i).await;
    }
    let poison = append(&store, POISON, 66).await;
    let mut last = 0;
    for i in 0..20 {
        last = append(&store, &format!("b{}", i % 3), i).await;
    }
    let batches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let projections = Projections::new(store.clone()).register_with(
        BatchedLedger {
            inner: Ledger::new(1),
            batches: batches.clone(),
        },
        ProjectionOptions::default()
            .batch_size(100)
            .policy(ErrorPolicy::Park)
            .retries(2, Duration::from_millis(10)),
    );
    let runner = projections.runner().start();
    wait(&runner, last).await;
    model_equals_fold(&store).await;
    let parked = parked_ledger(&store).await;
    assert_eq!(parked.len(), 1, "only the poison event is parked");
    assert_eq!(parked[0].global_position, poison);
    assert!(
        batches.load(Ordering::SeqCst) >= 1,
        "the events went through apply_batch"
    );
    runner.stop().await.expect("stop");

    // A rebuild fails fast on the same batch, naming the poison event.
    let err = projections
        .rebuild("ledger", RebuildMode::InPlace, |_| {})
        .await
        .expect_err("the poison event fails the rebuild");
    assert!(
        err.to_string().contains(&parked[0].event_id.to_string()),
        "{err}"
    );
}
