#include "orders.h"

#include "server/arena.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *text_or_null(struct arena *a, const PGresult *r, int col)
{
    return PQgetisnull(r, 0, col) ? NULL : arena_strdup(a, PQgetvalue(r, 0, col));
}

static int64_t int_at(const PGresult *r, int col)
{
    return strtoll(PQgetvalue(r, 0, col), NULL, 10);
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

static void order_from_row(struct arena *a, const PGresult *r, struct db_order *o)
{
    o->store_id = int_at(r, 0);
    o->channel = (enum order_channel)int_at(r, 1);
    o->fulfillment = (enum order_fulfillment)int_at(r, 2);
    o->status = (enum order_status)int_at(r, 3);
    o->placed_at_us = int_at(r, 4);
    snprintf(o->currency, sizeof(o->currency), "%s", PQgetvalue(r, 0, 5));
    o->gross_cents = int_at(r, 6);
    o->discount_cents = int_at(r, 7);
    o->net_cents = int_at(r, 8);
    o->tax_cents = int_at(r, 9);
    o->total_cents = int_at(r, 10);
    o->items_sold = int_at(r, 11);
    o->promo_code = text_or_null(a, r, 12);
    o->customer_ref = text_or_null(a, r, 13);
    snprintf(o->created_at, sizeof(o->created_at), "%s", PQgetvalue(r, 0, 14));
    items_from_json(a, PQgetisnull(r, 0, 15) ? "[]" : PQgetvalue(r, 0, 15), o);
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
    else {
        memset(out, 0, sizeof(*out));
        out->merchant_id = merchant_id;
        out->order_id = arena_strdup(a, order_id);
        order_from_row(a, r, out);
    }
    PQclear(r);
    return st;
}
