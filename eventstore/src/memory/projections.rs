//! The projections' bookkeeping in memory ([`ProjectionStore`]): states, checkpoints,
//! generations and parked events, changed in a unit of work and put in place at its commit.

use std::collections::BTreeMap;

use super::store::MemoryStore;
use super::unit_of_work::MemoryUnitOfWork;
use crate::error::StoreError;
use crate::log::Checkpoint;
use crate::projection::{
    BuildState, LockedCheckpoint, ParkedEvent, ProjectionState, ProjectionStore,
};

/// A projection's bookkeeping in memory.
#[derive(Debug, Clone)]
pub(super) struct MemProjection {
    active_generation: u32,
    paused: bool,
    status: String,
    last_error: Option<String>,
    reset_requested: bool,
    updated_at: chrono::DateTime<chrono::Utc>,
    /// generation -> (version, checkpoint, highest position applied)
    generations: BTreeMap<u32, (u32, Checkpoint, u64)>,
    dead: Vec<ParkedEvent>,
}

impl MemProjection {
    fn state(&self, name: &str) -> ProjectionState {
        let (version, checkpoint, position) = self
            .generations
            .get(&self.active_generation)
            .copied()
            .unwrap_or((0, Checkpoint::START, 0));
        let building = self
            .generations
            .range(self.active_generation + 1..)
            .next_back()
            .map(|(g, (v, c, p))| BuildState {
                generation: *g,
                version: *v,
                checkpoint: *c,
                position: *p,
            });
        ProjectionState {
            name: name.to_owned(),
            version,
            generation: self.active_generation,
            checkpoint,
            position,
            paused: self.paused,
            status: self.status.clone(),
            last_error: self.last_error.clone(),
            parked: self
                .dead
                .iter()
                .filter(|d| d.generation == self.active_generation)
                .count() as u64,
            reset_requested: self.reset_requested,
            building,
            updated_at: self.updated_at,
        }
    }
}

impl MemoryUnitOfWork {
    /// The projections' bookkeeping as this unit of work sees it (taking the write lock).
    async fn projections(&mut self) -> &mut BTreeMap<String, MemProjection> {
        self.lock_writer().await;
        if self.projections.is_none() {
            self.projections = Some(self.store.lock().projections.clone());
        }
        self.projections.get_or_insert_with(BTreeMap::new)
    }

    /// One projection's bookkeeping as this unit of work sees it; an error if it does not exist.
    async fn projection_mut(&mut self, name: &str) -> Result<&mut MemProjection, StoreError> {
        self.projections()
            .await
            .get_mut(name)
            .ok_or_else(|| missing_projection(name))
    }
}

fn missing_projection(name: &str) -> StoreError {
    StoreError::Corrupt {
        table: "projections".to_owned(),
        reason: format!("projection {name} does not exist"),
    }
}

impl MemoryStore {
    async fn change_projection(&self, name: &str, change: impl FnOnce(&mut MemProjection)) -> bool {
        let _writer = self.inner.writer.clone().lock_owned().await;
        let mut state = self.lock();
        match state.projections.get_mut(name) {
            Some(p) => {
                change(p);
                p.updated_at = eventfold_core::metadata::now_micros();
                true
            }
            None => false,
        }
    }
}

impl ProjectionStore for MemoryStore {
    async fn projection_states(&self) -> Result<Vec<ProjectionState>, StoreError> {
        Ok(self
            .lock()
            .projections
            .iter()
            .map(|(name, p)| p.state(name))
            .collect())
    }

    async fn projection_state(&self, name: &str) -> Result<Option<ProjectionState>, StoreError> {
        Ok(self.lock().projections.get(name).map(|p| p.state(name)))
    }

    async fn set_projection_paused(&self, name: &str, paused: bool) -> Result<bool, StoreError> {
        Ok(self.change_projection(name, |p| p.paused = paused).await)
    }

    async fn request_projection_reset(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .change_projection(name, |p| p.reset_requested = true)
            .await)
    }

    async fn parked_projection_events(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        Ok(self
            .lock()
            .projections
            .get(name)
            .map(|p| {
                p.dead
                    .iter()
                    .filter(|d| d.generation == p.active_generation)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn set_projection_status(
        &self,
        name: &str,
        status: &str,
        last_error: Option<&str>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .change_projection(name, |p| {
                p.status = status.to_owned();
                p.last_error = last_error.map(str::to_owned);
            })
            .await)
    }

    async fn checkpoint_at(&self, position: u64) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self
            .lock()
            .log
            .contains_key(&position)
            .then(|| Checkpoint::new(0, position)))
    }

    fn projection_schema(&self) -> Option<String> {
        None
    }

    fn has_sql_tables(&self) -> bool {
        false
    }

    async fn create_projection(
        &self,
        uow: &mut MemoryUnitOfWork,
        name: &str,
        version: u32,
    ) -> Result<bool, StoreError> {
        crate::projection::validate_projection_name(name)?;
        let projections = uow.projections().await;
        if projections.contains_key(name) {
            return Ok(false);
        }
        projections.insert(
            name.to_owned(),
            MemProjection {
                active_generation: 1,
                paused: false,
                status: "idle".to_owned(),
                last_error: None,
                reset_requested: false,
                updated_at: eventfold_core::metadata::now_micros(),
                generations: BTreeMap::from([(1, (version, Checkpoint::START, 0))]),
                dead: Vec::new(),
            },
        );
        Ok(true)
    }

    async fn lock_projection(
        &self,
        uow: &mut MemoryUnitOfWork,
        name: &str,
    ) -> Result<Option<ProjectionState>, StoreError> {
        Ok(uow.projections().await.get(name).map(|p| p.state(name)))
    }

    async fn lock_projection_checkpoint(
        &self,
        uow: &mut MemoryUnitOfWork,
        name: &str,
        generation: u32,
    ) -> Result<Option<LockedCheckpoint>, StoreError> {
        Ok(uow.projections().await.get(name).and_then(|p| {
            p.generations
                .get(&generation)
                .map(|(version, checkpoint, position)| LockedCheckpoint {
                    active_generation: p.active_generation,
                    version: *version,
                    checkpoint: *checkpoint,
                    position: *position,
                })
        }))
    }

    async fn save_projection_checkpoint(
        &self,
        uow: &mut MemoryUnitOfWork,
        name: &str,
        generation: u32,
        checkpoint: Checkpoint,
        position: u64,
    ) -> Result<(), StoreError> {
        let p = uow.projection_mut(name).await?;
        match p.generations.get_mut(&generation) {
            Some(slot) => {
                slot.1 = checkpoint;
                slot.2 = position;
            }
            None => return Err(missing_projection(name)),
        }
        p.updated_at = eventfold_core::metadata::now_micros();
        Ok(())
    }

    async fn start_projection_generation(
        &self,
        uow: &mut MemoryUnitOfWork,
        name: &str,
        generation: u32,
        version: u32,
    ) -> Result<(), StoreError> {
        let p = uow.projection_mut(name).await?;
        p.generations
            .insert(generation, (version, Checkpoint::START, 0));
        p.dead.retain(|d| d.generation != generation);
        p.updated_at = eventfold_core::metadata::now_micros();
        Ok(())
    }

    async fn activate_projection_generation(
        &self,
        uow: &mut MemoryUnitOfWork,
        name: &str,
        generation: u32,
    ) -> Result<(), StoreError> {
        let p = uow.projection_mut(name).await?;
        p.active_generation = generation;
        p.reset_requested = false;
        p.updated_at = eventfold_core::metadata::now_micros();
        Ok(())
    }

    async fn remove_projection_generation(
        &self,
        uow: &mut MemoryUnitOfWork,
        name: &str,
        generation: u32,
    ) -> Result<(), StoreError> {
        if let Some(p) = uow.projections().await.get_mut(name) {
            p.generations.remove(&generation);
            p.dead.retain(|d| d.generation != generation);
        }
        Ok(())
    }

    async fn old_projection_generations(
        &self,
        uow: &mut MemoryUnitOfWork,
        name: &str,
    ) -> Result<Vec<u32>, StoreError> {
        Ok(uow
            .projections()
            .await
            .get(name)
            .map(|p| {
                p.generations
                    .range(..p.active_generation)
                    .map(|(g, _)| *g)
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn park_projection_event(
        &self,
        uow: &mut MemoryUnitOfWork,
        mut event: ParkedEvent,
    ) -> Result<(), StoreError> {
        let p = uow.projection_mut(&event.projection).await?;
        event.parked_at = eventfold_core::metadata::now_micros();
        p.dead
            .retain(|d| !(d.generation == event.generation && d.event_id == event.event_id));
        p.dead.push(event);
        Ok(())
    }

    async fn point_projection_views(
        &self,
        _uow: &mut MemoryUnitOfWork,
        _tables: &[String],
        _generation: u32,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn drop_projection_tables(
        &self,
        _uow: &mut MemoryUnitOfWork,
        _tables: &[String],
        _generation: u32,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }
}
