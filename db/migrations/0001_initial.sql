-- cangrejo schema, version 1: merchants, orders (monthly partitions), order items and the
-- 15-minute sales rollups. Every primary key starts with merchant_id so that the tables can be
-- distributed by merchant (Citus) or merchants routed to several primaries without a rewrite.

CREATE TABLE merchants (
    merchant_id  bigint PRIMARY KEY CHECK (merchant_id > 0),
    name         text NOT NULL,
    timezone     text NOT NULL,
    currency     char(3) NOT NULL,
    -- bumped by every committed write for the merchant: part of every cache key
    data_version bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The idempotency gate: one row per (merchant, order_id) across all partitions of orders,
-- which cannot hold that unique key themselves (it lacks the partition column).
CREATE TABLE order_keys (
    merchant_id  bigint NOT NULL,
    order_id     text NOT NULL,
    placed_at    timestamptz NOT NULL,
    content_hash bytea NOT NULL,
    PRIMARY KEY (merchant_id, order_id)
);

CREATE TABLE orders (
    merchant_id    bigint NOT NULL,
    placed_at      timestamptz NOT NULL,
    order_id       text NOT NULL,
    store_id       bigint NOT NULL,
    channel        smallint NOT NULL,          -- 0 online, 1 pos
    fulfillment    smallint NOT NULL,          -- 0 pickup, 1 delivery, 2 dine_in
    status         smallint NOT NULL DEFAULT 0, -- 0 placed, 1 cancelled
    currency       char(3) NOT NULL,
    gross_cents    bigint NOT NULL,
    discount_cents bigint NOT NULL,
    net_cents      bigint NOT NULL,
    tax_cents      bigint NOT NULL,
    total_cents    bigint NOT NULL,
    items_sold     bigint NOT NULL,            -- sum of item quantities
    promo_code     text,
    customer_ref   text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at   timestamptz,
    PRIMARY KEY (merchant_id, placed_at, order_id)
) PARTITION BY RANGE (placed_at);

CREATE TABLE order_items (
    merchant_id      bigint NOT NULL,
    placed_at        timestamptz NOT NULL,
    order_id         text NOT NULL,
    line_no          smallint NOT NULL,
    sku              text NOT NULL,
    name             text NOT NULL,
    quantity         bigint NOT NULL,
    unit_price_cents bigint NOT NULL,
    PRIMARY KEY (merchant_id, placed_at, order_id, line_no)
) PARTITION BY RANGE (placed_at);

-- Sales per merchant, 15-minute UTC bucket and dimension combination. Every real time zone
-- offset is a multiple of 15 minutes, so any zone's hours, days, weeks and months are sums of
-- these rows.
CREATE TABLE sales_rollup_15m (
    merchant_id      bigint NOT NULL,
    bucket           timestamptz NOT NULL,
    store_id         bigint NOT NULL,
    channel          smallint NOT NULL,
    fulfillment      smallint NOT NULL,
    orders           bigint NOT NULL DEFAULT 0,
    cancelled_orders bigint NOT NULL DEFAULT 0,
    items_sold       bigint NOT NULL DEFAULT 0,
    gross_cents      bigint NOT NULL DEFAULT 0,
    discount_cents   bigint NOT NULL DEFAULT 0,
    net_cents        bigint NOT NULL DEFAULT 0,
    tax_cents        bigint NOT NULL DEFAULT 0,
    total_cents      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (merchant_id, bucket, store_id, channel, fulfillment)
);

-- Creates the monthly (UTC) partitions of orders and order_items covering [from, from + n
-- months); existing ones are left alone. Called by migrations and by the server ahead of time.
CREATE FUNCTION cangrejo_ensure_partitions(from_ts timestamptz, n_months int)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    first_month timestamp := date_trunc('month', from_ts AT TIME ZONE 'UTC');
    lo timestamp;
    hi timestamp;
    parent text;
BEGIN
    FOR i IN 0 .. n_months - 1 LOOP
        lo := first_month + make_interval(months => i);
        hi := lo + interval '1 month';
        FOREACH parent IN ARRAY ARRAY['orders', 'order_items'] LOOP
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                parent || '_' || to_char(lo, 'YYYY_MM'), parent,
                lo::text || '+00', hi::text || '+00');
        END LOOP;
    END LOOP;
END
$$;

SELECT cangrejo_ensure_partitions(now() - interval '24 months', 28);
