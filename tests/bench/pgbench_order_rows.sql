-- pgbench, for information only: the raw rows of the order of wrk/order.lua (its idempotency
-- key, the order row, its two items) one transaction per order, without the derived rows every
-- metric needs (see pgbench_order.sql for the baseline of the bar). Shown next to it so that
-- the table says how much of the ratio is group commit and how much is the rollups' contention.
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
COMMIT;
