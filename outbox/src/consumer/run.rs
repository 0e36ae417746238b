//! [`Consumer::run`]: batches polled and handled until shutdown, a batch handled again after a
//! transient failure of the store.

use std::future::Future;
use std::time::Duration;

use eventfold_eventstore::InboxStore;

use super::{Consumer, ConsumerError, Handler, MessageSource, Record, doubled};

/// How long [`Consumer::run`] waits for a batch when nothing is there.
pub(super) const POLL_WAIT: Duration = Duration::from_millis(500);

/// The longest pause between two attempts of a batch after transient failures in
/// [`Consumer::run`].
const MAX_RUN_BACKOFF: Duration = Duration::from_secs(5);

impl<S, Src, H> Consumer<S, Src, H>
where
    S: InboxStore,
    Src: MessageSource,
    H: Handler<S::UnitOfWork>,
{
    /// Runs until `shutdown` completes. Shutdown is taken between batches, so every polled
    /// message is finished (handled and acknowledged, or parked) before it returns.
    ///
    /// A transient failure of the store ([`ConsumerError::is_retriable`]: a lost connection, a
    /// deadlock, a serialization failure, a busy SQLite file, also one that the handler's own
    /// statements met, see [`StoreError::transient_cause`](eventfold_eventstore::StoreError::transient_cause)) does not end the run: the same
    /// batch is handled again after a backoff (doubling from [`backoff`](Self::backoff) up to
    /// 5 s; the inbox skips what had committed), until it succeeds or shutdown comes (the batch
    /// then stays unacknowledged and is delivered again). Each retry is counted in
    /// `eventfold_consumer_retries_total{consumer, reason}`. Any other error ends the run.
    ///
    /// With [`overlap_commits`](Self::overlap_commits), a batch's commit overlaps the next
    /// batch (see there).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ConsumerError> {
        if self.overlap && self.shared_commits && self.concurrency == 1 {
            return self.run_overlapped(shutdown).await;
        }
        tokio::pin!(shutdown);
        loop {
            let polled = tokio::select! {
                () = &mut shutdown => return Ok(()),
                polled = self.source.poll(self.batch, POLL_WAIT) => polled,
            };
            let records = polled.map_err(self.source_err())?;
            if !self.handle_until_done(&records, &mut shutdown).await? {
                return Ok(());
            }
        }
    }

    /// Handles `records` and acknowledges them ([`Self::handle_batch`]), again after a backoff
    /// while that fails transiently: `true` once done, `false` when `shutdown` came first (the
    /// batch then stays unacknowledged).
    pub(super) async fn handle_until_done(
        &mut self,
        records: &[Record],
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<bool, ConsumerError> {
        let mut failures = 0u32;
        loop {
            match self.handle_batch(records).await {
                Ok(_) => return Ok(true),
                Err(e) => {
                    self.transient_pause(e, &mut failures, shutdown).await?;
                    if failures == 0 {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// After a failure of a batch: a transient one is counted and waited out (doubling from the
    /// backoff, up to 5 s), `failures` going up by one; shutdown during the wait sets it to 0.
    /// Any other failure is returned.
    pub(super) async fn transient_pause(
        &mut self,
        e: ConsumerError,
        failures: &mut u32,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<(), ConsumerError> {
        if !e.is_retriable() {
            return Err(e);
        }
        *failures = failures.saturating_add(1);
        let reason = e.transient_reason();
        metrics::counter!(
            "eventfold_consumer_retries_total",
            "consumer" => self.name.clone(),
            "reason" => reason
        )
        .increment(1);
        tracing::warn!(consumer = %self.name, attempt = *failures, error = %e, "transient failure; handling the batch again");
        let pause = doubled(self.backoff, *failures).min(MAX_RUN_BACKOFF);
        tokio::select! {
            () = shutdown => *failures = 0,
            () = tokio::time::sleep(pause) => {}
        }
        Ok(())
    }
}
