
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
