//! The consumer and its inbox on every backend: a message delivered twice (or redelivered after a
//! crash before the offset commit) takes effect once; a poison message is parked after its
//! attempts and the others go on; the offset is committed only after the handler's transaction.
mod common;
#[path = "consumer/overlap.rs"]
mod overlap;

use std::collections::HashSet;
use std::time::Duration;

use common::Ledger;
use eventfold::eventstore::{EventStore, ExpectedVersion, InboxStore, UnitOfWork};
use eventfold::outbox::{Consumer, InProcessBroker, OutboxMessage, Publisher};
use eventfold::{NewEvent, StreamId};
use overlap::overlapped_commits_per_key;

fn payment(i: u32, kind: &str) -> OutboxMessage {
    OutboxMessage::new(
        "payments",
        format!("p-{}", i % 7),
        kind,
        format!(r#"{{"n":{i}}}"#).into_bytes(),
    )
}

/// Runs `consumer` until a poll finds nothing; what it did in all.
async fn drain<S, Src, H>(consumer: &mut Consumer<S, Src, H>) -> eventfold::outbox::ConsumerReport
where
    S: InboxStore,
    Src: eventfold::outbox::MessageSource,
    H: eventfold::outbox::Handler<S::UnitOfWork>,
{
    let mut total = eventfold::outbox::ConsumerReport::default();
    loop {
        let report = consumer.run_once(Duration::from_millis(100)).await.unwrap();
        if report.handled + report.duplicates + report.parked == 0 {
            return total;
        }
        total.handled += report.handled;
        total.duplicates += report.duplicates;
        total.parked += report.parked;
    }
}

/// The consumer `ledger` of the topic `payments`, handling with a [`Ledger`].
fn ledger_consumer<S: InboxStore>(
    store: &S,
    broker: &InProcessBroker,
) -> Consumer<S, eventfold::outbox::InProcessConsumer, Ledger> {
    Consumer::new(
        "ledger",
        store.clone(),
        broker.consumer("ledger", &["payments"]),
        Ledger::default(),
    )
}

async fn exactly_once_effects<S: InboxStore>(store: S) {
    let broker = InProcessBroker::new();
    let messages: Vec<_> = (0..40).map(|i| payment(i, "payment.captured")).collect();
    broker.publish(&messages).await;
    broker.publish(&messages[..10]).await; // the relay published some twice (at-least-once)

    let mut consumer = ledger_consumer(&store, &broker);
    // Crash after handling 25 records, before their offsets are committed: handle them by hand
    // through the inbox, but never acknowledge them to the broker.
    let mut crashed = broker.consumer("ledger", &["payments"]);
    for record in crashed.poll(25, Duration::from_millis(100)).await {
        let mut uow = store.begin().await.unwrap();
        assert!(uow.mark_inbox("ledger", record.message_id).await.unwrap());
        common::note(&mut uow, &record).await.unwrap();
        uow.commit().await.unwrap();
    }
    drop(crashed);

    let total = drain(&mut consumer).await;
    let done = common::effects(&store).await;
    let unique: HashSet<_> = done.iter().collect();
    assert_eq!(done.len(), 40, "every message took effect");
    assert_eq!(unique.len(), 40, "and only once");
    assert_eq!(
        total.handled, 15,
        "the 25 handled before the crash were not handled again"
    );
    assert_eq!(
        total.duplicates, 35,
        "25 redelivered after the crash + 10 published twice"
    );
    // Everything was acknowledged: a new consumer of the group gets nothing.
    let mut after = broker.consumer("ledger", &["payments"]);
    assert!(after.poll(100, Duration::from_millis(50)).await.is_empty());
}

/// A broker of one partition holding three payments, the second a poison (the [`Ledger`] fails
/// on it every time).
async fn with_a_poison() -> (InProcessBroker, Vec<OutboxMessage>) {
    let broker = InProcessBroker::new().with_default_partitions(1);
    let messages = vec![
        payment(1, "payment.captured"),
        payment(2, "payment.poison"),
        payment(3, "payment.captured"),
    ];
    broker.publish(&messages).await;
    (broker, messages)
}

async fn poison_is_parked_others_flow<S: InboxStore>(store: S) {
    let (broker, messages) = with_a_poison().await;
    let mut consumer = ledger_consumer(&store, &broker)
        .max_attempts(3)
        .backoff(Duration::from_millis(1));
    let report = consumer.run_once(Duration::from_millis(100)).await.unwrap();
    assert_eq!((report.handled, report.parked), (2, 1));
    assert_eq!(
        common::effects(&store).await,
        vec![messages[0].id, messages[2].id]
    );
    let parked = store.parked_messages("ledger", 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (parked[0].message_id, parked[0].attempts),
        (messages[1].id, 3)
    );
    assert!(parked[0].error.contains("no amount"), "{}", parked[0].error);
    // Its offset was committed too: the group does not see it again.
    let mut after = broker.consumer("ledger", &["payments"]);
    assert!(after.poll(10, Duration::from_millis(50)).await.is_empty());
}

/// With shared commits and one attempt, a poison message fails its only attempt inside the
/// shared transaction and is parked with that attempt's error (it once was parked with an empty
/// one), and the others commit.
async fn poison_with_one_attempt_keeps_its_error<S: InboxStore>(store: S) {
    let (broker, messages) = with_a_poison().await;
    let mut consumer = ledger_consumer(&store, &broker)
        .shared_commits(true)
        .max_attempts(1);
    let report = consumer.run_once(Duration::from_millis(100)).await.unwrap();
    assert_eq!((report.handled, report.parked), (2, 1));
    let parked = store.parked_messages("ledger", 10).await.unwrap();
    assert_eq!(
        (parked.len(), parked[0].message_id, parked[0].attempts),
        (1, messages[1].id, 1)
    );
    assert!(
        parked[0].error.contains("no amount"),
        "{:?}",
        parked[0].error
    );
}

/// The [`Ledger`]'s handler, but the first attempt of every 11th message fails (a transient
/// failure) and poison fails always; counts the attempts per message.
#[derive(Default)]
struct Flaky {
    attempts: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, u32>>,
}

impl<U: UnitOfWork> eventfold::outbox::Handler<U> for Flaky {
    async fn handle(
        &self,
        uow: &mut U,
        record: &eventfold::outbox::Record,
    ) -> Result<(), eventfold::BoxError> {
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let n = attempts.entry(record.message_id).or_default();
            *n += 1;
            *n
        };
        // Written before failing: what a failing handler wrote must be undone with it.
        common::note(uow, record).await?;
        let n: u32 = serde_json::from_slice::<serde_json::Value>(&record.payload)?["n"]
            .as_u64()
            .unwrap_or_default() as u32;
        if record.message_type == "payment.poison" {
            return Err(format!("cannot handle {}: no amount", record.message_id).into());
        }
        if n % 11 == 0 && attempt == 1 {
            return Err(format!("{}: the first attempt fails", record.message_id).into());
        }
        Ok(())
    }
}

/// Publishes 300 payments (every 37th poison) and the first 20 again (duplicates, some in the
/// same poll), and drains them with `handler` in a consumer with shared commits and 3 attempts:
/// the messages and what the consumer did.
async fn flaky_run<S, H>(
    store: &S,
    handler: H,
) -> (Vec<OutboxMessage>, eventfold::outbox::ConsumerReport)
where
    S: InboxStore,
    H: eventfold::outbox::Handler<S::UnitOfWork>,
{
    let broker = InProcessBroker::new().with_default_partitions(1);
    let messages: Vec<_> = (1..=300)
        .map(|i| {
            let kind = if i % 37 == 0 {
                "payment.poison"
            } else {
                "payment.captured"
            };
            payment(i, kind)
        })
        .collect();
    broker.publish(&messages).await;
    broker.publish(&messages[..20]).await; // duplicates, some in the same poll
    let mut consumer = Consumer::new(
        "ledger",
        store.clone(),
        broker.consumer("ledger", &["payments"]),
        handler,
    )
    .shared_commits(true)
    .max_attempts(3)
    .backoff(Duration::from_millis(1));
    let total = drain(&mut consumer).await;
    (messages, total)
}

/// Shared commits: the messages of a polled batch share a transaction, their inbox marks
/// written first in one go. A failing handler (transient or poison) is undone alone, retried before the
/// messages after it, and parked after its attempts; duplicates in the batch are skipped; every
/// other message takes effect once, in order.
async fn undo_each_failure_alone<S: InboxStore>(store: S) -> Vec<uuid::Uuid> {
    let flaky = std::sync::Arc::new(Flaky::default());
    let (messages, total) = flaky_run(&store, ArcHandler(flaky.clone())).await;
    let poison: Vec<_> = messages
        .iter()
        .filter(|m| m.message_type == "payment.poison")
        .map(|m| m.id)
        .collect();
    let good: Vec<_> = messages
        .iter()
        .filter(|m| m.message_type != "payment.poison")
        .map(|m| m.id)
        .collect();
    assert_eq!(
        (total.handled, total.duplicates, total.parked),
        (good.len(), 20, poison.len())
    );
    assert_eq!(
        common::effects(&store).await,
        good,
        "each good message once, in order"
    );
    poison_parked_after_three_attempts(&store, &flaky, &poison).await;
    good
}

/// Each poison message of a [`flaky_run`] was attempted 3 times in all and parked with 3
/// attempts, in order, and nothing else was parked.
async fn poison_parked_after_three_attempts<S: InboxStore>(
    store: &S,
    flaky: &Flaky,
    poison: &[uuid::Uuid],
) {
    let parked: Vec<_> = store
        .parked_messages("ledger", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.message_id, p.attempts))
        .collect();
    assert_eq!(parked, poison.iter().map(|id| (*id, 3)).collect::<Vec<_>>());
    let attempts = flaky.attempts.lock().unwrap();
    for id in poison {
        assert_eq!(attempts[id], 3, "poison {id}: attempts in all");
    }
}

/// A shared handler (the consumer owns its handler).
struct ArcHandler<H>(std::sync::Arc<H>);

impl<U: UnitOfWork, H: eventfold::outbox::Handler<U>> eventfold::outbox::Handler<U>
    for ArcHandler<H>
{
    async fn handle(
        &self,
        uow: &mut U,
        record: &eventfold::outbox::Record,
    ) -> Result<(), eventfold::BoxError> {
        self.0.handle(uow, record).await
    }

    async fn handle_batch(
        &self,
        uow: &mut U,
        batch: &eventfold::outbox::Batch<'_>,
    ) -> Result<(), eventfold::outbox::BatchFailure> {
        self.0.handle_batch(uow, batch).await
    }
}

/// A handler that appends each record to the stream of its key (`ledger/<key>`), with the
/// expected version the per-key order implies (the `n`-th record of a key finds `n - 1` events),
/// and notes how many records it handles at once.
#[derive(Default)]
struct PerKey {
    running: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

impl<U: UnitOfWork> eventfold::outbox::Handler<U> for PerKey {
    async fn handle(
        &self,
        uow: &mut U,
        record: &eventfold::outbox::Record,
    ) -> Result<(), eventfold::BoxError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        let result = async {
            let stream = StreamId::new("ledger", record.key.as_str())?;
            let seen = uow.stream_version(&stream).await?;
            // A round trip's worth of work, so that lanes overlap.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let mut event = NewEvent::raw("ledger.noted", 1, record.payload.clone());
            event.causation_id = Some(record.message_id);
            uow.append(&stream, ExpectedVersion::Exact(seen), vec![event])
                .await?;
            Ok(())
        }
        .await;
        self.running.fetch_sub(1, SeqCst);
        result
    }
}

/// `n` payments over `keys` keys (`k-0`, ...), in no period of the lanes or partitions.
fn keyed_payments(n: u32, keys: u32) -> Vec<OutboxMessage> {
    (0..n)
        .map(|i| {
            OutboxMessage::new(
                "payments",
                format!("k-{}", (i * 7 + i / 5) % keys),
                "payment.captured",
                format!(r#"{{"n":{i}}}"#).into_bytes(),
            )
        })
        .collect()
}

/// Asserts that each key's stream (`ledger/<key>`), after `runs` earlier runs' events, holds
/// the key's `messages` once each, in publication order (by causation id).
async fn assert_each_key_in_order<S: EventStore>(
    store: &S,
    messages: &[OutboxMessage],
    keys: u32,
    runs: usize,
    what: &str,
) {
    for k in 0..keys {
        let stream = StreamId::new("ledger", format!("k-{k}").as_str()).unwrap();
        let events = store.read_stream(&stream, 1, u64::MAX).await.unwrap();
        let expected: Vec<_> = messages
            .iter()
            .filter(|m| m.key == format!("k-{k}"))
            .map(|m| Some(m.id))
            .collect();
        let got: Vec<_> = events
            .iter()
            .skip(runs * expected.len())
            .map(|e| e.causation_id)
            .collect();
        assert_eq!(got, expected, "{what}: key k-{k} in publication order");
    }
}

/// `Consumer::concurrency`: a batch split into lanes by key keeps the order per key and takes
/// each message once, with and without shared commits; the lanes did run at once. Returns the
/// most records handled at once.
async fn lanes_keep_the_order_per_key<S: InboxStore>(store: S) -> usize {
    let broker = InProcessBroker::new().with_default_partitions(2);
    let keys = 23;
    let messages = keyed_payments(480, keys);
    broker.publish(&messages).await;
    broker.publish(&messages[..30]).await; // duplicates across lanes and batches
    let mut most = 0;
    for (group, shared) in [("lanes", false), ("lanes-shared", true)] {
        let handler = std::sync::Arc::new(PerKey::default());
        let mut consumer = Consumer::new(
            group,
            store.clone(),
            broker.consumer(group, &["payments"]),
            ArcHandler(handler.clone()),
        )
        .shared_commits(shared)
        .concurrency(4)
        .max_attempts(1);
        let total = drain(&mut consumer).await;
        // One attempt each: a record handled out of its key's order fails its expected
        // version and is parked.
        assert_eq!(
            (total.handled, total.duplicates, total.parked),
            (messages.len(), 30, 0),
            "{group}: every message once, none out of order"
        );
        most = most.max(handler.most.load(std::sync::atomic::Ordering::SeqCst));
        // The streams of the second group's run hold both runs' events: check the order of
        // each run's part.
        let runs = if shared { 1 } else { 0 };
        assert_each_key_in_order(&store, &messages, keys, runs, group).await;
    }
    most
}

/// [`Flaky`]'s decisions, made for a whole batch at once: each record's effect (`ledger/all`,
/// and its key's stream `ledger/<key>`) written with one `append_many` before the failure is
/// told, so that what a failed batch wrote must be undone with it. Its first batch fails as a
/// whole after writing, counting no attempt.
#[derive(Default)]
struct BatchFlaky {
    flaky: Flaky,
    batches: std::sync::atomic::AtomicUsize,
}

/// The appends of [`common::note`] and of the record's key stream.
fn batch_effects(
    records: &[&eventfold::outbox::Record],
) -> Result<Vec<eventfold::eventstore::StreamAppend>, eventfold::BoxError> {
    let mut appends = Vec::with_capacity(2 * records.len());
    for record in records {
        for stream in [
            StreamId::new("ledger", "all")?,
            StreamId::new("ledger", record.key.as_str())?,
        ] {
            let mut event = NewEvent::raw("ledger.noted", 1, record.payload.clone());
            event.causation_id = Some(record.message_id);
            appends.push(eventfold::eventstore::StreamAppend::new(
                stream,
                ExpectedVersion::Any,
                vec![event],
            ));
        }
    }
    Ok(appends)
}

impl<U: UnitOfWork> eventfold::outbox::Handler<U> for BatchFlaky {
    async fn handle(
        &self,
        uow: &mut U,
        record: &eventfold::outbox::Record,
    ) -> Result<(), eventfold::BoxError> {
        self.flaky.handle(uow, record).await?;
        let stream = StreamId::new("ledger", record.key.as_str())?;
        let mut event = NewEvent::raw("ledger.noted", 1, record.payload.clone());
        event.causation_id = Some(record.message_id);
        uow.append(&stream, ExpectedVersion::Any, vec![event])
            .await?;
        Ok(())
    }

    async fn handle_batch(
        &self,
        uow: &mut U,
        batch: &eventfold::outbox::Batch<'_>,
    ) -> Result<(), eventfold::outbox::BatchFailure> {
        use eventfold::outbox::BatchFailure;
        let records = batch.records();
        if self
            .batches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            == 0
        {
            uow.append_many(batch_effects(records)?).await?;
            return Err(BatchFailure::whole("the first batch fails as a whole"));
        }
        // Flaky's decisions in order, up to the first failure.
        let mut failed = None;
        for (index, record) in records.iter().enumerate() {
            let attempt = {
                let mut attempts = self.flaky.attempts.lock().unwrap();
                let n = attempts.entry(record.message_id).or_default();
                *n += 1;
                *n
            };
            let n = serde_json::from_slice::<serde_json::Value>(&record.payload)
                .map_err(|e| BatchFailure::at(index, e))?["n"]
                .as_u64()
                .unwrap_or_default();
            if record.message_type == "payment.poison" || (n % 11 == 0 && attempt == 1) {
                failed = Some(index);
                break;
            }
        }
        let written = failed.map_or(records.len(), |i| i + 1);
        uow.append_many(batch_effects(&records[..written])?).await?;
        match failed {
            Some(index) => Err(BatchFailure::at(index, "the handler failed")),
            None => Ok(()),
        }
    }
}

/// A batch handler (`Handler::handle_batch` writing with `UnitOfWork::append_many`) under the
/// same failures as [`undo_each_failure_alone`]: a batch failing as a whole is handled again
/// one message per transaction, a failure at a message undoes the batch and runs that message
/// alone, poison is parked after its attempts; every good message takes effect once, in order,
/// in both of its streams.
async fn batch_handler_falls_back_like_handle<S: InboxStore>(store: S) {
    let handler = std::sync::Arc::new(BatchFlaky::default());
    let (messages, total) = flaky_run(&store, ArcHandler(handler.clone())).await;
    let (poison, good): (Vec<_>, Vec<_>) = messages
        .iter()
        .partition(|m| m.message_type == "payment.poison");
    assert_eq!(
        (total.handled, total.duplicates, total.parked),
        (good.len(), 20, poison.len())
    );
    let good_ids: Vec<_> = good.iter().map(|m| m.id).collect();
    assert_eq!(
        common::effects(&store).await,
        good_ids,
        "each good message once, in order"
    );
    for k in 0..7 {
        let key = format!("p-{k}");
        let stream = StreamId::new("ledger", key.as_str()).unwrap();
        let got: Vec<_> = store
            .read_stream(&stream, 1, u64::MAX)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.causation_id)
            .collect();
        let expected: Vec<_> = good
            .iter()
            .filter(|m| m.key == key)
            .map(|m| Some(m.id))
            .collect();
        assert_eq!(got, expected, "key {key}: each good message once, in order");
    }
    let poison: Vec<_> = poison.iter().map(|m| m.id).collect();
    poison_parked_after_three_attempts(&store, &handler.flaky, &poison).await;
    assert!(
        handler.batches.load(std::sync::atomic::Ordering::SeqCst) > 5,
        "the consumer handed the handler batches: {}",
        handler.batches.load(std::sync::atomic::Ordering::SeqCst)
    );
}

common::backend_tests!([memory, sqlite, postgres] {
    2 => duplicates_and_crash_redeliveries_take_effect_once: exactly_once_effects,
    2 => poison_message_is_parked_and_the_rest_flows: poison_is_parked_others_flow,
    2 => a_poison_with_one_attempt_in_a_shared_transaction_keeps_its_error: poison_with_one_attempt_keeps_its_error,
    2 => shared_commits_undo_each_failure_alone: undo_each_failure_alone,
    2 => lanes_keep_the_order_per_key_and_take_each_message_once: lanes_keep_the_order_per_key,
    2 => a_batch_handler_falls_back_like_its_handle: batch_handler_falls_back_like_handle,
    2 => overlapped_commits_keep_the_order_per_key_and_take_each_message_once: overlapped_commits_per_key,
});

/// On PostgreSQL the lanes of a batch run at once, each on a connection of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lanes_run_at_once() {
    let (store, _db) = common::postgres().await;
    let most = lanes_keep_the_order_per_key(store).await;
    assert!(
        most >= 2,
        "at most {most} record(s) handled at once with 4 lanes"
    );
}

/// On PostgreSQL the messages did share transactions: the ledger's events (one per message,
/// appended in the consumer's transaction) carry far fewer transaction ids than messages (each
/// failure splits a batch: about 35 of them here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_consumer_shares_commits() {
    let (store, db) = common::postgres().await;
    let good = undo_each_failure_alone(store).await;
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT commit_key) FROM eventfold_events WHERE stream_type = 'ledger'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert!(
        transactions * 3 <= good.len() as i64,
        "{} messages took {transactions} transactions",
        good.len()
    );
}

#[derive(Debug, Clone, PartialEq, eventfold::Event)]
enum PaymentEvent {
    Captured {
        cents: u64,
    },
    #[event(version = 2)]
    Refunded {
        cents: u64,
        reason: String,
    },
}

/// A consumer decodes the records of another service into its typed events, upcasting older
/// schema versions; an unknown type is an error naming the message.
#[tokio::test]
async fn records_decode_into_typed_events_with_upcasting() {
    use eventfold::eventstore::OutboxRouting;
    use eventfold::eventstore::memory::MemoryStore;
    use eventfold::outbox::Relay;
    use eventfold::{CommandMetadata, Upcasters};

    let store = MemoryStore::new().with_outbox(OutboxRouting::new().default_topic("payments"));
    let stream = StreamId::new("payment", "p-1").unwrap();
    let captured = NewEvent::encode(
        &PaymentEvent::Captured { cents: 500 },
        "pay",
        &CommandMetadata::new(),
    )
    .unwrap();
    let old_refund = NewEvent::raw("payment.refunded", 1, br#"{"cents":200}"#.to_vec());
    let unknown = NewEvent::raw("payment.disputed", 1, b"{}".to_vec());
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![captured, old_refund, unknown],
        )
        .await
        .unwrap();
    let broker = InProcessBroker::new();
    let mut relay = Relay::new(store.clone(), broker.clone());
    for _ in 0..3 {
        relay.run_once().await.unwrap();
    }
    let records = broker
        .consumer("reader", &["payments"])
        .poll(10, Duration::from_millis(100))
        .await;
    assert_eq!(records.len(), 3);
    let upcasters = Upcasters::new().json("payment.refunded", 1, |mut v| {
        v["reason"] = serde_json::json!("unknown (v1)");
        Ok(v)
    });
    assert_eq!(
        records[0].decode::<PaymentEvent>(&upcasters).unwrap(),
        PaymentEvent::Captured { cents: 500 }
    );
    assert_eq!(
        records[1].decode::<PaymentEvent>(&upcasters).unwrap(),
        PaymentEvent::Refunded {
            cents: 200,
            reason: "unknown (v1)".into()
        }
    );
    let err = records[2].decode::<PaymentEvent>(&upcasters).unwrap_err();
    assert_eq!(err.message_id, records[2].message_id);
    assert!(err.to_string().contains("payment.disputed"), "{err}");
}
