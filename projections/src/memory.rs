//! The in-memory flavour: a state folded from the log in process memory, for caches and tests.
//!
//! A [`MemoryProjection`] has no tables and no stored checkpoint: it folds the whole log (the
//! types of its event enum) at start, then follows live appends. It works with every store.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use eventfold_core::{Envelope, Event, Upcasters};
use eventfold_eventstore::{Checkpoint, LogFilter, ProjectionStore, Wakeup};
use tokio::sync::watch;

use crate::error::ProjectionError;
use crate::projection::decode_for;

type Fold<St, E> = dyn Fn(&mut St, &Envelope<E>) + Send + Sync;

/// A state `St` folded from the events `E` of store `S`, in memory. Cheap to clone.
///
/// ```
/// use eventfold_core::{CodecError, CommandMetadata, Event, EventTypeInfo, NewEvent, StreamId};
/// use eventfold_eventstore::{memory::MemoryStore, EventStore, ExpectedVersion};
/// use eventfold_projections::MemoryProjection;
///
/// #[derive(Debug)]
/// struct Placed;
/// impl Event for Placed {
///     const CONTENT_TYPE: &'static str = "application/json";
///     fn event_type(&self) -> &'static str { "order.placed" }
///     fn schema_version(&self) -> u32 { 1 }
///     fn event_types() -> &'static [EventTypeInfo] {
///         &[EventTypeInfo { name: "order.placed", version: 1, variant: "Placed" }]
///     }
///     fn encode(&self) -> Result<Vec<u8>, CodecError> { Ok(b"{}".to_vec()) }
///     fn decode(_: &str, _: &[u8]) -> Result<Self, CodecError> { Ok(Placed) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MemoryStore::new();
/// let orders = MemoryProjection::<u64, Placed, _>::new(store.clone(), |count, _event| *count += 1);
/// let running = orders.spawn();
/// let stream = StreamId::new("order", "1")?;
/// let done = store.append(&stream, ExpectedVersion::Any, vec![NewEvent::encode(&Placed, "", &CommandMetadata::new())?]).await?;
/// orders.wait_for(done.positions[0]).await?;        // read your own write
/// assert_eq!(orders.read(|count| *count), 1);
/// running.abort();
/// # Ok(())
/// # }
/// ```
pub struct MemoryProjection<St, E: Event, S: ProjectionStore> {
    store: S,
    state: Arc<RwLock<St>>,
    fold: Arc<Fold<St, E>>,
    upcasters: Arc<Upcasters>,
    reached: Arc<watch::Sender<Checkpoint>>,
    poll_interval: Duration,
}

impl<St, E: Event, S: ProjectionStore> Clone for MemoryProjection<St, E, S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            state: self.state.clone(),
            fold: self.fold.clone(),
            upcasters: self.upcasters.clone(),
            reached: self.reached.clone(),
            poll_interval: self.poll_interval,
        }
    }
}

impl<St, E, S> MemoryProjection<St, E, S>
where
    St: Default + Send + Sync + 'static,
    E: Event,
    S: ProjectionStore,
{
    /// A projection of `store` that folds every event of `E` with `fold`, from `St::default()`.
    pub fn new(store: S, fold: impl Fn(&mut St, &Envelope<E>) + Send + Sync + 'static) -> Self {
        Self {
            store,
            state: Arc::new(RwLock::new(St::default())),
            fold: Arc::new(fold),
            upcasters: Arc::new(Upcasters::new()),
            reached: Arc::new(watch::channel(Checkpoint::START).0),
            poll_interval: Duration::from_millis(500),
        }
    }

    /// Upcasters for decoding stored events.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = Arc::new(upcasters);
        self
    }

    /// Reads the state.
    pub fn read<R>(&self, f: impl FnOnce(&St) -> R) -> R {
        let guard = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// Runs [`MemoryProjection::run`] on a task of its own.
    pub fn spawn(&self) -> tokio::task::JoinHandle<Result<(), ProjectionError>> {
        let this = self.clone();
        tokio::spawn(async move { this.run().await })
    }

    /// Folds the log from the start, then follows it (never returns unless the store fails).
    /// An event that does not decode is logged and left out.
    pub async fn run(&self) -> Result<(), ProjectionError> {
        let types: Vec<String> = E::event_types().iter().map(|t| t.name.to_owned()).collect();
        let filter = if self.upcasters.is_empty() {
            LogFilter::all().event_types(types.iter().cloned())
        } else {
            LogFilter::all()
        };
        let mut wakeup = self.store.wakeup().await?;
        let mut read_from = Checkpoint::START;
        loop {
            let batch = self.store.read_log(read_from, 1000, &filter).await?;
            if !batch.events.is_empty() {
                let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
                for e in &batch.events {
                    match decode_for::<E>(&e.event, &types, &self.upcasters) {
                        Ok(Some(envelope)) => (self.fold)(&mut state, &envelope),
                        Ok(None) => {}
                        Err(error) => tracing::error!(
                            event = %e.event.event_id, stream = %e.event.stream_id,
                            position = e.event.global_position, error = %error,
                            "memory projection: event left out"
                        ),
                    }
                }
            }
            read_from = batch.checkpoint;
            self.reached.send_replace(read_from);
            if batch.events.is_empty() {
                if batch.held_back {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                } else {
                    wakeup.wait(self.poll_interval).await;
                }
            }
        }
    }

    /// Resolves when the state includes the event at global position `position`.
    pub async fn wait_for(&self, position: u64) -> Result<(), ProjectionError> {
        let target = if position == 0 {
            Checkpoint::START
        } else {
            self.store
                .checkpoint_at(position)
                .await?
                .ok_or(ProjectionError::UnknownPosition(position))?
        };
        let mut rx = self.reached.subscribe();
        loop {
            if *rx.borrow_and_update() >= target {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Err(ProjectionError::NotRunning {
                    projection: "memory projection".to_owned(),
                    reason: "dropped".to_owned(),
                });
            }
        }
    }
}
