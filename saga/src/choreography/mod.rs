//! Choreography: services that react to each other's events, with no coordinator, and a flow
//! that stays traceable.
//!
//! A [`Reaction`] is declared for event types. It runs
//!
//! * on this service's own global log with a [`LocalReactor`]: the reaction's checkpoint commits
//!   in the reaction's own transaction, so each event is reacted to once, also after a crash or
//!   with several instances of the service; or
//! * on a topic (Kafka or the in-process broker) through the [`Consumer`](eventfold_outbox::Consumer)
//!   and its inbox, with a [`ReactionHandler`].
//!
//! Either way it gets a [`FlowContext`]: whatever it appends, executes or sends carries the
//! incoming event's correlation id and has the incoming event as its causation, with no code of
//! the reaction's own, so `trace <correlation-id>` can follow the flow across services. A reaction
//! that fails is retried with a backoff, then the event is parked with its error (among the
//! projections' parked events for a local reactor, among the consumer's parked messages on a
//! topic) and the others keep flowing.
//!
//! ```
//! use std::time::Duration;
//! use eventfold_core::{BoxError, Envelope, NewEvent, OutboxMessage, StreamId};
//! use eventfold_core::outbox::headers;
//! use eventfold_eventstore::{memory::{MemoryStore, MemoryUnitOfWork}, EventStore, ExpectedVersion, OutboxStore};
//! use eventfold_saga::choreography::{FlowContext, LocalReactor, Reaction};
//! # #[derive(Debug, Clone, PartialEq)] enum OrderEvent { Placed }
//! # impl eventfold_core::Event for OrderEvent {
//! #     const CONTENT_TYPE: &'static str = "application/json";
//! #     fn event_type(&self) -> &'static str { "order.placed" }
//! #     fn schema_version(&self) -> u32 { 1 }
//! #     fn event_types() -> &'static [eventfold_core::EventTypeInfo] { &[eventfold_core::EventTypeInfo { name: "order.placed", version: 1, variant: "Placed" }] }
//! #     fn encode(&self) -> Result<Vec<u8>, eventfold_core::CodecError> { Ok(b"{}".to_vec()) }
//! #     fn decode(_: &str, _: &[u8]) -> Result<Self, eventfold_core::CodecError> { Ok(OrderEvent::Placed) }
//! # }
//!
//! /// When an order is placed, ask the payment service to charge it.
//! struct RequestPayment;
//!
//! impl Reaction<MemoryUnitOfWork> for RequestPayment {
//!     type Event = OrderEvent;
//!     fn name(&self) -> &str { "request-payment" }
//!     async fn react(&self, ctx: &mut FlowContext<'_, MemoryUnitOfWork>, event: &Envelope<OrderEvent>) -> Result<(), BoxError> {
//!         let order = event.stream_id.id().to_owned();
//!         ctx.send(vec![OutboxMessage::new("payments", order, "payment.requested", b"{}".to_vec())]).await?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let placed = NewEvent::raw("order.placed", 1, b"{}".to_vec());
//! let (flow, cause) = (placed.correlation_id, placed.event_id);
//! store.append(&StreamId::new("order", "7")?, ExpectedVersion::NoStream, vec![placed]).await?;
//!
//! let mut reactor = LocalReactor::new(store.clone(), RequestPayment);
//! assert_eq!(reactor.run_once().await?.handled, 1);
//! let sent = store.read_outbox(10).await?;
//! assert_eq!(sent[0].message.headers[headers::CORRELATION_ID], flow.to_string());
//! assert_eq!(sent[0].message.headers[headers::CAUSATION_ID], cause.to_string());
//! assert_eq!(reactor.run_once().await?.handled, 0, "each event once");
//! # Ok(())
//! # }
//! ```

mod flow;
mod handler;
mod local;

use std::future::Future;

use eventfold_core::{BoxError, Envelope, Event};
use eventfold_eventstore::UnitOfWork;

pub use flow::{Flow, FlowContext, TRACE_HEADERS};
pub use handler::ReactionHandler;
pub use local::{LocalReactor, ReactionError, ReactorReport};

/// A reaction to events: a step of a choreographed flow.
pub trait Reaction<U: UnitOfWork>: Send + Sync + 'static {
    /// The events it reads (decoded with the reactor's upcasters).
    type Event: Event;

    /// A stable name: the key of its checkpoint (local log) or its consumer name and inbox
    /// (broker).
    fn name(&self) -> &str;

    /// The event types it reacts to (default: every type of [`Reaction::Event`]). Other events
    /// are passed over.
    fn event_types(&self) -> Vec<String> {
        Self::Event::event_types()
            .iter()
            .map(|t| t.name.to_owned())
            .collect()
    }

    /// Reacts to one event. Everything written through `ctx` commits with the checkpoint or
    /// inbox mark of `event`; an error rolls it back, and the event is retried, then parked.
    fn react(
        &self,
        ctx: &mut FlowContext<'_, U>,
        event: &Envelope<Self::Event>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}
