-- cangrejo schema, version 7: reprocessing. Rebuilds every derived figure (sales, product,
-- promotion and delivery rollups, latest product names) of a merchant and range from the stored
-- orders and delivery states, while ingestion goes on.

-- Writers of a merchant's orders take this advisory lock shared for the length of their
-- transaction; a rebuild takes it exclusively, so it never sees half of a concurrent write and a
-- write never lands in rollups that the rebuild is replacing. (Collisions between merchants
-- only make them wait for each other.)
CREATE OR REPLACE FUNCTION cangrejo_merchant_lock_key(m bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT hashint8extended(m, 20261121) $$;

CREATE TABLE IF NOT EXISTS reprocess_jobs (
    job_id           text PRIMARY KEY,
    merchant_id      bigint,               -- NULL: every merchant
    range_from       timestamptz NOT NULL,
    range_to         timestamptz NOT NULL,
    state            text NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    merchants_total  int NOT NULL DEFAULT 0,
    merchants_done   int NOT NULL DEFAULT 0,
    resume_merchant  bigint,               -- the merchant being rebuilt (merchants go in id order)
    resume_at        timestamptz,          -- ... rebuilt up to here
    error            text,
    heartbeat_at     timestamptz,          -- last step committed
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);

-- Rebuilds merchant m's rollups for [lo, hi) (15-minute aligned) from scratch and bumps its data
-- version; returns the new version. One transaction: the old figures or the new ones, never half.
CREATE OR REPLACE FUNCTION cangrejo_rebuild_rollups(m bigint, lo timestamptz, hi timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    version bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(cangrejo_merchant_lock_key(m));

    DELETE FROM sales_rollup_15m WHERE merchant_id = m AND bucket >= lo AND bucket < hi;
    INSERT INTO sales_rollup_15m (merchant_id, bucket, store_id, channel, fulfillment, orders,
                                  cancelled_orders, items_sold, gross_cents, discount_cents,
                                  net_cents, tax_cents, total_cents)
    SELECT merchant_id, date_bin('15 minutes', placed_at, timestamptz 'epoch'), store_id,
           channel, fulfillment,
           count(*) FILTER (WHERE status = 0), count(*) FILTER (WHERE status = 1),
           coalesce(sum(items_sold) FILTER (WHERE status = 0), 0),
           coalesce(sum(gross_cents) FILTER (WHERE status = 0), 0),
           coalesce(sum(discount_cents) FILTER (WHERE status = 0), 0),
           coalesce(sum(net_cents) FILTER (WHERE status = 0), 0),
           coalesce(sum(tax_cents) FILTER (WHERE status = 0), 0),
           coalesce(sum(total_cents) FILTER (WHERE status = 0), 0)
    FROM orders WHERE merchant_id = m AND placed_at >= lo AND placed_at < hi
    GROUP BY 1, 2, 3, 4, 5;

    DELETE FROM product_rollup_15m WHERE merchant_id = m AND bucket >= lo AND bucket < hi;
    INSERT INTO product_rollup_15m (merchant_id, bucket, sku, quantity, net_sales_cents)
    SELECT merchant_id, bucket, sku, sum(quantity), sum(share + (place <= leftover)::int)
    FROM (
        -- Largest remainder: each item the floor of its exact share of the order's net, the
        -- leftover cents one each to the largest remainders, the earlier item first.
        SELECT f.*, f.net - sum(f.share) OVER o AS leftover,
               row_number() OVER (o ORDER BY f.remainder DESC, f.line_no) AS place
        FROM (
            SELECT i.merchant_id, i.placed_at, i.order_id, i.line_no, i.sku, i.quantity,
                   date_bin('15 minutes', i.placed_at, timestamptz 'epoch') AS bucket,
                   ord.net_cents::numeric AS net,
                   coalesce(div(ord.net_cents::numeric * i.quantity * i.unit_price_cents,
                                nullif(ord.gross_cents, 0)), 0) AS share,
                   coalesce(mod(ord.net_cents::numeric * i.quantity * i.unit_price_cents,
                                nullif(ord.gross_cents, 0)), 0) AS remainder
            FROM order_items i
            JOIN orders ord ON ord.merchant_id = i.merchant_id AND ord.placed_at = i.placed_at
                           AND ord.order_id = i.order_id
            -- the range on both sides, so that both prune to the range's partitions
            WHERE ord.status = 0 AND i.merchant_id = m AND i.placed_at >= lo
              AND i.placed_at < hi AND ord.merchant_id = m AND ord.placed_at >= lo
              AND ord.placed_at < hi) AS f
        WINDOW o AS (PARTITION BY f.merchant_id, f.placed_at, f.order_id)) AS allocated
    GROUP BY merchant_id, bucket, sku;

    DELETE FROM promo_rollup_15m WHERE merchant_id = m AND bucket >= lo AND bucket < hi;
    INSERT INTO promo_rollup_15m (merchant_id, bucket, promo_code, orders, discounts_cents,
                                  net_sales_cents)
    SELECT merchant_id, date_bin('15 minutes', placed_at, timestamptz 'epoch'), promo_code,
           count(*), sum(discount_cents), sum(net_cents)
    FROM orders
    WHERE merchant_id = m AND placed_at >= lo AND placed_at < hi AND status = 0
      AND promo_code IS NOT NULL
    GROUP BY 1, 2, 3;

    DELETE FROM delivery_rollup_15m WHERE merchant_id = m AND bucket >= lo AND bucket < hi;
    INSERT INTO delivery_rollup_15m (merchant_id, bucket, store_id, channel, deliveries,
                                     delivered, failed, delivered_us)
    SELECT o.merchant_id, date_bin('15 minutes', o.placed_at, timestamptz 'epoch'), o.store_id,
           o.channel, count(*), count(*) FILTER (WHERE d.status = 3),
           count(*) FILTER (WHERE d.status = 4),
           coalesce(sum((extract(epoch FROM d.occurred_at) - extract(epoch FROM o.placed_at))
                        * 1000000) FILTER (WHERE d.status = 3), 0)::bigint
    FROM orders o
    LEFT JOIN deliveries d ON d.merchant_id = o.merchant_id AND d.order_id = o.order_id
    WHERE o.merchant_id = m AND o.placed_at >= lo AND o.placed_at < hi AND o.status = 0
      AND o.fulfillment = 1
    GROUP BY 1, 2, 3, 4;

    -- Latest product names, from the range's items: a name seen in the range replaces the
    -- stored one unless that one comes from a later order (same order as the write path).
    INSERT INTO product_names AS n (merchant_id, sku, name, placed_at, order_id, line_no)
    SELECT DISTINCT ON (sku COLLATE "C") merchant_id, sku, name, placed_at, order_id, line_no
    FROM order_items
    WHERE merchant_id = m AND placed_at >= lo AND placed_at < hi
    ORDER BY sku COLLATE "C", placed_at DESC, order_id COLLATE "C" DESC, line_no DESC
    ON CONFLICT (merchant_id, sku) DO UPDATE
    SET name = excluded.name, placed_at = excluded.placed_at, order_id = excluded.order_id,
        line_no = excluded.line_no
    WHERE (excluded.placed_at, excluded.order_id COLLATE "C", excluded.line_no)
          >= (n.placed_at, n.order_id COLLATE "C", n.line_no);

    -- The hourly sales (schema version 8 on): the hours the range touches, whole.
    IF to_regproc('cangrejo_rebuild_hours') IS NOT NULL THEN
        PERFORM cangrejo_rebuild_hours(m, lo, hi);
    END IF;

    UPDATE merchants SET data_version = data_version + 1 WHERE merchant_id = m
    RETURNING data_version INTO version;
    RETURN version;
END
$$;
