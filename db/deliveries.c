#include "deliveries.h"

#include "db/ingest.h"
#include "server/arena.h"
#include "server/buf.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *us_param(struct arena *a, bool present, int64_t us)
{
    return present ? arena_sprintf(a, "%lld", (long long)us) : NULL;
}

static void event_from_json(struct arena *a, const json_t *row, struct db_delivery_event *e)
{
    e->event_id = arena_strdup(a, json_string_value(json_array_get(row, 0)));
    e->provider = arena_strdup(a, json_string_value(json_array_get(row, 1)));
    e->status = (enum delivery_status)json_integer_value(json_array_get(row, 2));
    e->occurred_at_us = json_integer_value(json_array_get(row, 3));
    e->has_eta = json_is_integer(json_array_get(row, 4));
    e->eta_us = json_integer_value(json_array_get(row, 4));
    const char *courier = json_string_value(json_array_get(row, 5));
    e->courier_ref = courier ? arena_strdup(a, courier) : NULL;
}

/* Reads row `row` of a DB_DELIVERY_GET result into *out. */
static void delivery_from_row(struct arena *a, const PGresult *r, int row, struct db_delivery *out)
{
    memset(out, 0, sizeof(*out));
    struct db_delivery_event *cur = &out->current;
    cur->order_id = arena_strdup(a, PQgetvalue(r, row, 7));
    cur->event_id = arena_strdup(a, PQgetvalue(r, row, 0));
    cur->provider = arena_strdup(a, PQgetvalue(r, row, 1));
    cur->status = (enum delivery_status)atoi(PQgetvalue(r, row, 2));
    cur->occurred_at_us = strtoll(PQgetvalue(r, row, 3), NULL, 10);
    cur->has_eta = !PQgetisnull(r, row, 4);
    cur->eta_us = cur->has_eta ? strtoll(PQgetvalue(r, row, 4), NULL, 10) : 0;
    cur->courier_ref = PQgetisnull(r, row, 5) ? NULL : arena_strdup(a, PQgetvalue(r, row, 5));
    json_error_t err;
    json_t *events =
        json_loads(PQgetisnull(r, row, 6) ? "[]" : PQgetvalue(r, row, 6), 0, &err);
    out->n_events = json_array_size(events);
    out->events = arena_zalloc(a, (out->n_events ? out->n_events : 1) * sizeof(*out->events));
    for (size_t i = 0; i < out->n_events; i++) {
        event_from_json(a, json_array_get(events, i), &out->events[i]);
        out->events[i].order_id = cur->order_id;
    }
    json_decref(events);
}

/* order_ids as a text[] literal. */
static const char *text_array(struct arena *a, const char *const *ids, size_t n)
{
    struct buf b = {0};
    buf_puts(&b, "{");
    for (size_t i = 0; i < n; i++) {
        buf_puts(&b, i ? ",\"" : "\"");
        buf_puts(&b, ids[i]); /* order ids are [A-Za-z0-9._:-]: nothing to escape */
        buf_puts(&b, "\"");
    }
    buf_puts(&b, "}");
    const char *text = arena_strdup(a, b.data);
    buf_free(&b);
    return text;
}

static enum db_status read_delivery(struct db_conn *c, struct arena *a, const char *mid,
                                    const char *order_id, struct db_delivery *out)
{
    const char *params[] = {mid, text_array(a, &order_id, 1)};
    PGresult *r = db_exec(c, DB_DELIVERY_GET, params);
    enum db_status st = !db_ok(r, PGRES_TUPLES_OK) ? db_failure(c, r)
                        : PQntuples(r) == 0        ? DB_NOT_FOUND
                                                   : DB_OK;
    if (st == DB_OK)
        delivery_from_row(a, r, 0, out);
    PQclear(r);
    return st;
}

static enum db_status rollback_with(struct db_conn *c, PGresult *r, enum db_status st)
{
    if (r && st != DB_OK)
        st = db_failure(c, r);
    PQclear(r);
    PQclear(db_exec_simple(c, "ROLLBACK"));
    return st;
}

enum db_status db_delivery_state_current(struct db_conn *c, const char *merchant_id,
                                         const char *order_id, bool *has,
                                         enum delivery_status *status, int64_t *occurred_at_us)
{
    const char *key[] = {merchant_id, order_id};
    PGresult *r = db_exec(c, DB_DELIVERY_STATE_CURRENT, key);
    if (!db_ok(r, PGRES_TUPLES_OK)) {
        enum db_status st = db_failure(c, r);
        PQclear(r);
        return st;
    }
    *has = PQntuples(r) == 1;
    *status = *has ? (enum delivery_status)atoi(PQgetvalue(r, 0, 0)) : DELIVERY_ASSIGNED;
    *occurred_at_us = *has ? strtoll(PQgetvalue(r, 0, 1), NULL, 10) : 0;
    PQclear(r);
    return DB_OK;
}

void db_delivery_count_state(struct db_delivery_delta *d, enum delivery_status status,
                             int64_t occurred_at_us, int64_t placed_at_us, int sign)
{
    if (status == DELIVERY_DELIVERED) {
        d->delivered += sign;
        d->delivered_us += sign * (occurred_at_us - placed_at_us);
    } else if (status == DELIVERY_FAILED) {
        d->failed += sign;
    }
}

/* The order an event is for, as DB_DELIVERY_ORDER reads it. */
struct event_order {
    const char *placed; /* placed_at in microseconds, as text */
    int64_t placed_at_us, store_id;
    int channel;
    bool cancelled;
};

/* Moves the order from its previous delivery state's figures to its new state's (it is locked
 * and not cancelled: a cancelled order is in no delivery rollup). */
static enum db_status move_rollup(struct db_conn *c, int64_t merchant_id,
                                  const struct event_order *o, bool had, enum delivery_status prev,
                                  int64_t prev_occurred_us, const struct db_delivery_event *e)
{
    struct db_delivery_delta d =
        db_delivery_delta_of(merchant_id, o->placed_at_us, o->store_id, o->channel);
    if (had)
        db_delivery_count_state(&d, prev, prev_occurred_us, o->placed_at_us, -1);
    db_delivery_count_state(&d, e->status, e->occurred_at_us, o->placed_at_us, 1);
    return db_ingest_delivery_rollups(c, &d, 1);
}

/* The transaction: the order (locked), the event, the state (and the delivery rollups when it
 * moved), the merchant's version. */
static enum db_status record_on(struct db_conn *c, struct arena *a, int64_t merchant_id,
                                const char *mid, const struct db_delivery_event *e,
                                enum db_delivery_outcome *outcome, int64_t *version)
{
    PGresult *r = db_exec_simple(c, "BEGIN");
    if (!db_ok(r, PGRES_COMMAND_OK))
        return rollback_with(c, r, DB_ERROR);
    PQclear(r);
    const char *lock[] = {arena_sprintf(a, "{%s}", mid)};
    r = db_exec(c, DB_MERCHANT_WRITE_LOCK, lock); /* no rebuild meanwhile */
    if (!db_ok(r, PGRES_TUPLES_OK))
        return rollback_with(c, r, DB_ERROR);
    PQclear(r);
    const char *key[] = {mid, e->order_id};
    r = db_exec(c, DB_DELIVERY_ORDER, key);
    if (!db_ok(r, PGRES_TUPLES_OK))
        return rollback_with(c, r, DB_ERROR);
    if (PQntuples(r) == 0 || atoi(PQgetvalue(r, 0, 0)) != 1 /* delivery */) {
        *outcome = PQntuples(r) == 0 ? DELIVERY_NO_ORDER : DELIVERY_NOT_DELIVERY;
        return rollback_with(c, r, DB_OK);
    }
    struct event_order o = {.placed = arena_strdup(a, PQgetvalue(r, 0, 1)),
                            .placed_at_us = strtoll(PQgetvalue(r, 0, 1), NULL, 10),
                            .cancelled = atoi(PQgetvalue(r, 0, 2)) != 0,
                            .store_id = strtoll(PQgetvalue(r, 0, 3), NULL, 10),
                            .channel = atoi(PQgetvalue(r, 0, 4))};
    PQclear(r);
    const char *status = arena_sprintf(a, "%d", (int)e->status);
    const char *occurred = us_param(a, true, e->occurred_at_us);
    const char *eta = us_param(a, e->has_eta, e->eta_us);
    const char *event[] = {mid, e->provider, e->event_id, e->order_id, status, occurred, eta,
                           e->courier_ref};
    r = db_exec(c, DB_DELIVERY_EVENT_INSERT, event);
    if (!db_ok(r, PGRES_TUPLES_OK))
        return rollback_with(c, r, DB_ERROR);
    if (PQntuples(r) == 0) {
        *outcome = DELIVERY_REPLAYED;
        return rollback_with(c, r, DB_OK);
    }
    PQclear(r);
    bool had = false;
    enum delivery_status prev = DELIVERY_ASSIGNED;
    int64_t prev_occurred_us = 0;
    enum db_status st = DB_OK;
    if (!o.cancelled)
        st = db_delivery_state_current(c, mid, e->order_id, &had, &prev, &prev_occurred_us);
    if (st != DB_OK)
        return rollback_with(c, NULL, st);
    const char *state[] = {mid,      e->order_id, o.placed, status,        e->provider,
                           e->event_id, occurred, eta,    e->courier_ref};
    r = db_exec(c, DB_DELIVERY_STATE_UPSERT, state);
    if (!db_ok(r, PGRES_TUPLES_OK))
        return rollback_with(c, r, DB_ERROR);
    bool moved = PQntuples(r) == 1;
    PQclear(r);
    st = moved && !o.cancelled
             ? move_rollup(c, merchant_id, &o, had, prev, prev_occurred_us, e)
             : DB_OK;
    if (st != DB_OK)
        return rollback_with(c, NULL, st);
    const char *bump[] = {arena_sprintf(a, "{%s}", mid)};
    r = db_exec(c, DB_INGEST_BUMP, bump);
    if (!db_ok(r, PGRES_TUPLES_OK) || PQntuples(r) != 1)
        return rollback_with(c, r, DB_ERROR);
    *version = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
    PQclear(r);
    r = db_exec_simple(c, "COMMIT");
    st = db_ok(r, PGRES_COMMAND_OK) ? DB_OK : DB_UNAVAILABLE;
    PQclear(r);
    *outcome = DELIVERY_RECORDED;
    return st;
}

enum db_status db_delivery_record(struct db *db, struct arena *a, int64_t merchant_id,
                                  const struct db_delivery_event *e,
                                  enum db_delivery_outcome *outcome, struct db_delivery *out,
                                  int64_t *version, uint64_t *lsn)
{
    struct db_conn *c = db_acquire_primary(db);
    *lsn = 0;
    if (!c)
        return DB_UNAVAILABLE;
    const char *mid = arena_sprintf(a, "%lld", (long long)merchant_id);
    enum db_status st = record_on(c, a, merchant_id, mid, e, outcome, version);
    if (st == DB_OK && *outcome == DELIVERY_RECORDED) {
        PGresult *r = db_exec(c, DB_WAL_LSN, NULL);
        if (db_ok(r, PGRES_TUPLES_OK))
            *lsn = db_parse_lsn(PQgetvalue(r, 0, 0));
        PQclear(r);
        db_note_write_lsn(db, merchant_id, *lsn);
    }
    if (st == DB_OK && (*outcome == DELIVERY_RECORDED || *outcome == DELIVERY_REPLAYED))
        st = read_delivery(c, a, mid, e->order_id, out);
    db_release(c);
    return st;
}

enum db_status db_deliveries_get(struct db *db, struct arena *a, int64_t merchant_id,
                                 const char *const *order_ids, size_t n, uint64_t min_lsn,
                                 struct db_delivery **out, const char **role)
{
    for (size_t i = 0; i < n; i++)
        out[i] = NULL;
    if (n == 0)
        return DB_OK;
    const char *params[] = {arena_sprintf(a, "%lld", (long long)merchant_id),
                            text_array(a, order_ids, n)};
    enum db_status st;
    PGresult *r = db_read(db, min_lsn, DB_DELIVERY_GET, params, role, &st);
    if (!r)
        return st;
    for (int row = 0; row < PQntuples(r); row++) {
        struct db_delivery *d = arena_alloc(a, sizeof(*d));
        delivery_from_row(a, r, row, d);
        for (size_t i = 0; i < n; i++)
            if (!out[i] && strcmp(order_ids[i], d->current.order_id) == 0)
                out[i] = d;
    }
    PQclear(r);
    return DB_OK;
}
