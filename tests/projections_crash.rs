//! Crash test of the projection runner on PostgreSQL: runner processes (this test binary,
//! re-executed in child mode) are killed with SIGKILL and replaced, again and again, while eight
//! writers append. At the end the read model must equal a fresh fold of every event: nothing
//! skipped, nothing applied twice (the ledger table's primary key on the event id would refuse a
//! second apply, which would show up as a parked event).
//!
//! `EVENTFOLD_PROJECTION_CRASH_KILLS` sets the number of runners killed and replaced (default 4;
//! `scripts/faults.sh --long` sets more).
#![cfg(feature = "postgres")]
mod common;
mod projection_common;

use std::process::Child;
use std::time::{Duration, Instant};

use eventfold::StreamId;
use eventfold::eventstore::postgres::PgStore;
use eventfold::eventstore::{EventStore, ExpectedVersion, ProjectionStore};
use eventfold::projections::{ProjectionOptions, Projections};
use projection_common::{
    Ledger, append_any, balances, deposit, fold_log, ledger_state, parked_ledger,
};

const CHILD_ENV: &str = "EVENTFOLD_PROJECTION_CHILD_DATABASE_URL";
/// Runners killed and replaced, unless `EVENTFOLD_PROJECTION_CRASH_KILLS` says otherwise.
const KILLS: usize = 4;

fn projections(store: PgStore) -> Projections<PgStore> {
    Projections::new(store)
        .register_with(Ledger::new(1), ProjectionOptions::default().batch_size(20))
}

/// A runner process; killed (SIGKILL) when dropped.
struct RunnerProcess(Child);

impl RunnerProcess {
    fn spawn(url: &str) -> Self {
        let (child, _line) = common::spawn_until_started(
            common::crash::child_command("runner_process_or_restart_resumes").env(CHILD_ENV, url),
            "the runner process",
            Duration::from_secs(60),
            |line| line.contains("projection runner started"),
        );
        Self(child)
    }

    fn kill(mut self) {
        self.0.kill().expect("SIGKILL a runner");
        let _ = self.0.wait();
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// In child mode (the crash test starts it): runs the projections until killed. Otherwise: a
/// runner stopped and started again resumes from the stored checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_process_or_restart_resumes() {
    if let Ok(url) = std::env::var(CHILD_ENV) {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .expect("connect");
        let store = PgStore::builder(pool).build().await.expect("store");
        let _runner = projections(store)
            .runner()
            .poll_interval(Duration::from_millis(50))
            .start();
        println!("projection runner started");
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    let (store, _db) = common::postgres().await;
    let stream = StreamId::new("account", "r").expect("id");
    let first = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![deposit("a", 1), deposit("b", 2)],
        )
        .await
        .expect("append");
    let runner = projections(store.clone()).runner().start();
    runner.wait_for(first.positions[1]).await.expect("wait");
    runner.stop().await.expect("stop");
    let second = store
        .append(&stream, ExpectedVersion::Any, vec![deposit("a", 10)])
        .await
        .expect("append");
    let runner = projections(store.clone()).runner().start();
    tokio::time::timeout(
        Duration::from_secs(20),
        runner.wait_for(second.positions[0]),
    )
    .await
    .expect("in time")
    .expect("wait");
    let rows = balances(store.pool()).await;
    assert_eq!(rows, vec![("a".to_owned(), 11, 2), ("b".to_owned(), 2, 1)]);
    runner.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runner_processes_apply_every_event_exactly_once() {
    let kills_asked: usize = std::env::var("EVENTFOLD_PROJECTION_CRASH_KILLS")
        .ok()
        .map(|n| {
            n.trim()
                .parse()
                .expect("EVENTFOLD_PROJECTION_CRASH_KILLS is a number")
        })
        .unwrap_or(KILLS);
    assert!(
        kills_asked >= 1,
        "EVENTFOLD_PROJECTION_CRASH_KILLS must be at least 1"
    );
    let (store, db) = common::postgres().await;
    let url = common::database_url(db.name());
    let mut runners = vec![RunnerProcess::spawn(&url), RunnerProcess::spawn(&url)];

    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (store, writing) = (store.clone(), writing.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0usize;
            let mut last = 0;
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                let stream = StreamId::new("account", format!("{w}-{}", i % 4)).expect("id");
                let events = (0..1 + i % 3)
                    .map(|k| deposit(&format!("acct-{}", (w + i + k) % 9), (i % 50) as i64))
                    .collect();
                last = last.max(append_any(&store, &stream, events).await);
                i += 1;
            }
            last
        }));
    }
    let mut kills = 0;
    while kills < kills_asked {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let victim = runners.remove(kills % runners.len());
        victim.kill();
        kills += 1;
        let position = store
            .projection_state("ledger")
            .await
            .expect("state")
            .map_or(0, |s| s.position);
        eprintln!("kill {kills}: the projection was at {position}");
        runners.push(RunnerProcess::spawn(&url));
    }
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut last = 0;
    for w in writers {
        last = last.max(w.await.expect("writer"));
    }
    assert!(
        last > 300,
        "the writers appended while runners were killed ({last})"
    );
    let target = store
        .checkpoint_at(last)
        .await
        .expect("checkpoint")
        .expect("committed");
    // The runners must catch up; they fail the test when the checkpoint stops moving for 60 s
    // (not after a fixed total: the long form's writers get far ahead of two runners that are
    // killed 40 times).
    let catching_up = Instant::now();
    let mut progress = (ledger_state(&store).await.checkpoint, Instant::now());
    loop {
        let state = ledger_state(&store).await;
        if state.checkpoint >= target {
            break;
        }
        if state.checkpoint > progress.0 {
            progress = (state.checkpoint, Instant::now());
        }
        assert!(
            progress.1.elapsed() < Duration::from_secs(60),
            "the runners did not catch up (no progress for 60 s): {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "the runners caught up with {last} events {:?} after the writers stopped",
        catching_up.elapsed()
    );
    drop(runners);
    let fold = fold_log(&store).await;
    let expected: Vec<(String, i64, i64)> = fold.into_iter().map(|(a, (t, n))| (a, t, n)).collect();
    assert_eq!(
        balances(store.pool()).await,
        expected,
        "the read model equals a fresh fold after {kills} kills"
    );
    let (ledger,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM ledger")
        .fetch_one(store.pool())
        .await
        .expect("ledger");
    let head = store.log_head().await.expect("head").position;
    assert_eq!(ledger as u64, head, "one ledger row per event");
    assert!(
        parked_ledger(&store).await.is_empty(),
        "no double apply was refused"
    );
    println!(
        "FAULTS fault=sigkill component=projection_runner injected=kills:{kills} \
         checked=events:{head},read_model_equals_fold:yes,skipped:0,double_applies:0 result=pass"
    );
}
