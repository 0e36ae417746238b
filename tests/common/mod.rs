//! Fresh stores for the integration tests: a new PostgreSQL database or SQLite file per test.
#![allow(dead_code)]

use eventfold::eventstore::memory::MemoryStore;
use eventfold::eventstore::postgres::PgStore;
use eventfold::eventstore::postgres::testing::{DEFAULT_DATABASE_URL, TestDb};
use eventfold::eventstore::sqlite::SqliteStore;

pub async fn memory() -> (MemoryStore, ()) {
    (MemoryStore::new(), ())
}

/// A SQLite file that is deleted when dropped.
pub struct TempFile(pub std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

pub async fn sqlite() -> (SqliteStore, TempFile) {
    let path = std::env::temp_dir().join(format!(
        "eventfold-test-{}.db",
        uuid::Uuid::now_v7().simple()
    ));
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open a SQLite file");
    (store, TempFile(path))
}

pub async fn postgres() -> (PgStore, TestDb) {
    let db = TestDb::create(20)
        .await
        .expect("PostgreSQL must be reachable at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)");
    let store = PgStore::builder(db.pool().clone())
        .source("test-svc")
        .build()
        .await
        .expect("migrate");
    (store, db)
}

/// `DATABASE_URL` (or the default server) with its database replaced by `database`; the query
/// string, if any, is kept.
pub fn database_url(database: &str) -> String {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url.as_str(), None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

/// The Kafka-protocol broker of `KAFKA_BOOTSTRAP` (default `127.0.0.1:9092`); panics when nothing
/// listens there: the Kafka tests fail loudly, they never skip.
pub fn kafka_bootstrap() -> String {
    use std::net::{TcpStream, ToSocketAddrs};
    let servers = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let first = servers.split(',').next().unwrap_or_default().to_owned();
    let reachable = first
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| {
            TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)).is_ok()
        });
    assert!(
        reachable,
        "no Kafka-protocol broker is reachable at {servers} (KAFKA_BOOTSTRAP); \
         run the tests with scripts/test.sh, which starts tansu"
    );
    servers
}

/// Makes PostgreSQL refuse every `event` (`DELETE`, `UPDATE`, ...) on `table` while the switch
/// table `name` holds a row; it is created holding one. A statement trigger raises
/// `injected: <name>`. [`lift_fault`] empties the switch.
pub async fn inject_fault(pool: &sqlx::PgPool, name: &str, event: &str, table: &str) {
    sqlx::raw_sql(&format!(
        "CREATE TABLE {name} (id int); INSERT INTO {name} VALUES (1); \
         CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF EXISTS (SELECT 1 FROM {name}) THEN RAISE EXCEPTION 'injected: {name}'; END IF; \
           RETURN NULL; END $$; \
         CREATE TRIGGER {name} BEFORE {event} ON {table} \
           FOR EACH STATEMENT EXECUTE FUNCTION {name}();"
    ))
    .execute(pool)
    .await
    .expect("install the fault");
}

/// Ends the fault [`inject_fault`] installed as `name`.
pub async fn lift_fault(pool: &sqlx::PgPool, name: &str) {
    sqlx::query(&format!("DELETE FROM {name}"))
        .execute(pool)
        .await
        .expect("lift the fault");
}
