
CREATE TABLE IF NOT EXISTS {outbox} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL,
    aggregatetype TEXT NOT NULL,
    aggregateid TEXT NOT NULL,
    type TEXT NOT NULL,
    payload BLOB NOT NULL,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    headers TEXT NOT NULL DEFAULT '{}',
    slot INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS "{prefix}outbox_id_uq" ON {outbox} (id);
CREATE INDEX IF NOT EXISTS "{prefix}outbox_slot_idx" ON {outbox} (slot, seq);
CREATE TABLE IF NOT EXISTS {outbox_dead} (
    seq INTEGER PRIMARY KEY,
    id BLOB NOT NULL,
    aggregatetype TEXT NOT NULL,
    aggregateid TEXT NOT NULL,
    type TEXT NOT NULL,
    payload BLOB NOT NULL,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    headers TEXT NOT NULL,
    slot INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    next_attempt_at TEXT,
    error TEXT NOT NULL,
    parked_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS "{prefix}outbox_dead_key_idx" ON {outbox_dead} (key);
CREATE TABLE IF NOT EXISTS {outbox_leases} (
    slot INTEGER PRIMARY KEY,
    owner BLOB,
    expires_at TEXT
);
WITH RECURSIVE s(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM s WHERE x < 255)
INSERT OR IGNORE INTO {outbox_leases} (slot) SELECT x FROM s;
CREATE TABLE IF NOT EXISTS {outbox_relays} (
    owner BLOB PRIMARY KEY,
    heartbeat_at TEXT NOT NULL
);
