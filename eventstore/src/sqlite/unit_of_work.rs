//! The unit of work: a `BEGIN IMMEDIATE` transaction the application's own SQL can join.

use std::sync::Arc;

use eventfold_core::{NewEvent, OutboxMessage, StreamId};
use sqlx::{Sqlite, SqliteConnection, Transaction};
use tokio::sync::watch;
use uuid::Uuid;

use super::*;
use crate::error::{ExpectedVersion, StoreError};
use crate::outbox::OutboxRouting;
use crate::sql::{self, db_err};
use crate::store::{AppendResult, UnitOfWork};

/// A unit of work of the [`SqliteStore`]: a `BEGIN IMMEDIATE` transaction.
pub struct SqliteUnitOfWork {
    pub(super) source: Arc<str>,
    pub(super) routing: Option<Arc<OutboxRouting>>,
    pub(super) tx: Transaction<'static, Sqlite>,
    pub(super) sql: Arc<Statements>,
    pub(super) appended: Arc<watch::Sender<u64>>,
    pub(super) wrote_events: bool,
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
    async fn append(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.append_in_savepoint(stream_id, expected, events).await
    }

    async fn mark_inbox(&mut self, consumer: &str, message_id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.sql.mark_inbox)
            .bind(consumer)
            .bind(message_id)
            .bind(eventfold_core::metadata::now_micros())
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

impl SqliteStore {
    pub(super) async fn begin_unit_of_work(&self) -> Result<SqliteUnitOfWork, StoreError> {
        let tx = sql::begin_owned(&self.pool, Some("BEGIN IMMEDIATE"))
            .await
            .map_err(db_err("starting a unit of work", &self.sql.events))?;
        Ok(SqliteUnitOfWork {
            source: self.source.clone(),
            routing: self.routing.clone(),
            tx,
            sql: self.sql.clone(),
            appended: self.appended.clone(),
            wrote_events: false,
        })
    }
}
