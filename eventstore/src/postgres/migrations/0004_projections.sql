
CREATE TABLE IF NOT EXISTS {projections} (
    name TEXT PRIMARY KEY,
    active_generation INTEGER NOT NULL,
    paused BOOLEAN NOT NULL DEFAULT FALSE,
    status TEXT NOT NULL,
    last_error TEXT,
    reset_requested BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS {projection_checkpoints} (
    name TEXT NOT NULL,
    generation INTEGER NOT NULL,
    version INTEGER NOT NULL,
    commit_key BIGINT NOT NULL,
    log_position BIGINT NOT NULL,
    position BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (name, generation)
);
CREATE TABLE IF NOT EXISTS {projection_dead} (
    name TEXT NOT NULL,
    generation INTEGER NOT NULL,
    event_id UUID NOT NULL,
    global_position BIGINT NOT NULL,
    stream_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    error TEXT NOT NULL,
    parked_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (name, generation, event_id)
);
