-- pgbench baseline of single-order ingest: the rows cangrejo stores for the order of
-- wrk/order.lua, written the way a team without group commit would, one transaction per order
-- with synchronous_commit on: its idempotency key (a 32-byte content hash), the order row, its
-- two items, and the derived rows every metric reads, kept in the same transaction so that a
-- metric never misses an acknowledged order: the 15-minute and hourly sales rollups, the two
-- products' 15-minute rollups and latest names, and the 15-minute delivery rollup. (The
-- merchant's data version, which cangrejo also moves once per group, is left out: that only
-- makes this baseline faster.) Variables: merchant, run (given with -D); order ids are unique
-- per transaction (txid_current()).
\set store random(101, 105)
BEGIN;
INSERT INTO order_keys (merchant_id, order_id, placed_at, content_hash)
  VALUES (:merchant, 'pgb-' || :run || '-' || txid_current(), now(),
          '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f');
INSERT INTO orders (merchant_id, placed_at, order_id, store_id, channel, fulfillment, currency,
  gross_cents, discount_cents, net_cents, tax_cents, total_cents, items_sold)
  VALUES (:merchant, now(), 'pgb-' || :run || '-' || txid_current(), :store, 0, 1, 'EUR',
          2550, 100, 2450, 245, 2695, 3);
INSERT INTO order_items (merchant_id, placed_at, order_id, line_no, sku, name, quantity,
  unit_price_cents) VALUES
  (:merchant, now(), 'pgb-' || :run || '-' || txid_current(), 0, 'PIZ-MARG-L', 'Margherita L', 2, 1150),
  (:merchant, now(), 'pgb-' || :run || '-' || txid_current(), 1, 'BEV-COLA', 'Cola 33cl', 1, 250);
INSERT INTO sales_rollup_15m AS r (merchant_id, bucket, store_id, channel, fulfillment, orders,
  cancelled_orders, items_sold, gross_cents, discount_cents, net_cents, tax_cents, total_cents)
  VALUES (:merchant, date_bin('15 minutes', now(), timestamptz 'epoch'), :store, 0, 1, 1, 0, 3,
          2550, 100, 2450, 245, 2695)
  ON CONFLICT (merchant_id, bucket, store_id, channel, fulfillment) DO UPDATE SET
    orders = r.orders + 1, items_sold = r.items_sold + 3, gross_cents = r.gross_cents + 2550,
    discount_cents = r.discount_cents + 100, net_cents = r.net_cents + 2450,
    tax_cents = r.tax_cents + 245, total_cents = r.total_cents + 2695;
INSERT INTO sales_rollup_1h AS h (merchant_id, hour, orders, cancelled_orders, items_sold,
  gross_cents, discount_cents, net_cents, tax_cents, total_cents)
  VALUES (:merchant, date_bin('1 hour', now(), timestamptz 'epoch'), 1, 0, 3, 2550, 100, 2450,
          245, 2695)
  ON CONFLICT (merchant_id, hour) DO UPDATE SET
    orders = h.orders + 1, items_sold = h.items_sold + 3, gross_cents = h.gross_cents + 2550,
    discount_cents = h.discount_cents + 100, net_cents = h.net_cents + 2450,
    tax_cents = h.tax_cents + 245, total_cents = h.total_cents + 2695;
INSERT INTO product_rollup_15m AS p (merchant_id, bucket, sku, quantity, net_sales_cents) VALUES
  (:merchant, date_bin('15 minutes', now(), timestamptz 'epoch'), 'BEV-COLA', 1, 240),
  (:merchant, date_bin('15 minutes', now(), timestamptz 'epoch'), 'PIZ-MARG-L', 2, 2210)
  ON CONFLICT (merchant_id, bucket, sku) DO UPDATE SET
    quantity = p.quantity + excluded.quantity,
    net_sales_cents = p.net_sales_cents + excluded.net_sales_cents;
INSERT INTO product_names AS n (merchant_id, sku, name, placed_at, order_id, line_no) VALUES
  (:merchant, 'BEV-COLA', 'Cola 33cl', now(), 'pgb-' || :run || '-' || txid_current(), 1),
  (:merchant, 'PIZ-MARG-L', 'Margherita L', now(), 'pgb-' || :run || '-' || txid_current(), 0)
  ON CONFLICT (merchant_id, sku) DO UPDATE SET name = excluded.name,
    placed_at = excluded.placed_at, order_id = excluded.order_id, line_no = excluded.line_no
  WHERE (excluded.placed_at, excluded.order_id, excluded.line_no) >
        (n.placed_at, n.order_id, n.line_no);
INSERT INTO delivery_rollup_15m AS d (merchant_id, bucket, store_id, channel, deliveries)
  VALUES (:merchant, date_bin('15 minutes', now(), timestamptz 'epoch'), :store, 0, 1)
  ON CONFLICT (merchant_id, bucket, store_id, channel) DO UPDATE SET
    deliveries = d.deliveries + 1;
COMMIT;
