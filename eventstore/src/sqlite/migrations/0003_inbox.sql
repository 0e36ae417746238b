
CREATE TABLE IF NOT EXISTS {inbox} (
    consumer TEXT NOT NULL,
    message_id BLOB NOT NULL,
    processed_at TEXT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE TABLE IF NOT EXISTS {inbox_dead} (
    consumer TEXT NOT NULL,
    message_id BLOB NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    key TEXT NOT NULL,
    type TEXT NOT NULL,
    payload BLOB NOT NULL,
    headers TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    parked_at TEXT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
