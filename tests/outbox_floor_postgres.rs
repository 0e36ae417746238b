//! The outbox floor on PostgreSQL (ADR 0017): the claim starts at a lower bound on `seq`, past
//! the index entries of deleted rows. The bound never passes a row whose transaction is still
//! open, a retried dead letter below it lowers it, and under many concurrent writers, some of
//! which hold their transactions open for longer than the floor's interval, every committed
//! message is delivered once and in order per key. A property test drives random interleavings
//! of transactions, claims, parks, retries and advances and checks the bound after every step.
mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use eventfold::eventstore::postgres::PgStore;
use eventfold::eventstore::{EventStore, OutboxRelayStore, OutboxRow, OutboxStore, UnitOfWork};
use eventfold::outbox::{InProcessBroker, OutboxMessage, Relay, RelayConfig};
use sqlx::PgPool;
use uuid::Uuid;

/// Longer than the interval at which a store advances the floor (100 ms).
const PAST_INTERVAL: Duration = Duration::from_millis(130);

fn message(key: &str) -> OutboxMessage {
    OutboxMessage::new("floor", key, "floor.tested", b"{}".to_vec())
}

async fn floor(pool: &PgPool) -> u64 {
    floor_in(pool, "eventfold_outbox_floor").await
}

async fn floor_in(pool: &PgPool, table: &str) -> u64 {
    let (floor,): (i64,) = sqlx::query_as(&format!("SELECT floor_seq FROM {table}"))
        .fetch_one(pool)
        .await
        .expect("read the floor");
    u64::try_from(floor).expect("a floor is never negative")
}

async fn commit(store: &PgStore, keys: &[String]) {
    let mut uow = store.begin().await.expect("begin");
    uow.enqueue(keys.iter().map(|k| message(k)).collect())
        .await
        .expect("enqueue");
    uow.commit().await.expect("commit");
}

/// A new relay owner and the slots it leases (every slot: it is alone).
async fn lease(store: &PgStore) -> (Uuid, Vec<u32>) {
    let owner = Uuid::now_v7();
    let slots = store
        .lease_slots(owner, Duration::from_secs(600))
        .await
        .expect("lease");
    (owner, slots)
}

/// Claims what is due, as a relay with every slot and nothing in flight would.
async fn claim(store: &PgStore, slots: &[u32]) -> Vec<OutboxRow> {
    store.claim_outbox(slots, 1000, &[]).await.expect("claim")
}

/// Claims every [`PAST_INTERVAL`] until the floor has risen above `above`, for at most 20 s
/// (the horizon is cluster-wide: a transaction of another test holds it back for a while).
/// Returns the floor.
async fn floor_rises_above(store: &PgStore, pool: &PgPool, slots: &[u32], above: u64) -> u64 {
    floor_in_rises_above(store, pool, "eventfold_outbox_floor", slots, above).await
}

/// [`floor_rises_above`] for the floor table `table`.
async fn floor_in_rises_above(
    store: &PgStore,
    pool: &PgPool,
    table: &str,
    slots: &[u32],
    above: u64,
) -> u64 {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let now = floor_in(pool, table).await;
        if now > above || Instant::now() > until {
            return now;
        }
        tokio::time::sleep(PAST_INTERVAL).await;
        claim(store, slots).await;
    }
}

/// Commits a few rows of fresh keys, claims and deletes everything due, several times, with
/// enough time between claims for the floor to advance. Returns the highest `seq` delivered.
async fn deliver_rounds(store: &PgStore, owner: Uuid, slots: &[u32], tag: &str) -> u64 {
    let mut highest = 0;
    for round in 0..4 {
        let keys: Vec<String> = (0..10).map(|i| format!("{tag}-{round}-{i}")).collect();
        commit(store, &keys).await;
        tokio::time::sleep(PAST_INTERVAL).await;
        let rows = claim(store, slots).await;
        let seqs: Vec<u64> = rows
            .iter()
            .filter(|r| r.message.key.starts_with(tag))
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs.len(), 10, "round {round}: the 10 rows just committed");
        highest = highest.max(*seqs.iter().max().expect("rows"));
        let done = store.complete_outbox(owner, &seqs).await.expect("complete");
        assert_eq!(done, 10);
    }
    highest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_never_passes_a_row_whose_transaction_is_open() {
    let (store, db) = common::postgres().await;
    let (owner, slots) = lease(&store).await;

    // A transaction takes a `seq` and stays open while later rows commit and are delivered.
    let mut held = store.begin().await.expect("begin");
    held.enqueue(vec![message("held")]).await.expect("enqueue");
    let mut first_later = u64::MAX;
    for round in 0..4 {
        let keys: Vec<String> = (0..10).map(|i| format!("later-{round}-{i}")).collect();
        commit(&store, &keys).await;
        tokio::time::sleep(PAST_INTERVAL).await;
        let rows = claim(&store, &slots).await;
        assert!(
            rows.iter().all(|r| r.message.key != "held"),
            "an uncommitted row was claimed"
        );
        let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
        first_later = first_later.min(seqs.iter().copied().min().expect("rows"));
        store.complete_outbox(owner, &seqs).await.expect("complete");
    }
    // The status shows the floor held back: no committed row waits, and the floor trails the
    // next `seq` by at least the 40 rows delivered while the transaction was open.
    let lag = store.outbox_status().await.expect("status").floor_lag;
    assert!(
        lag.is_some_and(|lag| lag >= 40),
        "the floor lag ({lag:?}) shows the rows passed while the floor was held"
    );
    // The held row took its `seq` before every later row; the floor has not passed it.
    let floor_while_open = floor(db.pool()).await;
    assert!(
        floor_while_open < first_later,
        "the floor ({floor_while_open}) passed the open transaction's row (below {first_later})"
    );

    held.commit().await.expect("commit the held row");
    let rows = claim(&store, &slots).await;
    let held_row = rows
        .iter()
        .find(|r| r.message.key == "held")
        .expect("the row committed late is claimed");
    assert!(held_row.seq < first_later);
    store
        .complete_outbox(owner, &[held_row.seq])
        .await
        .expect("complete");

    // With no transaction open, the floor does rise past everything delivered.
    let highest = deliver_rounds(&store, owner, &slots, "after").await;
    let risen = floor_rises_above(&store, db.pool(), &slots, highest).await;
    assert!(
        risen > highest,
        "the floor ({risen}) should have risen past the delivered rows (up to {highest})"
    );
    assert_eq!(
        store.outbox_status().await.expect("status").floor_lag,
        Some(0),
        "nothing waits and the floor is at the next row"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_dead_letter_below_the_floor_is_claimed() {
    let (store, db) = common::postgres().await;
    let (owner, slots) = lease(&store).await;
    commit(&store, &["refused".to_owned()]).await;
    let rows = claim(&store, &slots).await;
    assert_eq!(rows.len(), 1);
    let parked = rows[0].seq;
    store
        .park_outbox(parked, "message too large")
        .await
        .expect("park");

    let highest = deliver_rounds(&store, owner, &slots, "other").await;
    let before = floor_rises_above(&store, db.pool(), &slots, highest.max(parked)).await;
    assert!(
        before > highest && before > parked,
        "the floor ({before}) should have passed the parked row ({parked}) and the delivered ones (up to {highest})"
    );

    assert!(store.retry_dead_letter(parked).await.expect("retry"));
    let after = floor(db.pool()).await;
    assert!(
        after <= parked,
        "the retry lowers the floor ({after}) to the retried row ({parked})"
    );
    let rows = claim(&store, &slots).await;
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![parked],
        "the retried row is claimed again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_advances_with_a_schema_and_a_prefix() {
    let (_, db) = common::postgres().await;
    let store = PgStore::builder(db.pool().clone())
        .naming(
            eventfold::eventstore::Naming::new("ship_")
                .expect("prefix")
                .with_schema("floor_es")
                .expect("schema"),
        )
        .build()
        .await
        .expect("migrate");
    let (owner, slots) = lease(&store).await;
    let highest = deliver_rounds(&store, owner, &slots, "named").await;
    let table = "floor_es.ship_outbox_floor";
    let risen = floor_in_rises_above(&store, db.pool(), table, &slots, highest).await;
    assert!(
        risen > highest,
        "the floor of {table} ({risen}) should have risen past the delivered rows (up to {highest})"
    );
    let (default_floor,): (i64,) = sqlx::query_as("SELECT count(*) FROM eventfold_outbox_floor")
        .fetch_one(db.pool())
        .await
        .expect("the default store's floor exists too");
    assert_eq!(default_floor, 1);
}

/// The floor only makes claims cheaper: when its advance fails (here a trigger refuses the
/// update), claims still return every committed row, from the old floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_work_when_the_floor_cannot_advance() {
    let (store, db) = common::postgres().await;
    common::inject_fault(db.pool(), "floor_fault", "UPDATE", "eventfold_outbox_floor").await;
    let (owner, slots) = lease(&store).await;
    // Every round's claim is due to advance the floor (more than its interval apart), and
    // every advance fails.
    deliver_rounds(&store, owner, &slots, "stuck").await;
    assert_eq!(floor(db.pool()).await, 0, "the floor did not move");
    assert_eq!(store.outbox_status().await.expect("status").pending, 0);
}

/// A small xorshift: the writers' pauses differ from run to run of one task, not between runs.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_with_long_transactions_lose_nothing() {
    let (store, _db) = common::postgres().await;
    let broker = InProcessBroker::new();
    let relay = Relay::new(store.clone(), broker.clone()).with_config(RelayConfig {
        batch_size: 64,
        idle_wait: Duration::from_millis(5),
        ..RelayConfig::default()
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(relay.run(async move {
        let _ = stop_rx.await;
    }));

    // 8 writers; each key belongs to one writer, which commits its messages one after another,
    // so a key's commit order is its order. One transaction in 12 stays open for 150–300 ms,
    // longer than the floor's interval, while the others commit and are delivered; one in 10
    // rolls back.
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((w + 1) * 0x1234_5678));
            let mut committed: Vec<(String, Uuid)> = Vec::new();
            let mut rolled_back: Vec<Uuid> = Vec::new();
            for _ in 0..120 {
                let n = 1 + rng.below(3);
                let messages: Vec<OutboxMessage> = (0..n)
                    .map(|_| message(&format!("w{w}-k{}", rng.below(4))))
                    .collect();
                let mut uow = store.begin().await.expect("begin");
                uow.enqueue(messages.clone()).await.expect("enqueue");
                let pause = if rng.below(12) == 0 {
                    150 + rng.below(150)
                } else {
                    rng.below(4)
                };
                tokio::time::sleep(Duration::from_millis(pause)).await;
                if rng.below(10) == 0 {
                    uow.rollback().await.expect("rollback");
                    rolled_back.extend(messages.iter().map(|m| m.id));
                } else {
                    uow.commit().await.expect("commit");
                    committed.extend(messages.into_iter().map(|m| (m.key, m.id)));
                }
            }
            (committed, rolled_back)
        }));
    }
    let mut committed: Vec<(String, Uuid)> = Vec::new();
    let mut rolled_back: HashSet<Uuid> = HashSet::new();
    for writer in writers {
        let (c, r) = writer.await.expect("writer");
        committed.extend(c);
        rolled_back.extend(r);
    }
    let until = Instant::now() + Duration::from_secs(60);
    while store.outbox_status().await.expect("status").pending > 0 {
        assert!(Instant::now() < until, "the outbox did not drain in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(()).expect("the relay is running");
    relay.await.expect("relay task").expect("relay");

    let records = broker.records("floor");
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut per_key: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for record in &records {
        assert!(
            seen.insert(record.message_id),
            "message {} delivered twice without a crash",
            record.message_id
        );
        assert!(
            !rolled_back.contains(&record.message_id),
            "a rolled-back message was delivered"
        );
        per_key
            .entry(record.key.as_str())
            .or_default()
            .push(record.message_id);
    }
    let mut expected: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for (key, id) in &committed {
        expected.entry(key.as_str()).or_default().push(*id);
    }
    let missing = committed
        .iter()
        .filter(|(_, id)| !seen.contains(id))
        .count();
    assert_eq!(
        missing, 0,
        "{missing} committed messages were never delivered"
    );
    for (key, ids) in &expected {
        assert_eq!(
            per_key.get(key),
            Some(ids),
            "key {key} was delivered out of commit order"
        );
    }
    eprintln!(
        "{} committed messages delivered once and in order, {} rolled back",
        committed.len(),
        rolled_back.len()
    );
}

/// One step of a schedule for [`floor_stays_below_every_live_row`].
#[derive(Debug, Clone)]
enum Step {
    /// Transaction `i` (if none is open there) begins and enqueues `n` messages.
    Open(usize, usize),
    /// Transaction `i` commits.
    Commit(usize),
    /// Transaction `i` rolls back.
    Rollback(usize),
    /// One claim of everything due; the claimed rows are deleted.
    Deliver,
    /// One claim; its first row is parked, the others deleted.
    Park,
    /// The lowest dead letter is retried.
    Retry,
    /// A relay of another process advances the floor (a new store handle: its interval is due).
    Advance,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (0..3usize, 1..3usize).prop_map(|(i, n)| Step::Open(i, n)),
        2 => (0..3usize).prop_map(Step::Commit),
        1 => (0..3usize).prop_map(Step::Rollback),
        2 => Just(Step::Deliver),
        1 => Just(Step::Park),
        1 => Just(Step::Retry),
        4 => Just(Step::Advance),
    ]
}

/// An open transaction of a schedule: the `seq`s and message ids of its rows.
type Open = (
    eventfold::eventstore::postgres::PgUnitOfWork,
    Vec<u64>,
    Vec<Uuid>,
);

/// What a schedule has done so far, to check the floor against.
struct Schedule {
    store: PgStore,
    pool: PgPool,
    owner: Uuid,
    slots: Vec<u32>,
    /// Open transactions and the `seq`s their rows took.
    open: Vec<Option<Open>>,
    committed: HashSet<Uuid>,
    delivered: HashSet<Uuid>,
    next_key: usize,
    /// How many times an advance raised the floor.
    rises: u64,
}

impl Schedule {
    async fn claim_and_settle(&mut self, park_first: bool) {
        let rows = claim(&self.store, &self.slots).await;
        let mut done = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            if park_first && i == 0 {
                self.store
                    .park_outbox(row.seq, "refused")
                    .await
                    .expect("park");
            } else {
                assert!(
                    self.delivered.insert(row.message.id),
                    "row {} claimed after its delivery",
                    row.seq
                );
                done.push(row.seq);
            }
        }
        self.store
            .complete_outbox(self.owner, &done)
            .await
            .expect("complete");
    }

    async fn run(&mut self, step: &Step) {
        match *step {
            Step::Open(i, n) => {
                if self.open[i].is_some() {
                    return;
                }
                let messages: Vec<OutboxMessage> = (0..n)
                    .map(|_| {
                        self.next_key += 1;
                        message(&format!("p{}", self.next_key % 5))
                    })
                    .collect();
                let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
                let mut uow = self.store.begin().await.expect("begin");
                uow.enqueue(messages).await.expect("enqueue");
                let seqs: Vec<(i64,)> =
                    sqlx::query_as("SELECT seq FROM eventfold_outbox WHERE id = ANY($1)")
                        .bind(&ids)
                        .fetch_all(uow.connection())
                        .await
                        .expect("the transaction's own rows");
                let seqs = seqs.into_iter().map(|(s,)| s as u64).collect();
                self.open[i] = Some((uow, seqs, ids));
            }
            Step::Commit(i) => {
                if let Some((uow, _, ids)) = self.open[i].take() {
                    uow.commit().await.expect("commit");
                    self.committed.extend(ids);
                }
            }
            Step::Rollback(i) => {
                if let Some((uow, _, _)) = self.open[i].take() {
                    uow.rollback().await.expect("rollback");
                }
            }
            Step::Deliver => self.claim_and_settle(false).await,
            Step::Park => self.claim_and_settle(true).await,
            Step::Retry => {
                self.retry_a_dead_letter().await;
            }
            Step::Advance => {
                let before = floor(&self.pool).await;
                let other = PgStore::builder(self.pool.clone())
                    .migrate(false)
                    .build()
                    .await
                    .expect("another store handle");
                other.claim_outbox(&[], 1, &[]).await.expect("advance");
                if floor(&self.pool).await > before {
                    self.rises += 1;
                }
            }
        }
    }

    /// Retries the first dead letter, if there is one (the retry must succeed); false when there
    /// was none.
    async fn retry_a_dead_letter(&self) -> bool {
        let dead = self.store.dead_letters(1).await.expect("dead");
        let Some(seq) = dead.first().map(|d| d.row.seq) else {
            return false;
        };
        assert!(self.store.retry_dead_letter(seq).await.expect("retry"));
        true
    }

    /// The floor is at or below every row that is live (committed and not deleted, including
    /// retried dead letters) or may still commit (open transactions).
    async fn check(&self, step: &Step) {
        let now = floor(&self.pool).await;
        let (lowest,): (Option<i64>,) = sqlx::query_as("SELECT min(seq) FROM eventfold_outbox")
            .fetch_one(&self.pool)
            .await
            .expect("lowest live row");
        if let Some(lowest) = lowest {
            assert!(
                now <= lowest as u64,
                "after {step:?}: the floor ({now}) passed the committed row {lowest}"
            );
        }
        for (seqs, i) in self
            .open
            .iter()
            .zip(0..)
            .filter_map(|(o, i)| Some((&o.as_ref()?.1, i)))
        {
            for seq in seqs {
                assert!(
                    now <= *seq,
                    "after {step:?}: the floor ({now}) passed row {seq} of open transaction {i}"
                );
            }
        }
    }

    /// Ends the open transactions (committing them), retries every dead letter and delivers
    /// everything: each committed message is claimed exactly once.
    async fn finish(&mut self) {
        for i in 0..self.open.len() {
            self.run(&Step::Commit(i)).await;
        }
        while self.retry_a_dead_letter().await {}
        for _ in 0..50 {
            if self.committed.is_subset(&self.delivered) {
                break;
            }
            self.claim_and_settle(false).await;
        }
        let missing = self.committed.difference(&self.delivered).count();
        assert_eq!(missing, 0, "{missing} committed rows were never claimed");
        assert_eq!(self.store.outbox_status().await.expect("status").pending, 0);
    }
}

/// Random interleavings of transactions on several connections that enqueue, commit and roll
/// back, with claims, parks, retries and floor advances between them: after every step the floor
/// is at or below every live or still-open row, and in the end every committed row is claimed
/// exactly once.
#[test]
fn floor_stays_below_every_live_row() {
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (store, db) = rt.block_on(common::postgres());
    let (owner, slots) = rt.block_on(lease(&store));
    let rises = std::sync::atomic::AtomicU64::new(0);
    let mut runner = TestRunner::new(Config::with_cases(32));
    runner
        .run(&proptest::collection::vec(step(), 1..40), |steps| {
            rt.block_on(async {
                // A clean start, also after a failed case (while shrinking): no rows, and the
                // floor at 0 (lowering it is always safe; the bound stays true).
                sqlx::raw_sql(
                    "DELETE FROM eventfold_outbox; DELETE FROM eventfold_outbox_dead; \
                     UPDATE eventfold_outbox_floor SET floor_seq = 0",
                )
                .execute(db.pool())
                .await
                .expect("reset");
                let mut schedule = Schedule {
                    store: store.clone(),
                    pool: db.pool().clone(),
                    owner,
                    slots: slots.clone(),
                    open: (0..3).map(|_| None).collect(),
                    committed: HashSet::new(),
                    delivered: HashSet::new(),
                    next_key: 0,
                    rises: 0,
                };
                for step in &steps {
                    schedule.run(step).await;
                    schedule.check(step).await;
                }
                schedule.finish().await;
                rises.fetch_add(schedule.rises, std::sync::atomic::Ordering::Relaxed);
            });
            Ok(())
        })
        .expect("the floor invariant holds");
    let rises = rises.into_inner();
    eprintln!("the floor rose in {rises} advances");
    assert!(
        rises > 0,
        "no advance ever raised the floor: the property was not exercised"
    );
}
