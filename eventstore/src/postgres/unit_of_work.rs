//! The unit of work: a READ COMMITTED transaction the application's own SQL can join.

use std::sync::Arc;

use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::watch;

use super::*;
use crate::error::StoreError;
use crate::outbox::OutboxRouting;
use crate::sql::dialect::Pg;
use crate::store::UnitOfWork;
use uuid::Uuid;

/// A unit of work of the [`PgStore`]: a READ COMMITTED transaction.
pub struct PgUnitOfWork {
    pub(super) source: Arc<str>,
    pub(super) routing: Option<Arc<OutboxRouting>>,
    pub(super) tx: Transaction<'static, Postgres>,
    pub(super) sql: Arc<Statements>,
    pub(super) appended: Arc<watch::Sender<u64>>,
    pub(super) wrote_events: bool,
    /// This writer's turn through the store's gate, held until the transaction ends.
    pub(super) _turn: crate::sql::gate::WritePermit,
}

impl PgUnitOfWork {
    /// The connection of this transaction, for the application's own SQL.
    pub fn connection(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// The `sqlx` transaction itself.
    pub fn transaction(&mut self) -> &mut Transaction<'static, Postgres> {
        &mut self.tx
    }
}

impl UnitOfWork for PgUnitOfWork {
    crate::sql::unit_of_work::unit_of_work_methods!();

    /// One statement for the events, their outbox rows, the messages and their journal rows
    /// when `expected` is exact (else an append, then the messages).
    async fn append_and_enqueue(
        &mut self,
        stream_id: &eventfold_core::StreamId,
        expected: crate::error::ExpectedVersion,
        events: Vec<eventfold_core::NewEvent>,
        messages: Vec<eventfold_core::OutboxMessage>,
    ) -> Result<crate::store::AppendResult, StoreError> {
        self.append_with_messages(stream_id, expected, events, messages)
            .await
    }

    /// One statement per run of appends to distinct streams, instead of one per append.
    async fn append_many(
        &mut self,
        appends: Vec<crate::store::StreamAppend>,
    ) -> Result<Vec<crate::store::AppendResult>, StoreError> {
        self.append_runs(appends).await
    }

    /// One statement for all of them (an `INSERT ... SELECT FROM UNNEST`), instead of one each.
    async fn mark_received_all(
        &mut self,
        consumer: &str,
        messages: &[crate::trace::InboxEntry],
    ) -> Result<Vec<bool>, StoreError> {
        crate::store::validate_consumer_name(consumer)?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let column = |f: fn(&crate::trace::InboxEntry) -> Option<&str>| -> Vec<Option<&str>> {
            messages.iter().map(f).collect()
        };
        let marked: Vec<Uuid> = sqlx::query_scalar(&self.sql.mark_inbox_all)
            .bind(consumer)
            .bind(messages.iter().map(|m| m.message_id).collect::<Vec<_>>())
            .bind(column(|m| m.message_type.as_deref()))
            .bind(column(|m| m.topic.as_deref()))
            .bind(
                messages
                    .iter()
                    .map(|m| m.correlation_id)
                    .collect::<Vec<_>>(),
            )
            .bind(messages.iter().map(|m| m.causation_id).collect::<Vec<_>>())
            .bind(column(|m| m.sent_by.as_deref()))
            .bind(&*self.source)
            // The client's clock, like the events' times (the trace orders them together).
            .bind(eventfold_core::metadata::now_micros())
            .fetch_all(&mut *self.tx)
            .await
            .map_err(crate::sql::db_err("marking the inbox", &self.sql.inbox))?;
        // Of an id given twice, the first is the one marked.
        let mut fresh: std::collections::HashSet<Uuid> = marked.into_iter().collect();
        Ok(messages
            .iter()
            .map(|m| fresh.remove(&m.message_id))
            .collect())
    }
}

impl PgStore {
    crate::sql::unit_of_work::begin_unit_of_work!(PgUnitOfWork, Pg);
}
