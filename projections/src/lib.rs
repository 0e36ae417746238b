//! # eventfold-projections
//!
//! CQRS read projections: an apply function per event, a checkpoint written **in the read
//! model's own transaction**, a runner that catches up and then follows live appends, and
//! rebuilds, in place or blue/green. Its guarantee is guarantee 4 of the design brief: a
//! projection sees every committed event once, never skipping, never applying twice.
//!
//! ## Writing a projection
//!
//! A [`Projection`] names itself, declares its tables by logical name, creates them in
//! [`Projection::setup`] and applies events in [`Projection::apply`], inside the store's unit of
//! work (`uow.connection()` is the `sqlx` transaction). The runner applies a batch of events and
//! writes the checkpoint in that same transaction, after locking the checkpoint row and checking
//! it is still the one it expected: a second applier (a zombie runner, a CLI rebuild) rolls back
//! instead of applying an event twice.
//!
//! Physical tables are per **generation** (`orders__g1`, `orders__g2`, ...: [`Tables::table`]);
//! readers query a view named after the logical table (`orders`), which points at the active
//! generation.
//!
//! ```
//! use eventfold_core::{BoxError, CodecError, CommandMetadata, Envelope, Event, EventTypeInfo, NewEvent, StreamId};
//! use eventfold_eventstore::sqlite::{SqliteStore, SqliteUnitOfWork};
//! use eventfold_eventstore::{EventStore, ExpectedVersion};
//! use eventfold_projections::{Projection, Projections, RebuildMode, Tables};
//!
//! /// `order.placed {"cents": 250}` (normally `#[derive(Event)]`).
//! struct Placed { cents: i64 }
//! impl Event for Placed {
//!     const CONTENT_TYPE: &'static str = "application/json";
//!     fn event_type(&self) -> &'static str { "order.placed" }
//!     fn schema_version(&self) -> u32 { 1 }
//!     fn event_types() -> &'static [EventTypeInfo] {
//!         &[EventTypeInfo { name: "order.placed", version: 1, variant: "Placed" }]
//!     }
//!     fn encode(&self) -> Result<Vec<u8>, CodecError> {
//!         Ok(format!("{{\"cents\":{}}}", self.cents).into_bytes())
//!     }
//!     fn decode(_: &str, payload: &[u8]) -> Result<Self, CodecError> {
//!         let v: serde_json::Value = serde_json::from_slice(payload).map_err(|e| CodecError::Decode { event_type: "order.placed".into(), codec: "json", source: Box::new(e) })?;
//!         Ok(Placed { cents: v["cents"].as_i64().unwrap_or(0) })
//!     }
//! }
//!
//! /// One row per order.
//! struct Orders;
//! impl Projection<SqliteUnitOfWork> for Orders {
//!     type Event = Placed;
//!     fn name(&self) -> &str { "orders" }
//!     fn tables(&self) -> Vec<String> { vec!["orders".into()] }
//!     async fn setup(&self, uow: &mut SqliteUnitOfWork, tables: &Tables) -> Result<(), BoxError> {
//!         let sql = format!("CREATE TABLE {} (id TEXT PRIMARY KEY, cents INTEGER NOT NULL)", tables.table("orders"));
//!         sqlx::query(&sql).execute(uow.connection()).await?;
//!         Ok(())
//!     }
//!     async fn apply(&self, uow: &mut SqliteUnitOfWork, tables: &Tables, event: &Envelope<Placed>) -> Result<(), BoxError> {
//!         let sql = format!("INSERT INTO {} (id, cents) VALUES (?1, ?2)", tables.table("orders"));
//!         sqlx::query(&sql).bind(event.stream_id.id()).bind(event.payload.cents).execute(uow.connection()).await?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SqliteStore::connect("sqlite::memory:").await?;
//! let projections = Projections::new(store.clone()).register(Orders);
//! let runner = projections.runner().start();
//!
//! let placed = NewEvent::encode(&Placed { cents: 250 }, "", &CommandMetadata::new())?;
//! let done = store.append(&StreamId::new("order", "o-1")?, ExpectedVersion::NoStream, vec![placed]).await?;
//! runner.wait_for(done.positions[0]).await?;                 // read your own write
//! let (cents,): (i64,) = sqlx::query_as("SELECT cents FROM orders").fetch_one(store.pool()).await?;
//! assert_eq!(cents, 250);
//! runner.stop().await?;
//!
//! // Rebuild into new tables and switch readers atomically.
//! let report = projections.rebuild("orders", RebuildMode::BlueGreen { drop_old: true }, |_| {}).await?;
//! assert_eq!((report.generation, report.applied), (2, 1));
//! let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders").fetch_one(store.pool()).await?;
//! assert_eq!(count, 1);
//! # Ok(())
//! # }
//! ```
//!
//! ## Running
//!
//! [`Projections::runner`] runs every registered projection on a task of its own: catch up from
//! the checkpoint, then follow live appends (woken by the store; on PostgreSQL the log reader
//! never skips, ADR 0007). [`RunnerHandle::wait_for`] resolves when the projections have read
//! past a global position (read-your-writes). Pause and resume are stored, so another process (the
//! CLI) can pause a running service. An event that keeps failing is retried with backoff, then
//! parked (`{prefix}projection_dead`) or the projection stops, per [`ErrorPolicy`].
//!
//! ## Rebuilds
//!
//! * **In place** ([`RebuildMode::InPlace`]): drop and create the tables, checkpoint to the
//!   start, replay. The standalone CLI, which lacks the application's types, asks a running
//!   service for one with `request_projection_reset`; the runner picks it up.
//! * **Blue/green** ([`RebuildMode::BlueGreen`]): build generation g+1 while the runner keeps
//!   serving g, then, when it has caught up, one transaction applies the last events, makes g+1
//!   active and points the views at it. Readers never see an empty or partial model. A crashed
//!   build resumes from its own checkpoint. When the code's [`Projection::version`] is higher
//!   than the stored one, the runner does this by itself.
//!
//! Rebuilds fail fast: the error names the projection, the event id, its stream and position.
//!
//! ## Other flavours
//!
//! * [`MemoryProjection`]: a state in process memory, folded from the log, for caches and tests.
//! * [`ProjectionHandler`]: a projection fed from broker topics through the outbox consumer and
//!   its inbox.
//!
//! ## Metrics
//!
//! Labelled with `projection`: gauges `eventfold_projection_lag_events`,
//! `eventfold_projection_lag_seconds`, `eventfold_projection_parked`; counter
//! `eventfold_projection_applied_total` (applied/s is its rate).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod engine;
pub mod error;
pub mod handler;
pub mod memory;
mod options;
pub mod projection;
pub mod registry;
pub mod runner;

pub use error::ProjectionError;
pub use eventfold_eventstore::{BuildState, ParkedEvent, ProjectionState, ProjectionStore};
pub use handler::ProjectionHandler;
pub use memory::MemoryProjection;
pub use projection::{Projection, Tables};
pub use registry::{
    BuildStatus, ErrorPolicy, ProjectionInfo, ProjectionOptions, ProjectionStatus, Projections,
    RebuildMode, RebuildProgress, RebuildReport,
};
pub use runner::{Runner, RunnerHandle};
