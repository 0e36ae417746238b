//! Shared reads (ADR 0024, amended): with coalescing on, the stream reads of concurrent commands
//! ([`EventStore::read_stream`](crate::EventStore::read_stream) on the store, not in a unit of
//! work) gathered by a [`Coalescer`](crate::coalesce) and run as one statement; run one by one
//! when that statement fails.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use eventfold_core::{RecordedEvent, StreamId};
use sqlx::PgPool;
use uuid::Uuid;

use super::*;
use crate::coalesce::{BatchWriter, Reply};
use crate::error::StoreError;
use crate::sql::{self, to_i64};

/// One queued read: up to `max` events of a stream from version `from`.
pub(super) struct PgRead {
    pub(super) stream_id: StreamId,
    pub(super) from: u64,
    pub(super) max: u64,
}

/// Runs batches of reads for a [`PgStore`](super::PgStore).
pub(super) struct PgReadBatcher {
    pub(super) pool: PgPool,
    pub(super) sql: Arc<Statements>,
}

/// A row of the batch statement: the read's 1-based index, then the columns of
/// [`sql::EventRow`].
type ReadRow = (
    i64,
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
);

impl BatchWriter for PgReadBatcher {
    type Request = PgRead;
    type Output = Vec<RecordedEvent>;

    const KIND: &'static str = "read";
    const SIZE_METRIC: &'static str = "eventfold_read_batch_size";
    const SPLIT_METRIC: &'static str = "eventfold_read_batch_split_total";
    const ABANDONED: &'static str =
        "reading a stream in a shared read (its reader stopped before answering)";

    fn stream(request: &PgRead) -> &StreamId {
        &request.stream_id
    }

    fn table(&self) -> &str {
        &self.sql.read.events
    }

    /// One read on its own, as without coalescing.
    async fn alone(&self, r: PgRead) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut conn = sql::acquire(&self.pool, &self.sql.read.events).await?;
        read_stream_on(&mut conn, &self.sql.read, &r.stream_id, r.from, r.max).await
    }

    /// Every read of the batch in one statement (`Statements::read_batch`).
    async fn shared(
        &self,
        batch: &[(PgRead, Reply<Vec<RecordedEvent>>)],
    ) -> Result<Vec<Result<Vec<RecordedEvent>, StoreError>>, StoreError> {
        let table = &self.sql.read.events;
        let (mut types, mut ids, mut from, mut max) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (r, _) in batch {
            types.push(r.stream_id.stream_type());
            ids.push(r.stream_id.id());
            from.push(to_i64(r.from.max(1), &r.stream_id)?);
            max.push(i64::try_from(r.max).unwrap_or(i64::MAX));
        }
        let mut conn = sql::acquire(&self.pool, table).await?;
        let rows: Vec<ReadRow> = sqlx::query_as(&self.sql.read_batch)
            .bind(types)
            .bind(ids)
            .bind(from)
            .bind(max)
            .fetch_all(&mut *conn)
            .await
            .map_err(sql::db_err("reading streams", table))?;
        let mut events: Vec<Result<Vec<RecordedEvent>, StoreError>> =
            batch.iter().map(|_| Ok(Vec::new())).collect();
        for (
            ord,
            id,
            version,
            position,
            ty,
            schema,
            payload,
            at,
            source,
            corr,
            cause,
            tenant,
            headers,
        ) in rows
        {
            let index = usize::try_from(ord - 1).unwrap_or(usize::MAX);
            let (Some((r, _)), Some(Ok(read))) = (batch.get(index), events.get_mut(index)) else {
                return Err(StoreError::Corrupt {
                    table: table.clone(),
                    reason: format!(
                        "the shared read returned a row for read {ord} of {}",
                        batch.len()
                    ),
                });
            };
            let row = (
                id, version, position, ty, schema, payload, at, source, corr, cause, tenant,
                headers,
            );
            read.push(sql::recorded(&r.stream_id, row, table)?);
        }
        Ok(events)
    }
}
