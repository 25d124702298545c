-- cangrejo schema, version 5: product and promotion rollups at the 15-minute grain, kept
-- exactly once by the write path (ingest adds the orders it inserted, cancellation takes the
-- order back out), and the latest name of each product. SKUs and promo codes sort bytewise.

-- Per merchant, 15-minute UTC bucket and SKU: units sold and net sales, where an item's net is
-- the order's net spread over its items pro rata to their gross by the largest-remainder
-- method (each item gets the floor of its exact share; the cents left over go one each to the
-- items with the largest fractional parts, the earlier item first on a tie), so the items of
-- an order add up to its net exactly. Cancelled orders are not in it.
CREATE TABLE product_rollup_15m (
    merchant_id     bigint NOT NULL,
    bucket          timestamptz NOT NULL,
    sku             text COLLATE "C" NOT NULL,
    quantity        bigint NOT NULL DEFAULT 0,
    net_sales_cents bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (merchant_id, bucket, sku)
);

-- The name of each SKU as last seen: the name on the order with the latest placed_at that
-- has the SKU (cancelled orders included: the name was seen). Ties break towards the greatest
-- order_id (byte order), then the last line of that order with the SKU, so the winner does not
-- depend on the order in which orders arrive. (placed_at, order_id, line_no) is that winner.
CREATE TABLE product_names (
    merchant_id bigint NOT NULL,
    sku         text COLLATE "C" NOT NULL,
    name        text NOT NULL,
    placed_at   timestamptz NOT NULL,
    order_id    text COLLATE "C" NOT NULL,
    line_no     smallint NOT NULL,
    PRIMARY KEY (merchant_id, sku)
);

-- Per merchant, 15-minute UTC bucket and promo code: orders, their discounts and net sales.
-- Orders without a promo code, and cancelled orders, are not in it.
CREATE TABLE promo_rollup_15m (
    merchant_id     bigint NOT NULL,
    bucket          timestamptz NOT NULL,
    promo_code      text COLLATE "C" NOT NULL,
    orders          bigint NOT NULL DEFAULT 0,
    discounts_cents bigint NOT NULL DEFAULT 0,
    net_sales_cents bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (merchant_id, bucket, promo_code)
);

-- Backfill from the orders already stored. Servers of this version cannot write these tables
-- before this commits, so nothing is counted twice. Servers of an older version do not keep
-- them: their writes after this snapshot are missed, so stop them before migrating (they turn
-- not ready once the schema is newer than they expect).

INSERT INTO product_rollup_15m (merchant_id, bucket, sku, quantity, net_sales_cents)
SELECT merchant_id, bucket, sku, sum(quantity), sum(share + (place <= leftover)::int)
FROM (
    -- Each item: the floor of its exact share and the remainder (its fraction times the
    -- order's gross); the order's leftover cents go to its largest remainders, earlier first.
    SELECT f.*,
           f.net - sum(f.share) OVER o AS leftover,
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
        WHERE ord.status = 0) AS f
    WINDOW o AS (PARTITION BY f.merchant_id, f.placed_at, f.order_id)) AS allocated
GROUP BY merchant_id, bucket, sku;

INSERT INTO product_names (merchant_id, sku, name, placed_at, order_id, line_no)
SELECT DISTINCT ON (merchant_id, sku COLLATE "C") merchant_id, sku, name, placed_at, order_id,
       line_no
FROM order_items
ORDER BY merchant_id, sku COLLATE "C", placed_at DESC, order_id COLLATE "C" DESC, line_no DESC;

INSERT INTO promo_rollup_15m (merchant_id, bucket, promo_code, orders, discounts_cents,
                              net_sales_cents)
SELECT merchant_id, date_bin('15 minutes', placed_at, timestamptz 'epoch'), promo_code, count(*),
       sum(discount_cents), sum(net_cents)
FROM orders
WHERE status = 0 AND promo_code IS NOT NULL
GROUP BY 1, 2, 3;
