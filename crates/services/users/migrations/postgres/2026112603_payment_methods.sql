CREATE TABLE payment_methods (
    user_id UUID PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    card_number TEXT NOT NULL,
    brand TEXT NOT NULL,
    exp_month INTEGER NOT NULL,
    exp_year INTEGER NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
