//! Fresh PostgreSQL databases for tests (feature `test-util`).

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::error::StoreError;
use crate::sql::db_err;

/// The default server when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database created for one test and dropped (with `FORCE`) when this value is dropped.
pub struct TestDb {
    name: String,
    admin: PgConnectOptions,
    pool: PgPool,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestDb {
    /// Creates `eventfold_test_<uuid>` on the server of `DATABASE_URL` and connects a pool of
    /// `max_connections` to it. Fails loudly when the server cannot be reached.
    pub async fn create(max_connections: u32) -> Result<Self, StoreError> {
        let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
        let admin =
            PgConnectOptions::from_str(&url).map_err(db_err("parsing DATABASE_URL", "-"))?;
        let name = format!("eventfold_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = admin
            .connect()
            .await
            .map_err(db_err("connecting to DATABASE_URL", "-"))?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .map_err(db_err("creating a test database", "-"))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(admin.clone().database(&name))
            .await
            .map_err(db_err("connecting to the test database", "-"))?;
        Ok(Self { name, admin, pool })
    }

    /// The pool of the test database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Dropping needs async I/O; do it on a thread of its own so that it works inside and
        // outside a runtime.
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let mut conn = admin.connect().await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        });
        let _ = dropper.join();
    }
}
