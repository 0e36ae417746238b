//! The unit of work: a `BEGIN IMMEDIATE` transaction the application's own SQL can join.

use sqlx::{Row, Sqlite, SqliteConnection};

use super::*;
use crate::error::StoreError;
use crate::sql::dialect::Lite;
use crate::store::UnitOfWork;
use crate::trace::InboxEntry;
use uuid::Uuid;

crate::sql::unit_of_work::unit_of_work_type!(
    SqliteUnitOfWork,
    SqliteStore,
    Sqlite,
    SqliteConnection,
    Lite,
    "A unit of work of the [`SqliteStore`]: a `BEGIN IMMEDIATE` transaction."
);

impl UnitOfWork for SqliteUnitOfWork {
    crate::sql::unit_of_work::unit_of_work_methods!();

    /// Multi-row `INSERT`s of up to 32 marks each (chunks of 32, 16, ..., 1), instead of one
    /// statement per mark.
    async fn mark_received_all(
        &mut self,
        consumer: &str,
        messages: &[InboxEntry],
    ) -> Result<Vec<bool>, StoreError> {
        crate::store::validate_consumer_name(consumer)?;
        let now = eventfold_core::metadata::now_micros();
        let mut fresh = std::collections::HashSet::with_capacity(messages.len());
        let mut rest = messages;
        while !rest.is_empty() {
            let (index, &size) = MARK_CHUNKS
                .iter()
                .enumerate()
                .find(|(_, size)| **size <= rest.len())
                .unwrap_or((MARK_CHUNKS.len() - 1, &1));
            let (chunk, after) = rest.split_at(size.min(rest.len()));
            let mut query = sqlx::query(&self.sql.mark_inbox_rows[index]);
            for entry in chunk {
                // The client's clock, like the events' times (the trace orders them together).
                query = crate::sql::unit_of_work::bind_mark(query, consumer, entry, &self.source)
                    .bind(now);
            }
            let marked = query
                .fetch_all(&mut *self.tx)
                .await
                .map_err(crate::sql::db_err("marking the inbox", &self.sql.inbox))?;
            for row in marked {
                fresh.insert(
                    row.try_get::<Uuid, _>(0)
                        .map_err(crate::sql::db_err("marking the inbox", &self.sql.inbox))?,
                );
            }
            rest = after;
        }
        Ok(crate::sql::unit_of_work::marked_flags(messages, fresh))
    }
}
