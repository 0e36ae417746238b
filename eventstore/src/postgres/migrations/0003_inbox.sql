
CREATE TABLE IF NOT EXISTS {inbox} (
    consumer TEXT NOT NULL,
    message_id UUID NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE TABLE IF NOT EXISTS {inbox_dead} (
    consumer TEXT NOT NULL,
    message_id UUID NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" BIGINT NOT NULL,
    key TEXT NOT NULL,
    type TEXT NOT NULL,
    payload BYTEA NOT NULL,
    headers JSONB NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    parked_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
