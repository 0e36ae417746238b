//! `Consumer::overlap_commits`: the order per key, each message once, acknowledgements only
//! after their commit, and (on PostgreSQL, with commits made slow) batches handled while the one
//! before commits.

use super::*;

/// A source that, on each acknowledgement, checks through `store` (committed data only) that
/// every acknowledged record's effect (an event of `ledger/<key>` caused by it) has committed:
/// the offset is committed only after the transaction that handled the record.
struct AckAfterCommit<S> {
    inner: eventfold::outbox::InProcessConsumer,
    store: S,
    early: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<S: EventStore> AckAfterCommit<S> {
    async fn check(&self, record: &eventfold::outbox::Record) {
        let stream = StreamId::new("ledger", record.key.as_str()).unwrap();
        let events = self.store.read_stream(&stream, 1, u64::MAX).await.unwrap();
        if !events
            .iter()
            .any(|e| e.causation_id == Some(record.message_id))
        {
            self.early.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl<S: EventStore> eventfold::outbox::MessageSource for AckAfterCommit<S> {
    async fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<eventfold::outbox::Record>, eventfold::BoxError> {
        eventfold::outbox::MessageSource::poll(&mut self.inner, max, wait).await
    }

    async fn commit(
        &mut self,
        record: &eventfold::outbox::Record,
    ) -> Result<(), eventfold::BoxError> {
        self.check(record).await;
        eventfold::outbox::MessageSource::commit(&mut self.inner, record).await
    }

    async fn commit_all(
        &mut self,
        records: &[&eventfold::outbox::Record],
    ) -> Result<(), eventfold::BoxError> {
        for record in records {
            self.check(record).await;
        }
        eventfold::outbox::MessageSource::commit_all(&mut self.inner, records).await
    }
}

/// `Consumer::overlap_commits` under `Consumer::run`, with records published while it runs (so
/// that batches are small and a key of one batch comes again in the next): every message is
/// handled once, in the order of its key (the handler appends at the version that order
/// implies, with one attempt: a record handled before the commit of its key's previous one
/// would be parked), the group's offsets reach the end of each partition, and no record is
/// acknowledged before its transaction committed ([`AckAfterCommit`]). With few `keys`, most
/// batches hold a key of the batch before and wait for its commit; with many, few do.
async fn overlapped_commits_keep_the_order_per_key<S, H>(store: S, handler: H, keys: u32)
where
    S: InboxStore,
    H: eventfold::outbox::Handler<S::UnitOfWork> + 'static,
{
    let broker = InProcessBroker::new().with_default_partitions(2);
    let messages = keyed_payments(300, keys);
    let early = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let source = AckAfterCommit {
        inner: broker.consumer("overlap", &["payments"]),
        store: store.clone(),
        early: early.clone(),
    };
    let consumer = Consumer::new("overlap", store.clone(), source, handler)
        .shared_commits(true)
        .overlap_commits(true)
        .max_attempts(1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    for chunk in messages.chunks(7) {
        broker.publish(chunk).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    broker.publish(&messages[..20]).await; // duplicates
    let records = broker.records("payments");
    let end = |partition: u32| {
        records
            .iter()
            .filter(|r| r.partition == partition)
            .map(|r| r.offset + 1)
            .max()
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (0..2).any(|p| broker.committed_offset("overlap", "payments", p) != Some(end(p))) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer did not acknowledge every record within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    let parked = store.parked_messages("overlap", 10).await.unwrap();
    assert!(parked.is_empty(), "parked: {parked:?}");
    assert_each_key_in_order(&store, &messages, keys, 0, "overlapped commits").await;
    assert_eq!(
        early.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "records acknowledged before their transaction committed"
    );
}

pub(crate) async fn overlapped_commits_per_key<S: InboxStore>(store: S) {
    overlapped_commits_keep_the_order_per_key(store, PerKey::default(), 11).await;
}

/// [`PerKey`] for PostgreSQL, whose commits take 30 ms: each batch inserts a row (the time its
/// handlers ran) into a table whose deferred constraint trigger sleeps at commit and notes the
/// window it slept in.
#[derive(Default)]
struct SlowCommits(PerKey);

impl eventfold::outbox::Handler<eventfold::eventstore::postgres::PgUnitOfWork> for SlowCommits {
    async fn handle(
        &self,
        uow: &mut eventfold::eventstore::postgres::PgUnitOfWork,
        record: &eventfold::outbox::Record,
    ) -> Result<(), eventfold::BoxError> {
        self.0.handle(uow, record).await
    }

    async fn handle_batch(
        &self,
        uow: &mut eventfold::eventstore::postgres::PgUnitOfWork,
        batch: &eventfold::outbox::Batch<'_>,
    ) -> Result<(), eventfold::outbox::BatchFailure> {
        sqlx::query("INSERT INTO slow_commit (handled_at) VALUES (clock_timestamp())")
            .execute(uow.connection())
            .await
            .map_err(eventfold::outbox::BatchFailure::whole)?;
        for (index, record) in batch.records().iter().enumerate() {
            self.0
                .handle(uow, record)
                .await
                .map_err(|e| eventfold::outbox::BatchFailure::at(index, e))?;
        }
        Ok(())
    }
}

/// A PostgreSQL store whose commits take 30 ms when a [`SlowCommits`] handler wrote in them.
async fn slow_commits() -> (
    eventfold::eventstore::postgres::PgStore,
    eventfold::eventstore::postgres::testing::TestDb,
) {
    let (store, db) = common::postgres().await;
    sqlx::raw_sql(
        "CREATE TABLE slow_commit (handled_at timestamptz NOT NULL); \
         CREATE TABLE commit_window (started timestamptz NOT NULL, ended timestamptz NOT NULL); \
         CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
           DECLARE started timestamptz := clock_timestamp(); \
           BEGIN PERFORM pg_sleep(0.03); \
             INSERT INTO commit_window VALUES (started, clock_timestamp()); RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON slow_commit \
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();",
    )
    .execute(db.pool())
    .await
    .unwrap();
    (store, db)
}

/// On PostgreSQL with commits that take 30 ms and few keys: a batch that holds a key of the
/// committing one waits for that commit (else its record would find the version before it and
/// be parked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_overlapped_commits_wait_for_the_commit_of_their_keys() {
    let (store, _db) = slow_commits().await;
    overlapped_commits_keep_the_order_per_key(store, SlowCommits::default(), 11).await;
}

/// On PostgreSQL, with commits that take 30 ms and keys that seldom come again, batches were
/// handled while the batch before them committed (a batch's handlers ran inside another
/// batch's commit window), and the order per key held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_overlapped_commits_handle_a_batch_while_the_one_before_commits() {
    let (store, db) = slow_commits().await;
    overlapped_commits_keep_the_order_per_key(store, SlowCommits::default(), 997).await;
    let (batches, inside): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM slow_commit), \
           (SELECT count(*) FROM slow_commit s WHERE EXISTS \
             (SELECT 1 FROM commit_window w WHERE s.handled_at > w.started AND s.handled_at < w.ended))",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert!(
        inside > 0 && inside * 3 >= batches,
        "{inside} of {batches} batches were handled while another committed"
    );
}
