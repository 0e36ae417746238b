
CREATE TABLE IF NOT EXISTS {sagas} (
    saga_id UUID PRIMARY KEY,
    saga_type TEXT NOT NULL,
    business_key TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    correlation_id UUID NOT NULL,
    definition_version BIGINT NOT NULL,
    version BIGINT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT "{prefix}sagas_key" UNIQUE (saga_type, business_key)
);
CREATE INDEX IF NOT EXISTS "{prefix}sagas_status_idx" ON {sagas} (saga_type, status, updated_at);
CREATE INDEX IF NOT EXISTS "{prefix}sagas_updated_idx" ON {sagas} (updated_at);
CREATE INDEX IF NOT EXISTS "{prefix}sagas_correlation_idx" ON {sagas} (correlation_id);
CREATE TABLE IF NOT EXISTS {saga_timers} (
    saga_id UUID NOT NULL,
    step TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    kind TEXT NOT NULL,
    saga_type TEXT NOT NULL,
    due_at TIMESTAMPTZ NOT NULL,
    claims INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (saga_id, step, attempt, kind)
);
CREATE INDEX IF NOT EXISTS "{prefix}saga_timers_due_idx" ON {saga_timers} (saga_type, due_at);
CREATE TABLE IF NOT EXISTS {saga_requests} (
    participant TEXT NOT NULL,
    request_key TEXT NOT NULL,
    outcome JSONB NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (participant, request_key)
);
