//! The [`TraceStore`] of the memory store: the committed events, the journal of sent messages,
//! the inbox's entries, parked messages, dead letters and pending timers of one flow.

use chrono::{DateTime, Utc};
use eventfold_core::outbox::headers;
use eventfold_core::trace::{TraceKind, TraceRecord};
use uuid::Uuid;

use super::store::MemoryStore;
use crate::error::StoreError;
use crate::trace::{
    InboxEntry, TraceStore, flow_of, message_subject, sort_records, timer_id, timer_subject,
};

/// What the inbox keeps of a received message.
#[derive(Debug, Clone)]
pub(super) struct Received {
    pub consumer: String,
    pub entry: InboxEntry,
    pub received_by: String,
    pub at: DateTime<Utc>,
}

impl TraceStore for MemoryStore {
    async fn trace(&self, correlation_id: Uuid) -> Result<Vec<TraceRecord>, StoreError> {
        let state = self.lock();
        let record =
            |kind, id, causation_id, name: &str, service: &str, at, subject: String| TraceRecord {
                kind,
                id,
                correlation_id,
                causation_id,
                name: name.to_owned(),
                service: service.to_owned(),
                at,
                subject,
                from_service: None,
                error: None,
            };
        let mut records: Vec<TraceRecord> = state
            .log
            .values()
            .filter(|e| e.correlation_id == correlation_id)
            .map(|e| {
                record(
                    TraceKind::Event,
                    e.event_id,
                    e.causation_id,
                    &e.event_type,
                    &e.source,
                    e.timestamp,
                    format!("{} v{}", e.stream_id, e.stream_version),
                )
            })
            .collect();
        for (sent, at) in state
            .sent
            .iter()
            .filter(|(s, _)| s.correlation_id == correlation_id)
        {
            records.push(record(
                TraceKind::Sent,
                sent.id,
                sent.causation_id,
                &sent.message_type,
                &sent.source,
                *at,
                message_subject(&sent.topic, &sent.key),
            ));
        }
        for r in state
            .received
            .iter()
            .filter(|r| r.entry.correlation_id == Some(correlation_id))
        {
            let subject = match &r.entry.topic {
                Some(topic) => format!("{} <- {topic}", r.consumer),
                None => r.consumer.clone(),
            };
            records.push(TraceRecord {
                from_service: r.entry.sent_by.clone(),
                ..record(
                    TraceKind::Received,
                    r.entry.message_id,
                    r.entry.causation_id,
                    r.entry.message_type.as_deref().unwrap_or_default(),
                    &r.received_by,
                    r.at,
                    subject,
                )
            });
        }
        for p in &state.parked {
            let (correlation, causation) = flow_of(&p.headers);
            if correlation != Some(correlation_id) {
                continue;
            }
            records.push(TraceRecord {
                from_service: p.headers.get(headers::SOURCE).cloned(),
                error: Some(p.error.clone()),
                ..record(
                    TraceKind::Parked,
                    p.message_id,
                    causation,
                    &p.message_type,
                    &self.source,
                    p.parked_at,
                    format!("{} <- {}", p.consumer, p.topic),
                )
            });
        }
        for d in &state.dead {
            let (correlation, causation) = flow_of(&d.row.message.headers);
            if correlation != Some(correlation_id) {
                continue;
            }
            let m = &d.row.message;
            let service = m
                .headers
                .get(headers::SOURCE)
                .map_or(&*self.source, String::as_str);
            records.push(TraceRecord {
                error: Some(d.error.clone()),
                ..record(
                    TraceKind::DeadLetter,
                    m.id,
                    causation,
                    &m.message_type,
                    service,
                    d.parked_at,
                    message_subject(&m.topic, &m.key),
                )
            });
        }
        for t in state.sagas.timers_of_flow(correlation_id) {
            records.push(record(
                TraceKind::Timer,
                timer_id(t.saga_id, &t.step, t.attempt, &t.kind),
                None,
                &t.kind,
                &self.source,
                t.due_at,
                timer_subject(&t.saga_type, t.saga_id, &t.step, t.attempt),
            ));
        }
        drop(state);
        sort_records(&mut records);
        Ok(records)
    }
}
