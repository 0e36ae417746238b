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
//! | `macros` (default) | `#[derive(Event)]`, `#[derive(PayloadSchema)]` and `#[aggregate]` |
//! | `sqlite` (default) | the SQLite event store ([`eventstore::sqlite`]) |
//! | `postgres` | the PostgreSQL event store ([`eventstore::postgres`]) |
//! | `proto` | the Protobuf codec (`#[event(codec = "protobuf")]`), Protobuf event schemas from descriptors |
//! | `test-util` | given/when/then for aggregates ([`testing`]), the backend contract suite, test databases |
//! | `kafka` | the Kafka publisher of the outbox relay (`outbox::KafkaPublisher`, rdkafka) |
//! | `otel` | W3C trace context (`traceparent`, `tracestate`) of the current `tracing` span recorded on events and messages, continued by consumers and reactions (`trace_context`; OpenTelemetry API and `tracing-opentelemetry`, no SDK) |
//! | `signal` | graceful shutdown on SIGTERM and SIGINT ([`shutdown`]: `run_until_signal`, a bounded grace, a second signal ends it) |
//! | `cli` | the embeddable command line (`cli`: migrations, projections, outbox), the `eventfold` binary (with `postgres` and `sqlite`) |
//!
//! The in-memory store ([`eventstore::memory`]) and the in-process broker
//! ([`outbox::InProcessBroker`]) are always there, for users' unit tests. The outbox relay
//! ([`outbox::Relay`]) and the consumer with its inbox ([`outbox::Consumer`]) work with every
//! store.
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
pub use eventfold_macros::{Event, PayloadSchema, aggregate};

/// The event store: the [`eventstore::EventStore`] trait, its backends, the unit of work and the
/// repository.
pub mod eventstore {
    pub use eventfold_eventstore::*;
}

pub use eventfold_outbox as outbox;

pub use eventfold_saga as saga;

pub use eventfold_projections as projections;

#[cfg(feature = "cli")]
pub mod cli;

#[cfg(feature = "signal")]
pub mod shutdown;

/// The book's chapters, compiled as doctests so that every sample stays correct.
#[cfg(doctest)]
mod book {
    #[doc = include_str!("../book/src/introduction.md")]
    mod introduction {}
    #[doc = include_str!("../book/src/getting-started.md")]
    mod getting_started {}
    #[doc = include_str!("../book/src/events-and-aggregates.md")]
    mod events_and_aggregates {}
    #[doc = include_str!("../book/src/event-store.md")]
    mod event_store {}
    #[doc = include_str!("../book/src/schema-evolution.md")]
    mod schema_evolution {}
    #[doc = include_str!("../book/src/event-contracts.md")]
    mod event_contracts {}
    #[doc = include_str!("../book/src/global-log.md")]
    mod global_log {}
    #[doc = include_str!("../book/src/outbox.md")]
    mod outbox_chapter {}
    #[doc = include_str!("../book/src/consumers.md")]
    mod consumers_chapter {}
    #[doc = include_str!("../book/src/projections.md")]
    mod projections_chapter {}
    #[doc = include_str!("../book/src/choreography.md")]
    mod choreography_chapter {}
    #[doc = include_str!("../book/src/tracing.md")]
    mod tracing_chapter {}
    #[doc = include_str!("../book/src/operations.md")]
    mod operations_chapter {}
    #[cfg(feature = "cli")]
    #[doc = include_str!("../book/src/cli.md")]
    mod cli_chapter {}
    #[doc = include_str!("../book/src/guarantees.md")]
    mod guarantees_chapter {}
    #[doc = include_str!("../book/src/performance.md")]
    mod performance_chapter {}
    #[doc = include_str!("../book/src/migrating-from-cqrs-es.md")]
    mod migrating_from_cqrs_es {}
    #[doc = include_str!("../README.md")]
    mod readme {}
}
