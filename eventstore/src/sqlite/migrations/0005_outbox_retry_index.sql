
CREATE INDEX IF NOT EXISTS "{prefix}outbox_retry_idx" ON {outbox} (key) WHERE next_attempt_at IS NOT NULL;
