CREATE TABLE outbox (
    seq BIGSERIAL PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    type TEXT NOT NULL,
    source TEXT NOT NULL,
    subject TEXT,
    time TIMESTAMPTZ NOT NULL,
    data TEXT NOT NULL,
    traceparent TEXT,
    position BIGINT,
    published_at TIMESTAMPTZ
);

CREATE SEQUENCE outbox_position_seq;
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE position IS NULL;
CREATE UNIQUE INDEX outbox_position ON outbox (position) WHERE position IS NOT NULL;

CREATE TABLE bus_cursors (
    consumer TEXT PRIMARY KEY,
    position BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE bus_processed (
    consumer TEXT NOT NULL,
    event_id UUID NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

CREATE INDEX bus_processed_age ON bus_processed (processed_at);
