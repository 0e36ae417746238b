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
