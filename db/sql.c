#include "sql.h"

#include "db/delivery_metrics_sql.h"
#include "db/rankings_sql.h"
#include "db/sales_sql.h"

#define EPOCH_US(col) "(timestamptz 'epoch' + " col " * interval '1 microsecond')"
#define UTC_TEXT(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/* The columns of an order as db/orders.c reads them (items as a JSON array). */
#define ORDER_COLUMNS                                                                              \
    "o.store_id, o.channel, o.fulfillment, o.status, " \
    "(extract(epoch FROM o.placed_at) * 1000000)::bigint, o.currency, o.gross_cents, " \
    "o.discount_cents, o.net_cents, o.tax_cents, o.total_cents, o.items_sold, o.promo_code, " \
    "o.customer_ref, " UTC_TEXT("o.created_at") ", " \
    "(SELECT json_agg(json_build_array(i.sku, i.name, i.quantity, i.unit_price_cents) " \
    "ORDER BY i.line_no) FROM order_items i WHERE i.merchant_id = o.merchant_id " \
    "AND i.placed_at = o.placed_at AND i.order_id = o.order_id)"

static const struct db_stmt_def stmts[DB_STMT_COUNT_] = {
    [DB_SCHEMA_VERSION] = {"schema_version",
                           "SELECT coalesce(max(version), 0) FROM schema_migrations", 0},
    /* Replay lag: 0 when everything received is replayed, else the age of the last replayed
     * transaction (an idle primary sends no transactions, so age alone would mislead; after a
     * restart the receive position restarts at a segment boundary, below what was replayed).
     * Then the replay position. */
    [DB_REPLICA_LAG] = {"replica_lag",
                        "SELECT CASE WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() "
                        "THEN 0 ELSE coalesce((extract(epoch FROM now() - "
                        "pg_last_xact_replay_timestamp()) * 1000)::bigint, 0) END, "
                        "coalesce(pg_last_wal_replay_lsn(), '0/0')::text",
                        0},
    [DB_REPLAY_LSN] = {"replay_lsn", "SELECT coalesce(pg_last_wal_replay_lsn(), '0/0')::text", 0},
    [DB_MERCHANT_UPSERT] =
        {"merchant_upsert",
         "INSERT INTO merchants AS m (merchant_id, name, timezone, currency) "
         "VALUES ($1, $2, $3, $4) ON CONFLICT (merchant_id) DO UPDATE "
         "SET name = excluded.name, timezone = excluded.timezone, currency = excluded.currency, "
         "updated_at = now(), data_version = m.data_version + 1 "
         /* amounts are stored in the merchant's currency: it is fixed once orders exist */
         "WHERE m.currency = excluded.currency "
         "OR NOT EXISTS (SELECT 1 FROM order_keys k WHERE k.merchant_id = excluded.merchant_id) "
         "RETURNING m.merchant_id, m.name, m.timezone, m.currency, " UTC_TEXT(
             "m.created_at") ", " UTC_TEXT("m.updated_at") ", (m.xmax = 0) AS created",
         4},
    [DB_MERCHANT_GET] = {"merchant_get",
                         "SELECT merchant_id, name, timezone, currency, " UTC_TEXT(
                             "created_at") ", " UTC_TEXT("updated_at") " FROM merchants "
                                                                       "WHERE merchant_id = $1",
                         1},
    [DB_SALES_SERIES] = {"sales_series", DB_SALES_SERIES_SQL, DB_SALES_SERIES_PARAMS},
    [DB_TOP_PRODUCTS] = {"top_products", DB_TOP_PRODUCTS_SQL, DB_TOP_PRODUCTS_PARAMS},
    [DB_PROMOTIONS] = {"promotions", DB_PROMOTIONS_SQL, DB_PROMOTIONS_PARAMS},
    [DB_DELIVERY_SERIES] = {"delivery_series", DB_DELIVERY_SERIES_SQL, DB_DELIVERY_SERIES_PARAMS},
    [DB_WAL_LSN] = {"wal_lsn", "SELECT pg_current_wal_lsn()::text", 0},
    [DB_ENSURE_PARTITIONS] = {"ensure_partitions",
                              "SELECT cangrejo_ensure_partitions(to_timestamp($1::bigint), $2)", 2},
    /* The idempotency gate: only the keys inserted here feed rows and rollups. */
    [DB_INGEST_KEYS] = {"ingest_keys",
                        "INSERT INTO order_keys (merchant_id, order_id, placed_at, content_hash) "
                        "SELECT m, o, " EPOCH_US("p") ", decode(h, 'hex') "
                        "FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[]) "
                        "AS u(m, o, p, h) ON CONFLICT DO NOTHING RETURNING merchant_id, order_id",
                        4},
    [DB_INGEST_LOOKUP] = {"ingest_lookup",
                          "SELECT k.merchant_id, k.order_id, encode(k.content_hash, 'hex') "
                          "FROM unnest($1::bigint[], $2::text[]) AS u(m, o) "
                          "JOIN order_keys k ON k.merchant_id = u.m AND k.order_id = u.o",
                          2},
    /* Deltas come pre-aggregated and sorted by key, so concurrent writers lock rollup rows in
     * one order and cannot deadlock. The same deltas, summed per merchant and UTC hour (in that
     * order), keep sales_rollup_1h; every writer (ingest, cancellation) goes through this one
     * statement, so all of them lock the rows of both tables in the same order. */
    [DB_INGEST_ROLLUP] =
        {"ingest_rollup",
         "WITH d AS (SELECT m, to_timestamp(b) AS b, s, c, f, o, x, i, g, d, n, t, tot "
         "FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::smallint[], $5::smallint[], "
         "$6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], "
         "$12::bigint[], $13::bigint[]) AS u(m, b, s, c, f, o, x, i, g, d, n, t, tot)), "
         "quarters AS (INSERT INTO sales_rollup_15m AS r (merchant_id, bucket, store_id, "
         "channel, fulfillment, orders, cancelled_orders, items_sold, gross_cents, "
         "discount_cents, net_cents, tax_cents, total_cents) "
         "SELECT m, b, s, c, f, o, x, i, g, d, n, t, tot FROM d "
         "ON CONFLICT (merchant_id, bucket, store_id, channel, fulfillment) DO UPDATE SET "
         "orders = r.orders + excluded.orders, "
         "cancelled_orders = r.cancelled_orders + excluded.cancelled_orders, "
         "items_sold = r.items_sold + excluded.items_sold, "
         "gross_cents = r.gross_cents + excluded.gross_cents, "
         "discount_cents = r.discount_cents + excluded.discount_cents, "
         "net_cents = r.net_cents + excluded.net_cents, "
         "tax_cents = r.tax_cents + excluded.tax_cents, "
         "total_cents = r.total_cents + excluded.total_cents) "
         "INSERT INTO sales_rollup_1h AS h (merchant_id, hour, orders, cancelled_orders, "
         "items_sold, gross_cents, discount_cents, net_cents, tax_cents, total_cents) "
         "SELECT m, date_bin('1 hour', b, timestamptz 'epoch'), sum(o), sum(x), sum(i), sum(g), "
         "sum(d), sum(n), sum(t), sum(tot) FROM d GROUP BY 1, 2 ORDER BY 1, 2 "
         "ON CONFLICT (merchant_id, hour) DO UPDATE SET "
         "orders = h.orders + excluded.orders, "
         "cancelled_orders = h.cancelled_orders + excluded.cancelled_orders, "
         "items_sold = h.items_sold + excluded.items_sold, "
         "gross_cents = h.gross_cents + excluded.gross_cents, "
         "discount_cents = h.discount_cents + excluded.discount_cents, "
         "net_cents = h.net_cents + excluded.net_cents, "
         "tax_cents = h.tax_cents + excluded.tax_cents, "
         "total_cents = h.total_cents + excluded.total_cents",
         13},
    /* Product and promotion deltas, pre-aggregated and sorted by key like the sales ones. */
    [DB_INGEST_PRODUCTS] = {"ingest_products",
                            "INSERT INTO product_rollup_15m AS r (merchant_id, bucket, sku, "
                            "quantity, net_sales_cents) "
                            "SELECT m, to_timestamp(b), s, q, n "
                            "FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], "
                            "$5::bigint[]) AS u(m, b, s, q, n) "
                            "ON CONFLICT (merchant_id, bucket, sku) DO UPDATE SET "
                            "quantity = r.quantity + excluded.quantity, "
                            "net_sales_cents = r.net_sales_cents + excluded.net_sales_cents",
                            5},
    [DB_INGEST_PROMOS] = {"ingest_promos",
                          "INSERT INTO promo_rollup_15m AS r (merchant_id, bucket, promo_code, "
                          "orders, discounts_cents, net_sales_cents) "
                          "SELECT m, to_timestamp(b), c, o, d, n "
                          "FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], "
                          "$5::bigint[], $6::bigint[]) AS u(m, b, c, o, d, n) "
                          "ON CONFLICT (merchant_id, bucket, promo_code) DO UPDATE SET "
                          "orders = r.orders + excluded.orders, "
                          "discounts_cents = r.discounts_cents + excluded.discounts_cents, "
                          "net_sales_cents = r.net_sales_cents + excluded.net_sales_cents",
                          6},
    /* The latest name of each product: a later (placed_at, order_id, line_no) replaces it,
     * whatever the order in which orders arrive (see db/migrations/0005). */
    [DB_INGEST_PRODUCT_NAMES] =
        {"ingest_product_names",
         "INSERT INTO product_names AS p (merchant_id, sku, name, placed_at, order_id, line_no) "
         "SELECT m, s, n, " EPOCH_US("t") ", o, l "
         "FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], "
         "$6::smallint[]) AS u(m, s, n, t, o, l) "
         "ON CONFLICT (merchant_id, sku) DO UPDATE SET name = excluded.name, "
         "placed_at = excluded.placed_at, order_id = excluded.order_id, "
         "line_no = excluded.line_no "
         "WHERE (excluded.placed_at, excluded.order_id, excluded.line_no) > "
         "(p.placed_at, p.order_id, p.line_no)",
         6},
    /* Delivery deltas (db/migrations/0006), pre-aggregated and sorted by key like the others;
     * upserted after them and before the merchants' versions by every writer. */
    [DB_INGEST_DELIVERIES] = {"ingest_deliveries",
                              "INSERT INTO delivery_rollup_15m AS r (merchant_id, bucket, store_id, "
                              "channel, deliveries, delivered, failed, delivered_us) "
                              "SELECT m, to_timestamp(b), s, c, n, d, f, us "
                              "FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], "
                              "$4::smallint[], $5::bigint[], $6::bigint[], $7::bigint[], "
                              "$8::bigint[]) AS u(m, b, s, c, n, d, f, us) "
                              "ON CONFLICT (merchant_id, bucket, store_id, channel) DO UPDATE SET "
                              "deliveries = r.deliveries + excluded.deliveries, "
                              "delivered = r.delivered + excluded.delivered, "
                              "failed = r.failed + excluded.failed, "
                              "delivered_us = r.delivered_us + excluded.delivered_us",
                              8},
    [DB_INGEST_BUMP] = {"ingest_bump",
                        "UPDATE merchants SET data_version = data_version + 1 "
                        "WHERE merchant_id = ANY($1::bigint[]) "
                        "RETURNING merchant_id, data_version, " UTC_TEXT("now()"),
                        1},
    [DB_ORDER_GET] = {"order_get",
                      "SELECT " ORDER_COLUMNS ", o.order_id "
                      "FROM order_keys k JOIN orders o ON o.merchant_id = k.merchant_id "
                      "AND o.placed_at = k.placed_at AND o.order_id = k.order_id "
                      "WHERE k.merchant_id = $1 AND k.order_id = $2",
                      2},
    /* Newest first; the cursor is the (placed_at, order_id) of the last order of the previous
     * page, so each order shows exactly once however many arrive meanwhile. */
    [DB_ORDER_LIST] = {"order_list",
                       "SELECT " ORDER_COLUMNS ", o.order_id FROM orders o "
                       "WHERE o.merchant_id = $1 "
                       "AND o.placed_at >= coalesce(" EPOCH_US("$2::bigint") ", '-infinity') "
                       "AND o.placed_at < coalesce(" EPOCH_US("$3::bigint") ", 'infinity') "
                       "AND ($4::bigint IS NULL OR o.store_id = $4) "
                       "AND ($5::smallint IS NULL OR o.status = $5) "
                       "AND ($6::bigint IS NULL OR (o.placed_at, o.order_id) < "
                       "(" EPOCH_US("$6::bigint") ", $7::text)) "
                       "ORDER BY o.placed_at DESC, o.order_id DESC LIMIT $8",
                       8},
    /* Placed to cancelled, once: concurrent cancels wait on the row lock and then find it
     * cancelled. Returns what the rollups must take back. */
    [DB_ORDER_CANCEL] = {"order_cancel",
                         "UPDATE orders o SET status = 1, cancelled_at = now() FROM order_keys k "
                         "WHERE k.merchant_id = $1 AND k.order_id = $2 "
                         "AND o.merchant_id = k.merchant_id AND o.placed_at = k.placed_at "
                         "AND o.order_id = k.order_id AND o.status = 0 "
                         "RETURNING (extract(epoch FROM o.placed_at) * 1000000)::bigint, "
                         "o.store_id, o.channel, o.fulfillment, o.items_sold, o.gross_cents, "
                         "o.discount_cents, o.net_cents, o.tax_cents, o.total_cents, "
                         "o.promo_code",
                         2},
    /* The items of the order being cancelled, for the product rollups to take back. */
    [DB_ORDER_CANCEL_ITEMS] = {"order_cancel_items",
                               "SELECT sku, quantity, unit_price_cents FROM order_items "
                               "WHERE merchant_id = $1 AND placed_at = " EPOCH_US("$2::bigint")
                               " AND order_id = $3 ORDER BY line_no",
                               3},
    [DB_ORDER_EXISTS] = {"order_exists",
                         "SELECT 1 FROM order_keys WHERE merchant_id = $1 AND order_id = $2", 2},
    /* A key is claimed (running, body not yet known) by inserting it; a claim left running
     * for 10 minutes (a crashed server), or any record older than 24 hours, may be taken
     * over, and then starts afresh. */
    [DB_IDEMPOTENCY_CLAIM] = {"idempotency_claim",
                              "INSERT INTO idempotency_keys AS i (merchant_id, key, request_hash) "
                              "VALUES ($1, $2, '') ON CONFLICT (merchant_id, key) "
                              "DO UPDATE SET request_hash = '', state = 0, status = NULL, "
                              "response = NULL, created_at = now() WHERE (i.state = 0 "
                              "AND i.created_at < now() - interval '10 minutes') "
                              "OR i.created_at < now() - interval '24 hours' RETURNING 1",
                              2},
    [DB_IDEMPOTENCY_GET] = {"idempotency_get",
                            "SELECT encode(request_hash, 'hex'), state, status, response "
                            "FROM idempotency_keys WHERE merchant_id = $1 AND key = $2",
                            2},
    [DB_IDEMPOTENCY_FINISH] = {"idempotency_finish",
                               "UPDATE idempotency_keys SET state = 1, status = $3, response = $4 "
                               "WHERE merchant_id = $1 AND key = $2",
                               4},
    [DB_IDEMPOTENCY_SET_HASH] = {"idempotency_set_hash",
                                 "UPDATE idempotency_keys SET request_hash = decode($3, 'hex') "
                                 "WHERE merchant_id = $1 AND key = $2 AND state = 0",
                                 3},
    [DB_IDEMPOTENCY_RELEASE] = {"idempotency_release",
                                "DELETE FROM idempotency_keys WHERE merchant_id = $1 AND key = $2 "
                                "AND state = 0",
                                2},
    /* The order an event is for, locked so that its events apply one at a time; its row in
     * orders too, so that a cancellation (which locks only that) and an event that moves the
     * delivery rollups never run at once. */
    [DB_DELIVERY_ORDER] = {"delivery_order",
                           "SELECT o.fulfillment, "
                           "(extract(epoch FROM o.placed_at) * 1000000)::bigint, "
                           "o.status, o.store_id, o.channel "
                           "FROM order_keys k JOIN orders o ON o.merchant_id = k.merchant_id "
                           "AND o.placed_at = k.placed_at AND o.order_id = k.order_id "
                           "WHERE k.merchant_id = $1 AND k.order_id = $2 FOR UPDATE OF k, o",
                           2},
    [DB_DELIVERY_EVENT_INSERT] = {"delivery_event_insert",
                                  "INSERT INTO delivery_events (merchant_id, provider, event_id, "
                                  "order_id, status, occurred_at, eta, courier_ref) "
                                  "VALUES ($1, $2, $3, $4, $5, " EPOCH_US("$6::bigint") ", "
                                  EPOCH_US("$7::bigint") ", $8) "
                                  "ON CONFLICT DO NOTHING RETURNING 1",
                                  8},
    /* The latest event by occurred_at is the state; an earlier one never replaces it, and on
     * a tie a terminal state (delivered, failed, cancelled) wins. A row comes back when the
     * state moved. */
    [DB_DELIVERY_STATE_UPSERT] =
        {"delivery_state_upsert",
         "INSERT INTO deliveries AS d (merchant_id, order_id, placed_at, status, provider, "
         "event_id, occurred_at, eta, courier_ref) "
         "VALUES ($1, $2, " EPOCH_US("$3::bigint") ", $4, $5, $6, " EPOCH_US("$7::bigint") ", "
         EPOCH_US("$8::bigint") ", $9) "
         "ON CONFLICT (merchant_id, order_id) DO UPDATE SET status = excluded.status, "
         "provider = excluded.provider, event_id = excluded.event_id, "
         "occurred_at = excluded.occurred_at, eta = excluded.eta, "
         "courier_ref = excluded.courier_ref "
         "WHERE excluded.occurred_at > d.occurred_at OR (excluded.occurred_at = d.occurred_at "
         "AND excluded.status >= 3 AND d.status < 3) RETURNING 1",
         9},
    /* An order's current delivery state, read once the order is locked (a statement of its
     * own, so that it sees what the transaction it may have waited for committed). */
    [DB_DELIVERY_STATE_CURRENT] = {"delivery_state_current",
                                   "SELECT status, "
                                   "(extract(epoch FROM occurred_at) * 1000000)::bigint "
                                   "FROM deliveries WHERE merchant_id = $1 AND order_id = $2",
                                   2},
    [DB_DELIVERY_GET] =
        {"delivery_get",
         "SELECT d.event_id, d.provider, d.status, "
         "(extract(epoch FROM d.occurred_at) * 1000000)::bigint, "
         "(extract(epoch FROM d.eta) * 1000000)::bigint, d.courier_ref, "
         "(SELECT json_agg(json_build_array(e.event_id, e.provider, e.status, "
         "(extract(epoch FROM e.occurred_at) * 1000000)::bigint, "
         "(extract(epoch FROM e.eta) * 1000000)::bigint, e.courier_ref) "
         "ORDER BY e.occurred_at, e.received_at, e.provider, e.event_id) "
         "FROM delivery_events e WHERE e.merchant_id = d.merchant_id AND e.order_id = d.order_id), "
         "d.order_id FROM deliveries d WHERE d.merchant_id = $1 AND d.order_id = ANY($2::text[])",
         2},
    /* Customers with PII in a group: each gets a row with a fresh random secret unless it has
     * one (an erased customer keeps its NULL secret). Keys come sorted, so concurrent writers
     * wait on each other's new rows in one order. */
    [DB_PII_CUSTOMERS_ENSURE] = {"pii_customers_ensure",
                                 "INSERT INTO customers (merchant_id, customer_ref, key_id, "
                                 "secret) SELECT m, r, $4, decode(s, 'hex') "
                                 "FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(m, r, s) "
                                 "ON CONFLICT DO NOTHING",
                                 4},
    /* Their secrets, share-locked in key order until the group commits: an erasure waits for
     * the group (and then deletes its ciphertexts), or the group waits for the erasure (and
     * then finds the secret gone). */
    [DB_PII_CUSTOMERS_LOCK] = {"pii_customers_lock",
                               "SELECT c.merchant_id, c.customer_ref, c.key_id, "
                               "encode(c.secret, 'hex') FROM customers c "
                               "JOIN unnest($1::bigint[], $2::text[]) AS u(m, r) "
                               "ON c.merchant_id = u.m AND c.customer_ref = u.r "
                               "ORDER BY c.merchant_id, c.customer_ref COLLATE \"C\" "
                               "FOR SHARE OF c",
                               2},
    [DB_PII_INSERT] = {"pii_insert",
                       "INSERT INTO order_pii (merchant_id, order_id, customer_ref, nonce, "
                       "ciphertext) SELECT m, o, r, decode(n, 'hex'), decode(c, 'hex') "
                       "FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[]) "
                       "AS u(m, o, r, n, c)",
                       5},
    /* An order's ciphertext with what derives its key; nothing once the customer is erased. */
    [DB_ORDER_PII_GET] = {"order_pii_get",
                          "SELECT p.customer_ref, encode(p.nonce, 'hex'), "
                          "encode(p.ciphertext, 'hex'), c.key_id, encode(c.secret, 'hex') "
                          "FROM order_pii p JOIN customers c ON c.merchant_id = p.merchant_id "
                          "AND c.customer_ref = p.customer_ref "
                          "WHERE p.merchant_id = $1 AND p.order_id = $2 AND c.secret IS NOT NULL",
                          2},
    /* Everything stored of a customer, in one snapshot: the customer row (columns 0-3, NULL
     * when there is none), every order id it appears in (oldest first), and its ciphertexts
     * (newest order first). */
    [DB_CUSTOMER_EXPORT] =
        {"customer_export",
         "SELECT c.key_id, encode(c.secret, 'hex'), " UTC_TEXT("c.erased_at") ", "
         "c.customer_ref IS NOT NULL, "
         "(SELECT json_agg(o.order_id ORDER BY o.placed_at, o.order_id) FROM orders o "
         "WHERE o.merchant_id = $1 AND o.customer_ref = $2), "
         "(SELECT json_agg(json_build_array(p.order_id, encode(p.nonce, 'hex'), "
         "encode(p.ciphertext, 'hex')) ORDER BY k.placed_at DESC, p.order_id DESC) "
         "FROM order_pii p JOIN order_keys k ON k.merchant_id = p.merchant_id "
         "AND k.order_id = p.order_id WHERE p.merchant_id = $1 AND p.customer_ref = $2) "
         "FROM (VALUES (1)) AS one(x) LEFT JOIN customers c "
         "ON c.merchant_id = $1 AND c.customer_ref = $2",
         2},
    /* Erasure destroys the customer's secret (crypto-shredding every copy of its ciphertexts).
     * A customer known only from orders gets an erased row, so later orders store no PII for
     * it either; one never seen gets nothing. Erasing again changes nothing. */
    [DB_CUSTOMER_ERASE] =
        {"customer_erase",
         "INSERT INTO customers AS c (merchant_id, customer_ref, key_id, secret, erased_at) "
         "SELECT $1::bigint, $2::text, $3::text, NULL, now() WHERE EXISTS (SELECT 1 FROM orders o "
         "WHERE o.merchant_id = $1::bigint AND o.customer_ref = $2::text) "
         "ON CONFLICT (merchant_id, customer_ref) DO UPDATE SET secret = NULL, "
         "erased_at = coalesce(c.erased_at, now()) "
         "WHERE c.secret IS NOT NULL OR c.erased_at IS NULL",
         3},
    [DB_CUSTOMER_FORGET_PII] = {"customer_forget_pii",
                                "DELETE FROM order_pii "
                                "WHERE merchant_id = $1 AND customer_ref = $2",
                                2},
    /* Every write of a merchant's orders holds this shared, so a rebuild (which takes it
     * exclusively) sees no half-done write; taken first, in merchant order. */
    [DB_MERCHANT_WRITE_LOCK] = {"merchant_write_lock",
                                "SELECT pg_advisory_xact_lock_shared(cangrejo_merchant_lock_key(m)) "
                                "FROM (SELECT DISTINCT m FROM unnest($1::bigint[]) AS u(m) "
                                "ORDER BY m) AS s",
                                1},
    [DB_REPROCESS_CREATE] = {"reprocess_create",
                             "INSERT INTO reprocess_jobs (job_id, merchant_id, range_from, range_to) "
                             "VALUES ($1, $2, to_timestamp($3::bigint), to_timestamp($4::bigint))",
                             4},
    /* A queued job, or a running one: the caller holds the job's lock (DB_REPROCESS_LOCK), so
     * a running job it can claim is one whose runner is gone. */
    [DB_REPROCESS_CLAIM] = {"reprocess_claim",
                            "UPDATE reprocess_jobs SET state = 'running', heartbeat_at = now(), "
                            "merchants_total = CASE WHEN merchant_id IS NULL THEN "
                            "(SELECT count(*) FROM merchants) ELSE 1 END "
                            "WHERE job_id = $1 AND state IN ('queued', 'running') "
                            "RETURNING coalesce(merchant_id, 0), "
                            "extract(epoch FROM range_from)::bigint, "
                            "extract(epoch FROM range_to)::bigint, coalesce(resume_merchant, 0), "
                            "coalesce(extract(epoch FROM resume_at)::bigint, 0)",
                            1},
    /* Held by the runner's own session for the whole run: a runner that dies (its session
     * with it) frees the job at once for another to resume. */
    [DB_REPROCESS_LOCK] = {"reprocess_lock",
                           "SELECT pg_try_advisory_lock(hashtextextended($1, 20261122))", 1},
    [DB_REPROCESS_UNLOCK] = {"reprocess_unlock",
                             "SELECT pg_advisory_unlock(hashtextextended($1, 20261122))", 1},
    [DB_REPROCESS_MERCHANTS] = {"reprocess_merchants",
                                "SELECT merchant_id FROM merchants WHERE merchant_id >= $1 "
                                "AND ($2::bigint = 0 OR merchant_id = $2) "
                                "ORDER BY merchant_id LIMIT 1000",
                                2},
    [DB_REPROCESS_REBUILD] = {"reprocess_rebuild",
                              "SELECT cangrejo_rebuild_rollups($1, to_timestamp($2::bigint), "
                              "to_timestamp($3::bigint))",
                              3},
    [DB_REPROCESS_PROGRESS] = {"reprocess_progress",
                               "UPDATE reprocess_jobs SET resume_merchant = $2, "
                               "resume_at = to_timestamp($3::bigint), "
                               "merchants_done = merchants_done + $4::int, heartbeat_at = now() "
                               "WHERE job_id = $1 AND state = 'running'",
                               4},
    [DB_REPROCESS_FINISH] = {"reprocess_finish",
                             "UPDATE reprocess_jobs SET state = $2, error = $3, finished_at = now() "
                             "WHERE job_id = $1",
                             3},
    [DB_REPROCESS_GET] = {"reprocess_get",
                          "SELECT state, merchant_id, " UTC_TEXT("range_from") ", "
                          UTC_TEXT("range_to") ", merchants_done, merchants_total, error "
                          "FROM reprocess_jobs WHERE job_id = $1",
                          1},
    /* Jobs that may need a runner: queued, or running (maybe by a runner that is gone). */
    [DB_REPROCESS_STALE] = {"reprocess_stale",
                            "SELECT job_id FROM reprocess_jobs WHERE state IN ('queued', 'running') "
                            "ORDER BY created_at",
                            0},
};

const struct db_stmt_def *db_stmt_def(enum db_stmt stmt)
{
    return &stmts[stmt];
}
