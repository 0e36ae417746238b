//! The PostgreSQL event store (feature `postgres`).
//!
//! Appends are one statement per call: the events of a call are inserted with `UNNEST` in a
//! statement that also checks the expected version, and the unique index on
//! `(stream_type, stream_id, stream_version)` turns a concurrent append into
//! [`StoreError::VersionConflict`]. Writers to different streams never wait for each other.
//! Tables live under a validated prefix and, optionally, a schema; migrations are serialized
//! across processes with an advisory lock and tracked in `{prefix}migrations`.
//!
//! ```no_run
//! use eventfold_eventstore::{postgres::PgStore, EventStore, UnitOfWork, ExpectedVersion, Naming};
//! use eventfold_core::{NewEvent, StreamId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
//! let store = PgStore::builder(pool)
//!     .naming(Naming::new("eventfold_")?.with_schema("orders")?)
//!     .source("order-service")
//!     .build()
//!     .await?;
//!
//! let stream = StreamId::new("order", "7")?;
//! let mut uow = store.begin().await?;
//! uow.append(&stream, ExpectedVersion::NoStream, vec![NewEvent::raw("order.placed", 1, b"{}".to_vec())]).await?;
//! sqlx::query("UPDATE app_counters SET n = n + 1").execute(uow.connection()).await?;
//! uow.commit().await?;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use eventfold_core::{NewEvent, OutboxMessage, RecordedEvent, StreamId};
use sqlx::postgres::{PgArguments, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::error::{ExpectedVersion, StoreError};
use crate::inbox::{InboxStore, ParkedMessage};
use crate::log::{BlockingTransaction, Checkpoint, LogBatch, LogFilter, LogHead};
use crate::naming::Naming;
use crate::outbox::{
    DeadLetter, OUTBOX_SLOTS, OutboxRelayStore, OutboxRouting, OutboxRow, OutboxStatus, fair_share,
};
use crate::sql::{self, EVENT_COLUMNS, EventRow, Migration, db_err, to_i64, to_u64};
use crate::store::{
    AppendResult, CommandRecord, EventStore, Snapshot, UnitOfWork, Wakeup, fill_source,
    validate_append,
};

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events, snapshots, commands",
        sql: r#"
CREATE TABLE IF NOT EXISTS {events} (
    global_position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id UUID NOT NULL,
    stream_type TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    stream_version BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload BYTEA NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,
    source TEXT NOT NULL,
    correlation_id UUID NOT NULL,
    causation_id UUID,
    tenant_id TEXT,
    headers JSONB NOT NULL DEFAULT '{}',
    commit_key BIGINT NOT NULL,
    CONSTRAINT "{prefix}events_event_id_uq" UNIQUE (event_id),
    CONSTRAINT "{prefix}events_stream_version_uq" UNIQUE (stream_type, stream_id, stream_version)
);
CREATE INDEX IF NOT EXISTS "{prefix}events_log_idx" ON {events} (commit_key, global_position);
CREATE TABLE IF NOT EXISTS {snapshots} (
    stream_type TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    snapshot_version BIGINT NOT NULL,
    state BYTEA NOT NULL,
    taken_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (stream_type, stream_id)
);
CREATE TABLE IF NOT EXISTS {commands} (
    command_id UUID PRIMARY KEY,
    stream_type TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    version_before BIGINT NOT NULL,
    version_after BIGINT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL
);
"#,
    },
    Migration {
        version: 2,
        name: "outbox and its dead letters (Debezium Outbox Event Router columns)",
        sql: r#"
CREATE TABLE IF NOT EXISTS {outbox} (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id UUID NOT NULL,
    aggregatetype TEXT NOT NULL,
    aggregateid TEXT NOT NULL,
    type TEXT NOT NULL,
    payload BYTEA NOT NULL,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    headers JSONB NOT NULL DEFAULT '{}',
    slot INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at TIMESTAMPTZ,
    CONSTRAINT "{prefix}outbox_id_uq" UNIQUE (id)
);
CREATE INDEX IF NOT EXISTS "{prefix}outbox_slot_idx" ON {outbox} (slot, seq);
CREATE TABLE IF NOT EXISTS {outbox_dead} (
    seq BIGINT PRIMARY KEY,
    id UUID NOT NULL,
    aggregatetype TEXT NOT NULL,
    aggregateid TEXT NOT NULL,
    type TEXT NOT NULL,
    payload BYTEA NOT NULL,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    headers JSONB NOT NULL,
    slot INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    next_attempt_at TIMESTAMPTZ,
    error TEXT NOT NULL,
    parked_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS "{prefix}outbox_dead_key_idx" ON {outbox_dead} (key);
CREATE TABLE IF NOT EXISTS {outbox_leases} (
    slot INTEGER PRIMARY KEY,
    owner UUID,
    expires_at TIMESTAMPTZ
);
INSERT INTO {outbox_leases} (slot) SELECT generate_series(0, 255) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS {outbox_relays} (
    owner UUID PRIMARY KEY,
    heartbeat_at TIMESTAMPTZ NOT NULL
);
"#,
    },
    Migration {
        version: 3,
        name: "consumer inbox and its parked messages",
        sql: r#"
CREATE TABLE IF NOT EXISTS {inbox} (
    consumer TEXT NOT NULL,
    message_id UUID NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE TABLE IF NOT EXISTS {inbox_dead} (
    consumer TEXT NOT NULL,
    message_id UUID NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" BIGINT NOT NULL,
    key TEXT NOT NULL,
    type TEXT NOT NULL,
    payload BYTEA NOT NULL,
    headers JSONB NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    parked_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
"#,
    },
    Migration {
        version: 4,
        name: "projections: state, checkpoints per generation, parked events",
        sql: crate::projection_pg::MIGRATION,
    },
    Migration {
        version: 5,
        name: "outbox: retry index for the claim, autovacuum tuned for a queue table",
        sql: r#"
CREATE INDEX IF NOT EXISTS "{prefix}outbox_retry_idx" ON {outbox} (key) WHERE next_attempt_at IS NOT NULL;
ALTER TABLE {outbox} SET (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0.0, autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0);
"#,
    },
    Migration {
        version: 6,
        name: "outbox: a lower bound on seq for the claim (ADR 0017)",
        // One row. `floor_seq`: no outbox row has a lower `seq`, but a retried dead letter,
        // whose retry lowers it in the same transaction. `seen_seq`: the sequence's last value,
        // read by the last advance. `bound_seq` / `bound_xid`: every `seq` up to `bound_seq` was
        // taken by a transaction whose id is below `bound_xid`.
        sql: r#"
CREATE TABLE IF NOT EXISTS {outbox_floor} (
    id BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    floor_seq BIGINT NOT NULL DEFAULT 0,
    seen_seq BIGINT NOT NULL DEFAULT 0,
    bound_seq BIGINT NOT NULL DEFAULT 0,
    bound_xid BIGINT NOT NULL DEFAULT 0
);
INSERT INTO {outbox_floor} DEFAULT VALUES ON CONFLICT DO NOTHING;
"#,
    },
];

/// The filter every statement that inserts outbox rows carries: it gives the transaction its id
/// before the first row takes its `seq` (the filter runs before the rows are projected, and so
/// before the identity default). The outbox floor (ADR 0017) needs it: a `seq` taken before a
/// moment belongs to a transaction whose id was given out before that moment.
const XID_FIRST: &str = "pg_current_xact_id() IS NOT NULL";

/// The last `seq` the outbox's identity sequence gave out (NULL before its first use); `$1` is
/// the outbox table's qualified name. Read by the floor's advance and the status (ADR 0017).
const LAST_OUTBOX_SEQ: &str = "pg_sequence_last_value(pg_get_serial_sequence($1, 'seq')::regclass)";

struct Statements {
    inbox: String,
    mark_inbox: String,
    park_message: String,
    parked_messages: String,
    outbox: String,
    insert_outbox: String,
    append_one_outbox: String,
    append_outbox: String,
    outbox_status: String,
    read_outbox: String,
    append_one: String,
    channel: String,
    horizon: String,
    read_log: String,
    held_back: String,
    head: String,
    events: String,
    snapshots: String,
    commands: String,
    max_version: String,
    append: String,
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
        // The stream's last row gives both the version to check and the commit key to extend
        // (ADR 0007); shared by the one-event and the many-event append.
        let append_with = format!(
            "WITH last AS (SELECT stream_version, commit_key FROM {events} \
               WHERE stream_type = $1 AND stream_id = $2 ORDER BY stream_version DESC LIMIT 1), \
             cur AS (SELECT COALESCE((SELECT stream_version FROM last), 0)::int8 AS v, \
               GREATEST(pg_current_xact_id()::text::int8, COALESCE((SELECT commit_key FROM last), 0)) AS k)"
        );
        let insert_events = format!(
            "INSERT INTO {events} (event_id, stream_type, stream_id, stream_version, event_type, schema_version, \
               payload, recorded_at, source, correlation_id, causation_id, tenant_id, headers, commit_key) "
        );
        let one_event = "SELECT $3, $1, $2, cur.v + 1, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, cur.k \
             FROM cur WHERE $13::int8 IS NULL OR cur.v = $13";
        let many_events = "SELECT e.event_id, $1, $2, cur.v + e.ord, e.event_type, e.schema_version, e.payload, e.recorded_at, \
               e.source, e.correlation_id, e.causation_id, e.tenant_id, e.headers::jsonb, cur.k \
             FROM cur, UNNEST($3::uuid[], $4::text[], $5::int4[], $6::bytea[], $7::timestamptz[], $8::text[], \
               $9::uuid[], $10::uuid[], $11::text[], $12::text[]) WITH ORDINALITY \
               AS e(event_id, event_type, schema_version, payload, recorded_at, source, correlation_id, \
               causation_id, tenant_id, headers, ord) \
             WHERE $13::int8 IS NULL OR cur.v = $13 \
             ORDER BY e.ord";
        let outbox = naming.table("outbox");
        let outbox_columns =
            "id, aggregatetype, aggregateid, type, payload, topic, key, headers, slot";
        let outbox_rows = |first: usize| {
            let p = |i: usize| first + i;
            format!(
                "FROM UNNEST(${}::uuid[], ${}::text[], ${}::text[], ${}::text[], ${}::bytea[], ${}::text[], \
                   ${}::text[], ${}::text[], ${}::int4[]) WITH ORDINALITY \
                   AS m(id, at, aid, ty, payload, topic, key, headers, slot, ord)",
                p(0),
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                p(6),
                p(7),
                p(8)
            )
        };
        // Events and their outbox rows in one statement (one round trip, atomic on its own): the
        // rows are written only when the events are, and each message of an event gets the
        // stream version the database gave it (an `Any` append learns it only here).
        let with_outbox = |events_select: &str| {
            format!(
                "{append_with}, ev AS ({insert_events}{events_select} \
                   RETURNING event_id, global_position, stream_version), \
                 ob AS (INSERT INTO {outbox} ({outbox_columns}) \
                   SELECT m.id, m.at, m.aid, m.ty, m.payload, m.topic, m.key, \
                     CASE WHEN ev.stream_version IS NULL THEN m.headers::jsonb \
                       ELSE m.headers::jsonb || jsonb_build_object('{version}', ev.stream_version::text) END, m.slot \
                   {rows} LEFT JOIN ev ON ev.event_id = m.id \
                   WHERE EXISTS (SELECT 1 FROM ev) AND {XID_FIRST} ORDER BY m.ord) \
                 SELECT global_position, stream_version FROM ev",
                version = eventfold_core::outbox::headers::STREAM_VERSION,
                rows = outbox_rows(14),
            )
        };
        let outbox_dead = naming.table("outbox_dead");
        let outbox_floor = naming.table("outbox_floor");
        let inbox = naming.table("inbox");
        let inbox_dead = naming.table("inbox_dead");
        Self {
            mark_inbox: format!(
                "INSERT INTO {inbox} (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            ),
            park_message: format!(
                "WITH mark AS (INSERT INTO {inbox} (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING) \
                 INSERT INTO {inbox_dead} (consumer, message_id, topic, partition, \"offset\", key, type, payload, headers, \
                 attempts, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11) \
                 ON CONFLICT (consumer, message_id) DO UPDATE SET attempts = EXCLUDED.attempts, error = EXCLUDED.error, \
                 parked_at = now()"
            ),
            parked_messages: format!(
                "SELECT message_id, topic, partition::int8, \"offset\", key, type, payload, headers::text, attempts::int8, error, parked_at \
                 FROM {inbox_dead} WHERE consumer = $1 ORDER BY parked_at LIMIT $2"
            ),
            inbox,
            insert_outbox: format!(
                "INSERT INTO {outbox} ({outbox_columns}) \
                 SELECT m.id, m.at, m.aid, m.ty, m.payload, m.topic, m.key, m.headers::jsonb, m.slot \
                 {} WHERE {XID_FIRST} ORDER BY m.ord",
                outbox_rows(1)
            ),
            append_one_outbox: with_outbox(one_event),
            append_outbox: with_outbox(many_events),
            // The floor's lag: from the floor to the first live row, or to the next `seq` when
            // there is none (the floor itself before the sequence was first used).
            outbox_status: format!(
                "SELECT (SELECT COUNT(*) FROM {outbox})::int8, (SELECT MIN(created_at) FROM {outbox}), \
                 (SELECT COUNT(*) FROM {outbox_dead})::int8, \
                 (SELECT GREATEST(COALESCE((SELECT MIN(o.seq) FROM {outbox} o), \
                   {LAST_OUTBOX_SEQ} + 1, \
                   f.floor_seq) - f.floor_seq, 0) FROM {outbox_floor} f)::int8"
            ),
            read_outbox: format!(
                "SELECT {} FROM {outbox} ORDER BY seq LIMIT $1",
                sql::OUTBOX_COLUMNS.replace(" headers,", " headers::text,")
            ),
            outbox,
            channel: match naming.schema() {
                Some(schema) => format!("{schema}.{}", naming.bare("events")),
                None => naming.bare("events"),
            },
            append_one: format!(
                "{append_with} {insert_events}{one_event} RETURNING global_position, stream_version"
            ),
            horizon: "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8".to_owned(),
            read_log: format!(
                "SELECT commit_key, stream_type, stream_id, {EVENT_COLUMNS}, headers::text FROM {events} \
                 WHERE (commit_key, global_position) > ($1, $2) AND commit_key < $3 \
                 AND ($4::text[] IS NULL OR event_type = ANY($4)) \
                 AND ($5::text[] IS NULL OR stream_type = ANY($5)) \
                 AND ($6::text IS NULL OR tenant_id = $6) \
                 ORDER BY commit_key, global_position LIMIT $7"
            ),
            // Only the newest row of the log index: some row is held back exactly when the
            // newest one is. (An EXISTS over the range lets a generic plan scan the table.)
            held_back: format!(
                "SELECT COALESCE((SELECT commit_key >= $1 AND (commit_key, global_position) > ($2, $3) \
                 FROM {events} ORDER BY commit_key DESC, global_position DESC LIMIT 1), false)"
            ),
            head: format!(
                "SELECT COALESCE((SELECT MAX(global_position) FROM {events}), 0)::int8, \
                   COALESCE((SELECT MAX(global_position) FROM {events} \
                     WHERE commit_key < pg_snapshot_xmin(pg_current_snapshot())::text::int8), 0)::int8"
            ),
            max_version: format!(
                "SELECT COALESCE(MAX(stream_version), 0)::int8 FROM {events} WHERE stream_type = $1 AND stream_id = $2"
            ),
            append: format!(
                "{append_with} {insert_events}{many_events} RETURNING global_position, stream_version"
            ),
            read_stream: format!(
                "SELECT {EVENT_COLUMNS}, headers::text FROM {events} WHERE stream_type = $1 AND stream_id = $2 \
                 AND stream_version >= $3 ORDER BY stream_version LIMIT $4"
            ),
            load_snapshot: format!(
                "SELECT version, snapshot_version, state, taken_at FROM {snapshots} WHERE stream_type = $1 AND stream_id = $2"
            ),
            save_snapshot: format!(
                "INSERT INTO {snapshots} AS s (stream_type, stream_id, version, snapshot_version, state, taken_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stream_type, stream_id) DO UPDATE SET \
                 version = EXCLUDED.version, snapshot_version = EXCLUDED.snapshot_version, state = EXCLUDED.state, \
                 taken_at = EXCLUDED.taken_at WHERE s.version <= EXCLUDED.version"
            ),
            find_command: format!(
                "SELECT stream_type, stream_id, version_before, version_after, recorded_at FROM {commands} WHERE command_id = $1"
            ),
            record_command: format!(
                "INSERT INTO {commands} (command_id, stream_type, stream_id, version_before, version_after, recorded_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (command_id) DO NOTHING"
            ),
            events,
            snapshots,
            commands,
        }
    }
}

/// An event store in a PostgreSQL database.
#[derive(Clone)]
pub struct PgStore {
    relay: Arc<RelaySql>,
    routing: Option<Arc<OutboxRouting>>,
    appended: Arc<watch::Sender<u64>>,
    pool: PgPool,
    naming: Arc<Naming>,
    sql: Arc<Statements>,
    source: Arc<str>,
    /// When this store last advanced the outbox floor (ADR 0017).
    floor_advanced: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// How often a store's relays advance the outbox floor before a claim (ADR 0017). A claim walks
/// past the index entries of the rows deleted since then.
const FLOOR_EVERY: Duration = Duration::from_millis(100);

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("naming", &self.naming)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Builds a [`PgStore`].
#[derive(Debug)]
pub struct PgStoreBuilder {
    routing: Option<OutboxRouting>,
    pool: PgPool,
    naming: Naming,
    source: String,
    migrate: bool,
}

impl PgStoreBuilder {
    /// Table names: prefix (default `eventfold_`) and optional schema.
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
    pub async fn build(self) -> Result<PgStore, StoreError> {
        let sql = Arc::new(Statements::new(&self.naming));
        let (appended, signals) = watch::channel(0);
        // Tell other processes about appends, outside the writers' transactions: a NOTIFY inside
        // them would serialize their commits on PostgreSQL's notification queue lock.
        tokio::spawn(notify_pump(self.pool.clone(), sql.channel.clone(), signals));
        let store = PgStore {
            relay: Arc::new(RelaySql::new(&self.naming)),
            routing: self.routing.map(Arc::new),
            appended: Arc::new(appended),
            sql,
            pool: self.pool,
            naming: Arc::new(self.naming),
            source: Arc::from(self.source),
            floor_advanced: Arc::new(std::sync::Mutex::new(None)),
        };
        if self.migrate {
            store.migrate().await?;
        }
        Ok(store)
    }
}

impl PgStore {
    /// Connects to `url` with a pool of 16 connections and migrates with the default naming.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .test_before_acquire(false)
            .connect(url)
            .await
            .map_err(db_err("connecting", "-"))?;
        Self::builder(pool).build().await
    }

    /// A builder over an existing pool.
    pub fn builder(pool: PgPool) -> PgStoreBuilder {
        PgStoreBuilder {
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
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The table naming.
    pub fn naming(&self) -> &Naming {
        &self.naming
    }

    /// Applies the embedded migrations that are not applied yet, tracked in
    /// `{prefix}migrations`. Concurrent callers (several instances starting at once) are
    /// serialized by a transaction-scoped advisory lock.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let table = self.naming.table("migrations");
        let mut tx = sql::begin_owned(&self.pool, None)
            .await
            .map_err(db_err("starting the migration transaction", &table))?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("eventfold migrations {table}"))
            .execute(&mut *tx)
            .await
            .map_err(db_err("taking the migration lock", &table))?;
        if let Some(schema) = self.naming.schema() {
            let create_schema = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
            sqlx::query(&create_schema)
                .execute(&mut *tx)
                .await
                .map_err(db_err("creating the schema", &table))?;
        }
        let create_table = format!(
            "CREATE TABLE IF NOT EXISTS {table} (version BIGINT PRIMARY KEY, name TEXT NOT NULL, \
             checksum BIGINT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
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
        let record = format!("INSERT INTO {table} (version, name, checksum) VALUES ($1, $2, $3)");
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
    conn: &mut PgConnection,
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
    conn: &mut PgConnection,
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
    conn: &mut PgConnection,
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
    conn: &mut PgConnection,
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

/// A unit of work of the [`PgStore`]: a READ COMMITTED transaction.
pub struct PgUnitOfWork {
    source: Arc<str>,
    routing: Option<Arc<OutboxRouting>>,
    tx: Transaction<'static, Postgres>,
    sql: Arc<Statements>,
    appended: Arc<watch::Sender<u64>>,
    wrote_events: bool,
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

/// Bind values of a statement, keeping the first one that failed to encode (the statement then
/// fails with it).
#[derive(Default)]
struct Binds {
    args: PgArguments,
    error: Option<sqlx::error::BoxDynError>,
}

impl Binds {
    fn add<'q, T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
    {
        if self.error.is_none() {
            if let Err(e) = sqlx::Arguments::add(&mut self.args, value) {
                self.error = Some(e);
            }
        }
        self
    }

    /// The columns of outbox rows, one array each (`insert_outbox`'s parameters).
    fn outbox(&mut self, messages: &[OutboxMessage]) -> &mut Self {
        let n = messages.len();
        let (mut ids, mut ats, mut aids, mut tys, mut payloads) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut topics, mut keys, mut headers, mut slots) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for m in messages {
            ids.push(m.id);
            ats.push(m.aggregate_type.as_str());
            aids.push(m.aggregate_id.as_str());
            tys.push(m.message_type.as_str());
            payloads.push(m.payload.as_slice());
            topics.push(m.topic.as_str());
            keys.push(m.key.as_str());
            headers.push(sql::headers_json(&m.headers));
            slots.push(OutboxMessage::slot_of(&m.key, OUTBOX_SLOTS) as i32);
        }
        self.add(ids)
            .add(ats)
            .add(aids)
            .add(tys)
            .add(payloads)
            .add(topics)
            .add(keys)
            .add(headers)
            .add(slots)
    }

    fn finish(self) -> Result<PgArguments, sqlx::error::BoxDynError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.args),
        }
    }
}

/// Appends `events` and, in the same statement, the `outbox` rows of the events (one round
/// trip either way; the rows are written only when the events are).
async fn try_append(
    conn: &mut PgConnection,
    sql: &Statements,
    stream_id: &StreamId,
    expected: Option<i64>,
    events: &[NewEvent],
    outbox: &[OutboxMessage],
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    let mut binds = Binds::default();
    binds.add(stream_id.stream_type()).add(stream_id.id());
    let statement = if let [e] = events {
        // One event (the common command): scalar parameters instead of arrays.
        binds
            .add(e.event_id)
            .add(e.event_type.as_str())
            .add(i32::try_from(e.schema_version).unwrap_or(i32::MAX))
            .add(e.payload.as_slice())
            .add(e.timestamp)
            .add(e.source.as_str())
            .add(e.correlation_id)
            .add(e.causation_id)
            .add(e.tenant_id.as_deref())
            .add(sql::headers_json(&e.headers));
        if outbox.is_empty() {
            &sql.append_one
        } else {
            &sql.append_one_outbox
        }
    } else {
        let n = events.len();
        let mut ids = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut versions = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut sources = Vec::with_capacity(n);
        let mut correlations = Vec::with_capacity(n);
        let mut causations = Vec::with_capacity(n);
        let mut tenants = Vec::with_capacity(n);
        let mut headers = Vec::with_capacity(n);
        for e in events {
            ids.push(e.event_id);
            types.push(e.event_type.as_str());
            versions.push(i32::try_from(e.schema_version).unwrap_or(i32::MAX));
            payloads.push(e.payload.as_slice());
            times.push(e.timestamp);
            sources.push(e.source.as_str());
            correlations.push(e.correlation_id);
            causations.push(e.causation_id);
            tenants.push(e.tenant_id.as_deref());
            headers.push(sql::headers_json(&e.headers));
        }
        binds
            .add(ids)
            .add(types)
            .add(versions)
            .add(payloads)
            .add(times)
            .add(sources)
            .add(correlations)
            .add(causations)
            .add(tenants)
            .add(headers);
        if outbox.is_empty() {
            &sql.append
        } else {
            &sql.append_outbox
        }
    };
    binds.add(expected);
    if !outbox.is_empty() {
        binds.outbox(outbox);
    }
    let args = binds.finish().map_err(sqlx::Error::Encode)?;
    sqlx::query_as_with(statement, args).fetch_all(conn).await
}

/// The outbox messages of `events` under `routing`, before they are appended: each carries the
/// stream version it will have with an exact expected version; `try_append` writes the version
/// the database gave it either way.
fn outbox_messages(
    routing: &OutboxRouting,
    stream_id: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Vec<OutboxMessage> {
    let first = expected.exact().unwrap_or(0) + 1;
    let recorded: Vec<RecordedEvent> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.clone()
                .into_recorded(stream_id.clone(), first + i as u64, 0)
        })
        .collect();
    routing.messages_for(&recorded)
}

fn append_error(
    sql: &Statements,
    e: sqlx::Error,
    stream_id: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> StoreError {
    match sql::unique_violation(&e) {
        Some(c) if c.ends_with("event_id_uq") => StoreError::DuplicateEventId {
            stream_id: stream_id.clone(),
            event_id: duplicate_id(&e, events),
        },
        Some(_) => StoreError::VersionConflict {
            stream_id: stream_id.clone(),
            expected,
            actual: None,
        },
        None => db_err("appending events", &sql.events)(e),
    }
}

/// Checks what the database cannot: no empty batch, versions that fit the columns.
fn check_append(stream_id: &StreamId, events: &[NewEvent]) -> Result<(), StoreError> {
    validate_append(stream_id, events)?;
    if let Some(e) = events
        .iter()
        .find(|e| i32::try_from(e.schema_version).is_err())
    {
        return Err(StoreError::InvalidEvent {
            stream_id: stream_id.clone(),
            event_id: e.event_id,
            event_type: e.event_type.clone(),
            reason: "schema version does not fit an INTEGER".to_owned(),
        });
    }
    Ok(())
}

/// Turns the rows an append returned into its result; no rows means the version did not match.
async fn append_result(
    conn: &mut PgConnection,
    sql: &Statements,
    stream_id: &StreamId,
    expected: ExpectedVersion,
    mut rows: Vec<(i64, i64)>,
    count: usize,
) -> Result<AppendResult, StoreError> {
    if rows.is_empty() {
        let actual = version_on(conn, sql, stream_id).await?;
        return Err(StoreError::VersionConflict {
            stream_id: stream_id.clone(),
            expected,
            actual: Some(actual),
        });
    }
    rows.sort_by_key(|(_, version)| *version);
    let version = to_u64(
        rows.last().map_or(0, |r| r.1),
        &sql.events,
        "stream version",
    )?;
    let positions = rows
        .iter()
        .map(|(p, _)| to_u64(*p, &sql.events, "global position"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AppendResult {
        previous_version: version - count as u64,
        version,
        positions,
    })
}

/// An append with an exact expected version (events and outbox rows): one statement, atomic on
/// its own.
async fn append_exact(
    conn: &mut PgConnection,
    sql: &Statements,
    stream_id: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
    outbox: &[OutboxMessage],
) -> Result<AppendResult, StoreError> {
    let v = to_i64(expected.exact().unwrap_or(0), stream_id)?;
    let rows = try_append(conn, sql, stream_id, Some(v), events, outbox)
        .await
        .map_err(|e| append_error(sql, e, stream_id, expected, events))?;
    append_result(conn, sql, stream_id, expected, rows, events.len()).await
}

/// An `Any` append outside a transaction (events and outbox rows): the statement commits on its
/// own, so when a concurrent append took the version it is simply run again (no savepoint).
async fn append_any(
    conn: &mut PgConnection,
    sql: &Statements,
    stream_id: &StreamId,
    events: &[NewEvent],
    outbox: &[OutboxMessage],
) -> Result<AppendResult, StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_append(conn, sql, stream_id, None, events, outbox).await {
            Ok(rows) => {
                let any = ExpectedVersion::Any;
                return append_result(conn, sql, stream_id, any, rows, events.len()).await;
            }
            Err(e) => {
                let error = append_error(sql, e, stream_id, ExpectedVersion::Any, events);
                if !error.is_conflict() || attempt >= ANY_RETRIES {
                    return Err(error);
                }
            }
        }
    }
}

/// The event id named in a unique-violation detail, or the first id of the batch.
fn duplicate_id(e: &sqlx::Error, events: &[NewEvent]) -> Uuid {
    let detail = e
        .as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
        .and_then(|d| d.detail().map(str::to_owned))
        .unwrap_or_default();
    events
        .iter()
        .map(|ev| ev.event_id)
        .find(|id| detail.contains(&id.to_string()))
        .unwrap_or_else(|| events.first().map_or(Uuid::nil(), |ev| ev.event_id))
}

/// Shortest time between two NOTIFYs of one process. A NOTIFY is a small transaction of its
/// own (with a WAL flush), so a burst of appends sends one. Readers in the same process are woken
/// at once, without it.
const NOTIFY_EVERY: Duration = Duration::from_millis(5);

/// Sends a NOTIFY on `channel` after appends made through this process's store handles, at most
/// one per [`NOTIFY_EVERY`]; ends when every handle is dropped.
async fn notify_pump(pool: PgPool, channel: String, mut signals: watch::Receiver<u64>) {
    while signals.changed().await.is_ok() {
        if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
            .bind(&channel)
            .execute(&pool)
            .await
        {
            tracing::debug!(error = %e, "NOTIFY failed; other processes' readers will poll");
        }
        tokio::time::sleep(NOTIFY_EVERY).await;
    }
}

/// Wakes PostgreSQL log readers: appends through this process (at once) and NOTIFY from other
/// processes. Polling covers the rest (writers that do not notify, a lost connection).
pub struct PgWakeup {
    local: watch::Receiver<u64>,
    listener: Option<PgListener>,
}

impl std::fmt::Debug for PgWakeup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWakeup")
            .field("listening", &self.listener.is_some())
            .finish()
    }
}

impl Wakeup for PgWakeup {
    async fn wait(&mut self, max: Duration) {
        let local = &mut self.local;
        match self.listener.as_mut() {
            Some(listener) => {
                let failed = tokio::select! {
                    _ = local.changed() => false,
                    received = listener.recv() => received.is_err(),
                    () = tokio::time::sleep(max) => false,
                };
                if failed {
                    tracing::warn!(
                        "the LISTEN connection failed; log readers fall back to polling"
                    );
                    self.listener = None;
                }
            }
            None => {
                let _ = tokio::time::timeout(max, local.changed()).await;
            }
        }
    }
}

/// How many times an `Any` append retries a concurrent insert before giving up. Each retry
/// first waits for the competing transaction (the unique index blocks until it ends), so this
/// bounds how many competitors in a row may win, not a busy loop; 16 was exhausted once by the
/// global-log stress test (writers holding their transactions open up to 150 ms on 2 cores).
const ANY_RETRIES: usize = 64;

impl PgUnitOfWork {
    /// Appends the events and their outbox rows (one statement, plus a savepoint for `Any`).
    async fn append_events(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
        outbox: &[OutboxMessage],
    ) -> Result<AppendResult, StoreError> {
        check_append(stream_id, events)?;
        if expected.exact().is_some() {
            let sql = &self.sql;
            let result =
                append_exact(&mut self.tx, sql, stream_id, expected, events, outbox).await?;
            self.wrote_events = true;
            return Ok(result);
        }
        // `Any` must not fail because of a concurrent append: retry inside a savepoint, so that
        // a unique violation does not abort the whole unit of work.
        let mut attempt = 0;
        let rows = loop {
            attempt += 1;
            sqlx::query("SAVEPOINT eventfold_append")
                .execute(&mut *self.tx)
                .await
                .map_err(db_err("appending events", &self.sql.events))?;
            match try_append(&mut self.tx, &self.sql, stream_id, None, events, outbox).await {
                Ok(rows) => {
                    sqlx::query("RELEASE SAVEPOINT eventfold_append")
                        .execute(&mut *self.tx)
                        .await
                        .map_err(db_err("appending events", &self.sql.events))?;
                    break rows;
                }
                Err(e) => {
                    let error = append_error(&self.sql, e, stream_id, expected, events);
                    sqlx::query("ROLLBACK TO SAVEPOINT eventfold_append")
                        .execute(&mut *self.tx)
                        .await
                        .map_err(db_err("appending events", &self.sql.events))?;
                    if !error.is_conflict() || attempt >= ANY_RETRIES {
                        return Err(error);
                    }
                }
            }
        };
        let result = append_result(
            &mut self.tx,
            &self.sql,
            stream_id,
            expected,
            rows,
            events.len(),
        )
        .await?;
        self.wrote_events = true;
        Ok(result)
    }

    async fn insert_outbox(&mut self, messages: Vec<OutboxMessage>) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut binds = Binds::default();
        binds.outbox(&messages);
        let args = binds
            .finish()
            .map_err(|e| db_err("writing outbox rows", &self.sql.outbox)(sqlx::Error::Encode(e)))?;
        sqlx::query_with(&self.sql.insert_outbox, args)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("writing outbox rows", &self.sql.outbox))?;
        Ok(())
    }
}

impl UnitOfWork for PgUnitOfWork {
    async fn append(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        fill_source(&mut events, &self.source);
        let outbox = match &self.routing {
            Some(routing) => outbox_messages(routing, stream_id, expected, &events),
            None => Vec::new(),
        };
        self.append_events(stream_id, expected, &events, &outbox)
            .await
    }

    async fn mark_inbox(&mut self, consumer: &str, message_id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.sql.mark_inbox)
            .bind(consumer)
            .bind(message_id)
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

impl EventStore for PgStore {
    type UnitOfWork = PgUnitOfWork;
    type Wakeup = PgWakeup;

    /// One statement writes the events and their outbox rows, atomic on its own, so the append
    /// runs without `BEGIN`/`COMMIT`: one round trip. `Any` runs it again when a concurrent
    /// append took the version.
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        check_append(stream_id, &events)?;
        fill_source(&mut events, &self.source);
        let outbox = match &self.routing {
            Some(routing) => outbox_messages(routing, stream_id, expected, &events),
            None => Vec::new(),
        };
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db_err("acquiring a connection", &self.sql.events))?;
        let result = if expected.exact().is_some() {
            append_exact(&mut conn, &self.sql, stream_id, expected, &events, &outbox).await?
        } else {
            append_any(&mut conn, &self.sql, stream_id, &events, &outbox).await?
        };
        self.appended.send_modify(|n| *n += 1);
        Ok(result)
    }

    /// Reads below the transaction horizon: events of transactions older than the oldest one
    /// still running. See [`crate::log`] and ADR 0007.
    async fn read_log(
        &self,
        after: Checkpoint,
        max_count: usize,
        filter: &LogFilter,
    ) -> Result<LogBatch, StoreError> {
        let table = &self.sql.events;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db_err("acquiring a connection", table))?;
        // The horizon first: every transaction below it had ended when it was taken, so the
        // read that follows sees all of their events.
        let (horizon,): (i64,) = sqlx::query_as(&self.sql.horizon)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err("reading the transaction horizon", table))?;
        let (key, position) = after.to_parts();
        let list = |l: &[String]| (!l.is_empty()).then(|| l.to_vec());
        let rows: Vec<sql::LogRow> = sqlx::query_as(&self.sql.read_log)
            .bind(key)
            .bind(position)
            .bind(horizon)
            .bind(list(&filter.event_types))
            .bind(list(&filter.stream_types))
            .bind(filter.tenant.as_deref())
            .bind(i64::try_from(max_count).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err("reading the log", table))?;
        let end = Checkpoint::new(to_u64(horizon, table, "transaction horizon")?, 0);
        let held_back = if rows.len() < max_count {
            let from = end.max(after).to_parts();
            let (held,): (bool,) = sqlx::query_as(&self.sql.held_back)
                .bind(horizon)
                .bind(from.0)
                .bind(from.1)
                .fetch_one(&mut *conn)
                .await
                .map_err(db_err("looking for held-back events", table))?;
            held
        } else {
            false
        };
        sql::log_batch(rows, after, max_count, end, held_back, table)
    }

    async fn log_head(&self) -> Result<LogHead, StoreError> {
        let table = &self.sql.events;
        let (position, readable): (i64, i64) = sqlx::query_as(&self.sql.head)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err("reading the log head", table))?;
        let position = to_u64(position, table, "global position")?;
        let readable_position = to_u64(readable, table, "global position")?;
        let blocked_by = if position > readable_position {
            let oldest: Option<(i32, f64, String)> = sqlx::query_as(
                "SELECT pid, EXTRACT(EPOCH FROM (clock_timestamp() - xact_start))::float8, \
                 COALESCE(state, '') || ': ' || left(query, 120) FROM pg_stat_activity \
                 WHERE backend_xid IS NOT NULL AND xact_start IS NOT NULL \
                 ORDER BY age(backend_xid) DESC LIMIT 1",
            )
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err(
                "looking for the oldest transaction",
                "pg_stat_activity",
            ))?;
            oldest
                .filter(|(_, secs, _)| *secs >= 1.0)
                .map(|(pid, secs, description)| BlockingTransaction {
                    pid,
                    running_for: Duration::from_secs_f64(secs.max(0.0)),
                    description,
                })
        } else {
            None
        };
        Ok(LogHead {
            position,
            readable_position,
            blocked_by,
        })
    }

    fn with_outbox(self, routing: OutboxRouting) -> Self {
        PgStore::with_outbox(self, routing)
    }

    async fn outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        type Status = (i64, Option<chrono::DateTime<chrono::Utc>>, i64, Option<i64>);
        let (pending, oldest, dead, lag): Status = sqlx::query_as(&self.sql.outbox_status)
            .bind(&self.sql.outbox)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err("reading the outbox status", &self.sql.outbox))?;
        Ok(OutboxStatus {
            pending: to_u64(pending, &self.sql.outbox, "count")?,
            oldest,
            dead_letters: to_u64(dead, &self.sql.outbox, "count")?,
            floor_lag: lag
                .map(|lag| to_u64(lag, &self.sql.outbox, "floor lag"))
                .transpose()?,
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

    async fn wakeup(&self) -> Result<PgWakeup, StoreError> {
        let listener = match PgListener::connect_with(&self.pool).await {
            Ok(mut listener) => match listener.listen(&self.sql.channel).await {
                Ok(()) => Some(listener),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; log readers fall back to polling");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "no LISTEN connection; log readers fall back to polling");
                None
            }
        };
        Ok(PgWakeup {
            local: self.appended.subscribe(),
            listener,
        })
    }

    async fn begin(&self) -> Result<PgUnitOfWork, StoreError> {
        let tx = sql::begin_owned(&self.pool, None)
            .await
            .map_err(db_err("starting a unit of work", &self.sql.events))?;
        Ok(PgUnitOfWork {
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

/// Fresh PostgreSQL databases for tests (feature `test-util`).
#[cfg(feature = "test-util")]
pub mod testing {
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
            let url =
                std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
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
}

/// The relay's statements (ADR 0009).
struct RelaySql {
    heartbeat: String,
    live: String,
    mine: String,
    release_some: String,
    renew: String,
    take: String,
    release_all: String,
    forget: String,
    claim: String,
    floor_lock: String,
    floor_advance: String,
    complete: String,
    fail: String,
    park: String,
    dead: String,
    retry: String,
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
        let floor = naming.table("outbox_floor");
        let cols = sql::OUTBOX_COLUMNS.replace(" headers,", " headers::text,");
        let o_cols = cols
            .split(", ")
            .map(|c| format!("o.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            heartbeat: format!(
                "INSERT INTO {relays} (owner, heartbeat_at) VALUES ($1, now()) \
                 ON CONFLICT (owner) DO UPDATE SET heartbeat_at = now()"
            ),
            live: format!(
                "WITH gone AS (DELETE FROM {relays} WHERE heartbeat_at < now() - make_interval(secs => $1 * 3)) \
                 SELECT COUNT(*)::int8 FROM {relays} WHERE heartbeat_at > now() - make_interval(secs => $1)"
            ),
            mine: format!(
                "SELECT slot FROM {leases} WHERE owner = $1 AND expires_at > now() ORDER BY slot FOR UPDATE"
            ),
            release_some: format!(
                "UPDATE {leases} SET owner = NULL, expires_at = NULL WHERE owner = $1 AND slot = ANY($2)"
            ),
            renew: format!(
                "UPDATE {leases} SET expires_at = now() + make_interval(secs => $2) WHERE owner = $1 AND slot = ANY($3)"
            ),
            take: format!(
                "UPDATE {leases} SET owner = $1, expires_at = now() + make_interval(secs => $2) \
                 WHERE slot IN (SELECT slot FROM {leases} WHERE owner IS NULL OR expires_at <= now() \
                   ORDER BY slot LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING slot"
            ),
            release_all: format!(
                "UPDATE {leases} SET owner = NULL, expires_at = NULL WHERE owner = $1"
            ),
            forget: format!("DELETE FROM {relays} WHERE owner = $1"),
            // The window `w`: the oldest `$2` rows of the leased slots whose key is not in
            // flight (`$3`), not parked and not waiting for a retry (so a blocked key with a
            // long queue cannot fill the window and starve the others); then the first row of
            // each key in it. The slot and in-flight tests are hashed subplans (`NOT IN` over
            // `unnest`), one hash probe per row: `slot = ANY($1)` compares each row with
            // every leased slot, and `slot IN (...)` lets the planner pick a join that reads
            // the whole table. The wide columns are read in the window's index scan, once. The
            // scan starts at the floor (ADR 0017), past the index entries of deleted rows.
            claim: format!(
                "SELECT * FROM (SELECT DISTINCT ON (w.key) * FROM \
                   (SELECT {o_cols} FROM {outbox} o \
                     WHERE o.seq >= (SELECT f.floor_seq FROM {floor} f) \
                     AND NOT (o.slot NOT IN (SELECT unnest($1::int4[]))) \
                     AND o.key NOT IN (SELECT unnest($3::text[])) \
                     AND NOT EXISTS (SELECT 1 FROM {dead} d WHERE d.key = o.key) \
                     AND NOT EXISTS (SELECT 1 FROM {outbox} b WHERE b.key = o.key \
                       AND b.next_attempt_at IS NOT NULL AND b.next_attempt_at > now()) \
                     ORDER BY o.seq LIMIT $2) w \
                   ORDER BY w.key, w.seq) f \
                 ORDER BY f.seq"
            ),
            // Run after `floor_lock` in the same transaction, so its snapshot sees every retry
            // that lowered the floor before the lock was taken, and no retry lowers it until
            // this commits. When every transaction with an id below `bound_xid` has ended (the
            // oldest running one, `h`, is not below it), each row with a `seq` up to `bound_seq`
            // is visible or gone, so the floor rises to the first live row, at most
            // `bound_seq + 1`. The bound then moves to the last value read before this
            // statement's snapshot (`seen_seq`) and that snapshot's next id (`x`).
            floor_lock: format!("SELECT floor_seq FROM {floor} FOR UPDATE SKIP LOCKED"),
            floor_advance: format!(
                "WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 AS h, \
                   pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS x, \
                   COALESCE({LAST_OUTBOX_SEQ}, 0) AS last) \
                 UPDATE {floor} f SET \
                   floor_seq = CASE WHEN s.h >= f.bound_xid THEN LEAST(f.bound_seq + 1, COALESCE( \
                     (SELECT o.seq FROM {outbox} o WHERE o.seq >= f.floor_seq ORDER BY o.seq LIMIT 1), \
                     f.bound_seq + 1)) ELSE f.floor_seq END, \
                   bound_seq = CASE WHEN s.h >= f.bound_xid THEN f.seen_seq ELSE f.bound_seq END, \
                   bound_xid = CASE WHEN s.h >= f.bound_xid THEN s.x ELSE f.bound_xid END, \
                   seen_seq = s.last \
                 FROM s RETURNING f.floor_seq"
            ),
            complete: format!(
                "DELETE FROM {outbox} o WHERE o.seq = ANY($2) AND \
                 (SELECT l.owner FROM {leases} l WHERE l.slot = o.slot AND l.expires_at > now()) = $1"
            ),
            fail: format!(
                "UPDATE {outbox} SET attempts = attempts + 1, last_error = $2, \
                 next_attempt_at = now() + make_interval(secs => $3) WHERE seq = $1"
            ),
            park: format!(
                "WITH moved AS (DELETE FROM {outbox} WHERE seq = $1 RETURNING *) \
                 INSERT INTO {dead} (seq, {MOVED}, attempts, last_error, next_attempt_at, error, parked_at) \
                 SELECT seq, {MOVED}, attempts + 1, $2, next_attempt_at, $2, now() FROM moved"
            ),
            dead: format!("SELECT {cols}, error, parked_at FROM {dead} ORDER BY seq LIMIT $1"),
            // The retried row keeps its `seq`, which may be below the floor: the floor is
            // lowered in the same transaction (ADR 0017).
            retry: format!(
                "WITH moved AS (DELETE FROM {dead} WHERE seq = $1 RETURNING *), \
                 lowered AS (UPDATE {floor} SET floor_seq = LEAST(floor_seq, $1) \
                   WHERE EXISTS (SELECT 1 FROM moved)) \
                 INSERT INTO {outbox} (seq, {MOVED}, attempts) OVERRIDING SYSTEM VALUE \
                 SELECT seq, {MOVED}, 0 FROM moved"
            ),
            skip: format!("DELETE FROM {dead} WHERE seq = $1"),
        }
    }
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn seqs_i64(seqs: &[u64]) -> Vec<i64> {
    seqs.iter()
        .map(|s| i64::try_from(*s).unwrap_or(i64::MAX))
        .collect()
}

impl PgStore {
    /// Whether the outbox floor is due to advance; if so, the next advance is `FLOOR_EVERY` away.
    fn floor_due(&self) -> bool {
        let Ok(mut last) = self.floor_advanced.lock() else {
            return true;
        };
        let due = last.is_none_or(|at| at.elapsed() >= FLOOR_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Raises the outbox floor to the first row that is live and can be no other (ADR 0017).
    /// When another relay is advancing it (its row is locked), this one leaves it to them.
    async fn advance_outbox_floor(&self) -> Result<(), StoreError> {
        let table = self.naming.table("outbox_floor");
        let err = |op| db_err(op, &table);
        let mut tx = sql::begin_owned(&self.pool, None)
            .await
            .map_err(err("starting to advance the outbox floor"))?;
        let locked: Option<(i64,)> = sqlx::query_as(&self.relay.floor_lock)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err("locking the outbox floor"))?;
        if locked.is_none() {
            return Ok(());
        }
        sqlx::query(&self.relay.floor_advance)
            .bind(&self.sql.outbox)
            .execute(&mut *tx)
            .await
            .map_err(err("advancing the outbox floor"))?;
        tx.commit()
            .await
            .map_err(err("committing the outbox floor"))
    }
}

impl OutboxRelayStore for PgStore {
    async fn lease_slots(&self, owner: Uuid, ttl: Duration) -> Result<Vec<u32>, StoreError> {
        let r = &self.relay;
        let table = self.naming.table("outbox_leases");
        let err = |op| db_err(op, &table);
        let mut tx = sql::begin_owned(&self.pool, None)
            .await
            .map_err(err("starting a lease transaction"))?;
        sqlx::query(&r.heartbeat)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(err("heartbeating"))?;
        let (live,): (i64,) = sqlx::query_as(&r.live)
            .bind(seconds(ttl))
            .fetch_one(&mut *tx)
            .await
            .map_err(err("counting live relays"))?;
        let share = fair_share(u64::try_from(live).unwrap_or(1));
        let mine: Vec<(i32,)> = sqlx::query_as(&r.mine)
            .bind(owner)
            .fetch_all(&mut *tx)
            .await
            .map_err(err("reading leases"))?;
        let mut mine: Vec<i32> = mine.into_iter().map(|(s,)| s).collect();
        if mine.len() > share {
            let extra = mine.split_off(share);
            sqlx::query(&r.release_some)
                .bind(owner)
                .bind(extra)
                .execute(&mut *tx)
                .await
                .map_err(err("releasing leases"))?;
        }
        sqlx::query(&r.renew)
            .bind(owner)
            .bind(seconds(ttl))
            .bind(&mine)
            .execute(&mut *tx)
            .await
            .map_err(err("renewing leases"))?;
        if mine.len() < share {
            let taken: Vec<(i32,)> = sqlx::query_as(&r.take)
                .bind(owner)
                .bind(seconds(ttl))
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
        let table = self.naming.table("outbox_leases");
        let mut tx = sql::begin_owned(&self.pool, None)
            .await
            .map_err(db_err("releasing leases", &table))?;
        // The relay's row first, then its leases: the order `lease_slots` takes its locks in
        // (relay rows, then lease rows), so a release and another relay's renewal (which may
        // delete this relay's row if it looks stale) never wait for each other in a cycle.
        sqlx::query(&self.relay.forget)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(db_err("releasing leases", &table))?;
        sqlx::query(&self.relay.release_all)
            .bind(owner)
            .execute(&mut *tx)
            .await
            .map_err(db_err("releasing leases", &table))?;
        tx.commit()
            .await
            .map_err(db_err("releasing leases", &table))
    }

    async fn claim_outbox(
        &self,
        slots: &[u32],
        limit: usize,
        in_flight: &[&str],
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let slots: Vec<i32> = slots
            .iter()
            .filter_map(|s| i32::try_from(*s).ok())
            .collect();
        // The floor only makes claims cheaper: a claim does not fail because it could not
        // advance (the next advance is due in `FLOOR_EVERY`).
        if self.floor_due()
            && let Err(e) = self.advance_outbox_floor().await
        {
            tracing::warn!(error = %e, "advancing the outbox floor failed; claims walk from the old floor");
        }
        let rows: Vec<sql::OutboxDbRow> = sqlx::query_as(&self.relay.claim)
            .bind(slots)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(in_flight)
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
            .bind(seqs_i64(seqs))
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
            .bind(seconds(retry_after))
            .execute(&self.pool)
            .await
            .map_err(db_err("recording a failed publish", &self.sql.outbox))?;
        Ok(())
    }

    async fn park_outbox(&self, seq: u64, error: &str) -> Result<(), StoreError> {
        sqlx::query(&self.relay.park)
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .bind(error)
            .execute(&self.pool)
            .await
            .map_err(db_err("parking an outbox row", &self.sql.outbox))?;
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let table = self.naming.table("outbox_dead");
        let rows: Vec<sql::DeadDbRow> = sqlx::query_as(&self.relay.dead)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("reading dead letters", &table))?;
        rows.into_iter()
            .map(|r| sql::dead_letter(r, &table))
            .collect()
    }

    async fn retry_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.relay.retry)
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await
            .map_err(db_err("retrying a dead letter", &self.sql.outbox))?;
        Ok(done.rows_affected() == 1)
    }

    async fn skip_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.relay.skip)
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await
            .map_err(db_err(
                "skipping a dead letter",
                &self.naming.table("outbox_dead"),
            ))?;
        Ok(done.rows_affected() == 1)
    }
}

impl InboxStore for PgStore {
    async fn park_message(&self, message: ParkedMessage) -> Result<(), StoreError> {
        sqlx::query(&self.sql.park_message)
            .bind(&message.consumer)
            .bind(message.message_id)
            .bind(&message.topic)
            .bind(i32::try_from(message.partition).unwrap_or(i32::MAX))
            .bind(i64::try_from(message.offset).unwrap_or(i64::MAX))
            .bind(&message.key)
            .bind(&message.message_type)
            .bind(&message.payload)
            .bind(sql::headers_json(&message.headers))
            .bind(i32::try_from(message.attempts).unwrap_or(i32::MAX))
            .bind(&message.error)
            .execute(&self.pool)
            .await
            .map_err(db_err("parking a consumer message", &self.sql.inbox))?;
        Ok(())
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
