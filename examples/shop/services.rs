//! Where each service keeps its data: its own database, so that the services share nothing but
//! messages. On SQLite a file per service (`order.db`, `payment.db`, `inventory.db` in the data
//! directory); on PostgreSQL a schema per service (`shop_order`, ...) in one database.

use std::path::{Path, PathBuf};

use eventfold::BoxError;
use eventfold::cli::CliStore;
use eventfold::eventstore::OutboxRouting;
use eventfold::eventstore::sqlite::SqliteStore;

use crate::read_models::ReadModels;

/// What the shop needs from a store: everything eventfold's CLI operates on (events, outbox,
/// inbox, projections, sagas, migrations, traces), the read models, and publishing events.
pub trait ShopStore: CliStore + ReadModels + Publishing {}

impl<S: CliStore + ReadModels + Publishing> ShopStore for S {}

/// A store whose appends also write an outbox row for each event `routing` routes, in the
/// append's transaction: how a service publishes its events (the choreographed style).
pub trait Publishing: Sized {
    fn publishing(&self, routing: OutboxRouting) -> Self;
}

impl Publishing for SqliteStore {
    fn publishing(&self, routing: OutboxRouting) -> Self {
        self.clone().with_outbox(routing)
    }
}

#[cfg(feature = "postgres")]
impl Publishing for eventfold::eventstore::postgres::PgStore {
    fn publishing(&self, routing: OutboxRouting) -> Self {
        self.clone().with_outbox(routing)
    }
}

/// The services, by name.
pub const SERVICES: [&str; 3] = ["order", "payment", "inventory"];

/// Where the services' databases are.
#[derive(Debug, Clone)]
pub enum Database {
    /// A SQLite file per service in this directory.
    Sqlite(PathBuf),
    /// One PostgreSQL database, a schema per service.
    #[cfg(feature = "postgres")]
    Postgres(String),
}

impl Database {
    /// From the command line: `--database-url` (PostgreSQL) or `--data-dir` (SQLite, by default
    /// `eventfold-shop` in the system's temporary directory).
    pub fn from_args(
        data_dir: Option<PathBuf>,
        database_url: Option<&str>,
    ) -> Result<Self, BoxError> {
        match database_url {
            None => {
                Ok(Database::Sqlite(data_dir.unwrap_or_else(|| {
                    std::env::temp_dir().join("eventfold-shop")
                })))
            }
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                postgres_url(url)
            }
            Some(url) => Err(format!(
                "--database-url {url}: only PostgreSQL URLs (postgres://...) are supported; \
                 SQLite is the default and takes --data-dir"
            )
            .into()),
        }
    }

    /// Where, for people.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(dir) => format!(
                "SQLite: {} ({})",
                dir.display(),
                SERVICES.map(|s| format!("{s}.db")).join(", ")
            ),
            #[cfg(feature = "postgres")]
            Database::Postgres(url) => format!(
                "PostgreSQL: {} (schemas {})",
                without_password(url),
                SERVICES.map(schema_of).join(", ")
            ),
        }
    }
}

#[cfg(feature = "postgres")]
fn postgres_url(url: &str) -> Result<Database, BoxError> {
    Ok(Database::Postgres(url.to_owned()))
}

#[cfg(not(feature = "postgres"))]
fn postgres_url(_url: &str) -> Result<Database, BoxError> {
    Err(
        "--database-url: this build has no PostgreSQL backend; run it with \
         `cargo run --example shop --features postgres -- ...`"
            .into(),
    )
}

/// The three services' stores.
#[derive(Clone)]
pub struct Services<S> {
    pub order: S,
    pub payment: S,
    pub inventory: S,
}

impl<S> Services<S> {
    /// The stores with their service names.
    pub fn each(&self) -> [(&'static str, &S); 3] {
        [
            ("order", &self.order),
            ("payment", &self.payment),
            ("inventory", &self.inventory),
        ]
    }
}

/// Whether to start from empty databases (the workload) or open what is there (the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Delete the shop's databases first.
    Fresh,
    /// Open the existing ones; they must exist.
    Existing,
}

impl Services<SqliteStore> {
    /// A SQLite file per service in `dir`.
    pub async fn sqlite(dir: &Path, open: Open) -> Result<Self, BoxError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("creating the data directory {}: {e}", dir.display()))?;
        let connect = |service: &'static str| async move {
            let path = dir.join(format!("{service}.db"));
            match open {
                Open::Fresh => {
                    for suffix in ["", "-wal", "-shm"] {
                        let file = PathBuf::from(format!("{}{suffix}", path.display()));
                        if file.exists() {
                            std::fs::remove_file(&file)
                                .map_err(|e| format!("removing {}: {e}", file.display()))?;
                        }
                    }
                }
                Open::Existing if !path.exists() => {
                    return Err(format!(
                        "no shop database at {}: run the shop first (`cargo run --example shop`), \
                         or give its --data-dir",
                        path.display()
                    )
                    .into());
                }
                Open::Existing => {}
            }
            let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
                .await
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            Ok::<_, BoxError>(store.with_source(service))
        };
        Ok(Self {
            order: connect("order").await?,
            payment: connect("payment").await?,
            inventory: connect("inventory").await?,
        })
    }
}

/// The PostgreSQL schema of a service.
#[cfg(feature = "postgres")]
pub fn schema_of(service: &str) -> String {
    format!("shop_{service}")
}

/// The URL without its password, for printing.
#[cfg(feature = "postgres")]
pub fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user_info = &url[scheme + 3..at];
            match user_info.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use eventfold::BoxError;
    use eventfold::eventstore::Naming;
    use eventfold::eventstore::postgres::PgStore;
    use sqlx::postgres::PgPoolOptions;

    use super::{Open, Services, schema_of, without_password};

    impl Services<PgStore> {
        /// A schema per service in the database at `url`.
        pub async fn postgres(url: &str, open: Open) -> Result<Self, BoxError> {
            let pool = PgPoolOptions::new()
                .max_connections(24)
                .connect(url)
                .await
                .map_err(|e| format!("connecting to {}: {e}", without_password(url)))?;
            let connect = |service: &'static str| {
                let pool = pool.clone();
                async move {
                    let schema = schema_of(service);
                    match open {
                        Open::Fresh => {
                            sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                                .execute(&pool)
                                .await
                                .map_err(|e| format!("dropping schema {schema}: {e}"))?;
                        }
                        Open::Existing => {
                            let (exists,): (bool,) = sqlx::query_as(
                                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                            )
                            .bind(&schema)
                            .fetch_one(&pool)
                            .await?;
                            if !exists {
                                return Err(format!(
                                    "no schema {schema} in {}: run the shop on it first",
                                    without_password(url)
                                )
                                .into());
                            }
                        }
                    }
                    let store = PgStore::builder(pool)
                        .naming(Naming::default().with_schema(schema.clone())?)
                        .source(service)
                        .build()
                        .await
                        .map_err(|e| format!("opening schema {schema}: {e}"))?;
                    Ok::<_, BoxError>(store)
                }
            };
            Ok(Self {
                order: connect("order").await?,
                payment: connect("payment").await?,
                inventory: connect("inventory").await?,
            })
        }
    }
}
