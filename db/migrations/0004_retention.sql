-- cangrejo schema, version 4: order ids sort bytewise; retention of raw orders. Whole monthly partitions older than the
-- retention are dropped; the rollups (and so every metric) are kept. Orders placed before the
-- retention window are refused by the server, so dropping their idempotency keys cannot let an
-- old order in again to be counted twice.

-- Order lists sort by (placed_at, order_id): byte order, whatever the database's locale.
ALTER TABLE orders ALTER COLUMN order_id SET DATA TYPE text COLLATE "C";

CREATE FUNCTION cangrejo_apply_retention(keep_months int)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    cutoff timestamptz := (date_trunc('month', now() AT TIME ZONE 'UTC')
                           - make_interval(months => keep_months)) AT TIME ZONE 'UTC';
    part record;
    dropped int := 0;
BEGIN
    IF keep_months < 1 THEN
        RAISE EXCEPTION 'keep_months must be at least 1';
    END IF;
    -- One run at a time across every server and job.
    IF NOT pg_try_advisory_xact_lock(7161132765893404784) THEN
        RETURN 0;
    END IF;
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname IN ('orders', 'order_items') AND c.relname ~ '_[0-9]{4}_[0-9]{2}$'
    LOOP
        -- Partition names end in the UTC month they hold: YYYY_MM sorts as text.
        IF right(part.relname, 7) < to_char(cutoff AT TIME ZONE 'UTC', 'YYYY_MM') THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    DELETE FROM order_keys WHERE placed_at < cutoff;
    DELETE FROM deliveries WHERE placed_at < cutoff;
    DELETE FROM delivery_events e WHERE NOT EXISTS (
        SELECT 1 FROM order_keys k WHERE k.merchant_id = e.merchant_id AND k.order_id = e.order_id);
    DELETE FROM order_pii x WHERE NOT EXISTS (
        SELECT 1 FROM order_keys k WHERE k.merchant_id = x.merchant_id AND k.order_id = x.order_id);
    RETURN dropped;
END
$$;
