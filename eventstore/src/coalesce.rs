//! Shared commits: concurrent appends written by one transaction (write coalescing, ADR 0024).
//!
//! On a durable database a commit costs a flush of the write-ahead log, and a command that
//! appends one event costs one commit. Callers that append at the same moment can share it:
//! with coalescing on ([`crate::postgres::PgStore::with_coalescing`],
//! [`crate::sqlite::SqliteStore::with_coalescing`]), [`EventStore::append`](crate::EventStore::append)
//! puts its append in a queue, and the appends queued together are written by one transaction
//! (on PostgreSQL one statement), then each caller gets its own answer, after the commit.
//!
//! - **No added latency alone.** A batch starts as soon as a writer slot is free
//!   ([`Coalescing::max_in_flight`]); a lone caller finds one free and is written at once.
//!   Batches grow by themselves when callers arrive while earlier batches are being written.
//!   [`Coalescing::linger`] (default zero) can make a batch wait a little for company.
//! - **Each append answered alone.** An append whose expected version does not match gets its
//!   [`StoreError::VersionConflict`] while the others of its batch commit; when the shared write
//!   fails as a whole (a concurrent writer took a version, an event id is a duplicate, the
//!   connection broke), its appends are written again one by one, so the failure reaches only
//!   the append that caused it.
//! - **Same guarantees.** Two appends to one stream never share a batch, and a stream with a
//!   batch in flight waits for it, so the appends of a stream are written in the order they were
//!   queued. The events of a batch share one transaction, so the global log and the outbox see
//!   them as they see any transaction.
//! - **Cancellation.** A caller that stops waiting does not take its append back: once queued,
//!   it is written (as when a caller stops waiting for a statement already sent).
//! - **Reads too.** On PostgreSQL the store's stream reads (a command's read before its append)
//!   are shared the same way, one statement for a batch of reads, unless
//!   [`Coalescing::share_reads`] turns it off; reads in a unit of work are not.
//!
//! ```
//! use std::time::Duration;
//! use eventfold_eventstore::Coalescing;
//!
//! let coalescing = Coalescing::default()
//!     .max_batch(128)
//!     .max_in_flight(2)
//!     .linger(Duration::ZERO)
//!     .share_reads(true);
//! assert_eq!(coalescing.batch_limit(), 128);
//! assert!(coalescing.reads_shared());
//! ```

// The queue is used by the SQL backends only.
#![cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use eventfold_core::StreamId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tracing::Instrument;

use crate::error::StoreError;
use crate::store::AppendResult;

/// How concurrent appends share commits (write coalescing; see the [module](self) docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalescing {
    max_batch: usize,
    max_in_flight: usize,
    linger: Duration,
    share_reads: bool,
}

impl Default for Coalescing {
    /// Batches of up to 256 appends, 2 batches in flight, no lingering, reads shared.
    fn default() -> Self {
        Self {
            max_batch: 256,
            max_in_flight: 2,
            linger: Duration::ZERO,
            share_reads: true,
        }
    }
}

impl Coalescing {
    /// The most appends one transaction writes (at least 1; default 256).
    pub fn max_batch(mut self, appends: usize) -> Self {
        self.max_batch = appends.max(1);
        self
    }

    /// How many batches are written at the same time, each on its own connection (at least 1;
    /// default 2: one commits while the next is written).
    pub fn max_in_flight(mut self, batches: usize) -> Self {
        self.max_in_flight = batches.max(1);
        self
    }

    /// How long a batch that is not full waits for more appends before it is written (default
    /// zero: never; a lone append is then written at once). The wait is a tokio timer, whose
    /// resolution is one millisecond: a linger below that waits about a millisecond (at 8
    /// callers, 200 µs made commands 40–50% slower than none).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Whether concurrent stream reads of the store share statements too (default `true`; on
    /// PostgreSQL, where a read costs a round trip: the reads of a batch are one statement,
    /// with the same queue, slots and limits as the appends, and each caller gets its own
    /// events). A command reads its stream before it appends, so under load this halves the
    /// statements of a command.
    pub fn share_reads(mut self, on: bool) -> Self {
        self.share_reads = on;
        self
    }

    /// Whether concurrent stream reads share statements.
    pub fn reads_shared(&self) -> bool {
        self.share_reads
    }

    /// The most appends one transaction writes.
    pub fn batch_limit(&self) -> usize {
        self.max_batch
    }

    /// How many batches are written at the same time.
    pub fn in_flight_limit(&self) -> usize {
        self.max_in_flight
    }

    /// How long a batch that is not full waits for more appends.
    pub fn linger_time(&self) -> Duration {
        self.linger
    }
}

/// The answer to one queued request (an append's result, a read's events).
pub(crate) type Reply<T = AppendResult> = oneshot::Sender<Result<T, StoreError>>;

/// Stamps what every backend's append [`BatchWriter`] has alike (inside its impl): `Request`
/// (`$request`, with a field `stream_id`), `Output`, the names and metrics of an append batch, and
/// `stream`.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
macro_rules! append_writer_head {
    ($request:ty) => {
        type Request = $request;

        type Output = $crate::store::AppendResult;

        const KIND: &'static str = "append";
        const SIZE_METRIC: &'static str = "eventfold_append_batch_size";
        const SPLIT_METRIC: &'static str = "eventfold_append_batch_split_total";
        const ABANDONED: &'static str = "appending events in a shared commit (its writer stopped before answering; the append may have committed)";

        fn stream(request: &$request) -> &eventfold_core::StreamId {
            &request.stream_id
        }
    };
}
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) use append_writer_head;

/// A backend's half: writes a batch of appends in one transaction (or runs a batch of reads in
/// one statement) and answers every one of them.
pub(crate) trait BatchWriter: Send + Sync + 'static {
    /// One append (or read), as the backend queues it.
    type Request: Send + Sync + 'static;

    /// What each request is answered with.
    type Output: Send + 'static;

    /// What the batches do, for the span and the metrics: `append` (metrics
    /// `eventfold_append_batch_size`, `eventfold_append_batch_split_total`) or `read`.
    const KIND: &'static str;

    /// The histogram of batch sizes.
    const SIZE_METRIC: &'static str;

    /// The counter of batches that failed as a whole and were run one by one.
    const SPLIT_METRIC: &'static str;

    /// What an abandoned request was doing (its writer stopped before answering).
    const ABANDONED: &'static str;

    /// The stream the append writes to.
    fn stream(request: &Self::Request) -> &StreamId;

    /// The table named when a batch is abandoned (its writer panicked).
    fn table(&self) -> &str;

    /// Every append of `batch` in one shared commit: each append's result, or the error that
    /// failed the batch as a whole (then nothing of it was written).
    fn shared(
        &self,
        batch: &[(Self::Request, Reply<Self::Output>)],
    ) -> impl Future<Output = Result<Vec<Result<Self::Output, StoreError>>, StoreError>> + Send;

    /// One append in a commit of its own, as without coalescing.
    fn alone(
        &self,
        request: Self::Request,
    ) -> impl Future<Output = Result<Self::Output, StoreError>> + Send;

    /// Runs once a batch is written, whichever way (nothing by default).
    fn written(&self) {}

    /// Writes `batch` and sends each request's result to its reply (every reply is answered):
    /// in one shared commit when it holds more than one append; one by one when it holds one or
    /// when the shared commit failed as a whole.
    fn write(
        &self,
        batch: Vec<(Self::Request, Reply<Self::Output>)>,
    ) -> impl Future<Output = ()> + Send {
        let span = tracing::debug_span!("eventfold.batch", kind = Self::KIND, size = batch.len());
        async move {
            let size = batch.len();
            if size > 1 {
                match self.shared(&batch).await {
                    Ok(results) => {
                        metrics::histogram!(Self::SIZE_METRIC).record(size as f64);
                        for ((_, reply), result) in batch.into_iter().zip(results) {
                            let _ = reply.send(result);
                        }
                        self.written();
                        return;
                    }
                    Err(e) => {
                        metrics::counter!(Self::SPLIT_METRIC).increment(1);
                        tracing::debug!(error = %e, kind = Self::KIND, size, "a shared batch failed as a whole; running its requests one by one");
                    }
                }
            }
            for (request, reply) in batch {
                let _ = reply.send(self.alone(request).await);
            }
            self.written();
        }
        .instrument(span)
    }
}

struct Queue<R, T> {
    waiting: VecDeque<(R, Reply<T>)>,
    /// Streams with an append in a batch being written.
    busy: HashSet<StreamId>,
}

/// The queue of appends and the batches being written (one per store, shared by its clones).
pub(crate) struct Coalescer<W: BatchWriter> {
    queue: Mutex<Queue<W::Request, W::Output>>,
    slots: Arc<Semaphore>,
    options: Coalescing,
    writer: W,
}

impl<W: BatchWriter> std::fmt::Debug for Coalescer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<W: BatchWriter> Coalescer<W> {
    pub(crate) fn new(writer: W, options: Coalescing) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                busy: HashSet::new(),
            }),
            slots: Arc::new(Semaphore::new(options.max_in_flight)),
            options,
            writer,
        })
    }

    /// The settings it was made with.
    pub(crate) fn options(&self) -> Coalescing {
        self.options
    }

    /// Queues a request and waits for its answer, which comes after its batch committed. A
    /// request that finds nothing queued, a slot free and its stream idle (and no linger set)
    /// runs at once on the caller's task, as without coalescing: no task, no channel.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        request: W::Request,
    ) -> Result<W::Output, StoreError> {
        if let Some(inline) = self.alone_at_once(&request) {
            let result = self.writer.alone(request).await;
            self.writer.written();
            drop(inline);
            return result;
        }
        let (reply, answer) = oneshot::channel();
        let slot = {
            let mut queue = self.lock();
            queue.waiting.push_back((request, reply));
            // Under the queue's lock: a batch that finds the queue empty gives its slot back
            // under the same lock, so an append is never left queued with nobody to write it.
            Arc::clone(&self.slots).try_acquire_owned().ok()
        };
        if let Some(slot) = slot {
            tokio::spawn(Arc::clone(self).drive(slot));
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Database {
                operation: W::ABANDONED,
                table: self.writer.table().to_owned(),
                source: "coalesced batch abandoned".into(),
            })
        })
    }

    /// A slot and the stream of `request`, taken for running it on the caller's task, when
    /// nothing waits, a slot is free and the stream is idle.
    fn alone_at_once(self: &Arc<Self>, request: &W::Request) -> Option<Inline<W>> {
        if !self.options.linger.is_zero() {
            return None;
        }
        let mut queue = self.lock();
        let stream = W::stream(request);
        if !queue.waiting.is_empty() || queue.busy.contains(stream) {
            return None;
        }
        let slot = Arc::clone(&self.slots).try_acquire_owned().ok()?;
        queue.busy.insert(stream.clone());
        Some(Inline {
            coalescer: Arc::clone(self),
            slot: Some(slot),
            stream: stream.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<W::Request, W::Output>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes batches while appends are waiting, holding one writer slot.
    async fn drive(self: Arc<Self>, slot: OwnedSemaphorePermit) {
        loop {
            if !self.options.linger.is_zero() && self.lock().waiting.len() < self.options.max_batch
            {
                tokio::time::sleep(self.options.linger).await;
            }
            let batch = {
                let mut queue = self.lock();
                let batch = take_batch::<W>(&mut queue, self.options.max_batch);
                if batch.is_empty() {
                    drop(slot);
                    return;
                }
                batch
            };
            // The batch's streams are free again when it is done, even if its writer panics.
            let _busy = Busy {
                coalescer: &self,
                streams: batch.iter().map(|(r, _)| W::stream(r).clone()).collect(),
            };
            self.writer.write(batch).await;
        }
    }
}

/// A request running on its caller's task: its slot and stream, released when dropped (also
/// when the caller stops waiting). Requests queued meanwhile found no slot: the slot goes to a
/// new driver for them.
struct Inline<W: BatchWriter> {
    coalescer: Arc<Coalescer<W>>,
    slot: Option<OwnedSemaphorePermit>,
    stream: StreamId,
}

impl<W: BatchWriter> Drop for Inline<W> {
    fn drop(&mut self) {
        let mut queue = self.coalescer.lock();
        queue.busy.remove(&self.stream);
        let Some(slot) = self.slot.take() else {
            return;
        };
        // Under the queue's lock, as in `drive`: a request queued after this check finds the
        // slot free.
        if !queue.waiting.is_empty() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(Arc::clone(&self.coalescer).drive(slot));
                return;
            }
        }
        drop(slot);
    }
}

/// The streams of a batch being written, released when dropped.
struct Busy<'c, W: BatchWriter> {
    coalescer: &'c Coalescer<W>,
    streams: Vec<StreamId>,
}

impl<W: BatchWriter> Drop for Busy<'_, W> {
    fn drop(&mut self) {
        let mut queue = self.coalescer.lock();
        for stream in &self.streams {
            queue.busy.remove(stream);
        }
    }
}

/// The oldest waiting appends, at most one per stream and none of a stream being written, marked
/// busy; the others keep their place in the queue.
fn take_batch<W: BatchWriter>(
    queue: &mut Queue<W::Request, W::Output>,
    max: usize,
) -> Vec<(W::Request, Reply<W::Output>)> {
    let mut batch = Vec::new();
    let mut kept = VecDeque::new();
    while batch.len() < max {
        let Some(item) = queue.waiting.pop_front() else {
            break;
        };
        let stream = W::stream(&item.0);
        if queue.busy.contains(stream) {
            kept.push_back(item);
        } else {
            queue.busy.insert(stream.clone());
            batch.push(item);
        }
    }
    kept.append(&mut queue.waiting);
    queue.waiting = kept;
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers each request with the id of the task that ran it; `slow` streams take 200 ms.
    struct Fake {
        shared: AtomicUsize,
    }

    impl BatchWriter for Fake {
        type Request = StreamId;
        type Output = Option<tokio::task::Id>;
        const KIND: &'static str = "test";
        const SIZE_METRIC: &'static str = "test_batch_size";
        const SPLIT_METRIC: &'static str = "test_batch_split_total";
        const ABANDONED: &'static str = "testing";

        fn stream(request: &StreamId) -> &StreamId {
            request
        }

        fn table(&self) -> &str {
            "test"
        }

        async fn shared(
            &self,
            batch: &[(StreamId, Reply<Self::Output>)],
        ) -> Result<Vec<Result<Self::Output, StoreError>>, StoreError> {
            self.shared.fetch_add(1, Ordering::SeqCst);
            Ok(batch.iter().map(|_| Ok(tokio::task::try_id())).collect())
        }

        async fn alone(&self, request: StreamId) -> Result<Self::Output, StoreError> {
            if request.id().starts_with("slow") {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(tokio::task::try_id())
        }
    }

    fn coalescer() -> Arc<Coalescer<Fake>> {
        let fake = Fake {
            shared: AtomicUsize::new(0),
        };
        Coalescer::new(fake, Coalescing::default().max_in_flight(1))
    }

    fn stream(id: &str) -> StreamId {
        StreamId::new("test", id).expect("stream id")
    }

    /// A lone request runs on its caller's task (no driver task, no channel).
    #[tokio::test]
    async fn a_lone_request_runs_on_its_callers_task() {
        let coalescer = coalescer();
        let caller = tokio::spawn({
            let coalescer = Arc::clone(&coalescer);
            async move {
                let ran_on = coalescer.submit(stream("a")).await.expect("answered");
                (tokio::task::id(), ran_on)
            }
        });
        let (caller, ran_on) = caller.await.expect("caller");
        assert_eq!(ran_on, Some(caller));
    }

    /// Requests queued behind one that runs on its caller's task are answered, in one batch,
    /// also when that caller stops waiting (its slot goes to a driver for them).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_queued_behind_a_cancelled_inline_one_are_answered() {
        let coalescer = coalescer();
        let slow = tokio::spawn({
            let coalescer = Arc::clone(&coalescer);
            async move { coalescer.submit(stream("slow")).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let queued: Vec<_> = (0..3)
            .map(|i| {
                let coalescer = Arc::clone(&coalescer);
                tokio::spawn(async move { coalescer.submit(stream(&format!("q{i}"))).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        slow.abort();
        for q in queued {
            let answered = tokio::time::timeout(Duration::from_secs(5), q)
                .await
                .expect("a queued request is answered after the inline one stopped")
                .expect("task");
            assert!(answered.is_ok());
        }
        assert_eq!(
            coalescer.writer.shared.load(Ordering::SeqCst),
            1,
            "one batch"
        );
    }
}
