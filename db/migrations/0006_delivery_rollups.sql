-- cangrejo schema, version 6: delivery rollups at the 15-minute grain of placed_at, kept
-- exactly once by the write path: ingest adds each delivery order it inserted, a delivery event
-- that moves an order's current state moves the order between the delivered and failed
-- figures, and cancellation takes the order back out. Cancelled orders are not in it.

-- Per merchant, 15-minute UTC bucket of placed_at, store and channel (fulfillment is always
-- delivery): delivery orders, how many of them are now delivered or failed (their current
-- state, db/migrations/0003), and the sum of occurred_at - placed_at over the delivered ones,
-- in microseconds (exact: timestamps have microsecond precision).
CREATE TABLE delivery_rollup_15m (
    merchant_id  bigint NOT NULL,
    bucket       timestamptz NOT NULL,
    store_id     bigint NOT NULL,
    channel      smallint NOT NULL,
    deliveries   bigint NOT NULL DEFAULT 0,
    delivered    bigint NOT NULL DEFAULT 0,
    failed       bigint NOT NULL DEFAULT 0,
    delivered_us bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (merchant_id, bucket, store_id, channel)
);

-- Backfill from the orders and delivery states already stored. Servers of this version cannot
-- write this table before this commits, so nothing is counted twice. Servers of an older
-- version do not keep it: their writes after this snapshot are missed, so stop them before
-- migrating (they turn not ready once the schema is newer than they expect).
INSERT INTO delivery_rollup_15m (merchant_id, bucket, store_id, channel, deliveries, delivered,
                                 failed, delivered_us)
SELECT o.merchant_id, date_bin('15 minutes', o.placed_at, timestamptz 'epoch'), o.store_id,
       o.channel, count(*), count(*) FILTER (WHERE d.status = 3),
       count(*) FILTER (WHERE d.status = 4),
       coalesce(sum((extract(epoch FROM d.occurred_at) - extract(epoch FROM o.placed_at))
                    * 1000000) FILTER (WHERE d.status = 3), 0)::bigint
FROM orders o
LEFT JOIN deliveries d ON d.merchant_id = o.merchant_id AND d.order_id = o.order_id
WHERE o.status = 0 AND o.fulfillment = 1
GROUP BY 1, 2, 3, 4;
