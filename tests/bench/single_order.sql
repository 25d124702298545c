-- pgbench baseline: what a one-transaction-per-order server writes for the same order as
-- single_order.lua (idempotency key, order row, its two items, the rollup upsert), committed
-- once per order with synchronous_commit on.
\set store random(1, 5)
\set n random(1, 2000000000)
BEGIN;
INSERT INTO order_keys (merchant_id, order_id, placed_at, content_hash)
  VALUES (:merchant, 'pgb-' || :client_id || '-' || :n || '-' || txid_current(), now(), '\x00');
INSERT INTO orders (merchant_id, placed_at, order_id, store_id, channel, fulfillment, currency,
  gross_cents, discount_cents, net_cents, tax_cents, total_cents, items_sold)
  VALUES (:merchant, now(), 'pgb-' || :client_id || '-' || :n || '-' || txid_current(), :store,
  0, 1, 'EUR', 2550, 100, 2450, 245, 2695, 3);
INSERT INTO order_items (merchant_id, placed_at, order_id, line_no, sku, name, quantity,
  unit_price_cents) VALUES
  (:merchant, now(), 'pgb-' || :client_id || '-' || :n || '-' || txid_current(), 0, 'PIZ-MARG-L', 'Margherita L', 2, 1150),
  (:merchant, now(), 'pgb-' || :client_id || '-' || :n || '-' || txid_current(), 1, 'BEV-COLA', 'Cola', 1, 250);
INSERT INTO sales_rollup_15m AS r (merchant_id, bucket, store_id, channel, fulfillment, orders,
  items_sold, gross_cents, discount_cents, net_cents, tax_cents, total_cents)
  VALUES (:merchant, to_timestamp(floor(extract(epoch FROM now()) / 900) * 900), :store, 0, 1, 1,
  3, 2550, 100, 2450, 245, 2695)
  ON CONFLICT (merchant_id, bucket, store_id, channel, fulfillment) DO UPDATE SET
  orders = r.orders + 1, items_sold = r.items_sold + 3, gross_cents = r.gross_cents + 2550,
  discount_cents = r.discount_cents + 100, net_cents = r.net_cents + 2450,
  tax_cents = r.tax_cents + 245, total_cents = r.total_cents + 2695;
END;
