//! The consumer: handles each message once, with an inbox in the handler's own transaction.
//!
//! Brokers deliver at least once: after a crash, a rebalance or a relay retry, a message comes
//! again. A [`Consumer`] runs the [`Handler`] inside a unit of work that also marks
//! `(consumer, message id)` in the inbox. The mark commits together with the handler's effects,
//! so a duplicate finds the mark and is acknowledged without running the handler. The offset is
//! committed to the broker only **after** that transaction committed, so a crash in between
//! redelivers, and the inbox makes the redelivery harmless. The inbox also keeps what the message
//! was (type, topic, correlation and causation ids, sender), so that the trace of its flow shows
//! where it arrived ([`eventfold_eventstore::TraceStore`]).
//!
//! A message whose handler keeps failing is retried `max_attempts` times with a backoff, then
//! parked with its error (`InboxStore::parked_messages`), and the consumer moves on. A handler
//! error caused by a transient failure of the database (its connection lost, a deadlock) is not
//! the message's failure: it counts no attempt and is retried like any transient failure of the
//! store ([`Consumer::run`]), so a database that fails under the handler parks nothing.
//!
//! Each message is handled in a `consume` span. With the feature `otel`, that span continues the
//! W3C trace context the record carries (`traceparent`), so the handler's work belongs to the
//! producer's trace, and what it writes records it (`eventfold_core::trace_context`).
//!
//! **Shared commits** ([`Consumer::shared_commits`], off by default): the messages of a polled
//! batch are handled in one transaction and committed once; a failing handler is undone alone
//! (the transaction is rolled back and the messages before it run again without it). One commit
//! per batch instead of one per message is what makes a consumer fast on a durable database
//! (ADR 0024); the handler must then read through its unit of work.
//!
//! **Lanes** ([`Consumer::concurrency`], 1 by default): a polled batch split by key into lanes
//! that run at once, each on a connection of its own; the records of one key stay in one lane,
//! in order, and the batch is acknowledged when every lane has settled.
//!
//! **Overlapped commits** ([`Consumer::overlap_commits`], off by default): with shared commits
//! and one lane, the next batch is polled and handled while the batch before commits; a batch
//! holding a key of the committing one waits for that commit, and acknowledgements stay in order.
//!
//! Metrics (`metrics` facade), labelled with `consumer`: counters
//! `eventfold_consumer_handled_total`, `eventfold_consumer_duplicates_total`,
//! `eventfold_consumer_parked_total`, `eventfold_consumer_batch_split_total` (shared
//! transactions that failed as a whole), `eventfold_consumer_retries_total` (also labelled
//! `reason`: batches handled again by [`Consumer::run`] after a transient store failure), and
//! the histogram `eventfold_consumer_commit_size` (messages per shared commit).
//!
//! ```
//! use std::time::Duration;
//! use eventfold_core::{BoxError, NewEvent, StreamId};
//! use eventfold_eventstore::{memory::{MemoryStore, MemoryUnitOfWork}, EventStore, ExpectedVersion, UnitOfWork};
//! use eventfold_outbox::{Consumer, Handler, InProcessBroker, OutboxMessage, Publisher, Record};
//!
//! /// Records every payment it sees as an event of its own stream, in the inbox's transaction.
//! struct Ledger;
//!
//! impl Handler<MemoryUnitOfWork> for Ledger {
//!     async fn handle(&self, uow: &mut MemoryUnitOfWork, record: &Record) -> Result<(), BoxError> {
//!         let stream = StreamId::new("ledger", "payments")?;
//!         uow.append(&stream, ExpectedVersion::Any, vec![NewEvent::raw("ledger.noted", 1, record.payload.clone())]).await?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = InProcessBroker::new();
//! let payment = OutboxMessage::new("payments", "p-1", "payment.captured", b"{}".to_vec());
//! broker.publish(&[payment.clone(), payment]).await; // delivered twice
//!
//! let store = MemoryStore::new();
//! let mut consumer = Consumer::new("ledger", store.clone(), broker.consumer("ledger", &["payments"]), Ledger);
//! let report = consumer.run_once(Duration::from_millis(100)).await?;
//! assert_eq!((report.handled, report.duplicates), (1, 1));
//! assert_eq!(store.stream_version(&StreamId::new("ledger", "payments")?).await?, 1);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use eventfold_core::BoxError;
use eventfold_eventstore::{InboxEntry, InboxStore, ParkedMessage, StoreError, UnitOfWork};
use tracing::Instrument;

use crate::in_process::{InProcessConsumer, Record};

mod handler;
mod overlap;
mod run;

use handler::consume_span;
pub use handler::{Batch, BatchFailure, Handler};

/// Something that delivers records and takes acknowledgements: a broker's consumer.
pub trait MessageSource: Send {
    /// Up to `max` records, waiting up to `wait` when none is there.
    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Record>, BoxError>> + Send;

    /// Acknowledges `record` (and everything before it in its partition).
    fn commit(&mut self, record: &Record) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Acknowledges several records at once, each the last of its partition in a batch (and
    /// everything before each in its partition). The default commits them one by one, in
    /// order; a source whose broker takes several partitions' offsets in one request (Kafka)
    /// overrides it, so that a batch spanning partitions costs one acknowledgement.
    fn commit_all(
        &mut self,
        records: &[&Record],
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        async move {
            for record in records {
                self.commit(record).await?;
            }
            Ok(())
        }
    }
}

impl MessageSource for InProcessConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BoxError> {
        Ok(InProcessConsumer::poll(self, max, wait).await)
    }

    async fn commit(&mut self, record: &Record) -> Result<(), BoxError> {
        InProcessConsumer::commit(self, record);
        Ok(())
    }
}

/// A consumer failed for a reason other than its handler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The store failed.
    #[error("consumer {consumer}: {source}")]
    Store {
        /// The consumer's name.
        consumer: String,
        /// The store's error.
        source: StoreError,
    },
    /// The broker failed.
    #[error("consumer {consumer}: the broker failed: {source}")]
    Source {
        /// The consumer's name.
        consumer: String,
        /// The broker's error.
        source: BoxError,
    },
}

/// What handles records: a consumer without its source, so that the lanes of a batch can share
/// it (see [`Consumer::concurrency`]).
struct Settler<'c, S, H> {
    name: &'c str,
    store: &'c S,
    handler: &'c H,
    max_attempts: u32,
    backoff: Duration,
    shared_commits: bool,
}

impl<S, H> Settler<'_, S, H>
where
    S: InboxStore,
    H: Handler<S::UnitOfWork>,
{
    fn store_err(&self) -> impl FnOnce(StoreError) -> ConsumerError + '_ {
        move |source| ConsumerError::Store {
            consumer: self.name.to_owned(),
            source,
        }
    }

    /// Handles one record (with retries, then parking) without acknowledging it, in a `consume`
    /// span (with the feature `otel`, a child of the trace context the record carries).
    async fn settle(&self, record: &Record) -> Result<Outcome, ConsumerError> {
        self.settle_from(record, 1, String::new()).await
    }

    /// [`Self::settle`] from attempt `first` (the attempts before it failed in a shared
    /// transaction, the last with `earlier`: what the message is parked with when no attempt is
    /// left).
    async fn settle_from(
        &self,
        record: &Record,
        first: u32,
        earlier: String,
    ) -> Result<Outcome, ConsumerError> {
        let span = self.span(record);
        self.settle_in_span(record, first, earlier)
            .instrument(span)
            .await
    }

    /// The `consume` span of `record` (with the feature `otel`, a child of the trace context it
    /// carries).
    fn span(&self, record: &Record) -> tracing::Span {
        consume_span(self.name, record)
    }

    async fn settle_in_span(
        &self,
        record: &Record,
        first: u32,
        earlier: String,
    ) -> Result<Outcome, ConsumerError> {
        let mut last_error = earlier;
        if first > 1 {
            self.pause(first - 1).await;
        }
        let mut attempt = first.max(1);
        let mut transient = 0u32;
        while attempt <= self.max_attempts {
            let mut uow = self.store.begin().await.map_err(self.store_err())?;
            if !uow
                .mark_received(
                    self.name,
                    &InboxEntry::received(
                        record.message_id,
                        &record.message_type,
                        &record.topic,
                        &record.headers,
                    ),
                )
                .await
                .map_err(self.store_err())?
            {
                let _ = uow.rollback().await;
                return Ok(Outcome::Duplicate);
            }
            match self.handler.handle(&mut uow, record).await {
                Ok(()) => {
                    uow.commit().await.map_err(self.store_err())?;
                    return Ok(Outcome::Handled);
                }
                Err(e) => {
                    let _ = uow.rollback().await;
                    // The database failed under the handler (a lost connection, a deadlock):
                    // a failure of the store, not an attempt of the message (which would park
                    // it after `max_attempts`). Tried again here a few times, then left to the
                    // caller's retry of the batch.
                    let e = match StoreError::transient_cause(e, HANDLING, HANDLER_TABLES) {
                        Ok(failure) => {
                            transient += 1;
                            if transient > TRANSIENT_IN_PLACE {
                                return Err(self.store_err()(failure));
                            }
                            tracing::debug!(consumer = %self.name, message = %record.message_id, error = %failure, "the database failed under the handler; trying again");
                            tokio::time::sleep(
                                doubled(self.backoff, transient).min(Duration::from_secs(1)),
                            )
                            .await;
                            continue;
                        }
                        Err(e) => e,
                    };
                    last_error = e.to_string();
                    tracing::warn!(consumer = %self.name, message = %record.message_id, attempt, error = %last_error, "handler failed");
                    if attempt < self.max_attempts {
                        self.pause(attempt).await;
                    }
                    attempt += 1;
                }
            }
        }
        self.store
            .park_message(ParkedMessage {
                consumer: self.name.to_owned(),
                message_id: record.message_id,
                topic: record.topic.clone(),
                partition: record.partition,
                offset: record.offset,
                key: record.key.clone(),
                message_type: record.message_type.clone(),
                payload: record.payload.clone(),
                headers: record.headers.clone(),
                attempts: self.max_attempts,
                error: last_error,
                parked_at: eventfold_core::metadata::now_micros(),
            })
            .await
            .map_err(self.store_err())?;
        Ok(Outcome::Parked)
    }

    /// The backoff before attempt `after + 1`: the first delay, doubled per attempt.
    fn pause(&self, after: u32) -> tokio::time::Sleep {
        tokio::time::sleep(doubled(self.backoff, after))
    }

    /// Handles `records` in order in one transaction ([`Handler::handle_batch`] for the new
    /// ones) and commits them once. No savepoint per message (two round trips each): when the
    /// handler fails, the whole transaction is rolled back and [`Shared::FailedAt`] says which
    /// message failed (its first attempt), for the caller to run the messages before it again,
    /// then it alone; [`Shared::Split`] that the batch failed as a whole. An error of the store
    /// (nothing committed) is returned for the caller to fall back.
    ///
    /// With `defer`, a transaction that would commit is returned open instead
    /// ([`Shared::Open`]), for the caller to commit (see [`Consumer::overlap_commits`]).
    async fn settle_shared(
        &self,
        records: &[&Record],
        defer: bool,
    ) -> Result<Shared<S::UnitOfWork>, StoreError> {
        let mut uow = self.store.begin().await?;
        let mut outcomes = Vec::with_capacity(records.len());
        // Every message's inbox mark first, in one go (one statement on PostgreSQL); the
        // handlers then run in order for the new ones.
        let entries: Vec<InboxEntry> = records
            .iter()
            .map(|record| {
                InboxEntry::received(
                    record.message_id,
                    &record.message_type,
                    &record.topic,
                    &record.headers,
                )
            })
            .collect();
        let marked = uow.mark_received_all(self.name, &entries).await?;
        if marked.len() != records.len() {
            // A store that answered for fewer (or more) messages than it was given: nothing of
            // the batch is trusted, none of it skipped.
            let _ = uow.rollback().await;
            return Err(StoreError::Corrupt {
                table: format!("the inbox of consumer {}", self.name),
                reason: format!(
                    "mark_received_all answered for {} of {} messages",
                    marked.len(),
                    records.len()
                ),
            });
        }
        // The new messages go to the handler as one batch; `fresh_at[i]` is the place in
        // `records` of the batch's message `i`.
        let mut fresh_at = Vec::with_capacity(records.len());
        for (index, fresh) in marked.into_iter().enumerate() {
            if fresh {
                fresh_at.push(index);
                outcomes.push(Outcome::Handled);
            } else {
                outcomes.push(Outcome::Duplicate);
            }
        }
        if !fresh_at.is_empty() {
            let fresh: Vec<&Record> = fresh_at.iter().map(|&i| records[i]).collect();
            let batch = Batch {
                consumer: self.name,
                records: &fresh,
            };
            if let Err(failure) = self.handler.handle_batch(&mut uow, &batch).await {
                let e = match StoreError::transient_cause(failure.source, HANDLING, HANDLER_TABLES)
                {
                    Ok(transient) => {
                        let _ = uow.rollback().await;
                        return Err(transient);
                    }
                    Err(e) => e,
                };
                uow.rollback().await?;
                return Ok(match failure.index.and_then(|i| fresh_at.get(i)) {
                    Some(&index) => {
                        let message = records[index].message_id;
                        tracing::warn!(consumer = %self.name, %message, attempt = 1, error = %e, "handler failed");
                        Shared::FailedAt(index, e.to_string())
                    }
                    None => {
                        tracing::debug!(consumer = %self.name, messages = fresh.len(), error = %e, "the batch handler failed");
                        Shared::Split
                    }
                });
            }
        }
        if outcomes.iter().all(|o| *o == Outcome::Duplicate) {
            uow.rollback().await?;
            return Ok(Shared::Committed(outcomes));
        }
        metrics::histogram!("eventfold_consumer_commit_size", "consumer" => self.name.to_owned())
            .record(outcomes.len() as f64);
        if defer {
            return Ok(Shared::Open(uow, outcomes));
        }
        uow.commit().await?;
        Ok(Shared::Committed(outcomes))
    }

    /// Settles the records of one lane in order: one transaction per record, or with shared
    /// commits one per run of records (falling back to one per record on a failure). With
    /// `defer`, the last shared transaction, when it runs to the lane's end, is returned open
    /// instead of committed (everything before it has committed).
    async fn settle_lane(
        &self,
        records: &[&Record],
        defer: bool,
    ) -> Result<(ConsumerReport, Option<S::UnitOfWork>), ConsumerError> {
        let mut report = ConsumerReport::default();
        let mut count = |outcome| match outcome {
            Outcome::Handled => report.handled += 1,
            Outcome::Duplicate => report.duplicates += 1,
            Outcome::Parked => report.parked += 1,
        };
        let mut next = 0;
        // A message whose first attempt failed in a shared transaction (rolled back whole): the
        // messages before it share one again, then it runs alone from its second attempt,
        // before the messages after it (so order holds).
        let mut failed_first: Option<(usize, String)> = None;
        while next < records.len() {
            if let Some((_, error)) = failed_first.take_if(|(at, _)| *at == next) {
                count(self.settle_from(records[next], 2, error).await?);
                next += 1;
                continue;
            }
            let end = failed_first.as_ref().map_or(records.len(), |(at, _)| *at);
            let rest = &records[next..end];
            if !self.shared_commits || rest.len() == 1 {
                count(self.settle(rest[0]).await?);
                next += 1;
                continue;
            }
            let to_end = next + rest.len() == records.len();
            match self.settle_shared(rest, defer && to_end).await {
                Ok(Shared::Committed(outcomes)) => {
                    next += outcomes.len();
                    outcomes.into_iter().for_each(&mut count);
                }
                Ok(Shared::Open(uow, outcomes)) => {
                    outcomes.into_iter().for_each(&mut count);
                    return Ok((report, Some(uow)));
                }
                Ok(Shared::FailedAt(index, error)) => failed_first = Some((next + index, error)),
                split @ (Ok(Shared::Split) | Err(_)) => {
                    // Nothing of the shared transaction committed: one message per
                    // transaction for the rest of the batch (the inbox keeps it exactly once).
                    // A message whose first attempt already failed goes on from its second.
                    metrics::counter!("eventfold_consumer_batch_split_total", "consumer" => self.name.to_owned())
                        .increment(1);
                    if let Err(e) = split {
                        tracing::debug!(consumer = %self.name, error = %e, "shared transaction failed; handling one message per transaction");
                    }
                    for (index, &record) in records.iter().enumerate().skip(next) {
                        let (first, earlier) = match failed_first.take_if(|(at, _)| *at == index) {
                            Some((_, error)) => (2, error),
                            None => (1, String::new()),
                        };
                        count(self.settle_from(record, first, earlier).await?);
                    }
                    next = records.len();
                }
            }
        }
        Ok((report, None))
    }
}

/// The lane of `key` among `lanes` (FNV-1a: the same key, the same lane, in every process).
fn lane_of(key: &str, lanes: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % lanes.max(1) as u64) as usize
}

/// What a shared transaction did.
enum Shared<U> {
    /// It committed (or, all duplicates, rolled back): the outcome of each message, in order.
    Committed(Vec<Outcome>),
    /// It is done and left open for the caller to commit (asked for with `defer`): the outcome
    /// each message will have once it commits.
    Open(U, Vec<Outcome>),
    /// The handler of the message at this index failed (its first attempt): nothing committed.
    FailedAt(usize, String),
    /// The batch handler failed as a whole ([`BatchFailure::whole`]): nothing committed.
    Split,
}

/// What happened to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler ran and its transaction committed.
    Handled,
    /// The inbox already had it: acknowledged without running the handler.
    Duplicate,
    /// The handler kept failing: parked with its error.
    Parked,
}

/// What one [`Consumer::run_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsumerReport {
    /// Messages handled.
    pub handled: usize,
    /// Duplicates skipped.
    pub duplicates: usize,
    /// Messages parked.
    pub parked: usize,
}

/// Consumes messages of `Src` into store `S` with handler `H`. See the [module docs](self).
pub struct Consumer<S, Src, H> {
    name: String,
    store: S,
    source: Src,
    handler: H,
    max_attempts: u32,
    backoff: Duration,
    batch: usize,
    shared_commits: bool,
    concurrency: usize,
    overlap: bool,
}

impl<S, Src, H> Consumer<S, Src, H>
where
    S: InboxStore,
    Src: MessageSource,
    H: Handler<S::UnitOfWork>,
{
    /// A consumer named `name` (its inbox and parked messages are kept under that name): 5
    /// attempts per message, 50 ms first backoff, batches of 100.
    pub fn new(name: impl Into<String>, store: S, source: Src, handler: H) -> Self {
        Self {
            name: name.into(),
            store,
            source,
            handler,
            max_attempts: 5,
            backoff: Duration::from_millis(50),
            batch: 100,
            shared_commits: false,
            concurrency: 1,
            overlap: false,
        }
    }

    /// Whether the messages of a polled batch share one transaction (default: off, one
    /// transaction per message). On, a batch costs one commit instead of one per message; when a
    /// handler fails, the shared transaction is rolled back, the messages before it share one
    /// again (their handlers run a second time, so they must decide from what they read in the
    /// unit of work, as below), and it is retried on its own before the messages after it (so
    /// order holds); a failure of the store falls back to one transaction per message.
    ///
    /// **The handler must read what it decides on through its unit of work**: the unit of work
    /// sees the writes of the batch's earlier messages, a read through the store does not (it
    /// sees the last commit). A handler that loads an aggregate with `Repository::load` and
    /// then writes through `execute_in` would decide on stale state when two messages of one
    /// aggregate share a batch; use [`Repository::execute_in`](eventfold_eventstore::Repository::execute_in),
    /// which reads in the unit of work, or keep this off.
    pub fn shared_commits(mut self, on: bool) -> Self {
        self.shared_commits = on;
        self
    }

    /// How many lanes handle a polled batch at once (default 1, at least 1). With more, the
    /// batch's records are split by key: the records of one key stay in one lane, in order, so
    /// the order per key holds, while records of different keys are handled on up to
    /// `lanes` connections at once (each lane its own transactions; with
    /// [`shared_commits`](Self::shared_commits), one shared transaction per lane). The batch is
    /// acknowledged when every lane has settled its records. Use it when the handler's
    /// transactions wait on round trips and the database has cores to spare; records of one key
    /// never run concurrently, so a handler that serialises on its key (an aggregate, a saga
    /// instance) does not conflict with itself.
    pub fn concurrency(mut self, lanes: usize) -> Self {
        self.concurrency = lanes.max(1);
        self
    }

    /// Whether [`run`](Self::run) overlaps a batch's commit with the next batch (default: off).
    /// It applies with [`shared_commits`](Self::shared_commits) on and one lane
    /// ([`concurrency`](Self::concurrency) 1): while the shared transaction of a batch commits
    /// (a round trip and a flush of the database's log), the consumer polls the next batch and
    /// runs its handlers in a transaction of its own, on another connection. A batch that holds
    /// a key of the committing one waits for that commit first, so the records of one key are
    /// still handled in order, each on the state the one before it committed. Batches are
    /// acknowledged in order, each only after its own commit and the acknowledgement of the one
    /// before it; when a commit fails, the next batch is rolled back and both are handled again
    /// (the inbox skips what committed). Costs a second connection while a commit is in
    /// flight; pays where one consumer is the bottleneck of a flow (a saga's replies). ADR 0037.
    pub fn overlap_commits(mut self, on: bool) -> Self {
        self.overlap = on;
        self
    }

    /// Attempts per message before it is parked (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The first retry delay; it doubles with every attempt.
    pub fn backoff(mut self, first: Duration) -> Self {
        self.backoff = first;
        self
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn source_err(&self) -> impl FnOnce(BoxError) -> ConsumerError + '_ {
        move |source| ConsumerError::Source {
            consumer: self.name.clone(),
            source,
        }
    }

    /// The part of the consumer that handles records (everything but the source), shared by
    /// the lanes of a batch.
    fn settler(&self) -> Settler<'_, S, H> {
        Settler {
            name: &self.name,
            store: &self.store,
            handler: &self.handler,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            shared_commits: self.shared_commits,
        }
    }

    /// Handles one record (with retries, then parking) and acknowledges it after its
    /// transaction committed.
    pub async fn process(&mut self, record: &Record) -> Result<Outcome, ConsumerError> {
        let outcome = self.settler().settle(record).await?;
        self.source
            .commit(record)
            .await
            .map_err(self.source_err())?;
        Ok(outcome)
    }

    /// The lanes of a polled batch: with [`concurrency`](Self::concurrency) above 1, its records
    /// split by key (a key always in the same lane, in the batch's order); otherwise one lane.
    fn lanes<'r>(&self, records: &'r [Record]) -> Vec<Vec<&'r Record>> {
        let lanes = self.concurrency.min(records.len()).max(1);
        let mut split: Vec<Vec<&Record>> = vec![Vec::new(); lanes];
        for record in records {
            split[lane_of(&record.key, lanes)].push(record);
        }
        split.retain(|lane| !lane.is_empty());
        split
    }

    /// Settles a polled batch in order, then acknowledges it with the last record of each
    /// partition ([`MessageSource::commit_all`]: one request to a Kafka broker): every
    /// transaction of the batch has committed by then, and a crash before the acknowledgement
    /// only redelivers what the inbox already holds.
    async fn handle_batch(&mut self, records: &[Record]) -> Result<ConsumerReport, ConsumerError> {
        let settler = self.settler();
        let lanes = self.lanes(records);
        let report = match lanes.as_slice() {
            [] => ConsumerReport::default(),
            [lane] => settler.settle_lane(lane, false).await?.0,
            lanes => {
                // The lanes run at once, each on a connection of its own; every lane finishes
                // (what it committed stays committed) before an error is returned, so the
                // batch is acknowledged only when all of it is settled.
                let settled = futures_util::future::join_all(
                    lanes.iter().map(|lane| settler.settle_lane(lane, false)),
                )
                .await;
                let mut report = ConsumerReport::default();
                for lane in settled {
                    let (lane, _) = lane?;
                    report.handled += lane.handled;
                    report.duplicates += lane.duplicates;
                    report.parked += lane.parked;
                }
                report
            }
        };
        self.acknowledge(records, report).await?;
        Ok(report)
    }

    /// Acknowledges a settled batch with the last record of each partition
    /// ([`MessageSource::commit_all`]) and counts it in the metrics.
    async fn acknowledge(
        &mut self,
        records: &[Record],
        report: ConsumerReport,
    ) -> Result<(), ConsumerError> {
        let mut last: Vec<&Record> = Vec::new();
        for record in records {
            match last
                .iter_mut()
                .find(|r| r.topic == record.topic && r.partition == record.partition)
            {
                Some(slot) if slot.offset < record.offset => *slot = record,
                Some(_) => {}
                None => last.push(record),
            }
        }
        self.source
            .commit_all(&last)
            .await
            .map_err(self.source_err())?;
        let consumer = self.name.clone();
        metrics::counter!("eventfold_consumer_handled_total", "consumer" => consumer.clone())
            .increment(report.handled as u64);
        metrics::counter!("eventfold_consumer_duplicates_total", "consumer" => consumer.clone())
            .increment(report.duplicates as u64);
        metrics::counter!("eventfold_consumer_parked_total", "consumer" => consumer)
            .increment(report.parked as u64);
        Ok(())
    }

    /// Polls one batch (waiting up to `wait`) and processes it in order.
    pub async fn run_once(&mut self, wait: Duration) -> Result<ConsumerReport, ConsumerError> {
        let records = self
            .source
            .poll(self.batch, wait)
            .await
            .map_err(self.source_err())?;
        self.handle_batch(&records).await
    }
}

/// `first` doubled for every failure after the first (`after` failures so far; at most 1024
/// times `first`).
fn doubled(first: Duration, after: u32) -> Duration {
    first.saturating_mul(1 << (after.max(1) - 1).min(10))
}

/// How many transient failures of the database under the handler a message meets in a row
/// before its settling returns the failure (for [`Consumer::run`] to retry the batch).
const TRANSIENT_IN_PLACE: u32 = 8;

/// What a consumer was doing when the database failed under its handler (see
/// [`StoreError::transient_cause`]).
const HANDLING: &str = "running the consumer's handler";
/// Where: the handler's own statements (the consumer's name is in [`ConsumerError::Store`]).
const HANDLER_TABLES: &str = "the handler's tables";

impl ConsumerError {
    /// Whether trying again may succeed: a transient failure of the store (see
    /// [`StoreError::is_retriable`]). A failure of the broker is not judged here.
    pub fn is_retriable(&self) -> bool {
        matches!(self, ConsumerError::Store { source, .. } if source.is_retriable())
    }

    /// The label of the retry metric: the transient kind, or `other`.
    fn transient_reason(&self) -> &'static str {
        match self {
            ConsumerError::Store {
                source: StoreError::Transient { kind, .. },
                ..
            } => kind.as_str(),
            ConsumerError::Store { source, .. } if source.is_conflict() => "conflict",
            _ => "other",
        }
    }
}
