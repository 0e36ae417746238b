//! The flow an incoming event or message belongs to, and the context a reaction writes through.

use eventfold_core::outbox::headers;
use eventfold_core::{
    Aggregate, CommandMetadata, Envelope, Event, Headers, NewEvent, OutboxMessage, StreamId,
};
use eventfold_eventstore::{
    AppendResult, EventStore, ExecuteError, Executed, ExpectedVersion, Repository, StoreError,
    UnitOfWork,
};
use eventfold_outbox::Record;
use uuid::Uuid;

/// The W3C trace-context headers a flow carries along (`traceparent`, `tracestate`).
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Where an incoming event or message sits in its business flow: what everything it causes
/// must carry.
///
/// ```
/// use eventfold_core::{NewEvent, StreamId};
/// use eventfold_saga::choreography::Flow;
///
/// let placed = NewEvent::raw("order.placed", 1, b"{}".to_vec())
///     .into_recorded(StreamId::new("order", "7").unwrap(), 1, 1);
/// let flow = Flow::of_event(&placed);
/// let meta = flow.metadata();
/// assert_eq!(meta.correlation_id, Some(placed.correlation_id));
/// assert_eq!(meta.causation_id, Some(placed.event_id));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// The flow's correlation id.
    pub correlation_id: Uuid,
    /// The id of the incoming event or message: the causation of everything it causes.
    pub causation_id: Uuid,
    /// The tenant, when the incoming one had one.
    pub tenant_id: Option<String>,
    /// The trace-context headers to carry along ([`TRACE_HEADERS`]).
    pub headers: Headers,
}

fn trace_headers(from: &Headers) -> Headers {
    from.iter()
        .filter(|(k, _)| TRACE_HEADERS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Flow {
    /// The flow of a stored event (from the local log, or decoded from a broker record).
    pub fn of_event<P>(event: &Envelope<P>) -> Self {
        Self {
            correlation_id: event.correlation_id,
            causation_id: event.event_id,
            tenant_id: event.tenant_id.clone(),
            headers: trace_headers(&event.headers),
        }
    }

    /// The flow of a broker record, from its CloudEvents headers. A record without a
    /// (valid) `ce_correlationid` starts a flow of its own: its message id.
    pub fn of_record(record: &Record) -> Self {
        let (correlation, _) = eventfold_eventstore::trace::flow_of(&record.headers);
        Self {
            correlation_id: correlation.unwrap_or(record.message_id),
            causation_id: record.message_id,
            tenant_id: record.headers.get(headers::TENANT_ID).cloned(),
            headers: trace_headers(&record.headers),
        }
    }

    /// Metadata for commands and appends caused by this flow's incoming event: its correlation
    /// id, its id as causation, its tenant and trace headers.
    pub fn metadata(&self) -> CommandMetadata {
        CommandMetadata {
            command_id: None,
            correlation_id: Some(self.correlation_id),
            causation_id: Some(self.causation_id),
            tenant_id: self.tenant_id.clone(),
            headers: self.headers.clone(),
        }
    }

    /// `message` with the flow's headers: `ce_correlationid`, `ce_causationid`, the tenant and
    /// the trace headers, each unless the message already sets it.
    ///
    /// ```
    /// use eventfold_core::{outbox::headers, OutboxMessage};
    /// use eventfold_saga::choreography::Flow;
    /// use uuid::Uuid;
    ///
    /// let flow = Flow { correlation_id: Uuid::now_v7(), causation_id: Uuid::now_v7(), tenant_id: None, headers: Default::default() };
    /// let m = flow.stamp(OutboxMessage::new("payments", "o-7", "payment.requested", b"{}".to_vec()));
    /// assert_eq!(m.headers[headers::CORRELATION_ID], flow.correlation_id.to_string());
    /// assert_eq!(m.headers[headers::CAUSATION_ID], flow.causation_id.to_string());
    /// ```
    pub fn stamp(&self, mut message: OutboxMessage) -> OutboxMessage {
        let h = &mut message.headers;
        h.entry(headers::CORRELATION_ID.to_owned())
            .or_insert_with(|| self.correlation_id.to_string());
        h.entry(headers::CAUSATION_ID.to_owned())
            .or_insert_with(|| self.causation_id.to_string());
        if let Some(tenant) = &self.tenant_id {
            h.entry(headers::TENANT_ID.to_owned())
                .or_insert_with(|| tenant.clone());
        }
        for (k, v) in &self.headers {
            h.entry(k.clone()).or_insert_with(|| v.clone());
        }
        message
    }
}

/// What a reaction writes through: the unit of work that also holds its checkpoint or inbox
/// mark, with every write stamped with the incoming [`Flow`].
pub struct FlowContext<'a, U: UnitOfWork> {
    uow: &'a mut U,
    flow: Flow,
}

impl<'a, U: UnitOfWork> FlowContext<'a, U> {
    /// A context over `uow` for `flow`.
    pub fn new(uow: &'a mut U, flow: Flow) -> Self {
        Self { uow, flow }
    }

    /// The incoming flow.
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// Metadata for what the reaction does ([`Flow::metadata`]).
    pub fn metadata(&self) -> CommandMetadata {
        self.flow.metadata()
    }

    /// The unit of work itself, for the application's own SQL (`uow().connection()` on the SQL
    /// backends). Writes made through it directly are not stamped: use [`Self::metadata`] and
    /// [`Flow::stamp`].
    pub fn uow(&mut self) -> &mut U {
        self.uow
    }

    /// Executes a command of `repository` in this unit of work, with the flow's metadata. A
    /// version conflict is returned, not retried: the reaction fails and is retried whole.
    pub async fn execute<A, S>(
        &mut self,
        repository: &Repository<A, S>,
        id: &str,
        command: &A::Command,
    ) -> Result<Executed<A>, ExecuteError<A::Error>>
    where
        A: Aggregate + Send + Sync,
        A::Command: Sync,
        S: EventStore<UnitOfWork = U>,
    {
        let meta = self.flow.metadata();
        repository.execute_in(self.uow, id, command, meta).await
    }

    /// Appends typed events to `stream_id`, encoded with the flow's metadata.
    pub async fn append<E: Event>(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: &[E],
    ) -> Result<AppendResult, StoreError> {
        let meta = self.flow.metadata();
        let encoded = events
            .iter()
            .map(|e| NewEvent::encode(e, "", &meta))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| StoreError::Encode {
                stream_id: stream_id.clone(),
                source,
            })?;
        self.uow.append(stream_id, expected, encoded).await
    }

    /// Writes messages to the outbox, in this unit of work, stamped with the flow
    /// ([`Flow::stamp`]).
    pub async fn send(&mut self, messages: Vec<OutboxMessage>) -> Result<(), StoreError> {
        let stamped = messages.into_iter().map(|m| self.flow.stamp(m)).collect();
        self.uow.enqueue(stamped).await
    }
}
