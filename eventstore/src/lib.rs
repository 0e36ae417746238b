//! # eventfold-eventstore
//!
//! The event store of eventfold: one [`EventStore`] trait, three backends (in memory, SQLite and
//! PostgreSQL), the [`UnitOfWork`] that makes the application's own SQL commit together with the
//! events, snapshots, idempotent commands, and the [`Repository`] that runs the command path of
//! event sourcing with optimistic concurrency and bounded retries.
//!
//! | backend | module | feature |
//! |---|---|---|
//! | in memory | [`memory`] | always |
//! | SQLite | `sqlite` (a folder: one file per concern) | `sqlite` |
//! | PostgreSQL | `postgres` (the same file names as `sqlite`) | `postgres` |
//!
//! Every backend passes the same contract suite (`contract`, feature `test-util`). What the two
//! SQL backends share (stream reads, the projection and saga stores, row conversions, migration
//! bookkeeping) is written once in a crate-private `sql` module over a small dialect; every
//! backend reports its name and migrations through [`admin::MigrationStore`].
//!
//! ## Guarantee: no lost update
//!
//! Every append names the version it expects the stream to have ([`ExpectedVersion`]). Two
//! commands that loaded the same version cannot both append: the second gets
//! [`StoreError::VersionConflict`], which the repository retries (reloading the state) a bounded
//! number of times before returning [`ExecuteError::Conflict`].
//!
//! A database failure that a new attempt may not meet (a deadlock, a serialization failure, a
//! lost connection, a pool timeout, SQLite busy) is a [`StoreError::Transient`] with its
//! [`TransientKind`]; the repository retries those too, with exponential backoff and jitter (a
//! lost connection only for a command with an id, whose record makes the retry idempotent).
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod coalesce;
pub mod error;
pub mod inbox;
pub mod log;
pub mod memory;
pub mod naming;
pub mod outbox;
pub mod projection;
pub mod repository;
pub mod saga;
pub mod store;
pub mod trace;

#[cfg(feature = "test-util")]
pub mod contract;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use admin::{AppliedMigration, MigrationStore};
pub use coalesce::Coalescing;
pub use error::{ExecuteError, ExpectedVersion, StoreError, TransientKind};
pub use inbox::{InboxStore, ParkedMessage};
pub use log::{
    BlockingTransaction, Checkpoint, InvalidCheckpoint, LogBatch, LogEvent, LogFilter, LogHead,
    Subscription,
};
pub use naming::Naming;
pub use outbox::{
    DeadLetter, OUTBOX_SLOTS, OutboxRelayStore, OutboxRouting, OutboxRow, OutboxStatus, OutboxStore,
};
pub use projection::{BuildState, LockedCheckpoint, ParkedEvent, ProjectionState, ProjectionStore};
pub use repository::{Executed, Loaded, Repository};
pub use saga::{
    SagaFilter, SagaRecord, SagaRegistration, SagaStore, SagaTimer, SagaTimerId,
    SagaTransitionItem, SagaTransitionWrite,
};
pub use store::{
    AppendResult, CommandRecord, DynEventReader, EventStore, LocalWakeup, MAX_MESSAGE_KEY_LEN,
    MAX_PAYLOAD_LEN, Snapshot, StreamAppend, UnitOfWork, Wakeup,
};
pub use trace::{InboxEntry, TraceStore};
