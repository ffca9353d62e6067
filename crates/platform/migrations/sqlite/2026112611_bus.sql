CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    type TEXT NOT NULL,
    source TEXT NOT NULL,
    subject TEXT,
    time TEXT NOT NULL,
    data TEXT NOT NULL,
    traceparent TEXT,
    position INTEGER,
    published_at TEXT
);

CREATE INDEX outbox_unpublished ON outbox (seq) WHERE position IS NULL;
CREATE UNIQUE INDEX outbox_position ON outbox (position) WHERE position IS NOT NULL;

CREATE TABLE bus_cursors (
    consumer TEXT PRIMARY KEY NOT NULL,
    position INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE bus_processed (
    consumer TEXT NOT NULL,
    event_id BLOB NOT NULL,
    processed_at TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

CREATE INDEX bus_processed_age ON bus_processed (processed_at);
