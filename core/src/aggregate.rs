//! Aggregates: pure decision and evolution functions.
//!
//! An aggregate is the consistency boundary of event sourcing. eventfold keeps it **pure and
//! synchronous**: [`Aggregate::handle`] decides which events a command produces from the current
//! state and the command alone, and [`Aggregate::apply`] evolves the state by one event. Whatever
//! a decision needs from outside (the current time, a price looked up from another service) is
//! put into the command by the caller, so an aggregate is tested without mocks.
//!
//! The repository of `eventfold-eventstore` loads the state (snapshot + tail), calls `handle`,
//! appends the events with the expected version, and retries on a version conflict. Because it
//! may call `handle` more than once, `handle` takes the command by reference and must not have
//! side effects.
//!
//! With the `macros` feature of the `eventfold` crate, `#[eventfold::aggregate]` on the `impl`
//! block that holds `handle` and `apply` writes the trait impl, taking the command, event and
//! error types from the signatures.

use crate::event::Event;

/// An event-sourced aggregate.
pub trait Aggregate: Default + Send + Sync + 'static {
    /// Stable name of the aggregate type, used as the stream type (e.g. `order`).
    const TYPE: &'static str;

    /// Version of the state's serialized form in snapshots. Bump it when the state's shape
    /// changes: snapshots with another version are ignored and the state is replayed.
    const SNAPSHOT_VERSION: u32 = 1;

    /// The commands this aggregate handles.
    type Command: Send + Sync + 'static;
    /// The events it records.
    type Event: Event;
    /// The domain error of a rejected command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides the events that `command` produces in the current state, or rejects it.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves the state by one event. Must not fail: events are facts.
    fn apply(&mut self, event: &Self::Event);

    /// The state after applying `events` to the default state.
    fn fold<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self {
        let mut state = Self::default();
        for event in events {
            state.apply(event);
        }
        state
    }
}
