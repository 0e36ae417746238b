//! [`Projections`]: the application's registry of projections over one store, with the
//! administrative operations (status, pause, resume, rebuild, drop old tables).

use std::sync::Arc;

use eventfold_core::Upcasters;
use eventfold_eventstore::{EventStore, ProjectionStore};

use crate::engine::Ctx;
use crate::error::ProjectionError;
pub use crate::options::{
    ErrorPolicy, ProjectionOptions, RebuildMode, RebuildProgress, RebuildReport,
};
use crate::projection::{ErasedProjection, Projection, Wrapped};
use crate::runner::Runner;

/// What the code says about a registered projection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProjectionInfo {
    /// Its name.
    pub name: String,
    /// The code's version.
    pub version: u32,
    /// Logical table names.
    pub tables: Vec<String>,
    /// Event types it reads.
    pub event_types: Vec<String>,
}

/// A blue/green build in progress, as [`ProjectionStatus`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BuildStatus {
    /// The generation being built.
    pub generation: u32,
    /// The code version building it.
    pub version: u32,
    /// The highest global position it applied.
    pub position: u64,
}

/// A projection's state and lag (what `projections status --json` prints).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProjectionStatus {
    /// Its name.
    pub name: String,
    /// The version that built the active generation (the code's version when not stored yet).
    pub version: u32,
    /// The active generation (0: not stored yet).
    pub generation: u32,
    /// The highest global position applied.
    pub position: u64,
    /// The highest committed global position of the log.
    pub head: u64,
    /// `head - position`.
    pub lag_events: u64,
    /// Age of the oldest event not applied yet (0 when caught up).
    pub lag_seconds: f64,
    /// `running`, `paused`, `failed`, `rebuilding` or `idle`.
    pub status: String,
    /// Paused.
    pub paused: bool,
    /// Parked events of the active generation.
    pub parked: u64,
    /// The last error.
    pub last_error: Option<String>,
    /// A blue/green build in progress.
    pub building: Option<BuildStatus>,
    /// `false`: a projection in the store that this registry's code does not know.
    pub registered: bool,
}

pub(crate) struct Entry<S: EventStore> {
    pub projection: Arc<dyn ErasedProjection<S::UnitOfWork>>,
    pub options: ProjectionOptions,
}

impl<S: EventStore> Clone for Entry<S> {
    fn clone(&self) -> Self {
        Self {
            projection: self.projection.clone(),
            options: self.options.clone(),
        }
    }
}

/// The application's set of projections over store `S`. Cheap to clone.
///
/// See the [crate docs](crate) for an example.
pub struct Projections<S: EventStore> {
    store: S,
    entries: Vec<Entry<S>>,
    upcasters: Arc<Upcasters>,
}

impl<S: EventStore> Clone for Projections<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            entries: self.entries.clone(),
            upcasters: self.upcasters.clone(),
        }
    }
}

impl<S: ProjectionStore> Projections<S> {
    /// An empty registry over `store`.
    pub fn new(store: S) -> Self {
        Self {
            store,
            entries: Vec::new(),
            upcasters: Arc::new(Upcasters::new()),
        }
    }

    /// Upcasters for decoding stored events (see `eventfold_core::Upcasters`).
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = Arc::new(upcasters);
        self
    }

    /// Registers a projection with the default [`ProjectionOptions`].
    pub fn register<P: Projection<S::UnitOfWork>>(self, projection: P) -> Self {
        self.register_with(projection, ProjectionOptions::default())
    }

    /// Registers a projection with its options. A later registration of the same name
    /// replaces the earlier one.
    pub fn register_with<P: Projection<S::UnitOfWork>>(
        mut self,
        projection: P,
        options: ProjectionOptions,
    ) -> Self {
        let wrapped: Arc<dyn ErasedProjection<S::UnitOfWork>> =
            Arc::new(Wrapped::new::<S::UnitOfWork>(projection));
        self.entries
            .retain(|e| e.projection.name() != wrapped.name());
        self.entries.push(Entry {
            projection: wrapped,
            options,
        });
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The registered names, in registration order.
    pub fn names(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| e.projection.name().to_owned())
            .collect()
    }

    /// What the code says about each registered projection.
    pub fn describe(&self) -> Vec<ProjectionInfo> {
        self.entries
            .iter()
            .map(|e| ProjectionInfo {
                name: e.projection.name().to_owned(),
                version: e.projection.version(),
                tables: e.projection.tables().to_vec(),
                event_types: e.projection.event_types().to_vec(),
            })
            .collect()
    }

    pub(crate) fn contexts(&self) -> Vec<Ctx<S>> {
        self.entries
            .iter()
            .map(|e| {
                Ctx::new(
                    self.store.clone(),
                    e.projection.clone(),
                    self.upcasters.clone(),
                    e.options.clone(),
                )
            })
            .collect()
    }

    fn context(&self, name: &str) -> Result<Ctx<S>, ProjectionError> {
        self.contexts()
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| ProjectionError::UnknownProjection(name.to_owned()))
    }

    /// State and lag of every registered projection, and of every stored one the code does not
    /// know (`registered: false`).
    pub async fn status(&self) -> Result<Vec<ProjectionStatus>, ProjectionError> {
        let stored = self.store.projection_states().await?;
        let head = self.store.log_head().await?.position;
        let mut out = Vec::new();
        for ctx in self.contexts() {
            let state = stored.iter().find(|s| s.name == ctx.name());
            out.push(match state {
                Some(state) => self.status_of(state, head, Some(&ctx)).await?,
                None => ProjectionStatus {
                    name: ctx.name().to_owned(),
                    version: ctx.projection.version(),
                    generation: 0,
                    position: 0,
                    head,
                    lag_events: head,
                    lag_seconds: 0.0,
                    status: "idle".to_owned(),
                    paused: false,
                    parked: 0,
                    last_error: None,
                    building: None,
                    registered: true,
                },
            });
        }
        for state in &stored {
            if !self
                .entries
                .iter()
                .any(|e| e.projection.name() == state.name)
            {
                out.push(self.status_of(state, head, None).await?);
            }
        }
        Ok(out)
    }

    async fn status_of(
        &self,
        state: &eventfold_eventstore::ProjectionState,
        head: u64,
        ctx: Option<&Ctx<S>>,
    ) -> Result<ProjectionStatus, ProjectionError> {
        let filter = ctx.map(|c| c.filter.clone()).unwrap_or_default();
        let next = self.store.read_log(state.checkpoint, 1, &filter).await?;
        let lag_seconds = next.events.first().map_or(0.0, |e| {
            (chrono::Utc::now() - e.event.timestamp)
                .to_std()
                .map_or(0.0, |d| d.as_secs_f64())
        });
        let lag_events = if next.events.is_empty() {
            0
        } else {
            head.saturating_sub(state.position)
        };
        Ok(ProjectionStatus {
            name: state.name.clone(),
            version: state.version,
            generation: state.generation,
            position: state.position,
            head,
            lag_events,
            lag_seconds,
            status: if state.paused {
                "paused".to_owned()
            } else {
                state.status.clone()
            },
            paused: state.paused,
            parked: state.parked,
            last_error: state.last_error.clone(),
            building: state.building.as_ref().map(|b| BuildStatus {
                generation: b.generation,
                version: b.version,
                position: b.position,
            }),
            registered: ctx.is_some(),
        })
    }

    async fn known(&self, name: &str) -> Result<(), ProjectionError> {
        if self.entries.iter().any(|e| e.projection.name() == name)
            || self.store.projection_state(name).await?.is_some()
        {
            Ok(())
        } else {
            Err(ProjectionError::UnknownProjection(name.to_owned()))
        }
    }

    /// Pauses a projection: runners (in any process) stop applying until it is resumed.
    pub async fn pause(&self, name: &str) -> Result<(), ProjectionError> {
        self.set_paused(name, true).await
    }

    /// Resumes a paused projection.
    pub async fn resume(&self, name: &str) -> Result<(), ProjectionError> {
        self.set_paused(name, false).await
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<(), ProjectionError> {
        self.known(name).await?;
        if let Ok(ctx) = self.context(name) {
            ctx.ensure().await?;
        }
        if self.store.set_projection_paused(name, paused).await? {
            Ok(())
        } else {
            Err(ProjectionError::UnknownProjection(name.to_owned()))
        }
    }

    /// Rebuilds a registered projection, reporting progress; fails fast (naming the event)
    /// when an event cannot be applied.
    ///
    /// * [`RebuildMode::InPlace`]: resets its tables and checkpoint, then replays the log.
    /// * [`RebuildMode::BlueGreen`]: builds a new generation (resuming one left by a crash)
    ///   while runners keep serving the active one, then switches readers in one transaction.
    pub async fn rebuild(
        &self,
        name: &str,
        mode: RebuildMode,
        progress: impl Fn(RebuildProgress) + Send + Sync,
    ) -> Result<RebuildReport, ProjectionError> {
        let ctx = self.context(name)?;
        match mode {
            RebuildMode::InPlace => {
                let started = std::time::Instant::now();
                ctx.store
                    .set_projection_status(name, "rebuilding", None)
                    .await?;
                let generation = ctx.reset().await?;
                let applied = ctx.replay(&progress).await?;
                ctx.store.set_projection_status(name, "idle", None).await?;
                Ok(RebuildReport {
                    name: name.to_owned(),
                    generation,
                    applied,
                    seconds: started.elapsed().as_secs_f64(),
                    dropped: Vec::new(),
                })
            }
            RebuildMode::BlueGreen { drop_old } => ctx.build(drop_old, &progress).await,
        }
    }

    /// Drops the tables of a projection's generations older than the active one.
    pub async fn drop_old(&self, name: &str) -> Result<Vec<String>, ProjectionError> {
        self.context(name)?.drop_old().await
    }

    /// A runner for every registered projection.
    pub fn runner(&self) -> Runner<S> {
        Runner::new(self.store.clone(), self.contexts())
    }
}
