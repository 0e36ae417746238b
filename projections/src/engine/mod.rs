//! The work itself: batches guarded by the checkpoint lock, in-place resets, blue/green builds
//! and switches. Used by the runner and the registry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventfold_core::{BoxError, Upcasters};
use eventfold_eventstore::projection::{ParkedEvent, ProjectionState, physical_table, qualified};
use eventfold_eventstore::{
    Checkpoint, EventStore, LogEvent, LogFilter, ProjectionStore, StoreError, UnitOfWork,
};

use crate::error::ProjectionError;
use crate::options::{ProjectionOptions, RebuildProgress, RebuildReport};
use crate::projection::{ErasedProjection, Tables};

mod build;

/// Who applies a batch: the runner serving the active generation, or a build of a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Serve,
    Build,
}

/// What became of a batch.
pub(crate) enum Outcome {
    /// Applied and committed with its checkpoint.
    Committed { applied: u64 },
    /// The checkpoint is not what the caller expected (another applier moved it) or the
    /// generation changed role: rolled back, reload.
    Moved,
    /// Event `index` failed (`None`: the batch failed as a whole and applying it event by
    /// event succeeded or was not tried): rolled back.
    Failed {
        index: Option<usize>,
        error: BoxError,
    },
}

/// One projection with everything needed to run it.
pub(crate) struct Ctx<S: EventStore> {
    pub store: S,
    pub projection: Arc<dyn ErasedProjection<S::UnitOfWork>>,
    pub upcasters: Arc<Upcasters>,
    pub options: ProjectionOptions,
    pub filter: LogFilter,
}

impl<S: EventStore> Clone for Ctx<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            projection: self.projection.clone(),
            upcasters: self.upcasters.clone(),
            options: self.options.clone(),
            filter: self.filter.clone(),
        }
    }
}

/// The highest global position of `events`, or `current`.
pub(crate) fn max_position(current: u64, events: &[LogEvent]) -> u64 {
    events
        .iter()
        .map(|e| e.event.global_position)
        .fold(current, u64::max)
}

impl<S: ProjectionStore> Ctx<S> {
    pub(crate) fn new(
        store: S,
        projection: Arc<dyn ErasedProjection<S::UnitOfWork>>,
        upcasters: Arc<Upcasters>,
        options: ProjectionOptions,
    ) -> Self {
        let filter = projection.filter(&upcasters);
        Self {
            store,
            projection,
            upcasters,
            options,
            filter,
        }
    }

    pub(crate) fn name(&self) -> &str {
        self.projection.name()
    }

    pub(crate) fn tables(&self, generation: u32) -> Tables {
        Tables::new(self.store.projection_schema(), generation)
    }

    fn busy(&self) -> ProjectionError {
        ProjectionError::Busy {
            projection: self.name().to_owned(),
        }
    }

    /// Runs `work` again (a fresh unit of work each time) while readers keep relations busy.
    async fn retry_busy<T, F, Fut>(&self, work: F) -> Result<T, ProjectionError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ProjectionError>>,
    {
        let mut attempt = 0u32;
        loop {
            match work().await {
                Err(ProjectionError::Busy { .. }) if attempt < 100 => {
                    attempt += 1;
                    tracing::debug!(projection = %self.name(), attempt, "relations busy; retrying");
                    tokio::time::sleep(Duration::from_millis(5 + u64::from(attempt.min(20)) * 5))
                        .await;
                }
                other => return other,
            }
        }
    }

    fn unknown(&self) -> ProjectionError {
        ProjectionError::UnknownProjection(self.name().to_owned())
    }

    async fn setup(&self, uow: &mut S::UnitOfWork, generation: u32) -> Result<(), ProjectionError> {
        let tables = self.tables(generation);
        self.projection
            .setup(uow, &tables)
            .await
            .map_err(|source| ProjectionError::Setup {
                projection: self.name().to_owned(),
                generation,
                source,
            })
    }

    /// Registers the projection if the store does not know it yet (generation 1, its tables and
    /// views, in one transaction) and returns its state.
    pub(crate) async fn ensure(&self) -> Result<ProjectionState, ProjectionError> {
        self.retry_busy(|| self.ensure_once()).await
    }

    async fn ensure_once(&self) -> Result<ProjectionState, ProjectionError> {
        // Before the first read: PostgreSQL fails on a NUL with a generic error.
        eventfold_eventstore::projection::validate_projection_name(self.name())?;
        if let Some(state) = self.store.projection_state(self.name()).await? {
            return Ok(state);
        }
        let mut uow = self.store.begin().await?;
        let created = self
            .store
            .create_projection(&mut uow, self.name(), self.projection.version())
            .await?;
        if created {
            let fresh = async {
                self.fresh_tables(&mut uow, 1).await?;
                if !self
                    .store
                    .point_projection_views(&mut uow, self.projection.tables(), 1)
                    .await?
                {
                    return Err(self.busy());
                }
                Ok::<_, ProjectionError>(())
            };
            if let Err(e) = fresh.await {
                let _ = uow.rollback().await;
                return Err(e);
            }
            uow.commit().await?;
        } else {
            uow.rollback().await?;
        }
        self.store
            .projection_state(self.name())
            .await?
            .ok_or_else(|| self.unknown())
    }

    /// Drops and creates the tables of `generation` (in `uow`).
    async fn fresh_tables(
        &self,
        uow: &mut S::UnitOfWork,
        generation: u32,
    ) -> Result<(), ProjectionError> {
        let tables = self.projection.tables();
        if !self
            .store
            .drop_projection_tables(uow, tables, generation)
            .await?
        {
            return Err(self.busy());
        }
        // Views are pointed at the generation when it becomes the active one.
        self.setup(uow, generation).await
    }

    /// Applies `events` to `generation` in one unit of work with the checkpoint `end`, if the
    /// stored checkpoint is still `expected`: first as one batch (`apply_batch`), and when the
    /// batch as a whole fails, again event by event (in a new unit of work) to find the event at
    /// fault.
    pub(crate) async fn batch(
        &self,
        role: Role,
        generation: u32,
        expected: Checkpoint,
        events: &[LogEvent],
        end: Checkpoint,
        position: u64,
    ) -> Result<Outcome, ProjectionError> {
        let name = self.name();
        let tables = self.tables(generation);
        let mut batched = true;
        loop {
            let mut uow = self.store.begin().await?;
            if !self.locked(&mut uow, role, generation, expected).await? {
                let _ = uow.rollback().await;
                return Ok(Outcome::Moved);
            }
            let applied = if batched {
                match self
                    .projection
                    .apply_batch(&mut uow, &tables, events, &self.upcasters)
                    .await
                {
                    Ok(n) => n,
                    Err((index, error)) => {
                        let _ = uow.rollback().await;
                        let error = transient_is_the_stores(error, name)?;
                        if index.is_none() && events.len() > 1 {
                            tracing::debug!(projection = %name, error = %error, "a batch failed; applying it event by event");
                            batched = false;
                            continue;
                        }
                        // A single event's batch failing is that event's failure.
                        let index = index.or((events.len() == 1).then_some(0));
                        return Ok(Outcome::Failed { index, error });
                    }
                }
            } else {
                match self.apply_each(&mut uow, &tables, events).await {
                    Ok(n) => n,
                    Err((index, error)) => {
                        let _ = uow.rollback().await;
                        let error = transient_is_the_stores(error, name)?;
                        return Ok(Outcome::Failed {
                            index: Some(index),
                            error,
                        });
                    }
                }
            };
            self.store
                .save_projection_checkpoint(&mut uow, name, generation, end, position)
                .await?;
            uow.commit().await?;
            return Ok(Outcome::Committed { applied });
        }
    }

    /// Applies `events` one by one in `uow`: how many were for this projection, or the index of
    /// the first that failed and its error (the caller rolls back).
    async fn apply_each(
        &self,
        uow: &mut S::UnitOfWork,
        tables: &Tables,
        events: &[LogEvent],
    ) -> Result<u64, (usize, BoxError)> {
        let mut applied = 0;
        for (index, e) in events.iter().enumerate() {
            match self
                .projection
                .apply(uow, tables, &e.event, &self.upcasters)
                .await
            {
                Ok(true) => applied += 1,
                Ok(false) => {}
                Err(error) => return Err((index, error)),
            }
        }
        Ok(applied)
    }

    async fn locked(
        &self,
        uow: &mut S::UnitOfWork,
        role: Role,
        generation: u32,
        expected: Checkpoint,
    ) -> Result<bool, StoreError> {
        let locked = self
            .store
            .lock_projection_checkpoint(uow, self.name(), generation)
            .await?;
        Ok(locked.is_some_and(|l| {
            l.checkpoint == expected
                && match role {
                    Role::Serve => l.active_generation == generation,
                    Role::Build => l.active_generation < generation,
                }
        }))
    }

    /// Parks `event` and moves the checkpoint past it, if the checkpoint is still `expected`.
    pub(crate) async fn park(
        &self,
        generation: u32,
        expected: Checkpoint,
        event: &LogEvent,
        position: u64,
        error: String,
    ) -> Result<bool, ProjectionError> {
        let mut uow = self.store.begin().await?;
        if !self
            .locked(&mut uow, Role::Serve, generation, expected)
            .await?
        {
            let _ = uow.rollback().await;
            return Ok(false);
        }
        self.store
            .park_projection_event(
                &mut uow,
                ParkedEvent {
                    projection: self.name().to_owned(),
                    generation,
                    event_id: event.event.event_id,
                    global_position: event.event.global_position,
                    stream_id: event.event.stream_id.to_string(),
                    event_type: event.event.event_type.clone(),
                    error,
                    parked_at: eventfold_core::metadata::now_micros(),
                },
            )
            .await?;
        self.store
            .save_projection_checkpoint(
                &mut uow,
                self.name(),
                generation,
                event.checkpoint,
                position,
            )
            .await?;
        uow.commit().await?;
        Ok(true)
    }

    /// Resets the active generation in place: new tables, checkpoint at the start, parked events
    /// forgotten, `reset_requested` cleared. Returns the generation.
    pub(crate) async fn reset(&self) -> Result<u32, ProjectionError> {
        self.retry_busy(|| self.reset_once()).await
    }

    async fn reset_once(&self) -> Result<u32, ProjectionError> {
        self.ensure().await?;
        let mut uow = self.store.begin().await?;
        let result = self.reset_in(&mut uow).await;
        let generation = commit_if_ok(uow, result).await?;
        tracing::info!(projection = %self.name(), generation, "projection reset in place");
        Ok(generation)
    }

    async fn reset_in(&self, uow: &mut S::UnitOfWork) -> Result<u32, ProjectionError> {
        let name = self.name();
        let state = self
            .store
            .lock_projection(uow, name)
            .await?
            .ok_or_else(|| self.unknown())?;
        let generation = state.generation;
        self.fresh_tables(uow, generation).await?;
        self.store
            .start_projection_generation(uow, name, generation, self.projection.version())
            .await?;
        self.store
            .activate_projection_generation(uow, name, generation)
            .await?;
        if !self
            .store
            .point_projection_views(uow, self.projection.tables(), generation)
            .await?
        {
            return Err(self.busy());
        }
        Ok(generation)
    }

    /// Replays the active generation from its checkpoint to the end of the log, failing fast.
    pub(crate) async fn replay(
        &self,
        progress: &(dyn Fn(RebuildProgress) + Send + Sync),
    ) -> Result<u64, ProjectionError> {
        let state = self.ensure().await?;
        let generation = state.generation;
        let head = self.store.log_head().await?.position;
        let mut at = Cursor::new(state.checkpoint, state.position, head);
        // The next batch is read while the current one is applied (a batch read ahead is
        // dropped when the checkpoint moved under us).
        let mut ahead: Option<eventfold_eventstore::LogBatch> = None;
        loop {
            let batch = match ahead.take() {
                Some(batch) => batch,
                None => {
                    self.store
                        .read_log(at.stored, self.options.batch_size, &self.filter)
                        .await?
                }
            };
            if batch.events.is_empty() && batch.checkpoint == at.stored {
                if batch.held_back {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                return Ok(at.applied);
            }
            let next = max_position(at.position, &batch.events);
            let read_next = !batch.reached_end || batch.held_back;
            let (outcome, read) = tokio::join!(
                self.batch(
                    Role::Serve,
                    generation,
                    at.stored,
                    &batch.events,
                    batch.checkpoint,
                    next,
                ),
                async {
                    if read_next {
                        Some(
                            self.store
                                .read_log(batch.checkpoint, self.options.batch_size, &self.filter)
                                .await,
                        )
                    } else {
                        None
                    }
                }
            );
            match outcome? {
                Outcome::Committed { applied: n } => {
                    at.committed(n, batch.checkpoint, next, progress);
                    if batch.reached_end && !batch.held_back {
                        return Ok(at.applied);
                    }
                    ahead = read.transpose()?;
                }
                Outcome::Moved => {
                    let state = self
                        .store
                        .projection_state(self.name())
                        .await?
                        .ok_or_else(|| self.unknown())?;
                    if state.generation != generation {
                        return Ok(at.applied);
                    }
                    (at.stored, at.position) = (state.checkpoint, state.position);
                }
                Outcome::Failed { index, error } => {
                    return Err(self.fail_batch(&batch.events, index, error).await);
                }
            }
        }
    }

    /// Fails fast on the event at `index` of `events` (the first when the batch failed as a
    /// whole).
    async fn fail_batch(
        &self,
        events: &[LogEvent],
        index: Option<usize>,
        error: BoxError,
    ) -> ProjectionError {
        match events.get(index.unwrap_or(0)) {
            Some(event) => self.fail_fast(event, error).await,
            None => ProjectionError::Batch {
                projection: self.name().to_owned(),
                events: events.len(),
                source: error,
            },
        }
    }

    async fn fail_fast(&self, event: &LogEvent, error: BoxError) -> ProjectionError {
        let error = ProjectionError::apply(self.name(), &event.event, error);
        let message = error.to_string();
        tracing::error!(projection = %self.name(), error = %message, "rebuild failed");
        let _ = self
            .store
            .set_projection_status(self.name(), "failed", Some(&message))
            .await;
        error
    }
}

/// Logs a failure of the store and waits before the caller retries.
pub(crate) async fn pause_after(
    error: &(dyn std::fmt::Display + Sync),
    projection: &str,
    wait: Duration,
) {
    tracing::warn!(projection, error = %error, "projection store error; retrying");
    tokio::time::sleep(wait).await;
}

/// Commits `uow` when `result` is a success, else rolls it back: the rollback's own error is
/// dropped, as `result`'s error says what failed.
async fn commit_if_ok<U: UnitOfWork, T>(
    uow: U,
    result: Result<T, ProjectionError>,
) -> Result<T, ProjectionError> {
    match result {
        Ok(value) => {
            uow.commit().await?;
            Ok(value)
        }
        Err(e) => {
            let _ = uow.rollback().await;
            Err(e)
        }
    }
}

/// A projection's error caused by a transient failure of the database (its connection lost, a
/// deadlock: [`StoreError::transient_cause`]) is a failure of the store, which the runner
/// retries with its backoff, not the event's failure (retried `max_attempts` times, then
/// parked: skipped). Any other error is given back.
fn transient_is_the_stores(error: BoxError, projection: &str) -> Result<BoxError, StoreError> {
    match StoreError::transient_cause(error, "applying a projection's events", projection) {
        Ok(transient) => Err(transient),
        Err(error) => Ok(error),
    }
}

/// How far a replay or a build got: the events it applied, the stored checkpoint and the
/// position it stands for, and the log's head when it started.
struct Cursor {
    applied: u64,
    stored: Checkpoint,
    position: u64,
    head: u64,
}

impl Cursor {
    fn new(stored: Checkpoint, position: u64, head: u64) -> Self {
        Cursor {
            applied: 0,
            stored,
            position,
            head,
        }
    }

    /// A batch of `applied` events committed with the checkpoint `stored` at `position`:
    /// recorded, and reported to `progress`.
    fn committed(
        &mut self,
        applied: u64,
        stored: Checkpoint,
        position: u64,
        progress: &(dyn Fn(RebuildProgress) + Send + Sync),
    ) {
        self.applied += applied;
        self.stored = stored;
        self.position = position;
        progress(RebuildProgress {
            applied: self.applied,
            position,
            head: self.head.max(position),
        });
    }
}
