
CREATE TABLE IF NOT EXISTS {projections} (
    name TEXT PRIMARY KEY,
    active_generation INTEGER NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    last_error TEXT,
    reset_requested INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {projection_checkpoints} (
    name TEXT NOT NULL,
    generation INTEGER NOT NULL,
    version INTEGER NOT NULL,
    commit_key BIGINT NOT NULL,
    log_position BIGINT NOT NULL,
    position BIGINT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (name, generation)
);
CREATE TABLE IF NOT EXISTS {projection_dead} (
    name TEXT NOT NULL,
    generation INTEGER NOT NULL,
    event_id BLOB NOT NULL,
    global_position BIGINT NOT NULL,
    stream_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    error TEXT NOT NULL,
    parked_at TEXT NOT NULL,
    PRIMARY KEY (name, generation, event_id)
);
