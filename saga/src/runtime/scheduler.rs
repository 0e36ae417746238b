//! The durable timer scheduler: fires the deadlines of saga steps, the backoffs of retries and
//! operators' `retry_parked` requests.
//!
//! Timers live in the saga store's timers table, written in the transaction of the transition
//! that set them, with deadlines computed from the database's clock. A scheduler claims due
//! timers with a lease ([`SagaStore::claim_due_timers`]), so any number of schedulers (one per
//! service instance) share the work without a leader and never fire one timer twice at once:
//!
//! * firing deletes the timer in the transition's unit of work, and only the firing that
//!   deleted it goes on ([`Applied::TimerGone`] otherwise);
//! * the machine fences every timer on (step, attempt, kind): a timer that lost a race with a
//!   reply is ignored, and the reply that lost a race with a timer is stale;
//! * a scheduler that crashes after its claim leaves the timer to come due again when the lease
//!   ends; a timer whose firing keeps failing gets a longer lease on every claim, so it never
//!   holds back the others (oldest deadline first, in batches).

use std::future::Future;
use std::time::{Duration, Instant};

use eventfold_eventstore::SagaStore;
use futures_util::StreamExt;

use crate::definition::SagaData;
use crate::runtime::error::RuntimeError;
use crate::runtime::orchestrator::{Applied, Orchestrator};

/// What one [`Scheduler::tick`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Timers claimed.
    pub claimed: usize,
    /// Timers that made a transition.
    pub fired: usize,
    /// Timers the machine ignored (stale: the saga moved on).
    pub ignored: usize,
    /// Timers another firing had taken.
    pub gone: usize,
    /// Timers whose firing failed (they come due again after their lease).
    pub failed: usize,
}

/// Fires the due timers of one orchestrator's saga type. Get one with
/// [`Orchestrator::scheduler`].
pub struct Scheduler<S, D> {
    orchestrator: Orchestrator<S, D>,
    batch: usize,
    lease: Duration,
    poll: Duration,
    concurrency: usize,
}

impl<S: SagaStore, D: SagaData> Orchestrator<S, D> {
    /// A scheduler for this orchestrator's timers: batches of 256, leases of 30 s, polls every
    /// 50 ms when idle, fires 8 timers at a time.
    pub fn scheduler(&self) -> Scheduler<S, D> {
        Scheduler {
            orchestrator: self.clone(),
            batch: 256,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(50),
            concurrency: 8,
        }
    }
}

impl<S: SagaStore, D: SagaData> Scheduler<S, D> {
    /// Timers claimed at most per round.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// How long a claim keeps other schedulers off a timer (it must exceed a firing's time).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The pause between rounds when nothing was due.
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Timers fired concurrently within a round.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// One round: claims due timers and fires them.
    pub async fn tick(&self) -> Result<TickReport, RuntimeError> {
        let orchestrator = &self.orchestrator;
        let types = [orchestrator.saga_type().to_owned()];
        let timers = orchestrator
            .store()
            .claim_due_timers(&types, self.batch, self.lease)
            .await
            .map_err(RuntimeError::store(uuid::Uuid::nil()))?;
        let mut report = TickReport {
            claimed: timers.len(),
            ..TickReport::default()
        };
        // Owned timers and a cloned orchestrator per firing: a closure over `&SagaTimer` items
        // makes this future (and `run`'s) not provably `Send` for every lifetime, so
        // `tokio::spawn(scheduler.run(..))` does not compile in generic code.
        let results: Vec<_> = futures_util::stream::iter(timers)
            .map(|timer| {
                let orchestrator = orchestrator.clone();
                async move {
                    let result = orchestrator.fire_timer(&timer).await;
                    (timer, result)
                }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        for (timer, result) in results {
            match result {
                Ok(Applied::Transitioned { .. }) => report.fired += 1,
                Ok(Applied::Ignored(_)) => report.ignored += 1,
                Ok(Applied::TimerGone) => report.gone += 1,
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(saga_id = %timer.saga_id, step = %timer.step, kind = %timer.kind, error = %e, "saga timer failed; it comes due again after its lease");
                }
            }
        }
        let saga_type = orchestrator.saga_type().to_owned();
        metrics::counter!("eventfold_saga_timers_fired_total", "saga_type" => saga_type.clone())
            .increment(report.fired as u64);
        metrics::counter!("eventfold_saga_timers_failed_total", "saga_type" => saga_type)
            .increment(report.failed as u64);
        Ok(report)
    }

    /// Runs rounds until `shutdown` completes: straight on while rounds are full, after the poll
    /// interval otherwise. Every 10 s it also publishes the gauge `eventfold_sagas` (instances
    /// by type and status). Shutdown is taken between rounds, so a claimed timer is fired (or
    /// its lease left to expire) before it returns. A failing store is logged and retried.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut gauges_at = Instant::now() - Duration::from_secs(60);
        loop {
            let full = match self.tick().await {
                Ok(report) => report.claimed >= self.batch,
                Err(e) => {
                    tracing::warn!(error = %e, "saga scheduler round failed");
                    false
                }
            };
            if gauges_at.elapsed() >= Duration::from_secs(10) {
                gauges_at = Instant::now();
                self.publish_gauges().await;
            }
            if full {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    async fn publish_gauges(&self) {
        match self.orchestrator.store().count_sagas().await {
            Ok(counts) => {
                for (saga_type, status, n) in counts {
                    metrics::gauge!("eventfold_sagas", "saga_type" => saga_type, "status" => status)
                        .set(n as f64);
                }
            }
            Err(e) => tracing::debug!(error = %e, "saga counts unavailable"),
        }
    }
}
