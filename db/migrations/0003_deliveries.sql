-- cangrejo schema, version 3: delivery events pushed by 3rd-party logistics providers, and the
-- current delivery state of each delivery order.

CREATE TABLE delivery_events (
    merchant_id bigint NOT NULL,
    provider    text NOT NULL,
    event_id    text NOT NULL,    -- unique per provider: a replay is a no-op
    order_id    text NOT NULL,
    status      smallint NOT NULL, -- 0 assigned, 1 picked_up, 2 in_transit, 3 delivered, 4 failed, 5 cancelled
    occurred_at timestamptz NOT NULL,
    eta         timestamptz,
    courier_ref text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, provider, event_id)
);
CREATE INDEX delivery_events_by_order ON delivery_events (merchant_id, order_id, occurred_at);

-- The event with the latest occurred_at of each order (a terminal state is never replaced by
-- an earlier event; on a tie a terminal state wins). placed_at locates the order.
CREATE TABLE deliveries (
    merchant_id bigint NOT NULL,
    order_id    text NOT NULL,
    placed_at   timestamptz NOT NULL,
    status      smallint NOT NULL,
    provider    text NOT NULL,
    event_id    text NOT NULL,
    occurred_at timestamptz NOT NULL,
    eta         timestamptz,
    courier_ref text,
    PRIMARY KEY (merchant_id, order_id)
);
