
ALTER TABLE {inbox} ADD COLUMN message_type TEXT;
ALTER TABLE {inbox} ADD COLUMN topic TEXT;
ALTER TABLE {inbox} ADD COLUMN correlation_id BLOB;
ALTER TABLE {inbox} ADD COLUMN causation_id BLOB;
ALTER TABLE {inbox} ADD COLUMN sent_by TEXT;
ALTER TABLE {inbox} ADD COLUMN received_by TEXT;
CREATE INDEX IF NOT EXISTS "{prefix}inbox_correlation_idx" ON {inbox} (correlation_id)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS "{prefix}events_correlation_idx" ON {events} (correlation_id);
CREATE TABLE IF NOT EXISTS {sent} (
    id BLOB PRIMARY KEY,
    correlation_id BLOB NOT NULL,
    causation_id BLOB,
    type TEXT NOT NULL,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    source TEXT NOT NULL,
    sent_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS "{prefix}sent_correlation_idx" ON {sent} (correlation_id);
