//! The exact SQL the shared statements produce in each dialect: the text is what the query
//! plans (and the benches) depend on, so a change to it must be deliberate.

use super::dialect::Dialect;
use super::read::ReadSql;
use crate::naming::Naming;

const COLUMNS: &str = "event_id, stream_version, global_position, event_type, schema_version, \
    payload, recorded_at, source, correlation_id, causation_id, tenant_id";

#[cfg(feature = "postgres")]
#[test]
fn postgres_statements() {
    use super::dialect::Pg;
    let sql = ReadSql::new::<Pg>(&Naming::default());
    assert_eq!(
        sql.read_stream,
        format!(
            "SELECT {COLUMNS}, headers::text FROM \"eventfold_events\" WHERE stream_type = $1 \
             AND stream_id = $2 AND stream_version >= $3 ORDER BY stream_version LIMIT $4"
        )
    );
    assert_eq!(
        sql.max_version,
        "SELECT COALESCE(MAX(stream_version), 0)::int8 FROM \"eventfold_events\" \
         WHERE stream_type = $1 AND stream_id = $2"
    );
    assert_eq!(
        sql.save_snapshot,
        "INSERT INTO \"eventfold_snapshots\" AS s (stream_type, stream_id, version, \
         snapshot_version, state, taken_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT \
         (stream_type, stream_id) DO UPDATE SET version = EXCLUDED.version, snapshot_version = \
         EXCLUDED.snapshot_version, state = EXCLUDED.state, taken_at = EXCLUDED.taken_at \
         WHERE s.version <= EXCLUDED.version"
    );
    assert_eq!(
        sql.record_command,
        "INSERT INTO \"eventfold_commands\" (command_id, stream_type, stream_id, version_before, \
         version_after, recorded_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (command_id) \
         DO NOTHING"
    );
    let schema = Naming::new("app_")
        .and_then(|n| n.with_schema("orders"))
        .expect("a valid naming");
    assert_eq!(
        ReadSql::new::<Pg>(&schema).find_command,
        "SELECT stream_type, stream_id, version_before, version_after, recorded_at FROM \
         \"orders\".\"app_commands\" WHERE command_id = $1"
    );
    assert_eq!(
        Pg::migration_table("\"eventfold_migrations\""),
        "CREATE TABLE IF NOT EXISTS \"eventfold_migrations\" (version BIGINT PRIMARY KEY, \
         name TEXT NOT NULL, checksum BIGINT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    );
    assert_eq!(
        Pg::record_migration("\"eventfold_migrations\""),
        "INSERT INTO \"eventfold_migrations\" (version, name, checksum) VALUES ($1, $2, $3)"
    );
    assert_eq!(Pg::FOR_UPDATE, " FOR UPDATE");
    assert_eq!(Pg::placeholders("a = $1 AND b = $12"), "a = $1 AND b = $12");
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_statements() {
    use super::dialect::Lite;
    let sql = ReadSql::new::<Lite>(&Naming::default());
    assert_eq!(
        sql.read_stream,
        format!(
            "SELECT {COLUMNS}, headers FROM \"eventfold_events\" WHERE stream_type = ?1 \
             AND stream_id = ?2 AND stream_version >= ?3 ORDER BY stream_version LIMIT ?4"
        )
    );
    assert_eq!(
        sql.max_version,
        "SELECT COALESCE(MAX(stream_version), 0) FROM \"eventfold_events\" \
         WHERE stream_type = ?1 AND stream_id = ?2"
    );
    assert_eq!(
        sql.save_snapshot,
        "INSERT INTO \"eventfold_snapshots\" (stream_type, stream_id, version, \
         snapshot_version, state, taken_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT \
         (stream_type, stream_id) DO UPDATE SET version = excluded.version, snapshot_version = \
         excluded.snapshot_version, state = excluded.state, taken_at = excluded.taken_at \
         WHERE version <= excluded.version"
    );
    assert_eq!(
        sql.record_command,
        "INSERT INTO \"eventfold_commands\" (command_id, stream_type, stream_id, version_before, \
         version_after, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (command_id) \
         DO NOTHING"
    );
    assert_eq!(
        Lite::migration_table("\"eventfold_migrations\""),
        "CREATE TABLE IF NOT EXISTS \"eventfold_migrations\" (version INTEGER PRIMARY KEY, \
         name TEXT NOT NULL, checksum INTEGER NOT NULL, applied_at TEXT NOT NULL)"
    );
    assert_eq!(
        Lite::record_migration("\"eventfold_migrations\""),
        "INSERT INTO \"eventfold_migrations\" (version, name, checksum, applied_at) \
         VALUES (?1, ?2, ?3, ?4)"
    );
    assert_eq!(Lite::BEGIN_WRITE, Some("BEGIN IMMEDIATE"));
    assert_eq!(Lite::FOR_UPDATE, "");
    // Only a `$` before a digit is a placeholder.
    assert_eq!(
        Lite::placeholders("a = $1 AND b = $12 AND c = '$x'"),
        "a = ?1 AND b = ?12 AND c = '$x'"
    );
}

const SAGA_COLUMNS: &str = "saga_id, saga_type, business_key, status, detail, correlation_id, \
    definition_version, version, started_at, updated_at, last_event_id";

#[cfg(feature = "postgres")]
#[test]
fn postgres_saga_statements() {
    use super::dialect::Pg;
    use super::sagas::SagaSql;
    let sql = SagaSql::new::<Pg>(&Naming::default());
    assert_eq!(sql.now, "SELECT statement_timestamp()");
    assert_eq!(
        sql.lock,
        format!("SELECT {SAGA_COLUMNS} FROM \"eventfold_sagas\" WHERE saga_id = $1 FOR UPDATE")
    );
    assert_eq!(
        sql.register,
        format!(
            "INSERT INTO \"eventfold_sagas\" ({SAGA_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, \
             $8, statement_timestamp(), statement_timestamp(), NULL) ON CONFLICT (saga_type, \
             business_key) DO NOTHING RETURNING statement_timestamp()"
        )
    );
    assert_eq!(
        sql.update,
        "UPDATE \"eventfold_sagas\" SET status = $2, detail = $3, definition_version = $4, \
         version = $5, last_event_id = $6, updated_at = statement_timestamp() WHERE saga_id = $1"
    );
    assert_eq!(
        sql.put_timer,
        "INSERT INTO \"eventfold_saga_timers\" (saga_id, step, attempt, kind, saga_type, due_at, \
         claims) VALUES ($1, $2, $3, $4, $5, $6, 0) ON CONFLICT (saga_id, step, attempt, kind) \
         DO UPDATE SET saga_type = EXCLUDED.saga_type, due_at = EXCLUDED.due_at, claims = 0"
    );
    assert_eq!(
        sql.find_outcome,
        "SELECT outcome::text FROM \"eventfold_saga_requests\" WHERE participant = $1 AND \
         request_key = $2"
    );
    assert_eq!(
        sql.record_outcome,
        "INSERT INTO \"eventfold_saga_requests\" (participant, request_key, outcome, \
         recorded_at) VALUES ($1, $2, $3::jsonb, statement_timestamp()) ON CONFLICT \
         (participant, request_key) DO NOTHING"
    );
    assert_eq!(
        sql.request_timer,
        "INSERT INTO \"eventfold_saga_timers\" (saga_id, step, attempt, kind, saga_type, due_at, \
         claims) SELECT s.saga_id, $2, $3, $4, s.saga_type, $5, 0 FROM \"eventfold_sagas\" s \
         WHERE s.saga_id = $1 ON CONFLICT (saga_id, step, attempt, kind) DO UPDATE SET \
         saga_type = EXCLUDED.saga_type, due_at = EXCLUDED.due_at, claims = 0"
    );
    let schema = Naming::new("app_")
        .and_then(|n| n.with_schema("orders"))
        .expect("a valid naming");
    assert_eq!(
        SagaSql::new::<Pg>(&schema).list,
        format!(
            "SELECT {SAGA_COLUMNS} FROM \"orders\".\"app_sagas\" WHERE ($1 IS NULL OR saga_type = \
             $1) AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR correlation_id = $3) ORDER BY \
             updated_at DESC, saga_id DESC LIMIT $4"
        )
    );
    assert_eq!(
        sql.timers_of,
        "SELECT saga_id, saga_type, step, attempt, kind, due_at FROM \"eventfold_saga_timers\" \
         WHERE saga_id = $1 ORDER BY due_at"
    );
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_saga_statements() {
    use super::dialect::Lite;
    use super::sagas::SagaSql;
    let clock = "replace(strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), '.000+', '+')";
    let sql = SagaSql::new::<Lite>(&Naming::default());
    assert_eq!(
        sql.lock,
        format!("SELECT {SAGA_COLUMNS} FROM \"eventfold_sagas\" WHERE saga_id = ?1")
    );
    assert_eq!(sql.now, format!("SELECT {clock}"));
    assert_eq!(
        sql.register,
        format!(
            "INSERT INTO \"eventfold_sagas\" ({SAGA_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, \
             ?8, {clock}, {clock}, NULL) ON CONFLICT (saga_type, business_key) DO NOTHING \
             RETURNING {clock}"
        )
    );
    assert_eq!(
        sql.update,
        format!(
            "UPDATE \"eventfold_sagas\" SET status = ?2, detail = ?3, definition_version = ?4, \
             version = ?5, last_event_id = ?6, updated_at = {clock} WHERE saga_id = ?1"
        )
    );
    assert_eq!(
        sql.put_timer,
        "INSERT INTO \"eventfold_saga_timers\" (saga_id, step, attempt, kind, saga_type, due_at, \
         claims) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0) ON CONFLICT (saga_id, step, attempt, kind) \
         DO UPDATE SET saga_type = EXCLUDED.saga_type, due_at = EXCLUDED.due_at, claims = 0"
    );
    assert_eq!(
        sql.find_outcome,
        "SELECT outcome FROM \"eventfold_saga_requests\" WHERE participant = ?1 AND \
         request_key = ?2"
    );
    assert_eq!(
        sql.record_outcome,
        format!(
            "INSERT INTO \"eventfold_saga_requests\" (participant, request_key, outcome, \
             recorded_at) VALUES (?1, ?2, ?3, {clock}) ON CONFLICT (participant, request_key) \
             DO NOTHING"
        )
    );
    assert_eq!(
        sql.request_timer,
        "INSERT INTO \"eventfold_saga_timers\" (saga_id, step, attempt, kind, saga_type, due_at, \
         claims) SELECT s.saga_id, ?2, ?3, ?4, s.saga_type, ?5, 0 FROM \"eventfold_sagas\" s \
         WHERE s.saga_id = ?1 ON CONFLICT (saga_id, step, attempt, kind) DO UPDATE SET \
         saga_type = EXCLUDED.saga_type, due_at = EXCLUDED.due_at, claims = 0"
    );
    assert_eq!(
        sql.list,
        format!(
            "SELECT {SAGA_COLUMNS} FROM \"eventfold_sagas\" WHERE (?1 IS NULL OR saga_type = ?1) \
             AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR correlation_id = ?3) ORDER BY \
             updated_at DESC, saga_id DESC LIMIT ?4"
        )
    );
    assert_eq!(
        sql.count,
        "SELECT saga_type, status, COUNT(*) FROM \"eventfold_sagas\" GROUP BY saga_type, status"
    );
}

/// The inbox mark of `mark_received`, written once for both dialects, is the text each backend
/// wrote out before.
#[cfg(all(feature = "postgres", feature = "sqlite"))]
#[test]
fn inbox_mark_statement() {
    use super::dialect::{Lite, Pg};
    use super::unit_of_work::mark_inbox;
    let columns = "consumer, message_id, message_type, topic, correlation_id, causation_id, \
                   sent_by, received_by, processed_at";
    assert_eq!(
        mark_inbox::<Pg>("\"eventfold_inbox\""),
        format!(
            "INSERT INTO \"eventfold_inbox\" ({columns}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
             $9) ON CONFLICT DO NOTHING"
        )
    );
    assert_eq!(
        mark_inbox::<Lite>("\"eventfold_inbox\""),
        format!(
            "INSERT INTO \"eventfold_inbox\" ({columns}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
             ?9) ON CONFLICT DO NOTHING"
        )
    );
}
