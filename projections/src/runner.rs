//! The [`Runner`]: runs every registered projection concurrently, catches up from their
//! checkpoints, then follows live appends.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use eventfold_eventstore::{Checkpoint, LogEvent, ProjectionStore, Wakeup};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine::{Ctx, Outcome, Role, max_position, pause_after};
use crate::error::ProjectionError;
use crate::options::ErrorPolicy;

/// Runs the projections of a registry. See [`Runner::start`] and [`Runner::run`].
pub struct Runner<S: ProjectionStore> {
    store: S,
    contexts: Vec<Ctx<S>>,
    poll_interval: Duration,
    control_interval: Duration,
}

/// How far a projection has read, and whether its task ended.
#[derive(Debug, Clone)]
struct Reached {
    checkpoint: Checkpoint,
    ended: Option<String>,
}

/// The running projections: wait for them, stop them.
pub struct RunnerHandle<S: ProjectionStore> {
    store: S,
    stop: watch::Sender<bool>,
    reached: HashMap<String, watch::Sender<Reached>>,
    tasks: Vec<(String, JoinHandle<Result<(), ProjectionError>>)>,
}

impl<S: ProjectionStore> Runner<S> {
    /// A runner of `contexts` (one a projection) over `store`.
    pub(crate) fn new(store: S, contexts: Vec<Ctx<S>>) -> Self {
        Self {
            store,
            contexts,
            poll_interval: Duration::from_millis(500),
            control_interval: Duration::from_millis(200),
        }
    }

    /// Longest wait for new events when no wake-up arrives (default 500 ms): the fallback for
    /// writers in other processes that do not signal (a SQLite file).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How often the stored control state (pause, reset requests, versions) is re-read while
    /// events flow (default 200 ms).
    pub fn control_interval(mut self, interval: Duration) -> Self {
        self.control_interval = interval;
        self
    }

    /// Starts one task per projection (inside a Tokio runtime) and returns their handle.
    pub fn start(self) -> RunnerHandle<S> {
        let (stop, _) = watch::channel(false);
        let mut reached = HashMap::new();
        let mut tasks = Vec::new();
        for ctx in self.contexts {
            let name = ctx.name().to_owned();
            let (tx, _) = watch::channel(Reached {
                checkpoint: Checkpoint::START,
                ended: None,
            });
            let task = Task {
                ctx,
                stop: stop.subscribe(),
                reached: tx.clone(),
                poll_interval: self.poll_interval,
                control_interval: self.control_interval,
            };
            reached.insert(name.clone(), tx);
            tasks.push((name, tokio::spawn(task.run())));
        }
        RunnerHandle {
            store: self.store,
            stop,
            reached,
            tasks,
        }
    }

    /// Runs until `shutdown` completes, then stops gracefully (each projection finishes its
    /// batch). Returns the first error of a projection that stopped by itself.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ProjectionError> {
        let handle = self.start();
        shutdown.await;
        handle.stop().await
    }
}

impl<S: ProjectionStore> RunnerHandle<S> {
    /// Resolves when every projection has read past the event at global position `position`
    /// (read-your-writes: pass the position of your append).
    pub async fn wait_for(&self, position: u64) -> Result<(), ProjectionError> {
        let target = self.target(position).await?;
        for name in self.reached.keys() {
            self.wait_reached(name, target).await?;
        }
        Ok(())
    }

    /// Resolves when projection `name` has read past the event at global position `position`.
    pub async fn wait_for_projection(
        &self,
        name: &str,
        position: u64,
    ) -> Result<(), ProjectionError> {
        if !self.reached.contains_key(name) {
            return Err(ProjectionError::UnknownProjection(name.to_owned()));
        }
        let target = self.target(position).await?;
        self.wait_reached(name, target).await
    }

    async fn target(&self, position: u64) -> Result<Checkpoint, ProjectionError> {
        if position == 0 {
            return Ok(Checkpoint::START);
        }
        self.store
            .checkpoint_at(position)
            .await?
            .ok_or(ProjectionError::UnknownPosition(position))
    }

    async fn wait_reached(&self, name: &str, target: Checkpoint) -> Result<(), ProjectionError> {
        let Some(sender) = self.reached.get(name) else {
            return Err(ProjectionError::UnknownProjection(name.to_owned()));
        };
        let mut rx = sender.subscribe();
        loop {
            let now = rx.borrow_and_update().clone();
            if now.checkpoint >= target {
                return Ok(());
            }
            if let Some(reason) = now.ended {
                return Err(ProjectionError::NotRunning {
                    projection: name.to_owned(),
                    reason,
                });
            }
            if rx.changed().await.is_err() {
                return Err(ProjectionError::NotRunning {
                    projection: name.to_owned(),
                    reason: "the runner stopped".to_owned(),
                });
            }
        }
    }

    /// Is the task of projection `name` still running?
    pub fn is_running(&self, name: &str) -> bool {
        self.tasks
            .iter()
            .any(|(n, task)| n == name && !task.is_finished())
    }

    /// Stops every projection after its current batch and waits for them. Returns the first
    /// error of a projection that had stopped by itself.
    pub async fn stop(self) -> Result<(), ProjectionError> {
        let _ = self.stop.send(true);
        let mut first = None;
        for (name, task) in self.tasks {
            let result = match task.await {
                Ok(result) => result,
                Err(e) => Err(ProjectionError::NotRunning {
                    projection: name,
                    reason: format!("its task failed: {e}"),
                }),
            };
            if let Err(e) = result {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Where a projection's task is in the log.
struct Cursor {
    generation: u32,
    /// The stored checkpoint (what a batch expects to find under its lock).
    stored: Checkpoint,
    /// Where the next read starts: ahead of `stored` after reads that only skipped events the
    /// projection does not want.
    read_from: Checkpoint,
    position: u64,
    saved_at: Instant,
}

impl Cursor {
    /// Events up to `end` (highest global position `position`) are committed.
    fn advance(&mut self, end: Checkpoint, position: u64) {
        self.stored = end;
        self.read_from = end;
        self.position = position;
    }
}

struct Task<S: ProjectionStore> {
    ctx: Ctx<S>,
    stop: watch::Receiver<bool>,
    reached: watch::Sender<Reached>,
    poll_interval: Duration,
    control_interval: Duration,
}

/// What the control state asks the task to do.
enum Next {
    Apply,
    Wait,
}

impl<S: ProjectionStore> Task<S> {
    async fn run(mut self) -> Result<(), ProjectionError> {
        let result = self.serve().await;
        let reason = match &result {
            Ok(()) => "the runner stopped".to_owned(),
            Err(e) => e.to_string(),
        };
        self.reached.send_modify(|r| r.ended = Some(reason));
        result
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps up to `wait`, returning early on stop.
    async fn sleep(&mut self, wait: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    /// Logs a store error and waits `wait` before the retry, returning early on stop (a
    /// failing store does not hold up a shutdown by its backoff).
    async fn pause(&mut self, error: &(dyn std::fmt::Display + Sync), name: &str, wait: Duration) {
        tracing::warn!(projection = name, error = %error, "projection store error; retrying");
        self.sleep(wait).await;
    }

    async fn set_status(&self, current: &mut String, status: &str, error: Option<&str>) {
        if current != status || error.is_some() {
            match self
                .ctx
                .store
                .set_projection_status(self.ctx.name(), status, error)
                .await
            {
                Ok(_) => *current = status.to_owned(),
                Err(e) => {
                    tracing::warn!(projection = %self.ctx.name(), error = %e, "could not record the status")
                }
            }
        }
    }

    async fn serve(&mut self) -> Result<(), ProjectionError> {
        let name = self.ctx.name().to_owned();
        let code_version = self.ctx.projection.version();
        let mut backoff = Duration::from_millis(50);
        // Register (first start), with retries while the store is unreachable.
        let mut state = loop {
            if self.stopping() {
                return Ok(());
            }
            match self.ctx.ensure().await {
                Ok(state) => break state,
                Err(ProjectionError::Store(e)) => {
                    self.pause(&e, &name, backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        };
        let mut wakeup = loop {
            match self.ctx.store.wakeup().await {
                Ok(w) => break w,
                Err(e) => {
                    if self.stopping() {
                        return Ok(());
                    }
                    self.pause(&e, &name, backoff).await;
                }
            }
        };
        let mut status = state.status.clone();
        let mut cursor = Cursor {
            generation: state.generation,
            stored: state.checkpoint,
            read_from: state.checkpoint,
            position: state.position,
            saved_at: Instant::now(),
        };
        let mut control_at = Instant::now();
        let mut reload = false;
        let mut warned_newer = false;
        let mut head = (0u64, Instant::now() - Duration::from_secs(60));
        let labels = [("projection", name.clone())];
        metrics::gauge!("eventfold_projection_parked", &labels).set(state.parked as f64);
        loop {
            if self.stopping() {
                return Ok(());
            }
            if reload || control_at.elapsed() >= self.control_interval {
                match self.ctx.store.projection_state(&name).await {
                    Ok(Some(fresh)) => {
                        if reload || fresh.generation != cursor.generation {
                            cursor = Cursor {
                                generation: fresh.generation,
                                stored: fresh.checkpoint,
                                read_from: fresh.checkpoint,
                                position: fresh.position,
                                saved_at: Instant::now(),
                            };
                        }
                        state = fresh;
                        reload = false;
                        control_at = Instant::now();
                    }
                    Ok(None) => {
                        // Deleted from outside: register again.
                        match self.ctx.ensure().await {
                            Ok(_) => reload = true,
                            Err(e) => self.pause(&e, &name, backoff).await,
                        }
                        continue;
                    }
                    Err(e) => {
                        self.pause(&e, &name, backoff).await;
                        continue;
                    }
                }
            }
            match self
                .control(
                    &mut state,
                    &mut status,
                    &mut reload,
                    &mut warned_newer,
                    code_version,
                )
                .await
            {
                Ok(Next::Wait) => {
                    self.sleep(self.control_interval).await;
                    continue;
                }
                Ok(Next::Apply) => {}
                // The store failed (the projection did not): wait and look again.
                Err(ProjectionError::Store(e)) => {
                    self.pause(&e, &name, backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    reload = true;
                    continue;
                }
                Err(e) => return Err(e),
            }
            let batch = match self
                .ctx
                .store
                .read_log(
                    cursor.read_from,
                    self.ctx.options.batch_size,
                    &self.ctx.filter,
                )
                .await
            {
                Ok(batch) => batch,
                Err(e) => {
                    self.pause(&e, &name, backoff).await;
                    continue;
                }
            };
            if batch.events.is_empty() {
                cursor.read_from = batch.checkpoint;
                self.reached
                    .send_modify(|r| r.checkpoint = r.checkpoint.max(cursor.read_from));
                metrics::gauge!("eventfold_projection_lag_events", &labels).set(0.0);
                metrics::gauge!("eventfold_projection_lag_seconds", &labels).set(0.0);
                // Persist progress over skipped events now and then, not at every read.
                if cursor.read_from != cursor.stored
                    && cursor.saved_at.elapsed() >= Duration::from_secs(5)
                {
                    match self
                        .commit(&cursor, &[], cursor.read_from, cursor.position)
                        .await
                    {
                        Ok(Outcome::Committed { .. }) => {
                            cursor.stored = cursor.read_from;
                            cursor.saved_at = Instant::now();
                        }
                        Ok(_) => reload = true,
                        Err(e) => self.pause(&e, &name, backoff).await,
                    }
                }
                if batch.held_back {
                    self.sleep(Duration::from_millis(2)).await;
                } else {
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        () = wakeup.wait(self.poll_interval) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                }
                continue;
            }
            let position = max_position(cursor.position, &batch.events);
            match self
                .commit(&cursor, &batch.events, batch.checkpoint, position)
                .await
            {
                Ok(Outcome::Committed { applied }) => {
                    cursor.advance(batch.checkpoint, position);
                    cursor.saved_at = Instant::now();
                    backoff = Duration::from_millis(50);
                    self.reached
                        .send_modify(|r| r.checkpoint = r.checkpoint.max(cursor.read_from));
                    metrics::counter!("eventfold_projection_applied_total", &labels)
                        .increment(applied);
                    if head.1.elapsed() >= Duration::from_secs(1) {
                        if let Ok(h) = self.ctx.store.log_head().await {
                            head = (h.position, Instant::now());
                        }
                    }
                    let behind = !batch.reached_end;
                    metrics::gauge!("eventfold_projection_lag_events", &labels).set(if behind {
                        head.0.saturating_sub(position) as f64
                    } else {
                        0.0
                    });
                    let lag = batch
                        .events
                        .last()
                        .filter(|_| behind)
                        .and_then(|e| (chrono::Utc::now() - e.event.timestamp).to_std().ok())
                        .map_or(0.0, |d| d.as_secs_f64());
                    metrics::gauge!("eventfold_projection_lag_seconds", &labels).set(lag);
                }
                Ok(Outcome::Moved) => reload = true,
                Ok(Outcome::Failed { index, error }) => {
                    match self
                        .failed(
                            &mut cursor,
                            &batch.events,
                            index.unwrap_or(0),
                            error,
                            &mut reload,
                            &mut status,
                        )
                        .await
                    {
                        Ok(()) => {}
                        // The store failed while the event's failure was handled: nothing was
                        // parked or skipped; read again from the stored checkpoint.
                        Err(ProjectionError::Store(e)) => {
                            self.pause(&e, &name, backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            reload = true;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => {
                    self.pause(&e, &name, backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    reload = true;
                }
            }
        }
    }

    /// Acts on the control state: pause, reset requests, version changes.
    async fn control(
        &mut self,
        state: &mut eventfold_eventstore::ProjectionState,
        status: &mut String,
        reload: &mut bool,
        warned_newer: &mut bool,
        code_version: u32,
    ) -> Result<Next, ProjectionError> {
        let name = self.ctx.name().to_owned();
        if state.paused {
            self.set_status(status, "paused", None).await;
            // Re-read the state after the wait.
            *reload = true;
            return Ok(Next::Wait);
        }
        if state.reset_requested {
            self.set_status(status, "rebuilding", None).await;
            match self.ctx.reset().await {
                Ok(_) => {}
                Err(ProjectionError::Store(e)) => {
                    pause_after(&e, &name, Duration::from_millis(200)).await
                }
                Err(e) => {
                    self.set_status(status, "failed", Some(&e.to_string()))
                        .await;
                    return Err(e);
                }
            }
            *reload = true;
            state.reset_requested = false;
            return Ok(Next::Wait);
        }
        if code_version > state.version {
            // New code: build its generation blue/green, then serve it.
            self.set_status(status, "rebuilding", None).await;
            let projection = name.clone();
            let progress = move |p: crate::RebuildProgress| {
                if p.applied % 10_000 == 0 {
                    tracing::info!(projection = %projection, applied = p.applied, position = p.position, "rebuilding");
                }
            };
            let build = self.ctx.build(false, &progress);
            let mut stop = self.stop.clone();
            let result = tokio::select! {
                result = build => Some(result),
                _ = stop.wait_for(|s| *s) => None,
            };
            match result {
                None => return Ok(Next::Wait),
                Some(Ok(report)) => {
                    tracing::info!(projection = %name, generation = report.generation, applied = report.applied, "blue/green build switched");
                    self.set_status(status, "running", None).await;
                }
                Some(Err(ProjectionError::Store(e))) => {
                    pause_after(&e, &name, Duration::from_millis(200)).await;
                }
                Some(Err(e)) => {
                    self.set_status(status, "failed", Some(&e.to_string()))
                        .await;
                    return Err(e);
                }
            }
            *reload = true;
            return Ok(Next::Wait);
        }
        if code_version < state.version {
            if !*warned_newer {
                tracing::warn!(projection = %name, stored = state.version, code = code_version,
                    "the stored model was built by newer code; this runner leaves it alone");
                *warned_newer = true;
            }
            *reload = true;
            return Ok(Next::Wait);
        }
        if status != "running" {
            self.set_status(status, "running", None).await;
        }
        Ok(Next::Apply)
    }

    /// Applies `events` to the served generation and checkpoints `end` and `position`, if the
    /// stored checkpoint is still the cursor's.
    async fn commit(
        &self,
        cursor: &Cursor,
        events: &[LogEvent],
        end: Checkpoint,
        position: u64,
    ) -> Result<Outcome, ProjectionError> {
        self.ctx
            .batch(
                Role::Serve,
                cursor.generation,
                cursor.stored,
                events,
                end,
                position,
            )
            .await
    }

    /// Event `index` of a batch failed: commit what precedes it, retry it alone, then apply the
    /// error policy.
    async fn failed(
        &mut self,
        cursor: &mut Cursor,
        events: &[LogEvent],
        index: usize,
        error: eventfold_core::BoxError,
        reload: &mut bool,
        status: &mut String,
    ) -> Result<(), ProjectionError> {
        let name = self.ctx.name().to_owned();
        if index > 0 {
            let before = &events[..index];
            let end = before[index - 1].checkpoint;
            let position = max_position(cursor.position, before);
            match self.commit(cursor, before, end, position).await? {
                Outcome::Committed { .. } => {
                    cursor.advance(end, position);
                }
                _ => *reload = true,
            }
            // The next read starts with the failing event.
            return Ok(());
        }
        let event = &events[0];
        let position = cursor.position.max(event.event.global_position);
        let mut last = error;
        let options = self.ctx.options.clone();
        for attempt in 1..options.max_attempts {
            tracing::warn!(projection = %name, event = %event.event.event_id, attempt, error = %last, "projection failed on an event; retrying");
            self.sleep(options.backoff.saturating_mul(1 << (attempt - 1).min(10)))
                .await;
            if self.stopping() {
                return Ok(());
            }
            match self
                .commit(
                    cursor,
                    std::slice::from_ref(event),
                    event.checkpoint,
                    position,
                )
                .await?
            {
                Outcome::Committed { .. } => {
                    cursor.advance(event.checkpoint, position);
                    return Ok(());
                }
                Outcome::Moved => {
                    *reload = true;
                    return Ok(());
                }
                Outcome::Failed { error, .. } => last = error,
            }
        }
        let error = ProjectionError::apply(&name, &event.event, last);
        let message = error.to_string();
        match options.policy {
            ErrorPolicy::Park => {
                tracing::error!(projection = %name, error = %message, "parking an event");
                if self
                    .ctx
                    .park(
                        cursor.generation,
                        cursor.stored,
                        event,
                        position,
                        message.clone(),
                    )
                    .await?
                {
                    cursor.advance(event.checkpoint, position);
                    metrics::gauge!("eventfold_projection_parked", "projection" => name.clone())
                        .increment(1.0);
                    self.set_status(status, "running", Some(&message)).await;
                } else {
                    *reload = true;
                }
                Ok(())
            }
            ErrorPolicy::Stop => {
                tracing::error!(projection = %name, error = %message, "projection stopped");
                self.set_status(status, "failed", Some(&message)).await;
                Err(error)
            }
        }
    }
}
