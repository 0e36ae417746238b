//! Shared commits (ADR 0024): the appends a [`Coalescer`](crate::coalesce) gathered, written by
//! one `BEGIN IMMEDIATE` transaction, each in its own savepoint (as every SQLite append is); when
//! the transaction fails as a whole they are written again one by one.

use eventfold_core::{NewEvent, StreamId};
use tracing::Instrument;

use super::*;
use crate::coalesce::{BatchWriter, Reply};
use crate::error::{ExpectedVersion, StoreError};
use crate::store::{AppendResult, EventStore, UnitOfWork};

/// One queued append.
pub(super) struct SqliteAppend {
    pub(super) stream_id: StreamId,
    pub(super) expected: ExpectedVersion,
    pub(super) events: Vec<NewEvent>,
}

/// Writes batches of appends for a [`SqliteStore`] (a copy of it without coalescing).
pub(super) struct SqliteBatchWriter {
    pub(super) store: SqliteStore,
}

impl BatchWriter for SqliteBatchWriter {
    type Request = SqliteAppend;

    fn stream(request: &SqliteAppend) -> &StreamId {
        &request.stream_id
    }

    fn table(&self) -> &str {
        &self.store.sql.events
    }

    async fn write(&self, batch: Vec<(SqliteAppend, Reply)>) {
        let span = tracing::debug_span!("eventfold.append_batch", appends = batch.len());
        self.write_batch(batch).instrument(span).await
    }
}

impl SqliteBatchWriter {
    async fn write_batch(&self, batch: Vec<(SqliteAppend, Reply)>) {
        let size = batch.len();
        if size > 1 {
            match self.shared(&batch).await {
                Ok(results) => {
                    metrics::histogram!("eventfold_append_batch_size").record(size as f64);
                    for ((_, reply), result) in batch.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                    return;
                }
                Err(e) => {
                    metrics::counter!("eventfold_append_batch_split_total").increment(1);
                    tracing::debug!(error = %e, appends = size, "shared append failed as a whole; writing its appends one by one");
                }
            }
        }
        for (a, reply) in batch {
            let result = self
                .store
                .append_alone(&a.stream_id, a.expected, a.events)
                .await;
            let _ = reply.send(result);
        }
    }

    /// Every append of the batch in one transaction: each append's result (a failed append
    /// rolled back to its savepoint), or the error that stopped the transaction.
    async fn shared(
        &self,
        batch: &[(SqliteAppend, Reply)],
    ) -> Result<Vec<Result<AppendResult, StoreError>>, StoreError> {
        let mut uow = self.store.begin().await?;
        let mut results = Vec::with_capacity(batch.len());
        for (a, _) in batch {
            let result = uow.append(&a.stream_id, a.expected, a.events.clone()).await;
            // A failure other than the append's own (a busy database, a lost connection) may
            // have broken the transaction: give up on sharing it.
            if let Err(e) = &result {
                if !matches!(
                    e,
                    StoreError::VersionConflict { .. }
                        | StoreError::DuplicateEventId { .. }
                        | StoreError::EmptyAppend { .. }
                        | StoreError::InvalidEvent { .. }
                        | StoreError::InvalidStreamId(_)
                ) {
                    let _ = uow.rollback().await;
                    return Err(StoreError::Database {
                        operation: "appending events in a shared commit",
                        table: self.store.sql.events.clone(),
                        source: e.to_string().into(),
                    });
                }
            }
            results.push(result);
        }
        uow.commit().await?;
        Ok(results)
    }
}
