//! The outbox floor on PostgreSQL (ADR 0017): the claim starts at a lower bound on `seq`, past
//! the index entries of deleted rows. The bound never passes a row whose transaction is still
//! open, a retried dead letter below it lowers it, and under many concurrent writers, some of
//! which hold their transactions open for longer than the floor's interval, every committed
//! message is delivered once and in order per key.
mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use eventfold::eventstore::postgres::PgStore;
use eventfold::eventstore::{EventStore, OutboxRelayStore, OutboxRow, UnitOfWork};
use eventfold::outbox::{InProcessBroker, OutboxMessage, Relay, RelayConfig};
use sqlx::PgPool;
use uuid::Uuid;

/// Longer than the interval at which a store advances the floor (100 ms).
const PAST_INTERVAL: Duration = Duration::from_millis(130);

fn message(key: &str) -> OutboxMessage {
    OutboxMessage::new("floor", key, "floor.tested", b"{}".to_vec())
}

async fn floor(pool: &PgPool) -> u64 {
    let (floor,): (i64,) = sqlx::query_as("SELECT floor_seq FROM eventfold_outbox_floor")
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

/// Claims what is due, as a relay with every slot and nothing in flight would.
async fn claim(store: &PgStore, slots: &[u32]) -> Vec<OutboxRow> {
    store.claim_outbox(slots, 1000, &[]).await.expect("claim")
}

/// Claims every [`PAST_INTERVAL`] until the floor has risen above `above`, for at most 20 s
/// (the horizon is cluster-wide: a transaction of another test holds it back for a while).
/// Returns the floor.
async fn floor_rises_above(store: &PgStore, pool: &PgPool, slots: &[u32], above: u64) -> u64 {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let now = floor(pool).await;
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
    let owner = Uuid::now_v7();
    let slots = store
        .lease_slots(owner, Duration::from_secs(60))
        .await
        .expect("lease");

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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_dead_letter_below_the_floor_is_claimed() {
    let (store, db) = common::postgres().await;
    let owner = Uuid::now_v7();
    let slots = store
        .lease_slots(owner, Duration::from_secs(60))
        .await
        .expect("lease");
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
