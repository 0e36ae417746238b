//! The unit of work: a READ COMMITTED transaction the application's own SQL can join.

use std::sync::Arc;

use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::watch;
use uuid::Uuid;

use super::*;
use crate::error::StoreError;
use crate::outbox::OutboxRouting;
use crate::sql::db_err;
use crate::sql::dialect::Pg;
use crate::store::UnitOfWork;

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
    async fn mark_inbox(&mut self, consumer: &str, message_id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.sql.mark_inbox)
            .bind(consumer)
            .bind(message_id)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("marking the inbox", &self.sql.inbox))?;
        Ok(done.rows_affected() == 1)
    }

    crate::sql::unit_of_work::unit_of_work_methods!();
}

impl PgStore {
    crate::sql::unit_of_work::begin_unit_of_work!(PgUnitOfWork, Pg);
}
