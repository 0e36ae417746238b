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
//!   ends (one that stops gracefully releases the timers it claimed and did not fire, due again
//!   at once, and so does a firing that failed on a transient store error: a lost connection,
//!   a deadlock); a timer whose firing keeps failing for any other reason gets a longer lease on
//!   every claim, so it never holds back the others (oldest deadline first, in batches).

use std::future::Future;
use std::time::{Duration, Instant};

use eventfold_eventstore::{SagaStore, SagaTimer};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};

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
        let never = std::future::pending::<()>();
        tokio::pin!(never);
        let (report, _) = self.round(never.as_mut()).await?;
        Ok(report)
    }

    /// One round that stops early when `shutdown` completes: no timer is claimed after it, the
    /// firings in progress finish (each one's transition commits or rolls back whole), and the
    /// claimed timers not fired yet are released ([`SagaStore::release_saga_timers`]), due again
    /// at once for another scheduler. Returns whether `shutdown` completed (it is not polled
    /// again then).
    async fn round<F: Future<Output = ()>>(
        &self,
        mut shutdown: std::pin::Pin<&mut F>,
    ) -> Result<(TickReport, bool), RuntimeError> {
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
        // Owned timers: a closure over `&SagaTimer` makes the future of `tick` (and `run`) not
        // `Send` (rustc cannot prove it for every lifetime), so a scheduler could not be spawned.
        let fire = |timer: SagaTimer| async move {
            let result = orchestrator.fire_timer(&timer).await;
            (timer, result)
        };
        let mut waiting = timers.into_iter();
        let mut firing = FuturesUnordered::new();
        let mut stopped = false;
        loop {
            if !stopped && shutdown.as_mut().now_or_never().is_some() {
                stopped = true;
            }
            while !stopped && firing.len() < self.concurrency {
                match waiting.next() {
                    Some(timer) => firing.push(fire(timer)),
                    None => break,
                }
            }
            if firing.is_empty() {
                break;
            }
            let (timer, result) = tokio::select! {
                biased;
                () = shutdown.as_mut(), if !stopped => {
                    stopped = true;
                    continue;
                }
                Some(done) = firing.next() => done,
            };
            match result {
                Ok(Applied::Transitioned { .. }) => report.fired += 1,
                Ok(Applied::Ignored(_)) => report.ignored += 1,
                Ok(Applied::TimerGone) => report.gone += 1,
                Err(e) if e.is_retriable() => {
                    // The store failed, not the timer: give it back, due again at once with its
                    // claim count restored, rather than after a lease that grows with every
                    // claim. If the store cannot take it back either, the lease ends the claim.
                    report.failed += 1;
                    tracing::warn!(saga_id = %timer.saga_id, step = %timer.step, kind = %timer.kind, error = %e, "saga timer failed on a transient store error; released");
                    if let Err(e) = orchestrator
                        .store()
                        .release_saga_timers(std::slice::from_ref(&timer))
                        .await
                    {
                        tracing::debug!(saga_id = %timer.saga_id, error = %e, "releasing the timer failed; it comes due again after its lease");
                    }
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(saga_id = %timer.saga_id, step = %timer.step, kind = %timer.kind, error = %e, "saga timer failed; it comes due again after its lease");
                }
            }
        }
        let unfired: Vec<SagaTimer> = waiting.collect();
        if !unfired.is_empty() {
            // Stopping: the timers claimed but not fired go back, due again at once.
            match orchestrator.store().release_saga_timers(&unfired).await {
                Ok(released) => {
                    tracing::debug!(
                        released,
                        claimed = unfired.len(),
                        "saga scheduler stopping; released its unfired timers"
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %e, timers = unfired.len(), "releasing claimed saga timers failed; they come due again after their lease")
                }
            }
        }
        let saga_type = orchestrator.saga_type().to_owned();
        metrics::counter!("eventfold_saga_timers_fired_total", "saga_type" => saga_type.clone())
            .increment(report.fired as u64);
        metrics::counter!("eventfold_saga_timers_failed_total", "saga_type" => saga_type)
            .increment(report.failed as u64);
        Ok((report, stopped))
    }

    /// Runs rounds until `shutdown` completes: straight on while rounds are full, after the poll
    /// interval otherwise. Every 10 s it also publishes the gauge `eventfold_sagas` (instances
    /// by type and status). A failing store is logged and retried.
    ///
    /// Shutdown is taken at once, also in the middle of a round and while rounds are full: no
    /// timer is claimed after it, the firings in progress finish (each transition commits or
    /// rolls back whole), the timers claimed but not fired are released (due again at once for
    /// another scheduler, not after their lease), and it returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut gauges_at = Instant::now() - Duration::from_secs(60);
        loop {
            let full = match self.round(shutdown.as_mut()).await {
                Ok((_, true)) => return,
                Ok((report, false)) => report.claimed >= self.batch,
                Err(e) => {
                    tracing::warn!(error = %e, "saga scheduler round failed");
                    false
                }
            };
            if gauges_at.elapsed() >= Duration::from_secs(10) {
                gauges_at = Instant::now();
                self.publish_gauges().await;
            }
            let pause = if full { Duration::ZERO } else { self.poll };
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
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

/// A scheduler can be spawned (`tokio::spawn` needs `Send` futures): checked at compile time.
#[cfg(test)]
#[allow(dead_code)]
fn run_is_send<S: SagaStore, D: SagaData>(scheduler: Scheduler<S, D>) -> impl Send {
    scheduler.run(std::future::pending())
}
