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
//!
//! ```
//! use std::time::Duration;
//! use eventfold_eventstore::Coalescing;
//!
//! let coalescing = Coalescing::default()
//!     .max_batch(128)
//!     .max_in_flight(2)
//!     .linger(Duration::ZERO);
//! assert_eq!(coalescing.batch_limit(), 128);
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
}

impl Default for Coalescing {
    /// Batches of up to 256 appends, 2 batches in flight, no lingering.
    fn default() -> Self {
        Self {
            max_batch: 256,
            max_in_flight: 2,
            linger: Duration::ZERO,
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
    /// zero: never; a lone append is then written at once).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
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

/// The answer to one queued append.
pub(crate) type Reply = oneshot::Sender<Result<AppendResult, StoreError>>;

/// A backend's half: writes a batch of appends in one transaction and answers every one of them.
pub(crate) trait BatchWriter: Send + Sync + 'static {
    /// One append, as the backend queues it.
    type Request: Send + Sync + 'static;

    /// The stream the append writes to.
    fn stream(request: &Self::Request) -> &StreamId;

    /// The table named when a batch is abandoned (its writer panicked).
    fn table(&self) -> &str;

    /// Every append of `batch` in one shared commit: each append's result, or the error that
    /// failed the batch as a whole (then nothing of it was written).
    fn shared(
        &self,
        batch: &[(Self::Request, Reply)],
    ) -> impl Future<Output = Result<Vec<Result<AppendResult, StoreError>>, StoreError>> + Send;

    /// One append in a commit of its own, as without coalescing.
    fn alone(
        &self,
        request: Self::Request,
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send;

    /// Runs once a batch is written, whichever way (nothing by default).
    fn written(&self) {}

    /// Writes `batch` and sends each request's result to its reply (every reply is answered):
    /// in one shared commit when it holds more than one append; one by one when it holds one or
    /// when the shared commit failed as a whole.
    fn write(&self, batch: Vec<(Self::Request, Reply)>) -> impl Future<Output = ()> + Send {
        let span = tracing::debug_span!("eventfold.append_batch", appends = batch.len());
        async move {
            let size = batch.len();
            if size > 1 {
                match self.shared(&batch).await {
                    Ok(results) => {
                        metrics::histogram!("eventfold_append_batch_size").record(size as f64);
                        for ((_, reply), result) in batch.into_iter().zip(results) {
                            let _ = reply.send(result);
                        }
                        self.written();
                        return;
                    }
                    Err(e) => {
                        metrics::counter!("eventfold_append_batch_split_total").increment(1);
                        tracing::debug!(error = %e, appends = size, "shared append failed as a whole; writing its appends one by one");
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

struct Queue<R> {
    waiting: VecDeque<(R, Reply)>,
    /// Streams with an append in a batch being written.
    busy: HashSet<StreamId>,
}

/// The queue of appends and the batches being written (one per store, shared by its clones).
pub(crate) struct Coalescer<W: BatchWriter> {
    queue: Mutex<Queue<W::Request>>,
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

    /// Queues an append and waits for its answer, which comes after its batch committed.
    pub(crate) async fn append(
        self: &Arc<Self>,
        request: W::Request,
    ) -> Result<AppendResult, StoreError> {
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
                operation: "appending events in a shared commit (its writer stopped before answering; the append may have committed)",
                table: self.writer.table().to_owned(),
                source: "coalesced batch abandoned".into(),
            })
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<W::Request>> {
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
    queue: &mut Queue<W::Request>,
    max: usize,
) -> Vec<(W::Request, Reply)> {
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
