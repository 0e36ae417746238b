//! The unit of work: a `BEGIN IMMEDIATE` transaction the application's own SQL can join.

use std::sync::Arc;

use sqlx::{Sqlite, SqliteConnection, Transaction};
use tokio::sync::watch;

use super::*;
use crate::outbox::OutboxRouting;
use crate::sql::dialect::Lite;
use crate::store::UnitOfWork;

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
}

impl SqliteStore {
    crate::sql::unit_of_work::begin_unit_of_work!(SqliteUnitOfWork, Lite);
}
