//! Guarantee 4 on PostgreSQL: the global log never skips and never repeats a committed event,
//! delivers each stream in version order, and never shows rolled-back events, while many writers
//! commit out of order. Also the corner cases of the transaction-horizon design (ADR 0007).
//!
//! `EVENTFOLD_LOG_STRESS_SECS` sets the stress duration (default 5; run 20 or more on demand:
//! `EVENTFOLD_LOG_STRESS_SECS=20 cargo nextest run --all-features --test global_log_postgres`).
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventfold::eventstore::postgres::PgStore;
use eventfold::eventstore::{
    Checkpoint, EventStore, ExpectedVersion, LogFilter, UnitOfWork, Wakeup,
};
use eventfold::{NewEvent, StreamId};
use uuid::Uuid;

fn event(n: u64) -> NewEvent {
    NewEvent::raw("stress.happened", 1, format!(r#"{{"n":{n}}}"#).into_bytes())
}

fn secs() -> u64 {
    std::env::var("EVENTFOLD_LOG_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct Ledger {
    committed: HashMap<Uuid, StreamId>,
    rolled_back: HashSet<Uuid>,
}

#[derive(Clone, Copy, Debug)]
enum Style {
    /// One autocommit append.
    Plain,
    /// Insert, hold the transaction open 0-100 ms, then commit (or roll back one time in ten).
    Held,
    /// Take a transaction id with unrelated SQL first, wait, then append: the transaction's id is
    /// older than appends that commit meanwhile (the per-stream reordering case).
    XidFirst,
}

async fn write_one(store: &PgStore, rng: &mut Rng, writer: usize, ledger: &Mutex<Ledger>) {
    let stream = if rng.below(2) == 0 {
        StreamId::new("shared", format!("s{}", rng.below(4))).unwrap()
    } else {
        StreamId::new("own", format!("w{writer}-{}", rng.below(3))).unwrap()
    };
    let events: Vec<NewEvent> = (0..=rng.below(3)).map(|_| event(rng.next())).collect();
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let style = match rng.below(3) {
        0 => Style::Plain,
        1 => Style::Held,
        _ => Style::XidFirst,
    };
    let committed = match style {
        Style::Plain => {
            store
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .expect("plain append");
            true
        }
        Style::Held | Style::XidFirst => {
            let mut uow = store.begin().await.expect("begin");
            if let Style::XidFirst = style {
                sqlx::query("INSERT INTO scratch (writer) VALUES ($1)")
                    .bind(writer as i32)
                    .execute(uow.connection())
                    .await
                    .expect("unrelated SQL");
                tokio::time::sleep(Duration::from_millis(rng.below(50))).await;
            }
            uow.append(&stream, ExpectedVersion::Any, events)
                .await
                .expect("append in a unit of work");
            tokio::time::sleep(Duration::from_millis(rng.below(100))).await;
            if rng.below(10) == 0 {
                uow.rollback().await.expect("rollback");
                false
            } else {
                uow.commit().await.expect("commit");
                true
            }
        }
    };
    let mut ledger = ledger.lock().unwrap();
    for id in ids {
        if committed {
            ledger.committed.insert(id, stream.clone());
        } else {
            ledger.rolled_back.insert(id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_every_committed_event_exactly_once_in_stream_order() {
    let (store, db) = common::postgres().await;
    stress(store, db).await;
}

/// The same with write coalescing on: plain appends share commits (ADR 0024) while units of work
/// hold transactions open around them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_with_coalescing_every_committed_event_exactly_once_in_stream_order() {
    let (store, db) = common::postgres_coalescing().await;
    stress(store, db).await;
}

async fn stress(store: PgStore, db: eventfold::eventstore::postgres::testing::TestDb) {
    sqlx::query("CREATE TABLE scratch (id BIGSERIAL PRIMARY KEY, writer INT NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let deadline = Instant::now() + Duration::from_secs(secs());

    // The reader: follows the log, and "restarts" at random from its stored checkpoint.
    let seen: Arc<Mutex<Vec<(Uuid, StreamId, u64)>>> = Arc::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    let reader = {
        let (store, seen, stop) = (store.clone(), seen.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng = Rng(0xDEAD_BEEF);
            let mut stored = Checkpoint::START;
            let mut restarts = 0u32;
            loop {
                let mut subscription = store
                    .subscribe(stored, LogFilter::all())
                    .batch_size(1 + rng.below(50) as usize);
                loop {
                    let next = tokio::select! {
                        next = subscription.next() => next.expect("read the log"),
                        () = stop.notified() => return restarts,
                    };
                    seen.lock().unwrap().push((
                        next.event.event_id,
                        next.event.stream_id.clone(),
                        next.event.stream_version,
                    ));
                    stored = subscription.checkpoint();
                    if rng.below(60) == 0 {
                        restarts += 1;
                        break;
                    }
                }
            }
        })
    };

    let mut writers = Vec::new();
    for writer in 0..8 {
        let (store, ledger) = (store.clone(), ledger.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((writer as u64 + 1) * 0x1234_5678));
            while Instant::now() < deadline {
                write_one(&store, &mut rng, writer, &ledger).await;
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let committed = ledger.lock().unwrap().committed.len();
    let caught_up = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < committed && Instant::now() < caught_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give a wrong extra event the chance to show up before stopping.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.notify_one();
    let restarts = reader.await.expect("reader");

    let ledger = ledger.lock().unwrap();
    let seen = seen.lock().unwrap();
    eprintln!(
        "{} committed, {} rolled back, {} seen, {restarts} reader restarts",
        ledger.committed.len(),
        ledger.rolled_back.len(),
        seen.len()
    );
    assert!(
        ledger.committed.len() > 200,
        "too little was written to show anything"
    );
    assert!(!ledger.rolled_back.is_empty(), "no rollback happened");
    assert!(restarts > 0, "the reader never restarted");
    let mut once = HashSet::new();
    for (id, _, _) in seen.iter() {
        assert!(once.insert(*id), "event {id} was delivered twice");
        assert!(
            !ledger.rolled_back.contains(id),
            "rolled-back event {id} was delivered"
        );
        assert!(
            ledger.committed.contains_key(id),
            "event {id} was never committed"
        );
    }
    let missing: Vec<_> = ledger
        .committed
        .keys()
        .filter(|id| !once.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} committed events were skipped, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let mut per_stream: BTreeMap<&StreamId, Vec<u64>> = BTreeMap::new();
    for (_, stream, version) in seen.iter() {
        per_stream.entry(stream).or_default().push(*version);
    }
    for (stream, versions) in per_stream {
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(
            versions, expected,
            "stream {stream} was delivered out of version order"
        );
    }
}

/// A transaction that took its id before another append to the same stream committed, and
/// appends after it: its event must come after that append in the log, not before.
#[tokio::test]
async fn older_transaction_appending_later_keeps_stream_order() {
    let (store, _db) = common::postgres().await;
    let stream = StreamId::new("order", "1").unwrap();
    let mut older = store.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(older.connection())
        .await
        .unwrap();
    let mut newer = store.begin().await.unwrap();
    newer
        .append(&stream, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    newer.commit().await.unwrap();

    // The older transaction is still running: the committed event is held back, not skipped.
    let batch = store
        .read_log(Checkpoint::START, 10, &LogFilter::all())
        .await
        .unwrap();
    assert!(
        batch.events.is_empty(),
        "read past a running older transaction"
    );
    assert!(batch.held_back);

    older
        .append(&stream, ExpectedVersion::Exact(1), vec![event(2)])
        .await
        .unwrap();
    older.commit().await.unwrap();
    // Transactions of other tests in the cluster may hold the horizon for a moment: wait for it.
    let from = batch.checkpoint;
    let deadline = Instant::now() + Duration::from_secs(10);
    let batch = loop {
        let batch = store.read_log(from, 10, &LogFilter::all()).await.unwrap();
        if !batch.held_back || Instant::now() > deadline {
            break batch;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let versions: Vec<u64> = batch
        .events
        .iter()
        .map(|e| e.event.stream_version)
        .collect();
    assert_eq!(
        versions,
        vec![1, 2],
        "stream order holds although the older transaction appended second"
    );
    assert!(batch.events[0].checkpoint < batch.events[1].checkpoint);
    assert!(batch.reached_end && !batch.held_back);
}

/// A long transaction holds readers back (they wait, nothing is skipped), the head reports it
/// with its pid, and everything flows again when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_transaction_holds_readers_back_and_is_reported() {
    let (store, db) = common::postgres().await;
    sqlx::query("CREATE TABLE app_audit (id BIGSERIAL PRIMARY KEY)")
        .execute(db.pool())
        .await
        .unwrap();
    let mut long = db.pool().begin().await.unwrap();
    let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&mut *long)
        .await
        .unwrap();
    sqlx::query("INSERT INTO app_audit DEFAULT VALUES")
        .execute(&mut *long)
        .await
        .unwrap();

    let stream = StreamId::new("order", "2").unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![event(1), event(2), event(3)],
        )
        .await
        .unwrap();

    let mut subscription = store.subscribe(Checkpoint::START, LogFilter::all());
    let waiting = tokio::time::timeout(Duration::from_millis(1200), subscription.next()).await;
    assert!(
        waiting.is_err(),
        "a reader must wait for the long transaction, not skip ahead"
    );

    let head = store.log_head().await.unwrap();
    assert_eq!(head.position, 3);
    assert_eq!(
        head.readable_position, 0,
        "nothing is readable while the older transaction runs"
    );
    let blocker = head
        .blocked_by
        .expect("the blocking transaction is reported");
    assert_eq!(blocker.pid, pid);
    assert!(blocker.running_for >= Duration::from_secs(1));

    long.commit().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .expect("readers recover when the transaction ends")
        .unwrap();
    assert_eq!(first.event.stream_version, 1);
    let mut head = store.log_head().await.unwrap();
    for _ in 0..400 {
        if head.readable_position == head.position {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        head = store.log_head().await.unwrap();
    }
    assert_eq!(
        head.readable_position, head.position,
        "the horizon moved on"
    );
}

/// Appends made through another store instance (another process, as far as the stores know)
/// wake a subscription through LISTEN/NOTIFY, long before its poll interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_readers_of_other_instances() {
    let (reader_store, db) = common::postgres().await;
    let writer_store = PgStore::builder(db.pool().clone()).build().await.unwrap();
    let mut subscription = reader_store
        .subscribe(Checkpoint::START, LogFilter::all())
        .poll_interval(Duration::from_secs(60));
    let stream = StreamId::new("order", "n").unwrap();
    let received = tokio::spawn(async move {
        let started = Instant::now();
        let mut versions = Vec::new();
        for _ in 0..3 {
            versions.push(subscription.next().await.unwrap().event.stream_version);
        }
        (versions, started.elapsed())
    });
    for version in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        writer_store
            .append(
                &stream,
                ExpectedVersion::Exact(version),
                vec![event(version)],
            )
            .await
            .unwrap();
    }
    let (versions, elapsed) = tokio::time::timeout(Duration::from_secs(20), received)
        .await
        .expect("woken by NOTIFY, not by the 60 s poll")
        .unwrap();
    assert_eq!(versions, vec![1, 2, 3]);
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
}

/// A store's own NOTIFYs do not wake its readers a second time: its append wakes them at once,
/// in the process, and the NOTIFY that tells other processes about it (sent within a few
/// milliseconds) is skipped, so a relay or subscription does not query again for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_notify_does_not_wake_readers_twice() {
    let (store, _db) = common::postgres().await;
    let mut wakeup = store.wakeup().await.unwrap();
    let stream = StreamId::new("order", "own").unwrap();
    store
        .clone()
        .append(&stream, ExpectedVersion::Exact(0), vec![event(0)])
        .await
        .unwrap();
    let started = Instant::now();
    wakeup.wait(Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the append wakes at once: {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    wakeup.wait(Duration::from_millis(800)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(750),
        "the store's own NOTIFY is skipped, the wait runs out: woke after {:?}",
        started.elapsed()
    );
}
