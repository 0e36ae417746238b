
CREATE INDEX IF NOT EXISTS "{prefix}outbox_retry_idx" ON {outbox} (key) WHERE next_attempt_at IS NOT NULL;
ALTER TABLE {outbox} SET (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0.0, autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0);
