//! [`Consumer::overlap_commits`]: a batch's commit overlapped with the next batch (ADR 0037).
//!
//! One lane with shared commits handles a batch in one transaction and commits it; the commit
//! is a round trip and a flush of the database's log, during which the lane does nothing. Here
//! the commit of batch `n` runs beside the poll of batch `n + 1` and its handlers (on a second
//! connection, in a transaction of its own), with three rules:
//!
//! - **order per key**: a batch that holds a key of the committing one waits for that commit
//!   before its handlers run (they then see what it committed);
//! - **acknowledgements in order**: batch `n` is acknowledged once it committed, batch `n + 1`
//!   only after that, once its own transaction committed;
//! - **a failed commit**: batch `n + 1` is rolled back (or, if it committed already, its keys
//!   were other keys), then both are handled again, in order, one after the other; the inbox
//!   skips what had committed.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use eventfold_core::BoxError;
use eventfold_eventstore::{InboxStore, UnitOfWork};

use super::run::POLL_WAIT;
use super::{Consumer, ConsumerError, ConsumerReport, Handler, MessageSource, Record, Settler};

/// How long the poll of the next batch waits for records while a commit is in flight: not
/// longer, so that an idle consumer acknowledges its last batch at once.
const POLL_WAIT_COMMITTING: Duration = Duration::from_millis(1);

/// A batch whose shared transaction is settled and not yet committed.
struct Open<U> {
    records: Vec<Record>,
    report: ConsumerReport,
    uow: U,
}

/// What became of the next batch while the open one committed.
enum Next<U> {
    /// Shutdown came before a batch.
    Shutdown,
    /// The poll failed.
    PollFailed(BoxError),
    /// Nothing to handle.
    Empty,
    /// It holds a key of the batch before, whose commit failed: not handled.
    Held(Vec<Record>),
    /// Handled: its report and, when its last shared transaction is still open, that
    /// transaction (everything else committed).
    Settled(
        Vec<Record>,
        Result<(ConsumerReport, Option<U>), ConsumerError>,
    ),
}

impl<S, Src, H> Consumer<S, Src, H>
where
    S: InboxStore,
    Src: MessageSource,
    H: Handler<S::UnitOfWork>,
{
    /// [`Consumer::run`] with [`Consumer::overlap_commits`] (shared commits, one lane).
    pub(super) async fn run_overlapped(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ConsumerError> {
        tokio::pin!(shutdown);
        let mut open: Option<Open<S::UnitOfWork>> = None;
        loop {
            let (before, before_report, commit) = match open.take() {
                Some(o) => (o.records, o.report, Some(o.uow.commit())),
                None => (Vec::new(), ConsumerReport::default(), None),
            };
            let wait = if commit.is_some() {
                POLL_WAIT_COMMITTING
            } else {
                POLL_WAIT
            };
            let keys: HashSet<&str> = before.iter().map(|r| r.key.as_str()).collect();
            let (done, committed_ok) = tokio::sync::oneshot::channel::<bool>();
            let committing = async move {
                let committed = match commit {
                    Some(commit) => Some(commit.await),
                    None => None,
                };
                let _ = done.send(!matches!(committed, Some(Err(_))));
                committed
            };
            let settler = Settler {
                name: &self.name,
                store: &self.store,
                handler: &self.handler,
                max_attempts: self.max_attempts,
                backoff: self.backoff,
                shared_commits: true,
            };
            let (source, batch) = (&mut self.source, self.batch);
            let stop = &mut shutdown;
            let next = async move {
                let polled = tokio::select! {
                    () = stop => return Next::Shutdown,
                    polled = source.poll(batch, wait) => polled,
                };
                let records = match polled {
                    Ok(records) if records.is_empty() => return Next::Empty,
                    Ok(records) => records,
                    Err(e) => return Next::PollFailed(e),
                };
                // A key of the committing batch: its commit first, so that these records are
                // handled on what it committed.
                if records.iter().any(|r| keys.contains(r.key.as_str()))
                    && !matches!(committed_ok.await, Ok(true))
                {
                    return Next::Held(records);
                }
                let refs: Vec<&Record> = records.iter().collect();
                let settled = settler.settle_lane(&refs, true).await;
                Next::Settled(records, settled)
            };
            let (committed, next) = tokio::join!(committing, next);

            // The batch before first: acknowledged once committed, else handled again.
            let mut again: Vec<Vec<Record>> = Vec::new();
            match committed {
                None => {}
                Some(Ok(())) => self.acknowledge(&before, before_report).await?,
                Some(Err(e)) => {
                    tracing::debug!(consumer = %self.name, error = %e, "an overlapped commit failed; handling its batch again");
                    again.push(before);
                }
            }
            let failed = !again.is_empty();
            match next {
                Next::Shutdown => return Ok(()),
                Next::PollFailed(source) => {
                    return Err(ConsumerError::Source {
                        consumer: self.name.clone(),
                        source,
                    });
                }
                Next::Empty => {}
                Next::Held(records) => again.push(records),
                Next::Settled(records, Ok((report, uow))) => match (failed, uow) {
                    (false, Some(uow)) => {
                        open = Some(Open {
                            records,
                            report,
                            uow,
                        });
                    }
                    (false, None) => self.acknowledge(&records, report).await?,
                    (true, uow) => {
                        // Acknowledgements go in order: the batch before is handled again
                        // first, this one after it.
                        if let Some(uow) = uow {
                            let _ = uow.rollback().await;
                        }
                        again.push(records);
                    }
                },
                Next::Settled(records, Err(e)) => {
                    let mut failures = 0;
                    self.transient_pause(e, &mut failures, &mut shutdown)
                        .await?;
                    if failures == 0 {
                        return Ok(());
                    }
                    again.push(records);
                }
            }
            for records in again {
                if !self.handle_until_done(&records, &mut shutdown).await? {
                    return Ok(());
                }
            }
        }
    }
}
