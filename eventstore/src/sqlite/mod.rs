//! The SQLite event store (feature `sqlite`): the embedded default.
//!
//! Writes run in `BEGIN IMMEDIATE` transactions, so SQLite's single writer is taken up front and
//! two units of work never deadlock on a lock upgrade; readers are not blocked (WAL mode). Tables
//! are `{prefix}events`, `{prefix}snapshots`, `{prefix}commands` and `{prefix}migrations`.
//! An append of up to 128 events outside a unit of work, with no outbox row routed from it, is
//! one autocommit statement that checks the stream's version and inserts (ADR 0031).
//!
//! [`SqliteStore::connect`] opens a pool of 8 (1 for an in-memory database) without sqlx's
//! checkout ping (`test_before_acquire(false)`: a connection to a local file does not go stale,
//! and the ping costs a hop to the driver's worker thread on every checkout). A pool given to
//! [`SqliteStore::builder`] keeps its own options; turn the ping off there too for the same
//! speed.
//!
//! One file per concern, with the same names as in `crate::postgres`: `store` (the store, its
//! builder, migrations), `statements`, `append`, `unit_of_work`, `log`, `batch`
//! (shared commits of concurrent appends), `outbox`, `inbox`, `projections`, `sagas`,
//! and `migrations/*.sql`. What PostgreSQL shares is written once in `crate::sql` over a dialect.
//!
//! ```
//! use eventfold_eventstore::{sqlite::SqliteStore, EventStore, UnitOfWork, ExpectedVersion};
//! use eventfold_core::{NewEvent, StreamId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SqliteStore::connect("sqlite::memory:").await?;
//! sqlx::query("CREATE TABLE orders_view (id TEXT PRIMARY KEY)").execute(store.pool()).await?;
//!
//! let stream = StreamId::new("order", "7")?;
//! let mut uow = store.begin().await?;
//! uow.append(&stream, ExpectedVersion::NoStream, vec![NewEvent::raw("order.placed", 1, b"{}".to_vec())]).await?;
//! // the application's own SQL, in the same transaction
//! sqlx::query("INSERT INTO orders_view (id) VALUES ('7')").execute(uow.connection()).await?;
//! uow.commit().await?;
//! assert_eq!(store.stream_version(&stream).await?, 1);
//! # Ok(())
//! # }
//! ```

mod append;
mod batch;
mod inbox;
mod log;
mod outbox;
mod projections;
mod sagas;
mod statements;
mod store;
mod trace;
mod unit_of_work;

pub use store::{SqliteStore, SqliteStoreBuilder};
pub use unit_of_work::SqliteUnitOfWork;

use statements::*;
use store::*;
