#include "orders.h"

#include "server/arena.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *text_or_null(struct arena *a, const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : arena_strdup(a, PQgetvalue(r, row, col));
}

static int64_t int_at(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static const char *copy_text(struct arena *a, const char *s)
{
    return s ? arena_strdup(a, s) : NULL;
}

struct db_order *db_order_copy(struct arena *a, const struct db_order *o)
{
    struct db_order *c = arena_alloc(a, sizeof(*c));
    *c = *o;
    c->order_id = copy_text(a, o->order_id);
    c->promo_code = copy_text(a, o->promo_code);
    c->customer_ref = copy_text(a, o->customer_ref);
    if (o->pii) {
        struct db_pii *pii = arena_alloc(a, sizeof(*pii));
        *pii = (struct db_pii){copy_text(a, o->pii->name), copy_text(a, o->pii->email),
                               copy_text(a, o->pii->phone), copy_text(a, o->pii->address)};
        c->pii = pii;
    }
    c->items = arena_alloc(a, (o->n_items ? o->n_items : 1) * sizeof(*c->items));
    for (size_t i = 0; i < o->n_items; i++) {
        c->items[i] = o->items[i];
        c->items[i].sku = copy_text(a, o->items[i].sku);
        c->items[i].name = copy_text(a, o->items[i].name);
    }
    return c;
}

/* Items come as a JSON array of [sku, name, quantity, unit_price_cents]. */
static bool items_from_json(struct arena *a, const char *text, struct db_order *o)
{
    json_error_t err;
    json_t *items = json_loads(text, 0, &err);
    size_t n = json_array_size(items);
    o->items = arena_zalloc(a, (n ? n : 1) * sizeof(*o->items));
    o->n_items = n;
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_array_get(items, i);
        o->items[i].sku = arena_strdup(a, json_string_value(json_array_get(it, 0)));
        o->items[i].name = arena_strdup(a, json_string_value(json_array_get(it, 1)));
        o->items[i].quantity = json_integer_value(json_array_get(it, 2));
        o->items[i].unit_price_cents = json_integer_value(json_array_get(it, 3));
    }
    json_decref(items);
    return items != NULL;
}

/* Reads row `row` of a result with ORDER_COLUMNS (db/sql.c) and the order id after them. */
static void order_from_row(struct arena *a, const PGresult *r, int row, int64_t merchant_id,
                           struct db_order *o)
{
    memset(o, 0, sizeof(*o));
    o->merchant_id = merchant_id;
    o->store_id = int_at(r, row, 0);
    o->channel = (enum order_channel)int_at(r, row, 1);
    o->fulfillment = (enum order_fulfillment)int_at(r, row, 2);
    o->status = (enum order_status)int_at(r, row, 3);
    o->placed_at_us = int_at(r, row, 4);
    snprintf(o->currency, sizeof(o->currency), "%s", PQgetvalue(r, row, 5));
    o->gross_cents = int_at(r, row, 6);
    o->discount_cents = int_at(r, row, 7);
    o->net_cents = int_at(r, row, 8);
    o->tax_cents = int_at(r, row, 9);
    o->total_cents = int_at(r, row, 10);
    o->items_sold = int_at(r, row, 11);
    o->promo_code = text_or_null(a, r, row, 12);
    o->customer_ref = text_or_null(a, r, row, 13);
    snprintf(o->created_at, sizeof(o->created_at), "%s", PQgetvalue(r, row, 14));
    items_from_json(a, PQgetisnull(r, row, 15) ? "[]" : PQgetvalue(r, row, 15), o);
    o->order_id = arena_strdup(a, PQgetvalue(r, row, 16));
}

enum db_status db_order_get(struct db *db, struct arena *a, int64_t merchant_id,
                            const char *order_id, uint64_t min_lsn, struct db_order *out,
                            const char **role)
{
    char mid[24];
    snprintf(mid, sizeof(mid), "%lld", (long long)merchant_id);
    const char *params[] = {mid, order_id};
    enum db_status st;
    PGresult *r = db_read(db, min_lsn, DB_ORDER_GET, params, role, &st);
    if (!r)
        return st;
    if (PQntuples(r) == 0)
        st = DB_NOT_FOUND;
    else
        order_from_row(a, r, 0, merchant_id, out);
    PQclear(r);
    return st;
}

static const char *int_param(struct arena *a, bool present, int64_t v)
{
    return present ? arena_sprintf(a, "%lld", (long long)v) : NULL;
}

enum db_status db_order_list(struct db *db, struct arena *a, const struct db_order_list_query *q,
                             uint64_t min_lsn, struct db_order **out, size_t *n,
                             const char **role)
{
    const char *params[] = {
        int_param(a, true, q->merchant_id),
        int_param(a, q->has_from, q->from_us),
        int_param(a, q->has_to, q->to_us),
        int_param(a, q->store_id > 0, q->store_id),
        int_param(a, q->status >= 0, q->status),
        int_param(a, q->has_cursor, q->cursor_placed_us),
        q->has_cursor ? q->cursor_order_id : NULL,
        int_param(a, true, q->limit),
    };
    enum db_status st;
    PGresult *r = db_read(db, min_lsn, DB_ORDER_LIST, params, role, &st);
    *n = 0;
    if (!r)
        return st;
    int rows = PQntuples(r);
    *out = arena_zalloc(a, (size_t)(rows ? rows : 1) * sizeof(**out));
    for (int row = 0; row < rows; row++)
        order_from_row(a, r, row, q->merchant_id, &(*out)[row]);
    *n = (size_t)rows;
    PQclear(r);
    return DB_OK;
}
