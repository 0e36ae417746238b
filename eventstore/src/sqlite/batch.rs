//! Shared commits (ADR 0024): the appends a [`Coalescer`](crate::coalesce) gathered, written by
//! one `BEGIN IMMEDIATE` transaction, each in its own savepoint (as every SQLite append is); when
//! the transaction fails as a whole they are written again one by one.

use eventfold_core::{NewEvent, StreamId};

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
    crate::coalesce::append_writer_head!(SqliteAppend);

    fn table(&self) -> &str {
        &self.store.sql.events
    }

    /// One append in a transaction of its own (as without coalescing).
    async fn alone(&self, a: SqliteAppend) -> Result<AppendResult, StoreError> {
        crate::store::append_alone(&self.store, &a.stream_id, a.expected, a.events).await
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
