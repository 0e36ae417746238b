//! The [`ProjectionStore`](crate::projection::ProjectionStore) of SQLite: the shared one of
//! `crate::sql::projections` in the SQLite dialect (writers are serialized by `BEGIN IMMEDIATE`,
//! so the locks are the write transaction itself).

use super::{SqliteStore, SqliteUnitOfWork};
use crate::sql::dialect::Lite;

crate::sql::projections::projection_store!(SqliteStore, SqliteUnitOfWork, Lite);
