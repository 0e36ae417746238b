//! Shared reads (ADR 0024, amended): with coalescing on, the stream reads of concurrent commands
//! ([`EventStore::read_stream`](crate::EventStore::read_stream) on the store, not in a unit of
//! work) gathered by a [`Coalescer`](crate::coalesce) and run as one statement; run one by one
//! when that statement fails.

use std::sync::Arc;

use eventfold_core::{RecordedEvent, StreamId};
use sqlx::PgPool;

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
        read_stream_pooled(&self.pool, &self.sql.read, &r.stream_id, r.from, r.max).await
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
        // Rows of the log's shape, the read's 1-based index in place of the commit key.
        let rows: Vec<sql::LogRow> = sqlx::query_as(&self.sql.read_batch)
            .bind(types)
            .bind(ids)
            .bind(from)
            .bind(max)
            .fetch_all(&mut *conn)
            .await
            .map_err(sql::db_err("reading streams", table))?;
        let mut events: Vec<Result<Vec<RecordedEvent>, StoreError>> =
            batch.iter().map(|_| Ok(Vec::new())).collect();
        for (ord, stype, sid, e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11) in rows {
            let index = usize::try_from(ord - 1).unwrap_or(usize::MAX);
            let read = batch.get(index).map(|(r, _)| &r.stream_id);
            let (Some(stream_id), Some(Ok(found))) = (read, events.get_mut(index)) else {
                return Err(StoreError::Corrupt {
                    table: table.clone(),
                    reason: format!(
                        "the shared read returned a row for read {ord} of {}",
                        batch.len()
                    ),
                });
            };
            if stream_id.stream_type() != stype || stream_id.id() != sid {
                return Err(StoreError::Corrupt {
                    table: table.clone(),
                    reason: format!(
                        "the shared read of {stream_id} returned an event of {stype}-{sid}"
                    ),
                });
            }
            let row = (e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11);
            found.push(sql::recorded(stream_id, row, table)?);
        }
        Ok(events)
    }
}
