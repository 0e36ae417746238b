
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
