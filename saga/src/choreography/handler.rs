//! Reactions on a topic, through the consumer and its inbox.

use std::sync::OnceLock;

use eventfold_core::outbox::headers;
use eventfold_core::{BoxError, Envelope, StreamId, Upcasters};
use eventfold_eventstore::UnitOfWork;
use eventfold_outbox::{Handler, Record};
use tracing::Instrument;
use uuid::Uuid;

use super::{Flow, FlowContext, Reaction};

/// Runs a [`Reaction`] as the [`Handler`] of a [`Consumer`](eventfold_outbox::Consumer): the
/// reaction's writes commit with the consumer's inbox mark, so a redelivered record takes effect
/// once. Records of other types are acknowledged and passed over.
///
/// ```
/// # use eventfold_core::{BoxError, Envelope};
/// # use eventfold_eventstore::memory::{MemoryStore, MemoryUnitOfWork};
/// # use eventfold_saga::choreography::{FlowContext, Reaction};
/// # #[derive(Debug, Clone, PartialEq)] enum OrderEvent { Placed }
/// # impl eventfold_core::Event for OrderEvent {
/// #     const CONTENT_TYPE: &'static str = "application/json";
/// #     fn event_type(&self) -> &'static str { "order.placed" }
/// #     fn schema_version(&self) -> u32 { 1 }
/// #     fn event_types() -> &'static [eventfold_core::EventTypeInfo] { &[eventfold_core::EventTypeInfo { name: "order.placed", version: 1, variant: "Placed" }] }
/// #     fn encode(&self) -> Result<Vec<u8>, eventfold_core::CodecError> { Ok(b"{}".to_vec()) }
/// #     fn decode(_: &str, _: &[u8]) -> Result<Self, eventfold_core::CodecError> { Ok(OrderEvent::Placed) }
/// # }
/// # struct Reserve;
/// # impl Reaction<MemoryUnitOfWork> for Reserve {
/// #     type Event = OrderEvent;
/// #     fn name(&self) -> &str { "reserve-stock" }
/// #     async fn react(&self, _: &mut FlowContext<'_, MemoryUnitOfWork>, _: &Envelope<OrderEvent>) -> Result<(), BoxError> { Ok(()) }
/// # }
/// use eventfold_outbox::{Consumer, InProcessBroker};
/// use eventfold_saga::choreography::ReactionHandler;
///
/// let broker = InProcessBroker::new();
/// let store = MemoryStore::new();
/// let consumer = Consumer::new("reserve-stock", store, broker.consumer("inventory", &["order"]), ReactionHandler::new(Reserve));
/// ```
pub struct ReactionHandler<R> {
    reaction: R,
    /// The reaction's event types, asked once.
    types: OnceLock<Vec<String>>,
    upcasters: Upcasters,
}

impl<R> ReactionHandler<R> {
    /// A handler for `reaction`.
    pub fn new(reaction: R) -> Self {
        Self {
            reaction,
            types: OnceLock::new(),
            upcasters: Upcasters::new(),
        }
    }

    /// Upcasters for older schema versions of the records' payloads.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }
}

/// The record as a stored event, from its CloudEvents headers: the key is the aggregate id,
/// `ce_streamtype` its type (the topic when absent), `ce_streamversion`, `ce_time`,
/// `ce_source`, `ce_correlationid` (the message id when absent), `ce_causationid`,
/// `ce_tenantid`.
fn envelope_of<E>(record: &Record, event: E) -> Result<Envelope<E>, BoxError> {
    let h = &record.headers;
    let stream_type = h
        .get(headers::STREAM_TYPE)
        .map_or(record.topic.as_str(), String::as_str);
    let flow = Flow::of_record(record);
    Ok(Envelope {
        event_id: record.message_id,
        event_type: h
            .get(headers::TYPE)
            .cloned()
            .unwrap_or_else(|| record.message_type.clone()),
        schema_version: h
            .get(headers::SCHEMA_VERSION)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        stream_id: StreamId::new(stream_type, &record.key).map_err(|e| {
            format!(
                "record {} of {}: no stream id: {e}",
                record.message_id, record.topic
            )
        })?,
        stream_version: h
            .get(headers::STREAM_VERSION)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        global_position: 0,
        timestamp: h
            .get(headers::TIME)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(record.timestamp, |t| t.with_timezone(&chrono::Utc)),
        source: h.get(headers::SOURCE).cloned().unwrap_or_default(),
        correlation_id: flow.correlation_id,
        causation_id: h
            .get(headers::CAUSATION_ID)
            .and_then(|c| Uuid::parse_str(c).ok()),
        tenant_id: flow.tenant_id,
        headers: h.clone(),
        payload: event,
    })
}

impl<U, R> Handler<U> for ReactionHandler<R>
where
    U: UnitOfWork,
    R: Reaction<U>,
{
    async fn handle(&self, uow: &mut U, record: &Record) -> Result<(), BoxError> {
        let event_type = record
            .headers
            .get(headers::TYPE)
            .unwrap_or(&record.message_type);
        let types = self.types.get_or_init(|| self.reaction.event_types());
        if !types.iter().any(|t| t == event_type) {
            return Ok(());
        }
        let event: R::Event = record.decode(&self.upcasters)?;
        let envelope = envelope_of(record, event)?;
        let span = tracing::info_span!(
            "reaction",
            reaction = %self.reaction.name(),
            event_type = %envelope.event_type,
            event_id = %envelope.event_id,
            correlation_id = %envelope.correlation_id,
        );
        let mut ctx = FlowContext::new(uow, Flow::of_record(record));
        self.reaction
            .react(&mut ctx, &envelope)
            .instrument(span)
            .await
    }
}
