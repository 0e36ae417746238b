//! Probes of the `sagas` section: completions and message counts taken from the consumers,
//! the reply handler and the publisher, without touching the database.

use super::*;

pub(super) enum Slot {
    Waiting(oneshot::Sender<Instant>),
    Done(Instant),
}

/// How busy one consumer was: the time from each poll's return (with records) to its next
/// poll call (handling the batch: its transactions and acknowledgements), and its records.
pub(super) struct ConsumerStats {
    pub(super) name: &'static str,
    /// The instant the `*_at` fields count from.
    pub(super) base: Instant,
    /// Busy time of the finished batches.
    pub(super) busy_ns: AtomicU64,
    /// Nanoseconds after `base` when the batch in progress was polled; 0 when idle.
    pub(super) busy_from: AtomicU64,
    pub(super) records: AtomicU64,
    pub(super) polls: AtomicU64,
}

impl ConsumerStats {
    pub(super) fn since_base(&self, at: Instant) -> u64 {
        // Never 0, which means idle.
        at.saturating_duration_since(self.base).as_nanos() as u64 + 1
    }

    /// A batch was polled at `at`.
    pub(super) fn busy(&self, at: Instant) {
        self.busy_from.store(self.since_base(at), Ordering::Relaxed);
    }

    /// The batch in progress ended at `at` (the next poll).
    pub(super) fn idle(&self, at: Instant) {
        let from = self.busy_from.swap(0, Ordering::Relaxed);
        if from != 0 {
            let ns = self.since_base(at).saturating_sub(from);
            self.busy_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// Busy time up to `at` (the batch in progress counted up to `at`), records, polls.
    pub(super) fn sample(&self, at: Instant) -> [u64; 3] {
        let from = self.busy_from.load(Ordering::Relaxed);
        let ongoing = if from == 0 {
            0
        } else {
            self.since_base(at).saturating_sub(from)
        };
        [
            self.busy_ns.load(Ordering::Relaxed) + ongoing,
            self.records.load(Ordering::Relaxed),
            self.polls.load(Ordering::Relaxed),
        ]
    }
}

/// One consumer over the throughput window.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerLoad {
    pub(super) name: &'static str,
    pub(super) busy_s: f64,
    pub(super) records: u64,
    pub(super) polls: u64,
}

impl ConsumerLoad {
    pub(super) fn ms_per_record(&self) -> f64 {
        self.busy_s * 1000.0 / self.records.max(1) as f64
    }
}

/// What the taps and the counting publisher saw in one variant.
#[derive(Default)]
pub(super) struct Probe {
    pub(super) slots: Mutex<HashMap<Uuid, Slot>>,
    /// The sagas whose completing replies the reply consumer handled, until their transaction
    /// is known to have committed (one with a transaction per reply; a batch's with shared
    /// commits).
    pub(super) pending: Mutex<Vec<Uuid>>,
    pub(super) consumers: Mutex<Vec<Arc<ConsumerStats>>>,
    /// Records polled by the four consumers.
    pub(super) consumed: AtomicU64,
    /// Messages the publisher acknowledged.
    pub(super) published: AtomicU64,
    /// `publish` calls of the relay.
    pub(super) publish_calls: AtomicU64,
}

impl Probe {
    pub(super) fn consumer(&self, name: &'static str) -> Arc<ConsumerStats> {
        let stats = Arc::new(ConsumerStats {
            name,
            base: Instant::now(),
            busy_ns: AtomicU64::new(0),
            busy_from: AtomicU64::new(0),
            records: AtomicU64::new(0),
            polls: AtomicU64::new(0),
        });
        self.consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(stats.clone());
        stats
    }

    pub(super) fn consumer_samples(&self) -> Vec<(&'static str, [u64; 3])> {
        let now = Instant::now();
        self.consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|c| (c.name, c.sample(now)))
            .collect()
    }

    pub(super) fn set_pending(&self, saga_id: Uuid) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(saga_id);
    }

    /// The pending completions' transactions committed by `at`.
    pub(super) fn settle_pending(&self, at: Instant) {
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        for saga_id in pending {
            self.complete(saga_id, at);
        }
    }

    pub(super) fn complete(&self, saga_id: Uuid, at: Instant) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        match slots.remove(&saga_id) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send(at);
            }
            // A duplicate delivery keeps the first instant.
            Some(Slot::Done(first)) => {
                slots.insert(saga_id, Slot::Done(first));
            }
            None => {
                slots.insert(saga_id, Slot::Done(at));
            }
        }
    }

    /// When `saga_id` completed (now or later).
    pub(super) fn completion(&self, saga_id: Uuid) -> oneshot::Receiver<Instant> {
        let (tx, rx) = oneshot::channel();
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        match slots.remove(&saga_id) {
            Some(Slot::Done(at)) => {
                let _ = tx.send(at);
            }
            _ => {
                slots.insert(saga_id, Slot::Waiting(tx));
            }
        }
        rx
    }
}

/// A message source that counts what it delivers and how busy its consumer is; on the reply
/// consumer, its polls and acknowledgements also settle the pending completion (see
/// [`Completing`]).
pub(super) struct Tap<Src> {
    pub(super) inner: Src,
    pub(super) probe: Arc<Probe>,
    pub(super) stats: Arc<ConsumerStats>,
    pub(super) replies: bool,
}

impl<Src> Tap<Src> {
    pub(super) fn new(inner: Src, probe: &Arc<Probe>, name: &'static str, replies: bool) -> Self {
        Self {
            inner,
            probe: probe.clone(),
            stats: probe.consumer(name),
            replies,
        }
    }
}

pub(super) fn completes(record: &Record) -> Option<Uuid> {
    let header = |name: &str| record.headers.get(name).map(String::as_str);
    (record.message_type == wire::REPLY_TYPE
        && header(wire::SAGA_STEP) == Some(LAST_STEP)
        && header(wire::SAGA_KIND) == Some("action"))
    .then(|| header(wire::SAGA_ID)?.parse().ok())
    .flatten()
}

impl<Src: MessageSource> MessageSource for Tap<Src> {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>> {
        if self.replies {
            // The previous batch's transactions have committed.
            self.probe.settle_pending(Instant::now());
        }
        self.stats.idle(Instant::now());
        let records = self.inner.poll(max, wait).await?;
        if !records.is_empty() {
            self.stats.busy(Instant::now());
            self.stats
                .records
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            self.stats.polls.fetch_add(1, Ordering::Relaxed);
        }
        self.probe
            .consumed
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(records)
    }

    async fn commit(&mut self, record: &Record) -> Result<()> {
        if self.replies {
            // The consumer acknowledges a batch after its last transaction committed; reported
            // before the broker's offset commit.
            self.probe.settle_pending(Instant::now());
        }
        self.inner.commit(record).await
    }

    async fn commit_all(&mut self, records: &[&Record]) -> Result<()> {
        if self.replies {
            // As in `commit`: the batch's transactions have committed.
            self.probe.settle_pending(Instant::now());
        }
        self.inner.commit_all(records).await
    }
}

/// The reply consumer's handler ([`Orchestrator::reply_handler`]) noting the reply that
/// completes a saga. With one transaction per record (`shared` false) the consumer commits a
/// record's unit of work before it goes on, so the saga's completion is durable when the
/// consumer next calls the handler (after that record's `BEGIN` and inbox mark) or
/// acknowledges the batch, whichever comes first: that instant is the completion. With shared
/// commits the batch's transaction commits before the consumer acknowledges the batch (or
/// polls again): that instant is the completion of every saga the batch completed.
pub(super) struct Completing<H> {
    pub(super) inner: H,
    pub(super) probe: Arc<Probe>,
    pub(super) shared: bool,
}

impl<U: UnitOfWork, H: Handler<U>> Handler<U> for Completing<H> {
    async fn handle(&self, uow: &mut U, record: &Record) -> Result<()> {
        if !self.shared {
            self.probe.settle_pending(Instant::now());
        }
        self.inner.handle(uow, record).await?;
        if let Some(saga_id) = completes(record) {
            self.probe.set_pending(saga_id);
        }
        Ok(())
    }

    /// The inner handler's batch (shared commits only), then the completions it holds.
    async fn handle_batch(
        &self,
        uow: &mut U,
        batch: &eventfold_outbox::Batch<'_>,
    ) -> std::result::Result<(), eventfold_outbox::BatchFailure> {
        self.inner.handle_batch(uow, batch).await?;
        for record in batch.records() {
            if let Some(saga_id) = completes(record) {
                self.probe.set_pending(saga_id);
            }
        }
        Ok(())
    }
}

/// A publisher that counts calls and acknowledged messages.
pub(super) struct Counted<P> {
    pub(super) inner: P,
    pub(super) probe: Arc<Probe>,
}

impl<P: Publisher> Publisher for Counted<P> {
    async fn publish(
        &self,
        messages: &[OutboxMessage],
    ) -> Vec<std::result::Result<Delivery, PublishError>> {
        let results = self.inner.publish(messages).await;
        let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
        self.probe.publish_calls.fetch_add(1, Ordering::Relaxed);
        self.probe.published.fetch_add(ok, Ordering::Relaxed);
        results
    }
}
