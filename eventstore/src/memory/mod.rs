//! The in-memory event store: for users' unit tests and for prototypes.
//!
//! It follows the same contract as the SQL backends (the shared contract suite runs against it).
//! Like SQLite, it has one writer at a time: a unit of work takes the store's write lock at its
//! first write and holds it until it commits, rolls back or is dropped, so the global log is in
//! commit order. (A task that holds a unit of work and appends through the store itself waits
//! for itself: finish the unit of work first.) Nothing survives the process.
//!
//! ```
//! use eventfold_core::{NewEvent, StreamId};
//! use eventfold_eventstore::{memory::MemoryStore, EventStore, ExpectedVersion};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventfold_eventstore::StoreError> {
//! let store = MemoryStore::new();
//! let stream = StreamId::new("order", "1").unwrap();
//! store.append(&stream, ExpectedVersion::NoStream, vec![NewEvent::raw("order.placed", 1, b"{}".to_vec())]).await?;
//! let err = store
//!     .append(&stream, ExpectedVersion::NoStream, vec![NewEvent::raw("order.placed", 1, b"{}".to_vec())])
//!     .await
//!     .unwrap_err();
//! assert!(err.is_conflict());
//! assert_eq!(store.stream_version(&stream).await?, 1);
//! # Ok(())
//! # }
//! ```

// One file per concern, with the same names as in the PostgreSQL and SQLite backends: `store`
// (state, constructors, reads), `append`, `unit_of_work`, `log`, `outbox`, `inbox`,
// `projections`, `sagas`, `trace`.
mod append;
mod inbox;
mod log;
mod outbox;
mod projections;
mod sagas;
mod store;
mod trace;
mod unit_of_work;

pub use store::MemoryStore;
pub use unit_of_work::MemoryUnitOfWork;
