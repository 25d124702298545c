-- cangrejo schema, version 8: hourly sales per merchant, without dimensions, so that long
-- unfiltered series (a year of days) read 24 times fewer rows. Writers keep it in the same
-- statement as the 15-minute rollup (db/sql.c, DB_INGEST_ROLLUP), rebuilds recompute the hours
-- they touch (cangrejo_rebuild_rollups); reads use it only for whole UTC hours inside the
-- range, and only when every bucket boundary is a whole UTC hour (not for +05:30 or +05:45
-- zones), else the 15-minute rows.

CREATE TABLE IF NOT EXISTS sales_rollup_1h (
    merchant_id      bigint NOT NULL,
    hour             timestamptz NOT NULL,
    orders           bigint NOT NULL DEFAULT 0,
    cancelled_orders bigint NOT NULL DEFAULT 0,
    items_sold       bigint NOT NULL DEFAULT 0,
    gross_cents      bigint NOT NULL DEFAULT 0,
    discount_cents   bigint NOT NULL DEFAULT 0,
    net_cents        bigint NOT NULL DEFAULT 0,
    tax_cents        bigint NOT NULL DEFAULT 0,
    total_cents      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (merchant_id, hour)
);

-- (Re-applied after a rollback of the schema, it starts over from the 15-minute rows.)
TRUNCATE sales_rollup_1h;
INSERT INTO sales_rollup_1h
SELECT merchant_id, date_bin('1 hour', bucket, timestamptz 'epoch'), sum(orders),
       sum(cancelled_orders), sum(items_sold), sum(gross_cents), sum(discount_cents),
       sum(net_cents), sum(tax_cents), sum(total_cents)
FROM sales_rollup_15m GROUP BY 1, 2;

-- Rebuilds also recompute the hours they touch, whole, from the 15-minute rows.
CREATE OR REPLACE FUNCTION cangrejo_rebuild_hours(m bigint, lo timestamptz, hi timestamptz)
RETURNS void LANGUAGE sql AS $$
    DELETE FROM sales_rollup_1h
    WHERE merchant_id = m AND hour >= date_bin('1 hour', lo, timestamptz 'epoch') AND hour < hi;
    INSERT INTO sales_rollup_1h
    SELECT merchant_id, date_bin('1 hour', bucket, timestamptz 'epoch'), sum(orders),
           sum(cancelled_orders), sum(items_sold), sum(gross_cents), sum(discount_cents),
           sum(net_cents), sum(tax_cents), sum(total_cents)
    FROM sales_rollup_15m
    WHERE merchant_id = m AND bucket >= date_bin('1 hour', lo, timestamptz 'epoch')
      AND bucket < date_bin('1 hour', hi - interval '1 microsecond', timestamptz 'epoch')
                   + interval '1 hour'
    GROUP BY 1, 2;
$$;
