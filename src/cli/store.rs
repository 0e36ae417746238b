//! What the CLI needs from a store ([`CliStore`]): the store traits and the backend's
//! migrations ([`MigrationStore`], implemented in each backend's room of the storage crate). The
//! facade runs no SQL of its own.

pub use crate::eventstore::{AppliedMigration, MigrationStore};
use crate::eventstore::{
    EventStore, InboxStore, OutboxRelayStore, ProjectionStore, SagaStore, TraceStore,
};

/// What the CLI needs from a store: every store trait and its migrations. Implemented for every
/// type that has them (every backend).
pub trait CliStore:
    EventStore
    + OutboxRelayStore
    + InboxStore
    + ProjectionStore
    + SagaStore
    + TraceStore
    + MigrationStore
{
}

impl<S> CliStore for S where
    S: EventStore
        + OutboxRelayStore
        + InboxStore
        + ProjectionStore
        + SagaStore
        + TraceStore
        + MigrationStore
{
}
