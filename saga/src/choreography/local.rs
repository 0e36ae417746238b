//! Reactions on this service's own global log, with the checkpoint in the reaction's
//! transaction.

use std::future::Future;
use std::time::Duration;

use eventfold_core::{Upcasters, decode_event};
use eventfold_eventstore::{
    Checkpoint, LogEvent, LogFilter, ParkedEvent, ProjectionStore, StoreError, UnitOfWork, Wakeup,
};

use futures_util::FutureExt;
use tracing::Instrument;

use super::{Flow, FlowContext, Reaction};

/// A local reactor failed for a reason other than its reaction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReactionError {
    /// The store failed.
    #[error("reaction {reaction}: {source}")]
    Store {
        /// The reaction's name.
        reaction: String,
        /// The store's error.
        source: StoreError,
    },
}

impl ReactionError {
    /// Is it worth trying again (a version conflict, a dropped connection, a deadlock)?
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Store { source, .. } => source.is_retriable(),
        }
    }
}

/// What one [`LocalReactor::run_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReactorReport {
    /// Events reacted to (their transactions committed).
    pub handled: usize,
    /// Events parked after their attempts (or undecodable).
    pub parked: usize,
}

enum Outcome {
    Handled,
    Parked,
    /// Another instance moved the checkpoint: read again from there.
    Moved,
}

/// Runs a [`Reaction`] on the events of this store's global log: catch up, then follow.
///
/// Each event is handled in a unit of work that locks the reaction's checkpoint, runs the
/// reaction and moves the checkpoint past the event, so the event takes effect once, also with
/// several instances of the service (they take turns on the checkpoint's row lock) and after a
/// crash. The checkpoint is kept with the projections' (named `reaction:{name}`), so `projections
/// status` shows its lag and `projections dead-letters reaction:{name}` its parked events.
pub struct LocalReactor<S: ProjectionStore, R> {
    store: S,
    reaction: R,
    key: String,
    filter: LogFilter,
    upcasters: Upcasters,
    max_attempts: u32,
    backoff: Duration,
    batch: usize,
    /// The stored checkpoint, as last seen; `None` until loaded.
    checkpoint: Option<Checkpoint>,
}

impl<S, R> LocalReactor<S, R>
where
    S: ProjectionStore,
    R: Reaction<S::UnitOfWork>,
{
    /// A reactor for `reaction` on `store`'s log: 5 attempts per event, 50 ms first backoff,
    /// batches of 100.
    pub fn new(store: S, reaction: R) -> Self {
        let key = format!("reaction:{}", reaction.name());
        let filter = LogFilter::all().event_types(reaction.event_types());
        Self {
            store,
            reaction,
            key,
            filter,
            upcasters: Upcasters::new(),
            max_attempts: 5,
            backoff: Duration::from_millis(50),
            batch: 100,
            checkpoint: None,
        }
    }

    /// Upcasters for older schema versions of the events.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Attempts per event before it is parked (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The first retry delay; it doubles with every attempt.
    pub fn backoff(mut self, first: Duration) -> Self {
        self.backoff = first;
        self
    }

    /// Events read per batch (at least 1).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch = size.max(1);
        self
    }

    /// The name its checkpoint and parked events are kept under: `reaction:{name}`.
    pub fn checkpoint_name(&self) -> &str {
        &self.key
    }

    fn err(&self) -> impl FnOnce(StoreError) -> ReactionError + '_ {
        move |source| ReactionError::Store {
            reaction: self.reaction.name().to_owned(),
            source,
        }
    }

    /// The stored checkpoint (created at the start of the log the first time).
    async fn load(&mut self) -> Result<Checkpoint, ReactionError> {
        if let Some(checkpoint) = self.checkpoint {
            return Ok(checkpoint);
        }
        let mut uow = self.store.begin().await.map_err(self.err())?;
        self.store
            .create_projection(&mut uow, &self.key, 1)
            .await
            .map_err(self.err())?;
        let locked = self
            .store
            .lock_projection_checkpoint(&mut uow, &self.key, 1)
            .await
            .map_err(self.err())?;
        uow.commit().await.map_err(self.err())?;
        let checkpoint = locked.map_or(Checkpoint::START, |l| l.checkpoint);
        self.checkpoint = Some(checkpoint);
        Ok(checkpoint)
    }

    /// Reacts to every event the log holds after the checkpoint, then returns.
    pub async fn run_once(&mut self) -> Result<ReactorReport, ReactionError> {
        let never = std::future::pending::<()>();
        tokio::pin!(never);
        let (report, _) = self.react(never.as_mut()).await?;
        Ok(report)
    }

    /// Reacts to every event the log holds after the checkpoint, one transaction per event,
    /// and returns; or earlier, between two events' transactions, once `shutdown` has
    /// completed (then `true`, and `shutdown` is not polled again).
    async fn react<F: Future<Output = ()>>(
        &mut self,
        mut shutdown: std::pin::Pin<&mut F>,
    ) -> Result<(ReactorReport, bool), ReactionError> {
        let mut report = ReactorReport::default();
        let mut stopped = false;
        let mut cursor = self.load().await?;
        'read: loop {
            let batch = self
                .store
                .read_log(cursor, self.batch, &self.filter)
                .await
                .map_err(self.err())?;
            let mut moved = false;
            for event in &batch.events {
                if shutdown.as_mut().now_or_never().is_some() {
                    stopped = true;
                    break 'read;
                }
                match self.settle(event).await? {
                    Outcome::Handled => report.handled += 1,
                    Outcome::Parked => report.parked += 1,
                    Outcome::Moved => {
                        moved = true;
                        break;
                    }
                }
            }
            if moved {
                cursor = self.load().await?;
                continue;
            }
            if batch.events.is_empty() && (batch.reached_end || batch.held_back) {
                break;
            }
            cursor = batch.checkpoint;
            if batch.reached_end {
                break;
            }
        }
        let reaction = self.reaction.name().to_owned();
        metrics::counter!("eventfold_reaction_handled_total", "reaction" => reaction.clone())
            .increment(report.handled as u64);
        metrics::counter!("eventfold_reaction_parked_total", "reaction" => reaction)
            .increment(report.parked as u64);
        Ok((report, stopped))
    }

    /// Locks the checkpoint in a new unit of work; `None` (rolled back) when another instance
    /// moved it since this one last saw it.
    async fn begin_at_checkpoint(&mut self) -> Result<Option<S::UnitOfWork>, ReactionError> {
        let mut uow = self.store.begin().await.map_err(self.err())?;
        let locked = self
            .store
            .lock_projection_checkpoint(&mut uow, &self.key, 1)
            .await
            .map_err(self.err())?;
        let stored = locked.map_or(Checkpoint::START, |l| l.checkpoint);
        if Some(stored) != self.checkpoint {
            let _ = uow.rollback().await;
            self.checkpoint = Some(stored);
            return Ok(None);
        }
        Ok(Some(uow))
    }

    /// Moves the checkpoint past `event` and commits.
    async fn commit_past(
        &mut self,
        mut uow: S::UnitOfWork,
        event: &LogEvent,
    ) -> Result<(), ReactionError> {
        self.store
            .save_projection_checkpoint(
                &mut uow,
                &self.key,
                1,
                event.checkpoint,
                event.event.global_position,
            )
            .await
            .map_err(self.err())?;
        uow.commit().await.map_err(self.err())?;
        self.checkpoint = Some(event.checkpoint);
        Ok(())
    }

    /// Handles one event in a `reaction` span (with the feature `otel`, a child of the trace
    /// context the event carries).
    async fn settle(&mut self, event: &LogEvent) -> Result<Outcome, ReactionError> {
        let recorded = &event.event;
        let span = tracing::info_span!(
            "reaction",
            reaction = %self.reaction.name(),
            event_type = %recorded.event_type,
            event_id = %recorded.event_id,
            correlation_id = %recorded.correlation_id,
        );
        #[cfg(feature = "otel")]
        eventfold_core::trace_context::continue_trace(&span, &recorded.headers);
        self.settle_in_span(event).instrument(span).await
    }

    /// Handles one event: the reaction with retries, else parks it.
    async fn settle_in_span(&mut self, event: &LogEvent) -> Result<Outcome, ReactionError> {
        let recorded = &event.event;
        let decoded = decode_event::<R::Event>(recorded.clone(), &self.upcasters);
        let mut last_error = String::new();
        if let Ok(envelope) = &decoded {
            let flow = Flow::of_event(envelope);
            for attempt in 1..=self.max_attempts {
                let Some(mut uow) = self.begin_at_checkpoint().await? else {
                    return Ok(Outcome::Moved);
                };
                let result = {
                    let mut ctx = FlowContext::new(&mut uow, flow.clone());
                    self.reaction.react(&mut ctx, envelope).await
                };
                match result {
                    Ok(()) => {
                        self.commit_past(uow, event).await?;
                        return Ok(Outcome::Handled);
                    }
                    Err(e) => {
                        let _ = uow.rollback().await;
                        last_error = e.to_string();
                        tracing::warn!(attempt, error = %last_error, "reaction failed");
                        if attempt < self.max_attempts {
                            tokio::time::sleep(
                                self.backoff.saturating_mul(1 << (attempt - 1).min(10)),
                            )
                            .await;
                        }
                    }
                }
            }
        } else if let Err(e) = &decoded {
            // Not retried: the same bytes will not decode the next time.
            last_error = e.to_string();
        }
        let Some(mut uow) = self.begin_at_checkpoint().await? else {
            return Ok(Outcome::Moved);
        };
        self.store
            .park_projection_event(
                &mut uow,
                ParkedEvent {
                    projection: self.key.clone(),
                    generation: 1,
                    event_id: recorded.event_id,
                    global_position: recorded.global_position,
                    stream_id: recorded.stream_id.to_string(),
                    event_type: recorded.event_type.clone(),
                    error: last_error,
                    parked_at: eventfold_core::metadata::now_micros(),
                },
            )
            .await
            .map_err(self.err())?;
        self.commit_past(uow, event).await?;
        Ok(Outcome::Parked)
    }

    /// Reacts until `shutdown` completes: catches up, then waits for appends (in-process
    /// signals, LISTEN/NOTIFY on PostgreSQL, at most `poll` apart).
    ///
    /// Shutdown is taken between events' transactions, never inside one: the event being
    /// handled commits with its checkpoint (or rolls back whole), no later event is started,
    /// and it returns. The reactor holds no lease (each event's transaction locks the
    /// checkpoint row only while it runs), so another instance goes on at once.
    pub async fn run(
        mut self,
        poll: Duration,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ReactionError> {
        tokio::pin!(shutdown);
        let mut wakeup = self.store.wakeup().await.map_err(self.err())?;
        loop {
            match self.react(shutdown.as_mut()).await {
                Ok((_, true)) => return Ok(()),
                Ok((_, false)) => {}
                Err(e) if e.is_retriable() => {
                    tracing::warn!(reaction = %self.reaction.name(), error = %e, "reactor failed; retrying");
                }
                Err(e) => return Err(e),
            }
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                () = wakeup.wait(poll) => {}
            }
        }
    }
}
