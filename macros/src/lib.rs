//! # eventfold-macros
//!
//! The procedural macros of eventfold: `#[derive(Event)]` for an enum of domain events and
//! `#[aggregate]` for the `impl` block of an aggregate.
//!
//! Do not depend on this crate directly: use the `eventfold` facade crate (feature `macros`, on by
//! default), which re-exports both macros as `eventfold::Event` and `eventfold::aggregate` next to
//! the traits they implement. The generated code names everything through the facade
//! (`::eventfold::Event`, `::eventfold::codec::json`, ...); when the facade is renamed or
//! re-exported elsewhere, point the macros at it with `crate = "path::to::eventfold"`.
//!
//! ```text
//! use eventfold::{aggregate, Event};
//!
//! #[derive(Debug, Clone, PartialEq, Event)]
//! enum OrderEvent {
//!     Placed { customer: String, total_cents: u64 }, // "order.placed", version 1
//!     #[event(name = "order.shipped.v2", version = 2)]
//!     Shipped { carrier: String },
//!     Cancelled,                                      // "order.cancelled"
//! }
//!
//! #[derive(Debug, Default)]
//! struct Order { placed: bool }
//!
//! #[aggregate]
//! impl Order {
//!     fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
//!         todo!()
//!     }
//!     fn apply(&mut self, event: &OrderEvent) {
//!         if let OrderEvent::Placed { .. } = event { self.placed = true; }
//!     }
//! }
//! ```
//!
//! The examples here are shown as text (a proc-macro crate cannot use its own macros in doc
//! tests); the `eventfold` crate's documentation and tests hold compiled ones.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod aggregate;
mod event;
mod schema;
mod util;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Implements `eventfold::Event` for an enum of domain events.
///
/// Every variant is one event type with a **stable name** (what is stored and published) and a
/// **schema version**. Variants may be:
///
/// * struct variants, `Placed { customer: String, total_cents: u64 }`: the payload is the JSON
///   object of the fields. `#[serde(...)]` attributes on the fields (`default`, `rename`,
///   `skip_serializing_if`, `with`, ...) are honoured;
/// * newtype variants, `Paid(PaymentInfo)`: the payload is the inner value, which must implement
///   `serde::Serialize` and `serde::Deserialize` (or `prost::Message` with the protobuf codec);
/// * unit variants, `Cancelled`: the payload is `{}` (any object is accepted when decoding).
///
/// Tuple variants with more than one field are rejected. The enum cannot be generic.
///
/// The derive also implements `Event::schemas`: each variant's payload as serde reads it (field
/// names, types, defaults), for the event schema check of `eventfold::schema`. Types that the
/// payloads use are described further when they derive [`PayloadSchema`](derive@PayloadSchema).
///
/// # Attributes
///
/// On the enum, all optional:
///
/// * `#[event(prefix = "order")]`: prefix of the default names. Defaults to the enum's name
///   without a trailing `Event`, in snake_case: `OrderEvent` gives `order`,
///   `InventoryItemEvent` gives `inventory_item`.
/// * `#[event(codec = "json")]` (the default) or `#[event(codec = "protobuf")]` (feature `proto`
///   of `eventfold`; every variant must then wrap exactly one `prost::Message`).
/// * `#[event(crate = "path::to::eventfold")]`: where the `eventfold` crate is, for code that
///   re-exports it. Defaults to `::eventfold`.
///
/// On a variant, all optional:
///
/// * `#[event(name = "order.placed")]`: the stable type name. Defaults to
///   `{prefix}.{variant in snake_case}`: `ItemAdded` gives `order.item_added`. Names must be
///   non-empty, without whitespace, and unique within the enum.
/// * `#[event(version = 2)]`: the current schema version of that type (at least 1, default 1).
///
/// Several keys can share one attribute: `#[event(name = "order.placed", version = 2)]`.
///
/// # Example
///
/// See the `eventfold` crate for compiled examples.
///
/// ```text
/// use eventfold::Event;
///
/// #[derive(Debug, Clone, PartialEq, Event)]
/// #[event(prefix = "order")]
/// enum OrderEvent {
///     Placed {
///         customer: String,
///         #[serde(default)]
///         note: Option<String>,
///     },                                           // "order.placed", version 1
///     #[event(name = "order.shipped.v2", version = 2)]
///     Shipped { carrier: String },
///     Paid(PaymentInfo),                           // "order.paid", payload = PaymentInfo
///     Cancelled,                                   // "order.cancelled", payload = {}
/// }
///
/// let event = OrderEvent::Cancelled;
/// assert_eq!(event.event_type(), "order.cancelled");
/// let bytes = event.encode()?;
/// assert_eq!(OrderEvent::decode("order.cancelled", &bytes)?, event);
/// ```
#[proc_macro_derive(Event, attributes(event, serde))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    event::expand(input).into()
}

/// Implements `eventfold::Aggregate` from an inherent `impl` block that holds `handle` and
/// `apply`.
///
/// The block must contain
///
/// ```text
/// fn handle(&self, command: &Command) -> Result<Vec<Event>, Error> { ... }
/// fn apply(&mut self, event: &Event) { ... }
/// ```
///
/// and the macro takes the associated types `Command`, `Event` and `Error` of the trait from
/// those signatures (`Result` may also be written `std::result::Result` or
/// `core::result::Result`). Both functions move into the `impl eventfold::Aggregate for ...`
/// block; every other item stays in an inherent `impl` block. Calling `handle` or `apply`
/// directly therefore needs `use eventfold::Aggregate;`.
///
/// # Arguments
///
/// All optional:
///
/// * `name = "order"`: `Aggregate::TYPE`, the stable stream type. Defaults to the type's name in
///   snake_case (`OrderLine` gives `order_line`).
/// * `snapshot_version = 2`: `Aggregate::SNAPSHOT_VERSION` (default 1, the trait's default).
/// * `crate = "path::to::eventfold"`: where the `eventfold` crate is. Defaults to `::eventfold`.
///
/// # Example
///
/// See the `eventfold` crate for compiled examples.
///
/// ```text
/// use eventfold::aggregate;
///
/// #[derive(Debug, Default)]
/// struct Counter { value: u64 }
///
/// #[aggregate(name = "counter", snapshot_version = 2)]
/// impl Counter {
///     fn handle(&self, by: &u32) -> Result<Vec<CounterEvent>, ZeroIncrement> {
///         if *by == 0 { return Err(ZeroIncrement); }
///         Ok(vec![CounterEvent::Incremented { by: *by }])
///     }
///
///     fn apply(&mut self, event: &CounterEvent) {
///         match event { CounterEvent::Incremented { by } => self.value += u64::from(*by) }
///     }
///
///     /// Stays an inherent method.
///     pub fn value(&self) -> u64 { self.value }
/// }
/// ```
#[proc_macro_attribute]
pub fn aggregate(args: TokenStream, input: TokenStream) -> TokenStream {
    aggregate::expand(args.into(), input.into()).into()
}

/// Implements `eventfold::schema::PayloadSchema` for a struct or an enum that an event payload
/// uses, so the event schemas (the snapshot and its check) see inside it.
///
/// Derive it on the payload type of a newtype variant (`Paid(PaymentInfo)`) and on the structs
/// and enums the fields use (`lines: Vec<Line>`). A type without it is recorded by its name only,
/// and a change inside it goes unnoticed.
///
/// The description follows serde: field names after `rename`, `rename_all` and `alias`; a field
/// has a default with `#[serde(default)]`, a container `#[serde(default)]`, or when it is an
/// `Option` (without `with`); `skip`/`skip_deserializing` fields are left out, `flatten`ed fields
/// are inlined; `#[serde(with)]` is part of the field's type; `transparent`, `from`/`try_from`
/// describe the type as the one serde reads; an enum records its variants and `tag`, `content`
/// or `untagged`.
///
/// The type is named by its name without its path (`Line`), and cannot be generic.
///
/// # Attributes
///
/// * `#[payload_schema(crate = "path::to::eventfold")]`: where the `eventfold` crate is, for code
///   that re-exports it. Defaults to `::eventfold`.
///
/// # Example
///
/// ```text
/// use eventfold::{Event, PayloadSchema};
///
/// #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, PayloadSchema)]
/// struct Line { sku: String, qty: u32 }
///
/// #[derive(Debug, Clone, PartialEq, Event)]
/// enum OrderEvent {
///     Placed { customer: String, lines: Vec<Line> },
/// }
/// ```
#[proc_macro_derive(PayloadSchema, attributes(payload_schema, serde))]
pub fn derive_payload_schema(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    schema::expand(input).into()
}
