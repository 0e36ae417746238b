//! What the CLI needs from a store ([`CliStore`]): the store traits and the backend's
//! migrations ([`MigrationStore`], implemented in each backend's room of the storage crate). The
//! facade runs no SQL of its own.

pub use crate::eventstore::{AppliedMigration, MigrationStore};
use crate::eventstore::{
    EventStore, InboxStore, OutboxRelayStore, ProjectionStore, SagaStore, TraceStore,
};

/// Declares the trait `$name` as all of `$bound`s together, and implements it for every type
/// that has them: the bounds are listed once.
macro_rules! all_of {
    ($(#[$doc:meta])* $name:ident: $($bound:ident),+) => {
        $(#[$doc])*
        pub trait $name: $($bound +)+ {}

        impl<S: $($bound +)+> $name for S {}
    };
}

all_of! {
    /// What the CLI needs from a store: every store trait and its migrations. Implemented for
    /// every type that has them (every backend).
    CliStore: EventStore, OutboxRelayStore, InboxStore, ProjectionStore, SagaStore, TraceStore, MigrationStore
}
