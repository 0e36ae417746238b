//! The PostgreSQL event store (feature `postgres`).
//!
//! Appends are one statement per call: the events of a call are inserted with `UNNEST` in a
//! statement that also checks the expected version, and the unique index on
//! `(stream_type, stream_id, stream_version)` turns a concurrent append into
//! [`crate::StoreError::VersionConflict`]. Writers to different streams never wait for each other.
//! Tables live under a validated prefix and, optionally, a schema; migrations are serialized
//! across processes with an advisory lock and tracked in `{prefix}migrations`.
//!
//! One file per concern, with the same names as in [`crate::sqlite`]: `store` (the store, its
//! builder, migrations), `statements`, `append`, `unit_of_work`, `log` (the global log and its
//! wakeup), `batch` (shared commits of concurrent appends), `outbox` (the relay's store and the
//! outbox floor), `inbox`, `projections`, `sagas`, `testing` (test databases),
//! and `migrations/*.sql`. What SQLite shares is written once in `crate::sql` over a dialect.
//!
//! ```no_run
//! use eventfold_eventstore::{postgres::PgStore, EventStore, UnitOfWork, ExpectedVersion, Naming};
//! use eventfold_core::{NewEvent, StreamId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
//! let store = PgStore::builder(pool)
//!     .naming(Naming::new("eventfold_")?.with_schema("orders")?)
//!     .source("order-service")
//!     .build()
//!     .await?;
//!
//! let stream = StreamId::new("order", "7")?;
//! let mut uow = store.begin().await?;
//! uow.append(&stream, ExpectedVersion::NoStream, vec![NewEvent::raw("order.placed", 1, b"{}".to_vec())]).await?;
//! sqlx::query("UPDATE app_counters SET n = n + 1").execute(uow.connection()).await?;
//! uow.commit().await?;
//! # Ok(())
//! # }
//! ```

mod append;
mod batch;
mod inbox;
mod log;
mod outbox;
pub(crate) mod projections;
mod read_batch;
mod sagas;
mod statements;
mod store;
#[cfg(feature = "test-util")]
pub mod testing;
mod trace;
mod unit_of_work;

pub use log::PgWakeup;
pub use store::{PgStore, PgStoreBuilder};
pub use unit_of_work::PgUnitOfWork;

use log::*;
use statements::*;
use store::*;
