//! The unit of work: a READ COMMITTED transaction the application's own SQL can join.

use std::sync::Arc;

use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::watch;

use super::*;
use crate::outbox::OutboxRouting;
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
}

impl PgStore {
    crate::sql::unit_of_work::begin_unit_of_work!(PgUnitOfWork, Pg);
}
