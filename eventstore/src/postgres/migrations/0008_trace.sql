
ALTER TABLE {inbox} ADD COLUMN IF NOT EXISTS message_type TEXT,
    ADD COLUMN IF NOT EXISTS topic TEXT,
    ADD COLUMN IF NOT EXISTS correlation_id UUID,
    ADD COLUMN IF NOT EXISTS causation_id UUID,
    ADD COLUMN IF NOT EXISTS sent_by TEXT,
    ADD COLUMN IF NOT EXISTS received_by TEXT;
CREATE INDEX IF NOT EXISTS "{prefix}inbox_correlation_idx" ON {inbox} (correlation_id)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS "{prefix}events_correlation_idx" ON {events} (correlation_id);
CREATE TABLE IF NOT EXISTS {sent} (
    id UUID PRIMARY KEY,
    correlation_id UUID NOT NULL,
    causation_id UUID,
    type TEXT NOT NULL,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    source TEXT NOT NULL,
    sent_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS "{prefix}sent_correlation_idx" ON {sent} (correlation_id);
