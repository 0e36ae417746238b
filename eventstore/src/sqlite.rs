//! The SQLite event store (feature `sqlite`): the embedded default.
//!
//! Writes run in `BEGIN IMMEDIATE` transactions, so SQLite's single writer is taken up front and
//! two units of work never deadlock on a lock upgrade; readers are not blocked (WAL mode). Tables
//! are `{prefix}events`, `{prefix}snapshots`, `{prefix}commands` and `{prefix}migrations`.
//!
//! ```
//! use eventfold_eventstore::{sqlite::SqliteStore, EventStore, UnitOfWork, ExpectedVersion};
//! use eventfold_core::{NewEvent, StreamId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SqliteStore::connect("sqlite::memory:").await?;
//! sqlx::query("CREATE TABLE orders_view (id TEXT PRIMARY KEY)").execute(store.pool()).await?;
//!
//! let stream = StreamId::new("order", "7")?;
//! let mut uow = store.begin().await?;
//! uow.append(&stream, ExpectedVersion::NoStream, vec![NewEvent::raw("order.placed", 1, b"{}".to_vec())]).await?;
//! // the application's own SQL, in the same transaction
//! sqlx::query("INSERT INTO orders_view (id) VALUES ('7')").execute(uow.connection()).await?;
//! uow.commit().await?;
//! assert_eq!(store.stream_version(&stream).await?, 1);
//! # Ok(())
//! # }
//! ```

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use eventfold_core::{NewEvent, OutboxMessage, RecordedEvent, StreamId};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use uuid::Uuid;

use tokio::sync::watch;

use crate::error::{ExpectedVersion, StoreError};
use crate::inbox::{InboxStore, ParkedMessage};
use crate::log::{Checkpoint, LogBatch, LogFilter, LogHead};
use crate::naming::Naming;
use crate::outbox::{
    DeadLetter, OUTBOX_SLOTS, OutboxRelayStore, OutboxRouting, OutboxRow, OutboxStatus, fair_share,
};
use crate::sql::{self, EVENT_COLUMNS, EventRow, Migration, db_err, to_i64, to_u64};
use crate::store::{
    AppendResult, CommandRecord, EventStore, LocalWakeup, Snapshot, UnitOfWork, fill_source,
    validate_append,
};

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events, snapshots, commands",
        sql: r#"
CREATE TABLE IF NOT EXISTS {events} (
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id BLOB NOT NULL,
    stream_type TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    stream_version INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload BLOB NOT NULL,
    recorded_at TEXT NOT NULL,
    source TEXT NOT NULL,
    correlation_id BLOB NOT NULL,
    causation_id BLOB,
    tenant_id TEXT,
    headers TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX IF NOT EXISTS "{prefix}events_event_id_uq" ON {events} (event_id);
CREATE UNIQUE INDEX IF NOT EXISTS "{prefix}events_stream_version_uq" ON {events} (stream_type, stream_id, stream_version);
CREATE TABLE IF NOT EXISTS {snapshots} (
    stream_type TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    snapshot_version INTEGER NOT NULL,
    state BLOB NOT NULL,
    taken_at TEXT NOT NULL,
    PRIMARY KEY (stream_type, stream_id)
);
CREATE TABLE IF NOT EXISTS {commands} (
    command_id BLOB PRIMARY KEY,
    stream_type TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    version_before INTEGER NOT NULL,
    version_after INTEGER NOT NULL,
    recorded_at TEXT NOT NULL
);
"#,
    },
    Migration {
        version: 2,
        name: "outbox and its dead letters (Debezium Outbox Event Router columns)",
        sql: r#"
CREATE TABLE IF NOT EXISTS {outbox} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL,
    aggregatetype TEXT NOT NULL,
    aggregateid TEXT NOT NULL,
    type TEXT NOT NULL,
    payload BLOB NOT NULL,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    headers TEXT NOT NULL DEFAULT '{}',
    slot INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS "{prefix}outbox_id_uq" ON {outbox} (id);
CREATE INDEX IF NOT EXISTS "{prefix}outbox_slot_idx" ON {outbox} (slot, seq);
CREATE TABLE IF NOT EXISTS {outbox_dead} (
    seq INTEGER PRIMARY KEY,
    id BLOB NOT NULL,
    aggregatetype TEXT NOT NULL,
    aggregateid TEXT NOT NULL,
    type TEXT NOT NULL,
    payload BLOB NOT NULL,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    headers TEXT NOT NULL,
    slot INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    next_attempt_at TEXT,
    error TEXT NOT NULL,
    parked_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS "{prefix}outbox_dead_key_idx" ON {outbox_dead} (key);
CREATE TABLE IF NOT EXISTS {outbox_leases} (
    slot INTEGER PRIMARY KEY,
    owner BLOB,
    expires_at TEXT
);
WITH RECURSIVE s(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM s WHERE x < 255)
INSERT OR IGNORE INTO {outbox_leases} (slot) SELECT x FROM s;
CREATE TABLE IF NOT EXISTS {outbox_relays} (
    owner BLOB PRIMARY KEY,
    heartbeat_at TEXT NOT NULL
);
"#,
    },
    Migration {
        version: 3,
        name: "consumer inbox and its parked messages",
        sql: r#"
CREATE TABLE IF NOT EXISTS {inbox} (
    consumer TEXT NOT NULL,
    message_id BLOB NOT NULL,
    processed_at TEXT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE TABLE IF NOT EXISTS {inbox_dead} (
    consumer TEXT NOT NULL,
    message_id BLOB NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    key TEXT NOT NULL,
    type TEXT NOT NULL,
    payload BLOB NOT NULL,
    headers TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    parked_at TEXT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
"#,
    },
    Migration {
        version: 4,
        name: "projections: state, checkpoints per generation, parked events",
        sql: crate::projection_sqlite::MIGRATION,
    },
    Migration {
        version: 5,
        name: "outbox: retry index for the claim",
        sql: r#"
CREATE INDEX IF NOT EXISTS "{prefix}outbox_retry_idx" ON {outbox} (key) WHERE next_attempt_at IS NOT NULL;
"#,
    },
];

struct Statements {
    inbox: String,
    mark_inbox: String,
    park_message: String,
    parked_messages: String,
    outbox: String,
    insert_outbox: String,
    outbox_status: String,
    read_outbox: String,
    log_end: String,
    read_log: String,
    events: String,
    snapshots: String,
    commands: String,
    max_version: String,
    insert_event: String,
    read_stream: String,
    load_snapshot: String,
    save_snapshot: String,
    find_command: String,
    record_command: String,
}

impl Statements {
    fn new(naming: &Naming) -> Self {
        let events = naming.table("events");
        let snapshots = naming.table("snapshots");
        let commands = naming.table("commands");
        let outbox = naming.table("outbox");
        let outbox_dead = naming.table("outbox_dead");
        let inbox = naming.table("inbox");
        let inbox_dead = naming.table("inbox_dead");
        Self {
            mark_inbox: format!(
                "INSERT INTO {inbox} (consumer, message_id, processed_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING"
            ),
            park_message: format!(
                "INSERT INTO {inbox_dead} (consumer, message_id, topic, partition, \"offset\", key, type, payload, headers, \
                 attempts, error, parked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                 ON CONFLICT (consumer, message_id) DO UPDATE SET attempts = excluded.attempts, error = excluded.error, \
                 parked_at = excluded.parked_at"
            ),
            parked_messages: format!(
                "SELECT message_id, topic, partition, \"offset\", key, type, payload, headers, attempts, error, parked_at \
                 FROM {inbox_dead} WHERE consumer = ?1 ORDER BY parked_at LIMIT ?2"
            ),
            inbox,
            insert_outbox: format!(
                "INSERT INTO {outbox} (id, aggregatetype, aggregateid, type, payload, topic, key, headers, slot, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ),
            outbox_status: format!(
                "SELECT (SELECT COUNT(*) FROM {outbox}), (SELECT MIN(created_at) FROM {outbox}), \
                 (SELECT COUNT(*) FROM {outbox_dead})"
            ),
            read_outbox: format!(
                "SELECT {} FROM {outbox} ORDER BY seq LIMIT ?1",
                sql::OUTBOX_COLUMNS
            ),
            outbox,
            log_end: format!("SELECT COALESCE(MAX(global_position), 0) FROM {events}"),
            read_log: format!(
                "SELECT 0, stream_type, stream_id, {EVENT_COLUMNS}, headers FROM {events} \
                 WHERE global_position > ?1 AND global_position <= ?2 \
                 AND (?3 IS NULL OR event_type IN (SELECT value FROM json_each(?3))) \
                 AND (?4 IS NULL OR stream_type IN (SELECT value FROM json_each(?4))) \
                 AND (?5 IS NULL OR tenant_id = ?5) \
                 ORDER BY global_position LIMIT ?6"
            ),
            max_version: format!(
                "SELECT COALESCE(MAX(stream_version), 0) FROM {events} WHERE stream_type = ?1 AND stream_id = ?2"
            ),
            insert_event: format!(
                "INSERT INTO {events} (event_id, stream_type, stream_id, stream_version, event_type, schema_version, \
                 payload, recorded_at, source, correlation_id, causation_id, tenant_id, headers) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) RETURNING global_position"
            ),
            read_stream: format!(
                "SELECT {EVENT_COLUMNS}, headers FROM {events} WHERE stream_type = ?1 AND stream_id = ?2 \
                 AND stream_version >= ?3 ORDER BY stream_version LIMIT ?4"
            ),
            load_snapshot: format!(
                "SELECT version, snapshot_version, state, taken_at FROM {snapshots} WHERE stream_type = ?1 AND stream_id = ?2"
            ),
            save_snapshot: format!(
                "INSERT INTO {snapshots} (stream_type, stream_id, version, snapshot_version, state, taken_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (stream_type, stream_id) DO UPDATE SET \
                 version = excluded.version, snapshot_version = excluded.snapshot_version, state = excluded.state, \
                 taken_at = excluded.taken_at WHERE version <= excluded.version"
            ),
            find_command: format!(
                "SELECT stream_type, stream_id, version_before, version_after, recorded_at FROM {commands} WHERE command_id = ?1"
            ),
            record_command: format!(
                "INSERT INTO {commands} (command_id, stream_type, stream_id, version_before, version_after, recorded_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (command_id) DO NOTHING"
            ),
            events,
            snapshots,
            commands,
        }
    }
}

/// An event store in a SQLite database.
#[derive(Clone)]
pub struct SqliteStore {
    relay: Arc<RelaySql>,
    routing: Option<Arc<OutboxRouting>>,
    appended: Arc<watch::Sender<u64>>,
    pool: SqlitePool,
    naming: Arc<Naming>,
    sql: Arc<Statements>,
    source: Arc<str>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("naming", &self.naming)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Builds a [`SqliteStore`].
#[derive(Debug)]
pub struct SqliteStoreBuilder {
    routing: Option<OutboxRouting>,
    pool: SqlitePool,
    naming: Naming,
    source: String,
    migrate: bool,
}

impl SqliteStoreBuilder {
    /// Table names (default prefix `eventfold_`). A schema is not supported on SQLite.
    pub fn naming(mut self, naming: Naming) -> Self {
        self.naming = naming;
        self
    }

    /// The service name recorded as `source` on new events (default `eventfold`).
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Run the embedded migrations when building (default `true`).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Writes an outbox row for every routed event, in the same transaction as the append.
    pub fn outbox(mut self, routing: OutboxRouting) -> Self {
        self.routing = Some(routing);
        self
    }

    /// Builds the store, migrating first unless turned off.
    pub async fn build(self) -> Result<SqliteStore, StoreError> {
        if let Some(schema) = self.naming.schema() {
            return Err(StoreError::InvalidIdentifier {
                what: "schema",
                value: schema.to_owned(),
                reason: "SQLite has no schemas; use a table prefix",
            });
        }
        let store = SqliteStore {
            relay: Arc::new(RelaySql::new(&self.naming)),
            routing: self.routing.map(Arc::new),
            appended: Arc::new(watch::channel(0).0),
            sql: Arc::new(Statements::new(&self.naming)),
            pool: self.pool,
            naming: Arc::new(self.naming),
            source: Arc::from(self.source),
        };
        if self.migrate {
            store.migrate().await?;
        }
        Ok(store)
    }
}

impl SqliteStore {
    /// Opens (creating if needed) a database at `url` (`sqlite://path.db` or `sqlite::memory:`)
    /// in WAL mode, and migrates it with the default naming.
    ///
    /// An in-memory database lives in one connection, so its pool has exactly one.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(db_err("parsing the connection url", "-"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool = SqlitePoolOptions::new()
            .max_connections(if in_memory { 1 } else { 8 })
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(db_err("connecting", "-"))?;
        Self::builder(pool).build().await
    }

    /// A builder over an existing pool.
    pub fn builder(pool: SqlitePool) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            routing: None,
            pool,
            naming: Naming::default(),
            source: "eventfold".to_owned(),
            migrate: true,
        }
    }

    /// Sets the service name recorded as `source` on new events.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Arc::from(source.into());
        self
    }

    /// Writes an outbox row for every routed event, in the same transaction as the append.
    pub fn with_outbox(mut self, routing: OutboxRouting) -> Self {
        self.routing = Some(Arc::new(routing));
        self
    }

    /// The connection pool (for the application's own queries).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The table naming.
    pub fn naming(&self) -> &Naming {
        &self.naming
    }

    /// Applies the embedded migrations that are not applied yet, tracked in
    /// `{prefix}migrations` (never the application's `_sqlx_migrations`).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let table = self.naming.table("migrations");
        let mut tx = sql::begin_owned(&self.pool, Some("BEGIN IMMEDIATE"))
            .await
            .map_err(db_err("starting the migration transaction", &table))?;
        let create_table = format!(
            "CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, \
             checksum INTEGER NOT NULL, applied_at TEXT NOT NULL)"
        );
        sqlx::query(&create_table)
            .execute(&mut *tx)
            .await
            .map_err(db_err("creating the migration table", &table))?;
        let select_applied = format!("SELECT version, checksum FROM {table} ORDER BY version");
        let applied: Vec<(i64, i64)> = sqlx::query_as(&select_applied)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err("reading applied migrations", &table))?;
        let record = format!(
            "INSERT INTO {table} (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)"
        );
        for migration in sql::pending(MIGRATIONS, &applied, &table)? {
            let rendered = migration.render(&self.naming);
            sqlx::Executor::execute(&mut *tx, rendered.as_str())
                .await
                .map_err(|e| StoreError::Migration {
                    table: table.clone(),
                    version: migration.version,
                    name: migration.name.to_owned(),
                    reason: e.to_string(),
                })?;
            sqlx::query(&record)
                .bind(migration.version)
                .bind(migration.name)
                .bind(migration.checksum())
                .bind(Utc::now())
                .execute(&mut *tx)
                .await
                .map_err(db_err("recording a migration", &table))?;
        }
        tx.commit()
            .await
            .map_err(db_err("committing migrations", &table))
    }
}

async fn read_stream_on(
    conn: &mut SqliteConnection,
    sql: &Statements,
    stream_id: &StreamId,
    from_version: u64,
    max_count: u64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let rows: Vec<EventRow> = sqlx::query_as(&sql.read_stream)
        .bind(stream_id.stream_type())
        .bind(stream_id.id())
        .bind(to_i64(from_version.max(1), stream_id)?)
        .bind(i64::try_from(max_count).unwrap_or(i64::MAX))
        .fetch_all(conn)
        .await
        .map_err(db_err("reading a stream", &sql.events))?;
    rows.into_iter()
        .map(|row| sql::recorded(stream_id, row, &sql.events))
        .collect()
}

async fn version_on(
    conn: &mut SqliteConnection,
    sql: &Statements,
    stream_id: &StreamId,
) -> Result<u64, StoreError> {
    let (v,): (i64,) = sqlx::query_as(&sql.max_version)
        .bind(stream_id.stream_type())
        .bind(stream_id.id())
        .fetch_one(conn)
        .await
        .map_err(db_err("reading a stream version", &sql.events))?;
    to_u64(v, &sql.events, "stream version")
}

async fn snapshot_on(
    conn: &mut SqliteConnection,
    sql: &Statements,
    stream_id: &StreamId,
) -> Result<Option<Snapshot>, StoreError> {
    let row: Option<sql::SnapshotRow> = sqlx::query_as(&sql.load_snapshot)
        .bind(stream_id.stream_type())
        .bind(stream_id.id())
        .fetch_optional(conn)
        .await
        .map_err(db_err("loading a snapshot", &sql.snapshots))?;
    row.map(|row| sql::snapshot(stream_id, row, &sql.snapshots))
        .transpose()
}

async fn command_on(
    conn: &mut SqliteConnection,
    sql: &Statements,
    command_id: Uuid,
) -> Result<Option<CommandRecord>, StoreError> {
    let row: Option<sql::CommandRow> = sqlx::query_as(&sql.find_command)
        .bind(command_id)
        .fetch_optional(conn)
        .await
        .map_err(db_err("looking up a command", &sql.commands))?;
    row.map(|row| sql::command(command_id, row, &sql.commands))
        .transpose()
}

/// A unit of work of the [`SqliteStore`]: a `BEGIN IMMEDIATE` transaction.
pub struct SqliteUnitOfWork {
    source: Arc<str>,
    routing: Option<Arc<OutboxRouting>>,
    tx: Transaction<'static, Sqlite>,
    sql: Arc<Statements>,
    appended: Arc<watch::Sender<u64>>,
    wrote_events: bool,
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

    async fn insert_outbox(&mut self, messages: Vec<OutboxMessage>) -> Result<(), StoreError> {
        let now = eventfold_core::metadata::now_micros();
        for m in messages {
            sqlx::query(&self.sql.insert_outbox)
                .bind(m.id)
                .bind(&m.aggregate_type)
                .bind(&m.aggregate_id)
                .bind(&m.message_type)
                .bind(&m.payload)
                .bind(&m.topic)
                .bind(&m.key)
                .bind(sql::headers_json(&m.headers))
                .bind(OutboxMessage::slot_of(&m.key, OUTBOX_SLOTS) as i32)
                .bind(now)
                .execute(&mut *self.tx)
                .await
                .map_err(db_err("writing an outbox row", &self.sql.outbox))?;
        }
        Ok(())
    }
}

impl UnitOfWork for SqliteUnitOfWork {
    async fn append(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream_id, &events)?;
        fill_source(&mut events, &self.source);
        let current = version_on(&mut self.tx, &self.sql, stream_id).await?;
        if !expected.matches(current) {
            return Err(StoreError::VersionConflict {
                stream_id: stream_id.clone(),
                expected,
                actual: Some(current),
            });
        }
        // SQLite has no savepoint-free way to undo part of a statement list: insert into a
        // savepoint so a failed append leaves the unit of work as it was.
        sqlx::query("SAVEPOINT eventfold_append")
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("appending events", &self.sql.events))?;
        let mut positions = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let version = to_i64(current + 1 + i as u64, stream_id)?;
            let inserted: Result<(i64,), sqlx::Error> = sqlx::query_as(&self.sql.insert_event)
                .bind(event.event_id)
                .bind(stream_id.stream_type())
                .bind(stream_id.id())
                .bind(version)
                .bind(&event.event_type)
                .bind(i64::from(event.schema_version))
                .bind(&event.payload)
                .bind(event.timestamp)
                .bind(&event.source)
                .bind(event.correlation_id)
                .bind(event.causation_id)
                .bind(&event.tenant_id)
                .bind(sql::headers_json(&event.headers))
                .fetch_one(&mut *self.tx)
                .await;
            match inserted {
                Ok((position,)) => {
                    positions.push(to_u64(position, &self.sql.events, "global position")?)
                }
                Err(e) => {
                    let _ = sqlx::query("ROLLBACK TO SAVEPOINT eventfold_append")
                        .execute(&mut *self.tx)
                        .await;
                    let _ = sqlx::query("RELEASE SAVEPOINT eventfold_append")
                        .execute(&mut *self.tx)
                        .await;
                    return Err(match sql::unique_violation(&e) {
                        Some(c) if c.contains("event_id") => StoreError::DuplicateEventId {
                            stream_id: stream_id.clone(),
                            event_id: event.event_id,
                        },
                        Some(_) => StoreError::VersionConflict {
                            stream_id: stream_id.clone(),
                            expected,
                            actual: None,
                        },
                        None => db_err("appending events", &self.sql.events)(e),
                    });
                }
            }
        }
        if let Some(routing) = self.routing.clone() {
            let recorded: Vec<_> = events
                .iter()
                .cloned()
                .zip(&positions)
                .enumerate()
                .map(|(i, (e, p))| e.into_recorded(stream_id.clone(), current + 1 + i as u64, *p))
                .collect();
            if let Err(e) = self.insert_outbox(routing.messages_for(&recorded)).await {
                let _ = sqlx::query("ROLLBACK TO SAVEPOINT eventfold_append")
                    .execute(&mut *self.tx)
                    .await;
                let _ = sqlx::query("RELEASE SAVEPOINT eventfold_append")
                    .execute(&mut *self.tx)
                    .await;
                return Err(e);
            }
        }
        sqlx::query("RELEASE SAVEPOINT eventfold_append")
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("appending events", &self.sql.events))?;
        self.wrote_events = true;
        Ok(AppendResult {
            previous_version: current,
            version: current + events.len() as u64,
            positions,
        })
    }

    async fn read_stream(
        &mut self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        read_stream_on(&mut self.tx, &self.sql, stream_id, from_version, max_count).await
    }

    async fn stream_version(&mut self, stream_id: &StreamId) -> Result<u64, StoreError> {
        version_on(&mut self.tx, &self.sql, stream_id).await
    }

    async fn load_snapshot(
        &mut self,
        stream_id: &StreamId,
    ) -> Result<Option<Snapshot>, StoreError> {
        snapshot_on(&mut self.tx, &self.sql, stream_id).await
    }

    async fn save_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        sqlx::query(&self.sql.save_snapshot)
            .bind(snapshot.stream_id.stream_type())
            .bind(snapshot.stream_id.id())
            .bind(to_i64(snapshot.version, &snapshot.stream_id)?)
            .bind(i64::from(snapshot.snapshot_version))
            .bind(&snapshot.state)
            .bind(snapshot.taken_at)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("saving a snapshot", &self.sql.snapshots))?;
        Ok(())
    }

    async fn find_command(
        &mut self,
        command_id: Uuid,
    ) -> Result<Option<CommandRecord>, StoreError> {
        command_on(&mut self.tx, &self.sql, command_id).await
    }

    async fn record_command(&mut self, record: CommandRecord) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.sql.record_command)
            .bind(record.command_id)
            .bind(record.stream_id.stream_type())
            .bind(record.stream_id.id())
            .bind(to_i64(record.version_before, &record.stream_id)?)
            .bind(to_i64(record.version_after, &record.stream_id)?)
            .bind(record.recorded_at)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("recording a command", &self.sql.commands))?;
        Ok(done.rows_affected() == 1)
    }

    async fn mark_inbox(&mut self, consumer: &str, message_id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.sql.mark_inbox)
            .bind(consumer)
            .bind(message_id)
            .bind(eventfold_core::metadata::now_micros())
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("marking the inbox", &self.sql.inbox))?;
        Ok(done.rows_affected() == 1)
    }

    async fn enqueue(&mut self, messages: Vec<OutboxMessage>) -> Result<(), StoreError> {
        self.insert_outbox(messages).await?;
        // Wakes the relay at commit, like an append does.
        self.wrote_events = true;
        Ok(())
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.tx
            .commit()
            .await
            .map_err(db_err("committing", &self.sql.events))?;
        if self.wrote_events {
            self.appended.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    async fn rollback(self) -> Result<(), StoreError> {
        self.tx
            .rollback()
            .await
            .map_err(db_err("rolling back", &self.sql.events))
    }
}

impl EventStore for SqliteStore {
    type UnitOfWork = SqliteUnitOfWork;
    type Wakeup = LocalWakeup;

    /// Writers are serialized (`BEGIN IMMEDIATE`), so the log is in position order and every
    /// committed position up to the highest one is readable.
    async fn read_log(
        &self,
        after: Checkpoint,
        max_count: usize,
        filter: &LogFilter,
    ) -> Result<LogBatch, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db_err("acquiring a connection", &self.sql.events))?;
        let (end,): (i64,) = sqlx::query_as(&self.sql.log_end)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err("reading the log head", &self.sql.events))?;
        let rows: Vec<sql::LogRow> = sqlx::query_as(&self.sql.read_log)
            .bind(i64::try_from(after.position()).unwrap_or(i64::MAX))
            .bind(end)
            .bind(sql::filter_list(&filter.event_types))
            .bind(sql::filter_list(&filter.stream_types))
            .bind(filter.tenant.as_deref())
            .bind(i64::try_from(max_count).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err("reading the log", &self.sql.events))?;
        let end = Checkpoint::new(0, to_u64(end, &self.sql.events, "global position")?);
        sql::log_batch(rows, after, max_count, end, false, &self.sql.events)
    }

    async fn log_head(&self) -> Result<LogHead, StoreError> {
        let (end,): (i64,) = sqlx::query_as(&self.sql.log_end)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err("reading the log head", &self.sql.events))?;
        let position = to_u64(end, &self.sql.events, "global position")?;
        Ok(LogHead {
            position,
            readable_position: position,
            blocked_by: None,
        })
    }

    async fn wakeup(&self) -> Result<LocalWakeup, StoreError> {
        Ok(LocalWakeup(self.appended.subscribe()))
    }

    fn with_outbox(self, routing: OutboxRouting) -> Self {
        SqliteStore::with_outbox(self, routing)
    }

    async fn outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        let (pending, oldest, dead): (i64, Option<DateTime<Utc>>, i64) =
            sqlx::query_as(&self.sql.outbox_status)
                .fetch_one(&self.pool)
                .await
                .map_err(db_err("reading the outbox status", &self.sql.outbox))?;
        Ok(OutboxStatus {
            pending: to_u64(pending, &self.sql.outbox, "count")?,
            oldest,
            dead_letters: to_u64(dead, &self.sql.outbox, "count")?,
            floor_lag: None,
        })
    }

    async fn read_outbox(&self, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let rows: Vec<sql::OutboxDbRow> = sqlx::query_as(&self.sql.read_outbox)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("reading the outbox", &self.sql.outbox))?;
        rows.into_iter()
            .map(|r| sql::outbox_row(r, &self.sql.outbox))
            .collect()
    }

    async fn begin(&self) -> Result<SqliteUnitOfWork, StoreError> {
        let tx = sql::begin_owned(&self.pool, Some("BEGIN IMMEDIATE"))
            .await
            .map_err(db_err("starting a unit of work", &self.sql.events))?;
        Ok(SqliteUnitOfWork {
            source: self.source.clone(),
            routing: self.routing.clone(),
            tx,
            sql: self.sql.clone(),
            appended: self.appended.clone(),
            wrote_events: false,
        })
    }

    fn source(&self) -> &str {
        &self.source
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        max_count: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db_err("acquiring a connection", &self.sql.events))?;
        read_stream_on(&mut conn, &self.sql, stream_id, from_version, max_count).await
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<u64, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db_err("acquiring a connection", &self.sql.events))?;
        version_on(&mut conn, &self.sql, stream_id).await
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db_err("acquiring a connection", &self.sql.snapshots))?;
        snapshot_on(&mut conn, &self.sql, stream_id).await
    }

    async fn find_command(&self, command_id: Uuid) -> Result<Option<CommandRecord>, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db_err("acquiring a connection", &self.sql.commands))?;
        command_on(&mut conn, &self.sql, command_id).await
    }
}

/// The relay's statements (ADR 0009).
struct RelaySql {
    leases: String,
    heartbeat: String,
    forget_old: String,
    live: String,
    mine: String,
    release_some: String,
    renew: String,
    take: String,
    release_all: String,
    forget: String,
    claim: String,
    complete: String,
    fail: String,
    park_copy: String,
    park_delete: String,
    dead: String,
    dead_table: String,
    retry_copy: String,
    skip: String,
}

/// Columns of a row moved between the outbox and its dead letters.
const MOVED: &str =
    "id, aggregatetype, aggregateid, type, payload, topic, key, headers, slot, created_at";

impl RelaySql {
    fn new(naming: &Naming) -> Self {
        let outbox = naming.table("outbox");
        let dead = naming.table("outbox_dead");
        let leases = naming.table("outbox_leases");
        let relays = naming.table("outbox_relays");
        let cols = sql::OUTBOX_COLUMNS;
        let o_cols = cols
            .split(", ")
            .map(|c| format!("o.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            heartbeat: format!(
                "INSERT INTO {relays} (owner, heartbeat_at) VALUES (?1, ?2) \
                 ON CONFLICT (owner) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
            ),
            forget_old: format!("DELETE FROM {relays} WHERE heartbeat_at < ?1"),
            live: format!("SELECT COUNT(*) FROM {relays} WHERE heartbeat_at > ?1"),
            mine: format!(
                "SELECT slot FROM {leases} WHERE owner = ?1 AND expires_at > ?2 ORDER BY slot"
            ),
            release_some: format!(
                "UPDATE {leases} SET owner = NULL, expires_at = NULL \
                 WHERE owner = ?1 AND slot IN (SELECT value FROM json_each(?2))"
            ),
            renew: format!(
                "UPDATE {leases} SET expires_at = ?2 WHERE owner = ?1 AND slot IN (SELECT value FROM json_each(?3))"
            ),
            take: format!(
                "UPDATE {leases} SET owner = ?1, expires_at = ?2 WHERE slot IN \
                 (SELECT slot FROM {leases} WHERE owner IS NULL OR expires_at <= ?3 ORDER BY slot LIMIT ?4) \
                 RETURNING slot"
            ),
            release_all: format!(
                "UPDATE {leases} SET owner = NULL, expires_at = NULL WHERE owner = ?1"
            ),
            forget: format!("DELETE FROM {relays} WHERE owner = ?1"),
            // As on PostgreSQL: a window of rows whose key is not in flight, parked or
            // waiting for a retry, then the first row of each key in it.
            claim: format!(
                "WITH w AS (SELECT seq, key FROM {outbox} o \
                   WHERE slot IN (SELECT value FROM json_each(?1)) \
                   AND key NOT IN (SELECT value FROM json_each(?4)) \
                   AND NOT EXISTS (SELECT 1 FROM {dead} d WHERE d.key = o.key) \
                   AND NOT EXISTS (SELECT 1 FROM {outbox} b WHERE b.key = o.key \
                     AND b.next_attempt_at IS NOT NULL AND b.next_attempt_at > ?3) \
                   ORDER BY seq LIMIT ?2), \
                 c AS (SELECT min(seq) AS seq FROM w GROUP BY key) \
                 SELECT {o_cols} FROM {outbox} o WHERE o.seq IN (SELECT seq FROM c) ORDER BY o.seq"
            ),
            complete: format!(
                "DELETE FROM {outbox} WHERE seq IN (SELECT value FROM json_each(?2)) AND slot IN \
                 (SELECT slot FROM {leases} WHERE owner = ?1 AND expires_at > ?3)"
            ),
            fail: format!(
                "UPDATE {outbox} SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3 WHERE seq = ?1"
            ),
            park_copy: format!(
                "INSERT INTO {dead} (seq, {MOVED}, attempts, last_error, next_attempt_at, error, parked_at) \
                 SELECT seq, {MOVED}, attempts + 1, ?2, next_attempt_at, ?2, ?3 FROM {outbox} WHERE seq = ?1"
            ),
            park_delete: format!("DELETE FROM {outbox} WHERE seq = ?1"),
            dead: format!("SELECT {cols}, error, parked_at FROM {dead} ORDER BY seq LIMIT ?1"),
            retry_copy: format!(
                "INSERT INTO {outbox} (seq, {MOVED}, attempts) SELECT seq, {MOVED}, 0 FROM {dead} WHERE seq = ?1"
            ),
            skip: format!("DELETE FROM {dead} WHERE seq = ?1"),
            dead_table: dead,
            leases,
        }
    }
}

fn json_list<T: serde::Serialize>(values: &[T]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".to_owned())
}

fn after(duration: Duration) -> DateTime<Utc> {
    eventfold_core::metadata::now_micros()
        + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

fn before(duration: Duration) -> DateTime<Utc> {
    eventfold_core::metadata::now_micros()
        - chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

impl OutboxRelayStore for SqliteStore {
    async fn lease_slots(&self, owner: Uuid, ttl: Duration) -> Result<Vec<u32>, StoreError> {
        let r = &self.relay;
        let err = |op| db_err(op, &r.leases);
        let now = eventfold_core::metadata::now_micros();
        let mut tx = sql::begin_owned(&self.pool, Some("BEGIN IMMEDIATE"))
            .await
            .map_err(err("starting a lease transaction"))?;
        sqlx::query(&r.heartbeat)
            .bind(owner)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err("heartbeating"))?;
        sqlx::query(&r.forget_old)
            .bind(before(ttl * 3))
            .execute(&mut *tx)
            .await
            .map_err(err("forgetting relays"))?;
        let (live,): (i64,) = sqlx::query_as(&r.live)
            .bind(before(ttl))
            .fetch_one(&mut *tx)
            .await
            .map_err(err("counting live relays"))?;
        let share = fair_share(u64::try_from(live).unwrap_or(1));
        let mine: Vec<(i64,)> = sqlx::query_as(&r.mine)
            .bind(owner)
            .bind(now)
            .fetch_all(&mut *tx)
            .await
            .map_err(err("reading leases"))?;
        let mut mine: Vec<i64> = mine.into_iter().map(|(s,)| s).collect();
        if mine.len() > share {
            let extra = mine.split_off(share);
            sqlx::query(&r.release_some)
                .bind(owner)
                .bind(json_list(&extra))
                .execute(&mut *tx)
                .await
                .map_err(err("releasing leases"))?;
        }
        sqlx::query(&r.renew)
            .bind(owner)
            .bind(after(ttl))
            .bind(json_list(&mine))
            .execute(&mut *tx)
            .await
            .map_err(err("renewing leases"))?;
        if mine.len() < share {
            let taken: Vec<(i64,)> = sqlx::query_as(&r.take)
                .bind(owner)
                .bind(after(ttl))
                .bind(now)
                .bind(i64::try_from(share - mine.len()).unwrap_or(0))
                .fetch_all(&mut *tx)
                .await
                .map_err(err("taking leases"))?;
            mine.extend(taken.into_iter().map(|(s,)| s));
        }
        tx.commit().await.map_err(err("committing leases"))?;
        let mut slots: Vec<u32> = mine
            .into_iter()
            .filter_map(|s| u32::try_from(s).ok())
            .collect();
        slots.sort_unstable();
        Ok(slots)
    }

    async fn release_slots(&self, owner: Uuid) -> Result<(), StoreError> {
        let r = &self.relay;
        let mut tx = sql::begin_owned(&self.pool, Some("BEGIN IMMEDIATE"))
            .await
            .map_err(db_err("releasing leases", &r.leases))?;
        sqlx::query(&r.release_all)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(db_err("releasing leases", &r.leases))?;
        sqlx::query(&r.forget)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(db_err("releasing leases", &r.leases))?;
        tx.commit()
            .await
            .map_err(db_err("releasing leases", &r.leases))
    }

    async fn claim_outbox(
        &self,
        slots: &[u32],
        limit: usize,
        in_flight: &[&str],
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let rows: Vec<sql::OutboxDbRow> = sqlx::query_as(&self.relay.claim)
            .bind(json_list(slots))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(eventfold_core::metadata::now_micros())
            .bind(json_list(in_flight))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("claiming outbox rows", &self.sql.outbox))?;
        rows.into_iter()
            .map(|r| sql::outbox_row(r, &self.sql.outbox))
            .collect()
    }

    async fn complete_outbox(&self, owner: Uuid, seqs: &[u64]) -> Result<u64, StoreError> {
        let done = sqlx::query(&self.relay.complete)
            .bind(owner)
            .bind(json_list(seqs))
            .bind(eventfold_core::metadata::now_micros())
            .execute(&self.pool)
            .await
            .map_err(db_err("deleting published outbox rows", &self.sql.outbox))?;
        Ok(done.rows_affected())
    }

    async fn fail_outbox(
        &self,
        seq: u64,
        error: &str,
        retry_after: Duration,
    ) -> Result<(), StoreError> {
        sqlx::query(&self.relay.fail)
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .bind(error)
            .bind(after(retry_after))
            .execute(&self.pool)
            .await
            .map_err(db_err("recording a failed publish", &self.sql.outbox))?;
        Ok(())
    }

    async fn park_outbox(&self, seq: u64, error: &str) -> Result<(), StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let err = || db_err("parking an outbox row", &self.sql.outbox);
        let mut tx = sql::begin_owned(&self.pool, Some("BEGIN IMMEDIATE"))
            .await
            .map_err(err())?;
        sqlx::query(&self.relay.park_copy)
            .bind(seq)
            .bind(error)
            .bind(eventfold_core::metadata::now_micros())
            .execute(&mut *tx)
            .await
            .map_err(err())?;
        sqlx::query(&self.relay.park_delete)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(err())?;
        tx.commit().await.map_err(err())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let rows: Vec<sql::DeadDbRow> = sqlx::query_as(&self.relay.dead)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("reading dead letters", &self.relay.dead_table))?;
        rows.into_iter()
            .map(|r| sql::dead_letter(r, &self.relay.dead_table))
            .collect()
    }

    async fn retry_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let err = || db_err("retrying a dead letter", &self.relay.dead_table);
        let mut tx = sql::begin_owned(&self.pool, Some("BEGIN IMMEDIATE"))
            .await
            .map_err(err())?;
        let copied = sqlx::query(&self.relay.retry_copy)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(err())?;
        sqlx::query(&self.relay.skip)
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(err())?;
        tx.commit().await.map_err(err())?;
        Ok(copied.rows_affected() == 1)
    }

    async fn skip_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.relay.skip)
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await
            .map_err(db_err("skipping a dead letter", &self.relay.dead_table))?;
        Ok(done.rows_affected() == 1)
    }
}

impl InboxStore for SqliteStore {
    async fn park_message(&self, message: ParkedMessage) -> Result<(), StoreError> {
        let err = || db_err("parking a consumer message", &self.sql.inbox);
        let now = eventfold_core::metadata::now_micros();
        let mut tx = sql::begin_owned(&self.pool, Some("BEGIN IMMEDIATE"))
            .await
            .map_err(err())?;
        sqlx::query(&self.sql.mark_inbox)
            .bind(&message.consumer)
            .bind(message.message_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err())?;
        sqlx::query(&self.sql.park_message)
            .bind(&message.consumer)
            .bind(message.message_id)
            .bind(&message.topic)
            .bind(i64::from(message.partition))
            .bind(i64::try_from(message.offset).unwrap_or(i64::MAX))
            .bind(&message.key)
            .bind(&message.message_type)
            .bind(&message.payload)
            .bind(sql::headers_json(&message.headers))
            .bind(i64::from(message.attempts))
            .bind(&message.error)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err())?;
        tx.commit().await.map_err(err())
    }

    async fn parked_messages(
        &self,
        consumer: &str,
        limit: usize,
    ) -> Result<Vec<ParkedMessage>, StoreError> {
        let rows: Vec<sql::ParkedRow> = sqlx::query_as(&self.sql.parked_messages)
            .bind(consumer)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("reading parked messages", &self.sql.inbox))?;
        rows.into_iter()
            .map(|r| sql::parked(consumer, r, &self.sql.inbox))
            .collect()
    }
}
