CREATE TABLE orders (
    id BLOB PRIMARY KEY,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    items TEXT NOT NULL,
    total_cents BIGINT NOT NULL,
    currency TEXT NOT NULL,
    shipping_address TEXT NOT NULL,
    idempotency_key TEXT,
    request_hash TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE UNIQUE INDEX orders_idempotency_key ON orders (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX orders_user ON orders (user_id, id);
