//! Domain events: the [`Event`] trait that an enum of events implements.
//!
//! An event type has a **stable name** (for example `order.placed`): the name is what is stored
//! and published, so renaming a Rust variant never breaks history. It also has a **schema
//! version**: when the payload of a type changes incompatibly, its version goes up and an upcaster
//! (see [`crate::upcast`]) converts the old payloads when they are read.
//!
//! The trait is normally implemented with `#[derive(Event)]` from the `eventfold` crate:
//!
//! ```text
//! #[derive(Debug, Clone, PartialEq, eventfold::Event)]
//! enum OrderEvent {
//!     Placed { customer: String, total_cents: u64 },     // "order.placed", version 1
//!     #[event(name = "order.shipped.v2", version = 2)]
//!     Shipped { carrier: String },
//!     Cancelled,                                         // "order.cancelled"
//! }
//! ```

use crate::codec::CodecError;

/// Static description of one event type of an [`Event`] enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventTypeInfo {
    /// The stable type name, e.g. `order.placed`.
    pub name: &'static str,
    /// The current schema version of that type (starts at 1).
    pub version: u32,
    /// The Rust variant that holds it, for messages.
    pub variant: &'static str,
}

/// A set of domain events (usually an enum) that can be stored and read back.
///
/// Implementations must be consistent: [`Event::decode`] must accept exactly the names listed by
/// [`Event::event_types`] at their current versions, and `decode(e.event_type(), &e.encode()?)`
/// must give back an equal event.
pub trait Event: Sized + Send + Sync + 'static {
    /// MIME type of the encoded payload (`application/json`, `application/protobuf`).
    const CONTENT_TYPE: &'static str;

    /// Stable type name of this event, e.g. `order.placed`.
    fn event_type(&self) -> &'static str;

    /// Current schema version of this event's type.
    fn schema_version(&self) -> u32;

    /// Every event type this set knows, with its current schema version.
    fn event_types() -> &'static [EventTypeInfo];

    /// Encodes the payload of this event (without the metadata).
    fn encode(&self) -> Result<Vec<u8>, CodecError>;

    /// Decodes a payload of the given type at its **current** schema version.
    ///
    /// Older versions are brought up to date by [`crate::Upcasters`] before this is called.
    fn decode(event_type: &str, payload: &[u8]) -> Result<Self, CodecError>;

    /// The schema of every event type of this set at its current version, for the schema check
    /// of [`crate::schema`].
    ///
    /// `#[derive(Event)]` implements it from the variants' fields as serde reads them. The
    /// default, `None`, says that this set does not describe its schemas (a hand-written impl):
    /// [`crate::schema::EventSchemas`] then reports it instead of checking it.
    fn schemas() -> Option<Vec<crate::schema::EventSchema>> {
        None
    }

    /// The current schema version of `event_type`, or `None` when this set does not know it.
    fn current_version(event_type: &str) -> Option<u32> {
        Self::event_types()
            .iter()
            .find(|info| info.name == event_type)
            .map(|info| info.version)
    }
}
