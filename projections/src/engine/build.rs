//! Blue/green builds: a new generation built beside the active one (or the build in progress
//! resumed), the atomic switch of readers to it, and the old generations dropped.

use super::*;

impl<S: ProjectionStore> Ctx<S> {
    /// Builds a new generation (or resumes the build in progress of this code's version), then
    /// switches readers to it atomically.
    pub(crate) async fn build(
        &self,
        drop_old: bool,
        progress: &(dyn Fn(RebuildProgress) + Send + Sync),
    ) -> Result<RebuildReport, ProjectionError> {
        let started = Instant::now();
        let name = self.name().to_owned();
        self.ensure().await?;
        let (generation, stored, position) = self.prepare_build().await?;
        tracing::info!(projection = %name, generation, "blue/green build started");
        let head = self.store.log_head().await?.position;
        let mut at = Cursor::new(stored, position, head);
        loop {
            // Catch up outside of the switch's lock.
            loop {
                let batch = self
                    .store
                    .read_log(at.stored, self.options.batch_size, &self.filter)
                    .await?;
                if batch.events.is_empty() && batch.reached_end {
                    if batch.held_back {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    break;
                }
                let next = max_position(at.position, &batch.events);
                match self
                    .batch(
                        Role::Build,
                        generation,
                        at.stored,
                        &batch.events,
                        batch.checkpoint,
                        next,
                    )
                    .await?
                {
                    Outcome::Committed { applied: n } => {
                        at.committed(n, batch.checkpoint, next, progress);
                    }
                    Outcome::Moved => match self.build_state(generation).await? {
                        Some(moved) => (at.stored, at.position) = moved,
                        None => {
                            // Switched (or replaced) by another builder.
                            return self.report(generation, at.applied, started, drop_old).await;
                        }
                    },
                    Outcome::Failed { index, error } => {
                        return Err(self.fail_batch(&batch.events, index, error).await);
                    }
                }
            }
            match self.switch(generation, at.stored, at.position).await? {
                Switch::Done(n) => {
                    at.applied += n;
                    break;
                }
                Switch::AlreadyDone => break,
                Switch::Moved => match self.build_state(generation).await? {
                    Some(moved) => (at.stored, at.position) = moved,
                    None => break,
                },
            }
        }
        self.report(generation, at.applied, started, drop_old).await
    }

    pub(super) async fn report(
        &self,
        generation: u32,
        applied: u64,
        started: Instant,
        drop_old: bool,
    ) -> Result<RebuildReport, ProjectionError> {
        let dropped = if drop_old {
            self.drop_old().await?
        } else {
            Vec::new()
        };
        Ok(RebuildReport {
            name: self.name().to_owned(),
            generation,
            applied,
            seconds: started.elapsed().as_secs_f64(),
            dropped,
        })
    }

    /// The checkpoint of a build in progress at `generation`, `None` when it is not building
    /// any more (switched or replaced).
    pub(super) async fn build_state(
        &self,
        generation: u32,
    ) -> Result<Option<(Checkpoint, u64)>, ProjectionError> {
        let state = self
            .store
            .projection_state(self.name())
            .await?
            .ok_or_else(|| self.unknown())?;
        Ok(state
            .building
            .filter(|b| b.generation == generation && state.generation < generation)
            .map(|b| (b.checkpoint, b.position)))
    }

    /// Starts the build generation (or finds the one to resume).
    pub(super) async fn prepare_build(&self) -> Result<(u32, Checkpoint, u64), ProjectionError> {
        self.retry_busy(|| self.prepare_build_once()).await
    }

    pub(super) async fn prepare_build_once(
        &self,
    ) -> Result<(u32, Checkpoint, u64), ProjectionError> {
        let mut uow = self.store.begin().await?;
        let result = self.prepare_in(&mut uow).await;
        commit_if_ok(uow, result).await
    }

    pub(super) async fn prepare_in(
        &self,
        uow: &mut S::UnitOfWork,
    ) -> Result<(u32, Checkpoint, u64), ProjectionError> {
        let name = self.name();
        let version = self.projection.version();
        let state = self
            .store
            .lock_projection(uow, name)
            .await?
            .ok_or_else(|| self.unknown())?;
        match state.building {
            Some(b) if b.version == version => {
                tracing::info!(projection = %name, generation = b.generation, position = b.position, "resuming a blue/green build");
                Ok((b.generation, b.checkpoint, b.position))
            }
            other => {
                let generation = other.map_or(state.generation + 1, |b| b.generation);
                self.store
                    .start_projection_generation(uow, name, generation, version)
                    .await?;
                self.fresh_tables(uow, generation).await?;
                Ok((generation, Checkpoint::START, 0))
            }
        }
    }

    /// The switch: one transaction that applies the last events to the new generation, makes
    /// it the active one and points the views at it.
    pub(super) async fn switch(
        &self,
        generation: u32,
        stored: Checkpoint,
        position: u64,
    ) -> Result<Switch, ProjectionError> {
        let name = self.name();
        let tables = self.tables(generation);
        // Read the last events before taking the locks: a pool of one connection (an in-memory
        // SQLite database) could not serve a read while the switch holds it. Events committed
        // after this read are applied to the new generation by the runner after the switch.
        let mut tail = Vec::new();
        let mut read_from = stored;
        loop {
            let batch = self
                .store
                .read_log(read_from, self.options.batch_size, &self.filter)
                .await?;
            tail.extend(batch.events);
            read_from = batch.checkpoint;
            if batch.reached_end {
                break;
            }
        }
        let position = max_position(position, &tail);
        let mut uow = self.store.begin().await?;
        let Some(state) = self.store.lock_projection(&mut uow, name).await? else {
            let _ = uow.rollback().await;
            return Err(self.unknown());
        };
        if state.generation >= generation {
            let _ = uow.rollback().await;
            return Ok(Switch::AlreadyDone);
        }
        if !self
            .locked(&mut uow, Role::Build, generation, stored)
            .await?
        {
            let _ = uow.rollback().await;
            return Ok(Switch::Moved);
        }
        let mut applied = 0;
        let mut position = position;
        let reads = self.store.reads_beside_unit_of_work();
        loop {
            match self.apply_each(&mut uow, &tables, &tail).await {
                Ok(n) => applied += n,
                Err((index, error)) => {
                    let _ = uow.rollback().await;
                    return Err(self.fail_fast(&tail[index], error).await);
                }
            }
            // Under the lock no runner applies to the active generation: what this read sees
            // covers everything readers could see before, so the switch never goes back.
            if !reads {
                break;
            }
            let batch = match self
                .store
                .read_log(read_from, self.options.batch_size, &self.filter)
                .await
            {
                Ok(batch) => batch,
                Err(e) => {
                    let _ = uow.rollback().await;
                    return Err(e.into());
                }
            };
            position = max_position(position, &batch.events);
            read_from = batch.checkpoint;
            let done = batch.reached_end;
            tail = batch.events;
            if done && tail.is_empty() {
                break;
            }
        }
        let finish = async {
            self.store
                .save_projection_checkpoint(&mut uow, name, generation, read_from, position)
                .await?;
            self.store
                .activate_projection_generation(&mut uow, name, generation)
                .await?;
            self.store
                .point_projection_views(&mut uow, self.projection.tables(), generation)
                .await
        };
        match finish.await {
            Ok(true) => {}
            Ok(false) => {
                // Readers held the views: try the switch again in a moment.
                let _ = uow.rollback().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
                return Ok(Switch::Moved);
            }
            Err(e) => {
                let _ = uow.rollback().await;
                return Err(e.into());
            }
        }
        uow.commit().await?;
        tracing::info!(projection = %name, generation, "switched to the new generation");
        Ok(Switch::Done(applied))
    }

    /// Drops the tables of the generations below the active one; returns their names.
    pub(crate) async fn drop_old(&self) -> Result<Vec<String>, ProjectionError> {
        self.retry_busy(|| self.drop_old_once()).await
    }

    pub(super) async fn drop_old_once(&self) -> Result<Vec<String>, ProjectionError> {
        let name = self.name();
        let schema = self.store.projection_schema();
        let mut uow = self.store.begin().await?;
        let work = async {
            if self.store.lock_projection(&mut uow, name).await?.is_none() {
                return Err(self.unknown());
            }
            let old = self
                .store
                .old_projection_generations(&mut uow, name)
                .await?;
            let mut dropped = Vec::new();
            for generation in old {
                if !self
                    .store
                    .drop_projection_tables(&mut uow, self.projection.tables(), generation)
                    .await?
                {
                    return Err(self.busy());
                }
                self.store
                    .remove_projection_generation(&mut uow, name, generation)
                    .await?;
                if self.store.has_sql_tables() {
                    dropped.extend(
                        self.projection
                            .tables()
                            .iter()
                            .map(|t| qualified(schema.as_deref(), &physical_table(t, generation))),
                    );
                }
            }
            Ok(dropped)
        };
        let result = work.await;
        commit_if_ok(uow, result).await
    }
}

pub(crate) enum Switch {
    Done(u64),
    AlreadyDone,
    Moved,
}
