//! What the CLI needs from a store beyond the store traits ([`CliStore`]): its migrations and
//! the backend's name. Implemented for every backend.

use std::future::Future;

use serde::Serialize;

use crate::eventstore::{EventStore, InboxStore, OutboxRelayStore, ProjectionStore, StoreError};

/// A migration recorded in eventfold's migration table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedMigration {
    /// Its number.
    pub version: i64,
    /// Its name.
    pub name: String,
}

/// What the CLI needs from a store beyond the store traits: its migrations and a name.
/// Implemented for every backend.
pub trait CliStore: EventStore + OutboxRelayStore + InboxStore + ProjectionStore {
    /// The backend: `postgres`, `sqlite` or `memory`.
    fn backend(&self) -> &'static str;

    /// Applies the embedded migrations that are not applied yet and returns every applied one.
    fn run_migrations(
        &self,
    ) -> impl Future<Output = Result<Vec<AppliedMigration>, StoreError>> + Send;
}

impl CliStore for crate::eventstore::memory::MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn run_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        Ok(Vec::new())
    }
}

/// `CliStore` for a SQL backend: `migrate()`, then the rows of its `migrations` table.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
macro_rules! sql_cli_store {
    ($store:ty, $backend:literal) => {
        impl CliStore for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn run_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
                self.migrate().await?;
                let table = self.naming().table("migrations");
                let rows: Vec<(i64, String)> = sqlx::query_as(&format!(
                    "SELECT version, name FROM {table} ORDER BY version"
                ))
                .fetch_all(self.pool())
                .await
                .map_err(|e| StoreError::Database {
                    operation: "reading applied migrations",
                    table,
                    source: Box::new(e),
                })?;
                Ok(rows
                    .into_iter()
                    .map(|(version, name)| AppliedMigration { version, name })
                    .collect())
            }
        }
    };
}

#[cfg(feature = "postgres")]
sql_cli_store!(crate::eventstore::postgres::PgStore, "postgres");

#[cfg(feature = "sqlite")]
sql_cli_store!(crate::eventstore::sqlite::SqliteStore, "sqlite");
