//! Backend-neutral administration: which backend a store is, and its migrations.
//!
//! [`MigrationStore`] is what a tool (the embeddable CLI, a health endpoint, a deploy step)
//! needs from a store beyond the store traits, without naming the backend. Every backend
//! implements it: PostgreSQL and SQLite in their `store.rs`, the memory store here (it has no
//! migrations).

use std::future::Future;

use serde::Serialize;

use crate::error::StoreError;

/// A migration recorded in eventfold's migration table (`{prefix}migrations`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedMigration {
    /// Its number.
    pub version: i64,
    /// Its name.
    pub name: String,
}

/// A store's backend and its migrations.
pub trait MigrationStore {
    /// The backend: `postgres`, `sqlite` or `memory`.
    fn backend(&self) -> &'static str;

    /// Applies the embedded migrations that are not applied yet and returns every applied one
    /// (`SELECT version, name FROM {prefix}migrations ORDER BY version`), oldest first. Empty
    /// for a backend without migrations.
    fn run_migrations(
        &self,
    ) -> impl Future<Output = Result<Vec<AppliedMigration>, StoreError>> + Send;
}

impl MigrationStore for crate::memory::MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn run_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        Ok(Vec::new())
    }
}
