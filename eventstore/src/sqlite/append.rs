//! Appends: in the unit of work's `BEGIN IMMEDIATE` transaction, one row per event, the version
//! checked first, inside a savepoint when the append takes several statements, and the outbox
//! rows of the events beside them.

use eventfold_core::{NewEvent, OutboxMessage, StreamId};
use sqlx::SqliteConnection;

use super::statements::EVENTS_PER_INSERT;
use super::*;
use crate::error::{ExpectedVersion, StoreError};
use crate::outbox::{OUTBOX_SLOTS, append_messages};
use crate::sql::unit_of_work::{Savepoint, SavepointOf::Append, savepoint};
use crate::sql::{self, db_err, to_i64, to_u64};
use crate::store::{AppendResult, ready_to_append};
use crate::trace::SentEntry;

impl SqliteUnitOfWork {
    pub(super) async fn append_events(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        ready_to_append(stream_id, &mut events, &self.source)?;
        let current = version_before(&mut self.tx, &self.sql, stream_id, expected).await?;
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
            let inserted = insert_chunk(&mut self.tx, &self.sql, stream_id, first, chunk).await;
            let failed = match inserted {
                Ok(Inserted::Rows(rows)) => {
                    positions.extend(rows);
                    continue;
                }
                Ok(Inserted::Moved) => None,
                Err(e) => Some(e),
            };
            if !one_statement {
                self.undo_append().await;
            }
            return Err(
                chunk_error(&mut self.tx, &self.sql, stream_id, expected, chunk, failed).await,
            );
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

/// The version an append numbers its events after: the one it expects exactly (the insert
/// checks it), or for `Any` the stream's version read now.
async fn version_before(
    conn: &mut SqliteConnection,
    sql: &Statements,
    stream_id: &StreamId,
    expected: ExpectedVersion,
) -> Result<u64, StoreError> {
    match expected.exact() {
        Some(v) => Ok(v),
        None => version_on(conn, &sql.read, stream_id).await,
    }
}

/// What one checked insert of a chunk of events did.
enum Inserted {
    /// The events are stored: their global positions, in version order.
    Rows(Vec<u64>),
    /// Nothing: the stream was not at the version before the chunk's first.
    Moved,
}

/// Inserts `chunk` (at most [`EVENTS_PER_INSERT`] events) at versions `first`, `first + 1`, ...
/// in one statement, which inserts nothing unless the stream is at `first - 1`.
async fn insert_chunk(
    conn: &mut SqliteConnection,
    sql: &Statements,
    stream_id: &StreamId,
    first: u64,
    chunk: &[NewEvent],
) -> Result<Inserted, sqlx::Error> {
    let version = |v: u64| to_i64(v, stream_id).map_err(|e| sqlx::Error::Encode(Box::new(e)));
    let mut query = sqlx::query(&sql.insert_events[chunk.len() - 1]);
    for (i, event) in chunk.iter().enumerate() {
        query = query
            .bind(event.event_id)
            .bind(stream_id.stream_type())
            .bind(stream_id.id())
            .bind(version(first + i as u64)?)
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
    let done = query
        .bind(stream_id.stream_type())
        .bind(stream_id.id())
        .bind(version(first - 1)?)
        .execute(conn)
        .await?;
    let count = chunk.len() as u64;
    match done.rows_affected() {
        0 => Ok(Inserted::Moved),
        // One statement under the write lock, in version order, with AUTOINCREMENT: the rows
        // took consecutive rowids, the last of which is the connection's last one.
        n if n == count => {
            let last = to_u64(done.last_insert_rowid(), &sql.events, "global position")
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            Ok(Inserted::Rows((last + 1 - count..=last).collect()))
        }
        n => Err(sqlx::Error::Protocol(format!(
            "an insert of {count} events into {} stored {n}",
            sql.events
        ))),
    }
}

impl SqliteStore {
    /// Can `events` be appended to `stream_id` outside a unit of work, in one autocommit
    /// statement ([`append_alone`](Self::append_alone))? When they fit one insert and no
    /// outbox row is routed from them.
    pub(super) fn appends_alone(&self, stream_id: &StreamId, events: &[NewEvent]) -> bool {
        events.len() <= EVENTS_PER_INSERT
            && self.routing.as_deref().is_none_or(|routing| {
                events.iter().all(|e| {
                    routing
                        .topic(&e.event_type, stream_id.stream_type())
                        .is_none()
                })
            })
    }

    /// An append outside a unit of work whose events fit one insert and route no outbox row:
    /// one autocommit statement on a pooled connection, in the writer's turn through the gate,
    /// that checks the version and inserts (a transaction would add `BEGIN`, the version read
    /// and `COMMIT`, three more hops to the driver's worker thread). `Any` reads the version
    /// first and runs again, a few times, if another process's write took it in between.
    pub(super) async fn append_alone(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        ready_to_append(stream_id, &mut events, &self.source)?;
        let table = &self.sql.events;
        let _turn = self.gate.enter("appending events", table).await?;
        let mut conn = sql::acquire(&self.pool, table).await?;
        for _ in 0..ANY_ATTEMPTS {
            let current = version_before(&mut conn, &self.sql, stream_id, expected).await?;
            match insert_chunk(&mut conn, &self.sql, stream_id, current + 1, &events).await {
                Ok(Inserted::Rows(positions)) => {
                    self.appended.send_modify(|n| *n += 1);
                    return Ok(AppendResult {
                        previous_version: current,
                        version: current + events.len() as u64,
                        positions,
                    });
                }
                Ok(Inserted::Moved) if expected.exact().is_none() => {}
                Ok(Inserted::Moved) => {
                    return Err(chunk_error(
                        &mut conn, &self.sql, stream_id, expected, &events, None,
                    )
                    .await);
                }
                Err(e) => {
                    return Err(chunk_error(
                        &mut conn,
                        &self.sql,
                        stream_id,
                        expected,
                        &events,
                        Some(e),
                    )
                    .await);
                }
            }
        }
        Err(StoreError::VersionConflict {
            stream_id: stream_id.clone(),
            expected,
            actual: None,
        })
    }
}

/// The error of a chunk of an append that [`insert_chunk`] did not store: `failed` is the
/// statement's error, `None` when it inserted nothing because the stream had moved.
async fn chunk_error(
    conn: &mut SqliteConnection,
    sql: &Statements,
    stream_id: &StreamId,
    expected: ExpectedVersion,
    chunk: &[NewEvent],
    failed: Option<sqlx::Error>,
) -> StoreError {
    let Some(e) = failed else {
        // The stream is not at the version expected: which version it is at.
        return StoreError::VersionConflict {
            stream_id: stream_id.clone(),
            expected,
            actual: version_on(conn, &sql.read, stream_id).await.ok(),
        };
    };
    match sql::unique_violation(&e) {
        Some(c) if c.contains("event_id") => StoreError::DuplicateEventId {
            stream_id: stream_id.clone(),
            event_id: duplicate_in(conn, sql, chunk).await,
        },
        Some(_) => StoreError::VersionConflict {
            stream_id: stream_id.clone(),
            expected,
            actual: None,
        },
        None => db_err("appending events", &sql.events)(e),
    }
}

/// Which event of a chunk refused for a duplicate id is the duplicate (SQLite's error does not
/// say): one the chunk repeats, or one stored before it.
async fn duplicate_in(
    conn: &mut SqliteConnection,
    sql: &Statements,
    chunk: &[NewEvent],
) -> uuid::Uuid {
    let mut seen = std::collections::HashSet::new();
    if let Some(e) = chunk.iter().find(|e| !seen.insert(e.event_id)) {
        return e.event_id;
    }
    for e in chunk {
        let stored: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(&sql.event_exists)
            .bind(e.event_id)
            .fetch_optional(&mut *conn)
            .await;
        if let Ok(Some(_)) = stored {
            return e.event_id;
        }
    }
    chunk.first().map_or_else(uuid::Uuid::nil, |e| e.event_id)
}

/// How many times an `Any` append outside a unit of work reads the version and inserts when
/// other processes' writes keep taking the version in between.
const ANY_ATTEMPTS: usize = 16;
