//! The unit of work: a `BEGIN IMMEDIATE` transaction the application's own SQL can join.

use std::sync::Arc;

use sqlx::{Row, Sqlite, SqliteConnection, Transaction};
use tokio::sync::watch;

use super::*;
use crate::error::StoreError;
use crate::outbox::OutboxRouting;
use crate::sql::dialect::Lite;
use crate::store::UnitOfWork;
use crate::trace::InboxEntry;
use uuid::Uuid;

/// A unit of work of the [`SqliteStore`]: a `BEGIN IMMEDIATE` transaction.
pub struct SqliteUnitOfWork {
    pub(super) source: Arc<str>,
    pub(super) routing: Option<Arc<OutboxRouting>>,
    pub(super) tx: Transaction<'static, Sqlite>,
    pub(super) sql: Arc<Statements>,
    pub(super) appended: Arc<watch::Sender<u64>>,
    pub(super) wrote_events: bool,
    /// This writer's turn through the store's gate, held until the transaction ends.
    pub(super) _turn: crate::sql::gate::WritePermit,
}

impl SqliteUnitOfWork {
    /// The connection of this transaction, for the application's own SQL.
    pub fn connection(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }

    /// The `sqlx` transaction itself.
    pub fn transaction(&mut self) -> &mut Transaction<'static, Sqlite> {
        &mut self.tx
    }
}

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
        // Of an id given twice, the first is the one marked.
        Ok(messages
            .iter()
            .map(|m| fresh.remove(&m.message_id))
            .collect())
    }
}

impl SqliteStore {
    crate::sql::unit_of_work::begin_unit_of_work!(SqliteUnitOfWork, Lite);
}
