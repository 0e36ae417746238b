//! What the SQL backends share: row conversion, error mapping, and the code that is the same on
//! PostgreSQL and SQLite, written once over a [`dialect::Dialect`]: migrations ([`migrations`]),
//! stream, snapshot and command reads ([`read`]), the projection store ([`projections`]) and the
//! saga store ([`sagas`]).
//! What only one backend does stays in its folder.

pub(crate) mod dialect;
pub(crate) mod gate;
pub(crate) mod migrations;
pub(crate) mod outbox;
pub(crate) mod projections;
pub(crate) mod read;
pub(crate) mod sagas;
pub(crate) mod store;
#[cfg(test)]
mod tests;
pub(crate) mod trace;
pub(crate) mod unit_of_work;

use chrono::{DateTime, Utc};
use eventfold_core::{Headers, RecordedEvent, StreamId};
use uuid::Uuid;

use crate::error::{StoreError, TransientKind};

pub(crate) use migrations::{Migration, applied_migrations};

/// The tuple of [`EventRow`]'s columns, after some columns of their own.
macro_rules! event_tuple {
    ($($before:ty),*) => {
        (
            $($before,)*
            Uuid,
            i64,
            i64,
            String,
            i32,
            Vec<u8>,
            DateTime<Utc>,
            String,
            Uuid,
            Option<Uuid>,
            Option<String>,
            String,
        )
    };
}

/// The columns of an event row, in the order the backends select them:
/// event_id, stream_version, global_position, event_type, schema_version, payload, recorded_at,
/// source, correlation_id, causation_id, tenant_id, headers (JSON text).
pub(crate) type EventRow = event_tuple!();

/// The column list matching [`EventRow`], with headers as JSON text.
pub(crate) const EVENT_COLUMNS: &str = "event_id, stream_version, global_position, event_type, \
    schema_version, payload, recorded_at, source, correlation_id, causation_id, tenant_id";

pub(crate) fn recorded(
    stream_id: &StreamId,
    row: EventRow,
    table: &str,
) -> Result<RecordedEvent, StoreError> {
    let (
        event_id,
        version,
        position,
        event_type,
        schema_version,
        payload,
        timestamp,
        source,
        correlation_id,
        causation_id,
        tenant_id,
        headers,
    ) = row;
    let corrupt = |reason: String| StoreError::Corrupt {
        table: table.to_owned(),
        reason: format!("event {event_id} of stream {stream_id}: {reason}"),
    };
    let headers: Headers = serde_json::from_str(&headers)
        .map_err(|e| corrupt(format!("headers are not a JSON object of strings: {e}")))?;
    Ok(RecordedEvent {
        event_id,
        event_type,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| corrupt(format!("schema version {schema_version}")))?,
        stream_id: stream_id.clone(),
        stream_version: u64::try_from(version)
            .map_err(|_| corrupt(format!("stream version {version}")))?,
        global_position: u64::try_from(position)
            .map_err(|_| corrupt(format!("global position {position}")))?,
        timestamp,
        source,
        correlation_id,
        causation_id,
        tenant_id,
        headers,
        payload,
    })
}

/// Maps a driver error to [`StoreError::Transient`] when a new attempt may not meet it (a
/// deadlock, a serialization failure, a lost connection, a pool timeout, SQLite busy: see
/// [`TransientKind::of_sqlx`]), else to [`StoreError::Database`]. Every SQL error of both
/// backends goes through here.
pub(crate) fn db_err(
    operation: &'static str,
    table: &str,
) -> impl FnOnce(sqlx::Error) -> StoreError {
    let table = table.to_owned();
    move |e| match TransientKind::of_sqlx(&e) {
        Some(kind) => StoreError::Transient {
            kind,
            operation,
            table,
            source: Box::new(e),
        },
        None => StoreError::Database {
            operation,
            table,
            source: Box::new(e),
        },
    }
}

/// A version or count as a SQL `BIGINT`.
pub(crate) fn to_i64(value: u64, stream_id: &StreamId) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt {
        table: "events".to_owned(),
        reason: format!("version {value} of stream {stream_id} does not fit a BIGINT"),
    })
}

/// A `BIGINT` read back as a version.
pub(crate) fn to_u64(value: i64, table: &str, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        table: table.to_owned(),
        reason: format!("negative {what}: {value}"),
    })
}

/// Headers as JSON text.
pub(crate) fn headers_json(headers: &Headers) -> String {
    if headers.is_empty() {
        return "{}".to_owned();
    }
    // A map of strings always serializes.
    serde_json::to_string(headers).unwrap_or_else(|_| "{}".to_owned())
}

/// The name of the unique constraint a database error violated, if it is one.
pub(crate) fn unique_violation(e: &sqlx::Error) -> Option<String> {
    let db = e.as_database_error()?;
    if !matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation) {
        return None;
    }
    Some(
        db.constraint()
            .map(str::to_owned)
            .unwrap_or_else(|| db.message().to_owned()),
    )
}

/// A snapshot row: version, snapshot_version, state, taken_at.
pub(crate) type SnapshotRow = (i64, i64, Vec<u8>, DateTime<Utc>);

pub(crate) fn snapshot(
    stream_id: &StreamId,
    (version, snapshot_version, state, taken_at): SnapshotRow,
    table: &str,
) -> Result<crate::store::Snapshot, StoreError> {
    Ok(crate::store::Snapshot {
        stream_id: stream_id.clone(),
        version: to_u64(version, table, "snapshot version")?,
        snapshot_version: u32::try_from(snapshot_version).map_err(|_| StoreError::Corrupt {
            table: table.to_owned(),
            reason: format!("snapshot_version {snapshot_version} of stream {stream_id}"),
        })?,
        state,
        taken_at,
    })
}

/// A command row: stream_type, stream_id, version_before, version_after, recorded_at.
pub(crate) type CommandRow = (String, String, i64, i64, DateTime<Utc>);

pub(crate) fn command(
    command_id: Uuid,
    (stream_type, id, before, after, recorded_at): CommandRow,
    table: &str,
) -> Result<crate::store::CommandRecord, StoreError> {
    Ok(crate::store::CommandRecord {
        command_id,
        stream_id: StreamId::new(stream_type, id)?,
        version_before: to_u64(before, table, "version_before")?,
        version_after: to_u64(after, table, "version_after")?,
        recorded_at,
    })
}

/// A log row: commit key, stream type, stream id, then the columns of [`EventRow`].
pub(crate) type LogRow = event_tuple!(i64, String, String);

/// Turns log rows into a batch. `end` is the checkpoint to use when the read reached the end of
/// what is readable (fewer rows than asked for).
pub(crate) fn log_batch(
    rows: Vec<LogRow>,
    after: crate::log::Checkpoint,
    max_count: usize,
    end: crate::log::Checkpoint,
    held_back: bool,
    table: &str,
) -> Result<crate::log::LogBatch, StoreError> {
    use crate::log::{Checkpoint, LogBatch, LogEvent};
    let reached_end = rows.len() < max_count;
    let mut events = Vec::with_capacity(rows.len());
    for (key, stream_type, id, e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11) in rows {
        let stream_id = StreamId::new(stream_type, id)?;
        let event = recorded(
            &stream_id,
            (e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11),
            table,
        )?;
        let checkpoint = Checkpoint::new(to_u64(key, table, "commit key")?, event.global_position);
        events.push(LogEvent { checkpoint, event });
    }
    let last = events.last().map_or(after, |e| e.checkpoint);
    Ok(LogBatch {
        checkpoint: if reached_end { last.max(end) } else { last },
        events,
        reached_end,
        held_back: reached_end && held_back,
    })
}

/// A filter's lists as JSON arrays (SQLite) or `None` for "all".
#[cfg(feature = "sqlite")]
pub(crate) fn filter_list(list: &[String]) -> Option<String> {
    (!list.is_empty()).then(|| serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned()))
}

/// The tuple of [`OutboxDbRow`]'s columns, with more columns after them.
macro_rules! outbox_tuple {
    ($($more:ty),*) => {
        (
            i64,
            Uuid,
            String,
            String,
            String,
            Vec<u8>,
            String,
            String,
            String,
            i32,
            DateTime<Utc>,
            i32,
            Option<String>,
            Option<DateTime<Utc>>,
            $($more),*
        )
    };
}

/// An outbox row: seq, id, aggregatetype, aggregateid, type, payload, topic, key, headers (JSON
/// text), slot, created_at, attempts, last_error.
pub(crate) type OutboxDbRow = outbox_tuple!();

pub(crate) fn outbox_row(
    row: OutboxDbRow,
    table: &str,
) -> Result<crate::outbox::OutboxRow, StoreError> {
    let (
        seq,
        id,
        aggregate_type,
        aggregate_id,
        message_type,
        payload,
        topic,
        key,
        headers,
        slot,
        created_at,
        attempts,
        last_error,
        next_attempt_at,
    ) = row;
    let corrupt = |reason: String| StoreError::Corrupt {
        table: table.to_owned(),
        reason: format!("outbox row {seq} ({id}): {reason}"),
    };
    Ok(crate::outbox::OutboxRow {
        seq: to_u64(seq, table, "outbox seq")?,
        message: eventfold_core::OutboxMessage {
            id,
            topic,
            key,
            aggregate_type,
            aggregate_id,
            message_type,
            payload,
            headers: serde_json::from_str(&headers)
                .map_err(|e| corrupt(format!("headers: {e}")))?,
        },
        slot: u32::try_from(slot).map_err(|_| corrupt(format!("slot {slot}")))?,
        created_at,
        attempts: u32::try_from(attempts).map_err(|_| corrupt(format!("attempts {attempts}")))?,
        last_error,
        next_attempt_at,
    })
}

/// The columns of [`OutboxDbRow`] (headers as text).
pub(crate) const OUTBOX_COLUMNS: &str = "seq, id, aggregatetype, aggregateid, type, payload, topic, key, headers, slot, created_at, attempts, last_error, next_attempt_at";

/// A dead-letter row: the outbox columns, then error and parked_at.
pub(crate) type DeadDbRow = outbox_tuple!(String, DateTime<Utc>);

pub(crate) fn dead_letter(
    row: DeadDbRow,
    table: &str,
) -> Result<crate::outbox::DeadLetter, StoreError> {
    let outbox = (
        row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8, row.9, row.10, row.11,
        row.12, row.13,
    );
    Ok(crate::outbox::DeadLetter {
        row: outbox_row(outbox, table)?,
        error: row.14,
        parked_at: row.15,
    })
}

/// A parked consumer message: message_id, topic, partition, offset, key, type, payload, headers
/// (JSON text), attempts, error, parked_at.
pub(crate) type ParkedRow = (
    Uuid,
    String,
    i64,
    i64,
    String,
    String,
    Vec<u8>,
    String,
    i64,
    String,
    DateTime<Utc>,
);

pub(crate) fn parked(
    consumer: &str,
    row: ParkedRow,
    table: &str,
) -> Result<crate::inbox::ParkedMessage, StoreError> {
    let (
        message_id,
        topic,
        partition,
        offset,
        key,
        message_type,
        payload,
        headers,
        attempts,
        error,
        parked_at,
    ) = row;
    let corrupt = |reason: String| StoreError::Corrupt {
        table: table.to_owned(),
        reason: format!("parked message {message_id} of {consumer}: {reason}"),
    };
    Ok(crate::inbox::ParkedMessage {
        consumer: consumer.to_owned(),
        message_id,
        topic,
        partition: u32::try_from(partition)
            .map_err(|_| corrupt(format!("partition {partition}")))?,
        offset: to_u64(offset, table, "offset")?,
        key,
        message_type,
        payload,
        headers: serde_json::from_str(&headers).map_err(|e| corrupt(format!("headers: {e}")))?,
        attempts: u32::try_from(attempts).map_err(|_| corrupt(format!("attempts {attempts}")))?,
        error,
        parked_at,
    })
}

/// A pooled connection, for reading outside a unit of work.
pub(crate) async fn acquire<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    table: &str,
) -> Result<sqlx::pool::PoolConnection<DB>, StoreError> {
    pool.acquire()
        .await
        .map_err(db_err("acquiring a connection", table))
}

/// Starts a transaction on a task of its own, so that cancelling the caller (a timeout, an
/// aborted task) cannot leave a pooled connection inside a transaction nobody owns.
///
/// sqlx's `begin` has an await point after the database ran `BEGIN` and before the
/// `Transaction` exists (SQLite checks the custom statement's effect there); a caller dropped at
/// that point returns the connection to the pool still in the transaction. On SQLite that
/// transaction holds the write lock (`BEGIN IMMEDIATE`) and stops every other writer. Run on its
/// own task the `begin` always completes; if the caller is gone, the `Transaction` is dropped
/// and rolls back as usual.
pub(crate) async fn begin_owned<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    statement: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    let pool = pool.clone();
    let begin = tokio::spawn(async move {
        match statement {
            Some(statement) => pool.begin_with(statement).await,
            None => pool.begin().await,
        }
    });
    match begin.await {
        Ok(result) => result,
        Err(join) => Err(sqlx::Error::Io(std::io::Error::other(format!(
            "the task starting a transaction ended early: {join}"
        )))),
    }
}
