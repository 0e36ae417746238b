
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
