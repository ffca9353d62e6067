CREATE TABLE stock_reservations (
    order_id BLOB NOT NULL,
    line INTEGER NOT NULL,
    product_id BLOB NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    sku TEXT NOT NULL,
    name TEXT NOT NULL,
    unit_price_cents BIGINT NOT NULL,
    currency TEXT NOT NULL,
    PRIMARY KEY (order_id, line)
);
