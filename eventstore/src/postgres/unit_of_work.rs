//! The unit of work: a READ COMMITTED transaction the application's own SQL can join.

use sqlx::{PgConnection, Postgres};

use super::*;
use crate::error::StoreError;
use crate::sql::dialect::Pg;
use crate::store::UnitOfWork;
use uuid::Uuid;

crate::sql::unit_of_work::unit_of_work_type!(
    PgUnitOfWork,
    PgStore,
    Postgres,
    PgConnection,
    Pg,
    "A unit of work of the [`PgStore`]: a READ COMMITTED transaction."
);

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
        let fresh = marked.into_iter().collect();
        Ok(crate::sql::unit_of_work::marked_flags(messages, fresh))
    }
}
