//! The [`TraceStore`](crate::trace::TraceStore) of the SQL backends, written once: the six
//! reads of one correlation id over a [`Dialect`] ([`TraceSql`]), their rows' conversion to
//! [`TraceRecord`]s, and the trait's implementation stamped for each store by [`trace_store!`]
//! (see [`super::read`] for why a macro).
//!
//! Events, sent messages and received messages are found through an index on their
//! correlation id (migrations `0008_trace` / `0007_trace`); parked messages and dead letters,
//! which are few, by the correlation header of their JSON headers ([`Dialect::json_field`]).

use chrono::{DateTime, Utc};
use eventfold_core::Headers;
use eventfold_core::outbox::headers;
use eventfold_core::trace::{TraceKind, TraceRecord};
use uuid::Uuid;

use super::dialect::Dialect;
use crate::naming::Naming;
use crate::trace::{message_subject, timer_id, timer_subject};

/// The trace reads of one naming, in one dialect. Each takes the correlation id as `$1`
/// (the dead-letter and parked reads as text).
pub(crate) struct TraceSql {
    /// `{prefix}sent`, for errors.
    pub sent: String,
    /// `{prefix}events`, for errors.
    pub events: String,
    /// `{prefix}inbox`, for errors.
    pub inbox: String,
    /// `{prefix}inbox_dead`, for errors.
    pub inbox_dead: String,
    /// `{prefix}outbox_dead`, for errors.
    pub outbox_dead: String,
    /// `{prefix}saga_timers`, for errors.
    pub timers: String,
    pub read_events: String,
    pub read_sent: String,
    pub read_received: String,
    pub read_parked: String,
    pub read_dead: String,
    pub read_timers: String,
}

/// `event_id, event_type, stream_type, stream_id, stream_version, recorded_at, source,
/// causation_id`.
pub(crate) type EventTraceRow = (
    Uuid,
    String,
    String,
    String,
    i64,
    DateTime<Utc>,
    String,
    Option<Uuid>,
);
/// `id, type, topic, key, source, sent_at, causation_id`.
pub(crate) type SentRow = (
    Uuid,
    String,
    String,
    String,
    String,
    DateTime<Utc>,
    Option<Uuid>,
);
/// `consumer, message_id, message_type, topic, causation_id, sent_by, received_by,
/// processed_at`.
pub(crate) type ReceivedRow = (
    String,
    Uuid,
    Option<String>,
    Option<String>,
    Option<Uuid>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
);
/// `consumer, message_id, type, topic, headers (JSON text), error, parked_at`.
pub(crate) type ParkedTraceRow = (String, Uuid, String, String, String, String, DateTime<Utc>);
/// `id, type, topic, key, headers (JSON text), error, parked_at`.
pub(crate) type DeadRow = (Uuid, String, String, String, String, String, DateTime<Utc>);
/// `saga_id, saga_type, step, attempt, kind, due_at`.
pub(crate) type TimerTraceRow = (Uuid, String, String, i64, String, DateTime<Utc>);

impl TraceSql {
    pub(crate) fn new<D: Dialect>(naming: &Naming) -> Self {
        let events = naming.table("events");
        let sent = naming.table("sent");
        let inbox = naming.table("inbox");
        let inbox_dead = naming.table("inbox_dead");
        let outbox_dead = naming.table("outbox_dead");
        let sagas = naming.table("sagas");
        let timers = naming.table("saga_timers");
        let p = D::placeholders;
        let correlation = |table: &str| D::json_field(table, headers::CORRELATION_ID);
        Self {
            read_events: p(&format!(
                "SELECT event_id, event_type, stream_type, stream_id, stream_version, recorded_at, source, \
                 causation_id FROM {events} WHERE correlation_id = $1 ORDER BY global_position"
            )),
            read_sent: p(&format!(
                "SELECT id, type, topic, key, source, sent_at, causation_id FROM {sent} \
                 WHERE correlation_id = $1"
            )),
            read_received: p(&format!(
                "SELECT consumer, message_id, message_type, topic, causation_id, sent_by, received_by, \
                 processed_at FROM {inbox} WHERE correlation_id = $1"
            )),
            read_parked: p(&format!(
                "SELECT consumer, message_id, type, topic, {}, error, parked_at FROM {inbox_dead} \
                 WHERE {} = $1",
                D::text("headers"),
                correlation("headers")
            )),
            read_dead: p(&format!(
                "SELECT id, type, topic, key, {}, error, parked_at FROM {outbox_dead} WHERE {} = $1",
                D::text("headers"),
                correlation("headers")
            )),
            read_timers: p(&format!(
                "SELECT t.saga_id, t.saga_type, t.step, {}, t.kind, t.due_at FROM {timers} t \
                 JOIN {sagas} s ON s.saga_id = t.saga_id WHERE s.correlation_id = $1",
                D::int8("t.attempt")
            )),
            sent,
            events,
            inbox,
            inbox_dead,
            outbox_dead,
            timers,
        }
    }
}

/// The records of the rows the six reads returned, in time order. `service` names the store's
/// own service, for rows that do not say which service received them.
pub(crate) struct TraceRows {
    pub events: Vec<EventTraceRow>,
    pub sent: Vec<SentRow>,
    pub received: Vec<ReceivedRow>,
    pub parked: Vec<ParkedTraceRow>,
    pub dead: Vec<DeadRow>,
    pub timers: Vec<TimerTraceRow>,
}

impl TraceRows {
    pub(crate) fn into_records(self, correlation_id: Uuid, service: &str) -> Vec<TraceRecord> {
        let service_or = |s: Option<String>| {
            s.filter(|s| !s.is_empty())
                .unwrap_or_else(|| service.to_owned())
        };
        // Every record, with neither sender nor error (the rows that have one add it).
        let record = |kind, id, causation_id, name, service, at, subject| TraceRecord {
            kind,
            id,
            correlation_id,
            causation_id,
            name,
            service,
            at,
            subject,
            from_service: None,
            error: None,
        };
        let mut records = Vec::new();
        // Events and sent messages: their own source is their service.
        let events = self.events.into_iter().map(
            |(id, name, stream_type, stream_id, version, at, source, cause)| {
                let subject = format!("{stream_type}-{stream_id} v{version}");
                (TraceKind::Event, id, name, source, at, cause, subject)
            },
        );
        let sent = self
            .sent
            .into_iter()
            .map(|(id, name, topic, key, source, at, cause)| {
                let subject = message_subject(&topic, &key);
                (TraceKind::Sent, id, name, source, at, cause, subject)
            });
        for (kind, id, name, service, at, cause, subject) in events.chain(sent) {
            records.push(record(kind, id, cause, name, service, at, subject));
        }
        for (consumer, id, name, topic, cause, sent_by, received_by, at) in self.received {
            let subject = match topic {
                Some(topic) => format!("{consumer} <- {topic}"),
                None => consumer,
            };
            let (name, service) = (name.unwrap_or_default(), service_or(received_by));
            records.push(TraceRecord {
                from_service: sent_by,
                ..record(TraceKind::Received, id, cause, name, service, at, subject)
            });
        }
        // Parked messages and dead letters: the flow is in their headers.
        let parked = self
            .parked
            .into_iter()
            .map(|(consumer, id, name, topic, json, error, at)| {
                let subject = format!("{consumer} <- {topic}");
                (TraceKind::Parked, id, name, json, error, at, subject)
            });
        let dead = self
            .dead
            .into_iter()
            .map(|(id, name, topic, key, json, error, at)| {
                let subject = message_subject(&topic, &key);
                (TraceKind::DeadLetter, id, name, json, error, at, subject)
            });
        for (kind, id, name, json, error, at, subject) in parked.chain(dead) {
            let headers: Headers = serde_json::from_str(&json).unwrap_or_default();
            let (_, cause) = crate::trace::flow_of(&headers);
            let sender = headers.get(headers::SOURCE).cloned();
            // This service received a parked message from its sender; a dead letter has no
            // receiver, its sender is the record's service.
            let (service, from_service) = match kind {
                TraceKind::DeadLetter => (service_or(sender), None),
                _ => (service.to_owned(), sender),
            };
            records.push(TraceRecord {
                from_service,
                error: Some(error),
                ..record(kind, id, cause, name, service, at, subject)
            });
        }
        for (saga_id, saga_type, step, attempt, kind, at) in self.timers {
            let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
            let id = timer_id(saga_id, &step, attempt, &kind);
            let subject = timer_subject(&saga_type, saga_id, &step, attempt);
            let own = service.to_owned();
            records.push(record(TraceKind::Timer, id, None, kind, own, at, subject));
        }
        crate::trace::sort_records(&mut records);
        records
    }
}

/// Stamps `impl TraceStore for $store` (whose statements have a [`TraceSql`] named `trace`):
/// the six reads on one pooled connection, then [`TraceRows::into_records`].
macro_rules! trace_store {
    ($store:ty) => {
        impl $crate::trace::TraceStore for $store {
            async fn trace(
                &self,
                correlation_id: uuid::Uuid,
            ) -> Result<Vec<eventfold_core::trace::TraceRecord>, $crate::error::StoreError> {
                use $crate::sql::db_err;
                let sql = &self.sql.trace;
                let text = correlation_id.to_string();
                let mut conn = self
                    .pool
                    .acquire()
                    .await
                    .map_err(db_err("reading the trace of a flow", &sql.events))?;
                // One read: its statement, its parameter, the table it names on failure.
                macro_rules! read {
                    ($statement:ident, $param:expr, $table:ident) => {
                        sqlx::query_as(&sql.$statement)
                            .bind($param)
                            .fetch_all(&mut *conn)
                            .await
                            .map_err(db_err("reading the trace of a flow", &sql.$table))?
                    };
                }
                let rows = $crate::sql::trace::TraceRows {
                    events: read!(read_events, correlation_id, events),
                    sent: read!(read_sent, correlation_id, sent),
                    received: read!(read_received, correlation_id, inbox),
                    parked: read!(read_parked, &text, inbox_dead),
                    dead: read!(read_dead, &text, outbox_dead),
                    timers: read!(read_timers, correlation_id, timers),
                };
                Ok(rows.into_records(correlation_id, $crate::store::EventStore::source(self)))
            }
        }
    };
}
pub(crate) use trace_store;
