/* Cancellation: placed → cancelled exactly once, with the rollups taking the order back. */
#include "db/deliveries.h"
#include "db/ingest.h"
#include "db/orders.h"
#include "server/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ROLLUP_GRAIN_S = 15 * 60 };

/* A one-element array literal, for the array-typed rollup and bump statements. */
static const char *one(char *buf, size_t size, long long v)
{
    snprintf(buf, size, "{%lld}", v);
    return buf;
}

/* Moves the cancelled order (columns of DB_ORDER_CANCEL) out of its rollup row: orders and
 * amounts down, cancelled_orders up. */
static PGresult *take_back_rollup(struct db_conn *c, int64_t merchant_id, const PGresult *row)
{
    char p[13][32];
    long long placed_us = strtoll(PQgetvalue(row, 0, 0), NULL, 10);
    long long bucket = placed_us / 1000000 / ROLLUP_GRAIN_S * ROLLUP_GRAIN_S; /* >= 1970 */
    const char *params[13] = {
        one(p[0], 32, merchant_id),
        one(p[1], 32, bucket),
        one(p[2], 32, strtoll(PQgetvalue(row, 0, 1), NULL, 10)), /* store */
        one(p[3], 32, strtoll(PQgetvalue(row, 0, 2), NULL, 10)), /* channel */
        one(p[4], 32, strtoll(PQgetvalue(row, 0, 3), NULL, 10)), /* fulfillment */
        one(p[5], 32, -1),                                       /* orders */
        one(p[6], 32, 1),                                        /* cancelled_orders */
    };
    for (int k = 0; k < 6; k++) /* items_sold, gross, discount, net, tax, total */
        params[7 + k] = one(p[7 + k], 32, -strtoll(PQgetvalue(row, 0, 4 + k), NULL, 10));
    return db_exec(c, DB_INGEST_ROLLUP, params);
}

/* Takes the cancelled order's items and promo code (row: the columns of DB_ORDER_CANCEL) out
 * of the product and promotion rollups. */
static enum db_status take_back_items(struct db_conn *c, int64_t merchant_id, const char *order_id,
                                      const PGresult *row)
{
    char mid[24];
    snprintf(mid, sizeof(mid), "%lld", (long long)merchant_id);
    const char *params[] = {mid, PQgetvalue(row, 0, 0) /* placed_at, microseconds */, order_id};
    PGresult *items = db_exec(c, DB_ORDER_CANCEL_ITEMS, params);
    if (!db_ok(items, PGRES_TUPLES_OK)) {
        enum db_status st = db_failure(c, items);
        PQclear(items);
        return st;
    }
    size_t n = (size_t)PQntuples(items);
    struct db_item *lines = xcalloc(n ? n : 1, sizeof(*lines));
    for (size_t i = 0; i < n; i++)
        lines[i] =
            (struct db_item){.sku = PQgetvalue(items, (int)i, 0),
                             .quantity = strtoll(PQgetvalue(items, (int)i, 1), NULL, 10),
                             .unit_price_cents = strtoll(PQgetvalue(items, (int)i, 2), NULL, 10)};
    struct db_order order = {
        .merchant_id = merchant_id,
        .order_id = order_id,
        .placed_at_us = strtoll(PQgetvalue(row, 0, 0), NULL, 10),
        .items = lines,
        .n_items = n,
        .discount_cents = strtoll(PQgetvalue(row, 0, 6), NULL, 10),
        .net_cents = strtoll(PQgetvalue(row, 0, 7), NULL, 10),
        .promo_code = PQgetisnull(row, 0, 10) ? NULL : PQgetvalue(row, 0, 10),
    };
    struct db_order *orders[] = {&order};
    enum db_status st = db_ingest_item_rollups(c, orders, 1, -1);
    free(lines);
    PQclear(items);
    return st;
}

/* Takes a cancelled delivery order (row: the columns of DB_ORDER_CANCEL) out of its delivery
 * rollup row: the order, and its current delivery state's figures. The order's row is locked
 * by the cancellation, so no delivery event moves that state meanwhile. */
static enum db_status take_back_delivery(struct db_conn *c, int64_t merchant_id,
                                         const char *order_id, const PGresult *row)
{
    if (strtoll(PQgetvalue(row, 0, 3), NULL, 10) != FULFILLMENT_DELIVERY)
        return DB_OK;
    char mid[24];
    snprintf(mid, sizeof(mid), "%lld", (long long)merchant_id);
    bool has;
    enum delivery_status status;
    int64_t occurred_us;
    enum db_status st = db_delivery_state_current(c, mid, order_id, &has, &status, &occurred_us);
    if (st != DB_OK)
        return st;
    int64_t placed_us = strtoll(PQgetvalue(row, 0, 0), NULL, 10);
    struct db_delivery_delta d =
        db_delivery_delta_of(merchant_id, placed_us, strtoll(PQgetvalue(row, 0, 1), NULL, 10),
                             (int)strtol(PQgetvalue(row, 0, 2), NULL, 10));
    d.deliveries = -1;
    if (has)
        db_delivery_count_state(&d, status, occurred_us, placed_us, -1);
    return db_ingest_delivery_rollups(c, &d, 1);
}

static enum db_status fail(struct db_conn *c, PGresult *r)
{
    enum db_status st = db_failure(c, r);
    PQclear(r);
    PQclear(db_exec_simple(c, "ROLLBACK"));
    return st;
}

/* The transaction; the connection is the caller's. */
static enum db_status cancel_on(struct db_conn *c, int64_t merchant_id, const char *order_id,
                                bool *changed, int64_t *version)
{
    char mid[24], ids[32];
    snprintf(mid, sizeof(mid), "%lld", (long long)merchant_id);
    const char *key[] = {mid, order_id};
    PGresult *r = db_exec_simple(c, "BEGIN");
    if (!db_ok(r, PGRES_COMMAND_OK))
        return fail(c, r);
    PQclear(r);
    char merchants[32];
    const char *lock[] = {one(merchants, sizeof(merchants), merchant_id)};
    r = db_exec(c, DB_MERCHANT_WRITE_LOCK, lock); /* no rebuild meanwhile */
    if (!db_ok(r, PGRES_TUPLES_OK))
        return fail(c, r);
    PQclear(r);
    PGresult *row = db_exec(c, DB_ORDER_CANCEL, key);
    if (!db_ok(row, PGRES_TUPLES_OK))
        return fail(c, row);
    *changed = PQntuples(row) == 1;
    if (!*changed) {
        PQclear(row);
        PQclear(db_exec_simple(c, "ROLLBACK"));
        r = db_exec(c, DB_ORDER_EXISTS, key);
        enum db_status st = !db_ok(r, PGRES_TUPLES_OK) ? db_failure(c, r)
                            : PQntuples(r) ? DB_OK
                                           : DB_NOT_FOUND;
        PQclear(r);
        return st;
    }
    r = take_back_rollup(c, merchant_id, row);
    if (!db_ok(r, PGRES_COMMAND_OK)) {
        PQclear(row);
        return fail(c, r);
    }
    PQclear(r);
    enum db_status taken = take_back_items(c, merchant_id, order_id, row);
    if (taken == DB_OK)
        taken = take_back_delivery(c, merchant_id, order_id, row);
    PQclear(row);
    if (taken != DB_OK) {
        PQclear(db_exec_simple(c, "ROLLBACK"));
        return taken;
    }
    const char *bump[] = {one(ids, sizeof(ids), merchant_id)};
    r = db_exec(c, DB_INGEST_BUMP, bump);
    if (!db_ok(r, PGRES_TUPLES_OK) || PQntuples(r) != 1)
        return fail(c, r);
    *version = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
    PQclear(r);
    r = db_exec_simple(c, "COMMIT");
    enum db_status st = db_ok(r, PGRES_COMMAND_OK) ? DB_OK : DB_UNAVAILABLE;
    PQclear(r);
    return st;
}

enum db_status db_order_cancel(struct db *db, int64_t merchant_id, const char *order_id,
                               bool *changed, int64_t *version, uint64_t *lsn)
{
    struct db_conn *c = db_acquire_primary(db);
    *changed = false;
    *lsn = 0;
    if (!c)
        return DB_UNAVAILABLE;
    enum db_status st = cancel_on(c, merchant_id, order_id, changed, version);
    if (st == DB_OK && *changed) {
        PGresult *r = db_exec(c, DB_WAL_LSN, NULL);
        if (db_ok(r, PGRES_TUPLES_OK))
            *lsn = db_parse_lsn(PQgetvalue(r, 0, 0));
        PQclear(r);
        db_note_write_lsn(db, merchant_id, *lsn);
    }
    db_release(c);
    return st;
}
