//! Fresh stores for the integration tests: a new PostgreSQL database or SQLite file per test.
#![allow(dead_code)]

pub mod crash;
pub mod fuzz;
pub mod printed_metrics;
pub mod ticks;

use eventfold::eventstore::memory::MemoryStore;
use eventfold::eventstore::postgres::PgStore;
use eventfold::eventstore::postgres::testing::{DEFAULT_DATABASE_URL, TestDb};
use eventfold::eventstore::sqlite::SqliteStore;

/// One `#[tokio::test]` per rule and backend: a module per backend (`memory`, `sqlite`,
/// `postgres`: the fixtures of this module), in it a test `name` that runs `rule` on a fresh
/// store of that backend, on a multi-threaded runtime with `threads` workers.
///
/// ```text
/// common::backend_tests!([memory, sqlite, postgres] {
///     2 => no_dual_write: rolled_back_transaction_publishes_nothing,
/// });
/// ```
#[allow(unused_macros)]
macro_rules! backend_tests {
    ([$($backend:ident),+ $(,)?] $tests:tt) => {
        $( $crate::common::backend_tests!(@backend $backend $tests); )+
    };
    (@backend $backend:ident { $($threads:literal => $name:ident: $rule:ident),* $(,)? }) => {
        mod $backend {
            use super::*;

            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
                async fn $name() {
                    let (store, _guard) = $crate::common::$backend().await;
                    $rule(store).await;
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use backend_tests;

/// One `#[tokio::test]` per backend under a name of its own (names that the book or scripts
/// cite): each test `name` binds `store` to a fresh store of the fixture `backend` of this module
/// and awaits `run`, on a multi-threaded runtime with `threads` workers.
///
/// ```text
/// common::named_backend_tests!(4 => |store| hammer(store);
///     no_lost_update_on_postgres: postgres,
///     no_lost_update_in_memory: memory,
/// );
/// ```
#[allow(unused_macros)]
macro_rules! named_backend_tests {
    ($threads:literal => |$store:ident| $run:expr; $($name:ident: $backend:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
            async fn $name() {
                let ($store, _guard) = $crate::common::$backend().await;
                $run.await;
            }
        )+
    };
}
#[allow(unused_imports)]
pub(crate) use named_backend_tests;

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

/// A PostgreSQL store whose concurrent appends share commits (write coalescing, ADR 0024).
pub async fn postgres_coalescing() -> (PgStore, TestDb) {
    let (store, db) = postgres().await;
    (
        store.with_coalescing(eventfold::eventstore::Coalescing::default()),
        db,
    )
}

/// A SQLite store whose concurrent appends share commits (write coalescing, ADR 0024).
pub async fn sqlite_coalescing() -> (SqliteStore, TempFile) {
    let (store, file) = sqlite().await;
    (
        store.with_coalescing(eventfold::eventstore::Coalescing::default()),
        file,
    )
}

/// The consumer tests' handler: its effect is one `ledger.noted` event per handled message in
/// the stream `ledger/all`, in the inbox's transaction (see [`note`]). A message of type
/// `payment.poison` fails.
#[derive(Default)]
pub struct Ledger {
    pub calls: std::sync::atomic::AtomicUsize,
}

impl<U: eventfold::eventstore::UnitOfWork> eventfold::outbox::Handler<U> for Ledger {
    async fn handle(
        &self,
        uow: &mut U,
        record: &eventfold::outbox::Record,
    ) -> Result<(), eventfold::BoxError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if record.message_type == "payment.poison" {
            return Err(format!("cannot handle {}: no amount", record.message_id).into());
        }
        note(uow, record).await
    }
}

/// The [`Ledger`]'s effect of `record`: a `ledger.noted` event caused by it, appended to
/// `ledger/all` in `uow`.
pub async fn note<U: eventfold::eventstore::UnitOfWork>(
    uow: &mut U,
    record: &eventfold::outbox::Record,
) -> Result<(), eventfold::BoxError> {
    let stream = eventfold::StreamId::new("ledger", "all")?;
    let mut event = eventfold::NewEvent::raw("ledger.noted", 1, record.payload.clone());
    event.causation_id = Some(record.message_id);
    uow.append(
        &stream,
        eventfold::eventstore::ExpectedVersion::Any,
        vec![event],
    )
    .await?;
    Ok(())
}

/// The ids of the messages that took effect through the [`Ledger`], in the order they did.
pub async fn effects<S: eventfold::eventstore::EventStore>(store: &S) -> Vec<uuid::Uuid> {
    let stream = eventfold::StreamId::new("ledger", "all").unwrap();
    store
        .read_stream(&stream, 1, u64::MAX)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| e.causation_id)
        .collect()
}

/// The `eventfold` binary on the database `url`, with no `DATABASE_URL` inherited from the
/// test's environment.
pub fn eventfold_cli(url: &str) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("eventfold").expect("the eventfold binary");
    cmd.env_remove("DATABASE_URL")
        .arg("--database-url")
        .arg(url);
    cmd
}

/// Runs the `eventfold` binary on `url` with a command that must succeed; returns its stdout.
pub fn eventfold_ok(url: &str, args: &[&str]) -> String {
    stdout_of_success(
        eventfold_cli(url).args(args),
        &format!("eventfold {args:?}"),
    )
}

/// Runs `command` (the `eventfold` binary), which must succeed; returns its stdout. `what` names
/// the command when it fails.
pub fn stdout_of_success(command: &mut assert_cmd::Command, what: &str) -> String {
    let output = command.output().expect("run eventfold");
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// Runs the `eventfold` binary on `url` with a command that must succeed, with `--json`; parses
/// its stdout.
pub fn eventfold_json(url: &str, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--json");
    let stdout = eventfold_ok(url, &args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"))
}

/// Runs the `eventfold` binary on `url` with a command that must fail with status 1; returns its
/// stderr.
pub fn eventfold_fails(url: &str, args: &[&str]) -> String {
    let output = eventfold_cli(url)
        .args(args)
        .output()
        .expect("run eventfold");
    assert_eq!(
        output.status.code(),
        Some(1),
        "eventfold {args:?} should fail with status 1; stdout: {}; stderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stderr).expect("utf-8 output")
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

/// The number in the environment variable `name`, or `default` when it is not set; a value that is
/// not a number fails the test.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
        })
        .unwrap_or(default)
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

/// A consumer in the new group `group_id` (no offset commits), assigned partitions `0..partitions`
/// of `topic` from their beginning.
#[cfg(feature = "kafka")]
pub fn consumer_from_start(
    brokers: &str,
    group_id: String,
    topic: &str,
    partitions: i32,
) -> eventfold::outbox::kafka::rdkafka::consumer::StreamConsumer {
    use eventfold::outbox::kafka::rdkafka::consumer::{Consumer, StreamConsumer};
    use eventfold::outbox::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("create a consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assign a partition");
    }
    consumer.assign(&assignment).expect("assign the topic");
    consumer
}

/// The next message of `consumer`, or `None` when none came before `until`; a consumer error
/// fails the test, naming `topic`.
#[cfg(feature = "kafka")]
pub async fn recv_before<'c>(
    consumer: &'c eventfold::outbox::kafka::rdkafka::consumer::StreamConsumer,
    until: std::time::Instant,
    topic: &str,
) -> Option<eventfold::outbox::kafka::rdkafka::message::BorrowedMessage<'c>> {
    let left = until.saturating_duration_since(std::time::Instant::now());
    match tokio::time::timeout(left, consumer.recv()).await {
        Err(_) => None,
        Ok(message) => Some(message.unwrap_or_else(|e| panic!("consuming {topic}: {e}"))),
    }
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

/// Checks that a record of `key` comes from the partition that the first record of `key` came
/// from (`partition_of` remembers them): the key's records stay in order.
pub fn assert_one_partition(
    partition_of: &mut std::collections::HashMap<String, i32>,
    key: &str,
    partition: i32,
) {
    assert_eq!(
        *partition_of.entry(key.to_owned()).or_insert(partition),
        partition,
        "every record of key {key} in one partition",
    );
}

/// Spawns `command` with its standard output piped and waits up to `wait` for the first line of
/// it that `started` accepts, which it returns with the child; when none comes, kills the child
/// and panics, naming `what`. The child's later output is drained until it exits.
pub fn spawn_until_started(
    command: &mut std::process::Command,
    what: &str,
    wait: std::time::Duration,
    started: impl Fn(&str) -> bool + Send + 'static,
) -> (std::process::Child, String) {
    spawn_until_started_with(command, std::process::Stdio::null(), what, wait, started)
}

/// [`spawn_until_started`] with `stdin` as the child's standard input (a pipe that closes when
/// the parent goes away, for a child that watches it).
pub fn spawn_until_started_with(
    command: &mut std::process::Command,
    stdin: std::process::Stdio,
    what: &str,
    wait: std::time::Duration,
    started: impl Fn(&str) -> bool + Send + 'static,
) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .stdin(stdin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let stdout = child.stdout.take().expect("the child's stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Forward the lines that announce the start, then drain the pipe until the process exits.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if started(&line) {
                let _ = tx.send(line);
            }
        }
    });
    match rx.recv_timeout(wait) {
        Ok(line) => (child, line),
        Err(e) => {
            let _ = child.kill();
            let status = child.wait().ok();
            panic!(
                "{what} did not start within {} s ({e}); exit status {status:?}",
                wait.as_secs()
            )
        }
    }
}
