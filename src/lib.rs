//! # eventfold
//!
//! Event sourcing, the transactional outbox, sagas and CQRS read projections for Rust services,
//! embedded as a library.
//!
//! This is the facade crate: it re-exports the pieces of the workspace behind additive feature
//! flags, the way `sqlx` does.
//!
//! | feature | adds |
//! |---|---|
//! | `macros` (default) | `#[derive(Event)]` and `#[aggregate]` |
//! | `sqlite` (default) | the SQLite event store ([`eventstore::sqlite`]) |
//! | `postgres` | the PostgreSQL event store ([`eventstore::postgres`]) |
//! | `proto` | the Protobuf codec (`#[event(codec = "protobuf")]`) |
//! | `test-util` | given/when/then for aggregates ([`testing`]), the backend contract suite, test databases |
//! | `kafka`, `cli` | reserved for the outbox relay and the embeddable CLI |
//!
//! The in-memory store ([`eventstore::memory`]) is always there, for users' unit tests.
//!
//! Start with the book chapter "Getting started"; in short:
//!
//! ```
//! use eventfold::{aggregate, Event, CommandMetadata};
//! use eventfold::eventstore::{memory::MemoryStore, Repository};
//!
//! #[derive(Debug, Clone, PartialEq, Event)]
//! enum CounterEvent {
//!     Incremented { by: u32 },
//! }
//!
//! #[derive(Debug, Default)]
//! struct Counter { value: u64 }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("cannot increment by zero")]
//! struct ZeroIncrement;
//!
//! #[aggregate]
//! impl Counter {
//!     fn handle(&self, by: &u32) -> Result<Vec<CounterEvent>, ZeroIncrement> {
//!         if *by == 0 { return Err(ZeroIncrement); }
//!         Ok(vec![CounterEvent::Incremented { by: *by }])
//!     }
//!     fn apply(&mut self, event: &CounterEvent) {
//!         match event { CounterEvent::Incremented { by } => self.value += u64::from(*by) }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let repo = Repository::<Counter, _>::new(MemoryStore::new());
//! let done = repo.execute("c-1", &5, CommandMetadata::new()).await?;
//! assert_eq!(done.state.value, 5);
//! assert_eq!(done.version, 1);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub use eventfold_core::*;

#[cfg(feature = "macros")]
pub use eventfold_macros::{Event, aggregate};

/// The event store: the [`eventstore::EventStore`] trait, its backends, the unit of work and the
/// repository.
pub mod eventstore {
    pub use eventfold_eventstore::*;
}

/// The transactional outbox (room for the outbox issue).
pub mod outbox {
    pub use eventfold_outbox::*;
}

/// Sagas (room for the saga issue).
pub mod saga {
    pub use eventfold_saga::*;
}

/// Read projections (room for the projections issue).
pub mod projections {
    pub use eventfold_projections::*;
}
