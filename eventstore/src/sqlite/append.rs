//! Appends: in the unit of work's `BEGIN IMMEDIATE` transaction, one row per event, the version
//! checked first, inside a savepoint when the append takes several statements, and the outbox
//! rows of the events beside them.

use eventfold_core::{NewEvent, OutboxMessage, StreamId};

use super::statements::EVENTS_PER_INSERT;
use super::*;
use crate::error::{ExpectedVersion, StoreError};
use crate::outbox::{OUTBOX_SLOTS, append_messages};
use crate::sql::unit_of_work::{Savepoint, SavepointOf::Append, savepoint};
use crate::sql::{self, db_err, to_i64, to_u64};
use crate::store::{AppendResult, fill_source, validate_append};
use crate::trace::SentEntry;

impl SqliteUnitOfWork {
    pub(super) async fn append_events(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        // Filled first, so the store's own source is checked too.
        fill_source(&mut events, &self.source);
        validate_append(stream_id, &events)?;
        let current = version_on(&mut self.tx, &self.sql.read, stream_id).await?;
        if !expected.matches(current) {
            return Err(StoreError::VersionConflict {
                stream_id: stream_id.clone(),
                expected,
                actual: Some(current),
            });
        }
        let outbox = append_messages(self.routing.as_deref(), stream_id, current + 1, &events);
        // SQLite has no savepoint-free way to undo part of a statement list: several statements
        // (more events than one insert takes, or outbox rows) insert into a savepoint so that a
        // failed append leaves the unit of work as it was. One statement needs none: SQLite undoes
        // a failed statement's own changes, and keeps the transaction.
        let one_statement = events.len() <= EVENTS_PER_INSERT && outbox.is_empty();
        if !one_statement {
            savepoint(&mut self.tx, Append, Savepoint::Open, &self.sql.events).await?;
        }
        let mut positions = Vec::with_capacity(events.len());
        for (c, chunk) in events.chunks(EVENTS_PER_INSERT).enumerate() {
            let first = current + 1 + (c * EVENTS_PER_INSERT) as u64;
            let mut query = sqlx::query_as(&self.sql.insert_events[chunk.len() - 1]);
            for (i, event) in chunk.iter().enumerate() {
                query = query
                    .bind(event.event_id)
                    .bind(stream_id.stream_type())
                    .bind(stream_id.id())
                    .bind(to_i64(first + i as u64, stream_id)?)
                    .bind(&event.event_type)
                    .bind(i64::from(event.schema_version))
                    .bind(&event.payload)
                    .bind(event.timestamp)
                    .bind(&event.source)
                    .bind(event.correlation_id)
                    .bind(event.causation_id)
                    .bind(&event.tenant_id)
                    .bind(sql::headers_json(&event.headers));
            }
            let inserted: Result<Vec<(i64, i64)>, sqlx::Error> =
                query.fetch_all(&mut *self.tx).await;
            match inserted {
                Ok(mut rows) => {
                    // By version: the order of `RETURNING` rows is not promised.
                    rows.sort_by_key(|(_, version)| *version);
                    for (position, _) in rows {
                        positions.push(to_u64(position, &self.sql.events, "global position")?);
                    }
                }
                Err(e) => {
                    if !one_statement {
                        self.undo_append().await;
                    }
                    return Err(match sql::unique_violation(&e) {
                        Some(c) if c.contains("event_id") => StoreError::DuplicateEventId {
                            stream_id: stream_id.clone(),
                            event_id: self.duplicate_in(chunk).await,
                        },
                        Some(_) => StoreError::VersionConflict {
                            stream_id: stream_id.clone(),
                            expected,
                            actual: None,
                        },
                        None => db_err("appending events", &self.sql.events)(e),
                    });
                }
            }
        }
        if let Err(e) = self.insert_outbox_rows(outbox).await {
            if !one_statement {
                self.undo_append().await;
            }
            return Err(e);
        }
        if !one_statement {
            savepoint(&mut self.tx, Append, Savepoint::Release, &self.sql.events).await?;
        }
        self.wrote_events = true;
        Ok(AppendResult {
            previous_version: current,
            version: current + events.len() as u64,
            positions,
        })
    }

    /// Which event of a chunk refused for a duplicate id is the duplicate (SQLite's error does
    /// not say): one the chunk repeats, or one stored before it.
    async fn duplicate_in(&mut self, chunk: &[NewEvent]) -> uuid::Uuid {
        let mut seen = std::collections::HashSet::new();
        if let Some(e) = chunk.iter().find(|e| !seen.insert(e.event_id)) {
            return e.event_id;
        }
        for e in chunk {
            let stored: Result<Option<i64>, sqlx::Error> =
                sqlx::query_scalar(&self.sql.event_exists)
                    .bind(e.event_id)
                    .fetch_optional(&mut *self.tx)
                    .await;
            if let Ok(Some(_)) = stored {
                return e.event_id;
            }
        }
        chunk.first().map_or_else(uuid::Uuid::nil, |e| e.event_id)
    }

    /// Undoes a failed append and closes its savepoint; the append's error is the one worth
    /// reporting, so these statements' own errors are not.
    async fn undo_append(&mut self) {
        let events = &self.sql.events;
        let _ = savepoint(&mut self.tx, Append, Savepoint::RollBack, events).await;
        let _ = savepoint(&mut self.tx, Append, Savepoint::Release, events).await;
    }

    /// Writes the outbox rows of the application's messages (`uow.enqueue`) and the journal
    /// row of each one of a flow (ADR 0022).
    pub(super) async fn insert_outbox(
        &mut self,
        messages: Vec<OutboxMessage>,
    ) -> Result<(), StoreError> {
        let journal: Vec<SentEntry> = messages
            .iter()
            .filter_map(|m| SentEntry::of(m, &self.source))
            .collect();
        self.insert_outbox_rows(messages).await?;
        let now = eventfold_core::metadata::now_micros();
        for j in journal {
            sqlx::query(&self.sql.journal_sent)
                .bind(j.id)
                .bind(j.correlation_id)
                .bind(j.causation_id)
                .bind(&j.message_type)
                .bind(&j.topic)
                .bind(&j.key)
                .bind(&j.source)
                .bind(now)
                .execute(&mut *self.tx)
                .await
                .map_err(db_err("journaling a sent message", &self.sql.trace.sent))?;
        }
        Ok(())
    }

    /// Writes outbox rows (an append's routed events, whose event is their record, and the
    /// application's messages).
    async fn insert_outbox_rows(&mut self, messages: Vec<OutboxMessage>) -> Result<(), StoreError> {
        let now = eventfold_core::metadata::now_micros();
        for m in messages {
            sqlx::query(&self.sql.insert_outbox)
                .bind(m.id)
                .bind(&m.aggregate_type)
                .bind(&m.aggregate_id)
                .bind(&m.message_type)
                .bind(&m.payload)
                .bind(&m.topic)
                .bind(&m.key)
                .bind(sql::headers_json(&m.headers))
                .bind(OutboxMessage::slot_of(&m.key, OUTBOX_SLOTS) as i32)
                .bind(now)
                .execute(&mut *self.tx)
                .await
                .map_err(db_err("writing an outbox row", &self.sql.outbox))?;
        }
        Ok(())
    }
}
