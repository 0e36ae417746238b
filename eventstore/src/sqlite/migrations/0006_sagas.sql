
CREATE TABLE IF NOT EXISTS {sagas} (
    saga_id BLOB PRIMARY KEY,
    saga_type TEXT NOT NULL,
    business_key TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    correlation_id BLOB NOT NULL,
    definition_version INTEGER NOT NULL,
    version INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (saga_type, business_key)
);
CREATE INDEX IF NOT EXISTS "{prefix}sagas_status_idx" ON {sagas} (saga_type, status, updated_at);
CREATE INDEX IF NOT EXISTS "{prefix}sagas_updated_idx" ON {sagas} (updated_at);
CREATE INDEX IF NOT EXISTS "{prefix}sagas_correlation_idx" ON {sagas} (correlation_id);
CREATE TABLE IF NOT EXISTS {saga_timers} (
    saga_id BLOB NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    kind TEXT NOT NULL,
    saga_type TEXT NOT NULL,
    due_at TEXT NOT NULL,
    claims INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (saga_id, step, attempt, kind)
);
CREATE INDEX IF NOT EXISTS "{prefix}saga_timers_due_idx" ON {saga_timers} (saga_type, due_at);
CREATE TABLE IF NOT EXISTS {saga_requests} (
    participant TEXT NOT NULL,
    request_key TEXT NOT NULL,
    outcome TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (participant, request_key)
);
