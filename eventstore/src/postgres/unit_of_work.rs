//! The unit of work: a READ COMMITTED transaction the application's own SQL can join.

use std::sync::Arc;

use eventfold_core::{NewEvent, OutboxMessage, StreamId};
use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::watch;
use uuid::Uuid;

use super::*;
use crate::error::{ExpectedVersion, StoreError};
use crate::outbox::OutboxRouting;
use crate::sql::{self, db_err};
use crate::store::{AppendResult, UnitOfWork};

/// A unit of work of the [`PgStore`]: a READ COMMITTED transaction.
pub struct PgUnitOfWork {
    pub(super) source: Arc<str>,
    pub(super) routing: Option<Arc<OutboxRouting>>,
    pub(super) tx: Transaction<'static, Postgres>,
    pub(super) sql: Arc<Statements>,
    pub(super) appended: Arc<watch::Sender<u64>>,
    pub(super) wrote_events: bool,
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
    async fn append(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.append_events(stream_id, expected, events).await
    }

    async fn mark_inbox(&mut self, consumer: &str, message_id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.sql.mark_inbox)
            .bind(consumer)
            .bind(message_id)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("marking the inbox", &self.sql.inbox))?;
        Ok(done.rows_affected() == 1)
    }

    async fn enqueue(&mut self, messages: Vec<OutboxMessage>) -> Result<(), StoreError> {
        self.insert_outbox(messages).await?;
        // Wakes the relay at commit, like an append does.
        self.wrote_events = true;
        Ok(())
    }

    crate::sql::read::unit_of_work_reads!();
}

impl PgStore {
    pub(super) async fn begin_unit_of_work(&self) -> Result<PgUnitOfWork, StoreError> {
        let tx = sql::begin_owned(&self.pool, None)
            .await
            .map_err(db_err("starting a unit of work", &self.sql.events))?;
        Ok(PgUnitOfWork {
            source: self.source.clone(),
            routing: self.routing.clone(),
            tx,
            sql: self.sql.clone(),
            appended: self.appended.clone(),
            wrote_events: false,
        })
    }
}
