/* Orders: POST writes one order through the group-commit writer; GET reads it back with
 * read-your-writes. */
#include "handlers/handlers.h"

#include "cache/cache.h"
#include "db/customers.h"
#include "db/merchants.h"
#include "db/deliveries.h"
#include "db/orders.h"
#include "db/writer.h"
#include "handlers/deliveries.h"
#include "handlers/order_json.h"
#include "server/arena.h"
#include "server/buf.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A POST waiting for the writer; lives in the request arena. */
struct pending_order {
    struct db_write write;
    struct db_order order;
    struct srv_req *req;
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Looks the merchant up for a write or read; replies 404/503 and returns false on failure. */
static bool find_merchant(struct srv_req *req, struct db_merchant *m)
{
    struct h_app *app = req->app;
    enum db_status st = db_merchant_lookup(app->db, req->arena, req->merchant_id, m);
    if (st == DB_OK)
        return true;
    if (st == DB_NOT_FOUND)
        srv_reply_problem(req, PROBLEM_NOT_FOUND, "no such merchant");
    else
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the database is unavailable");
    return false;
}

/* The order's personal data for a pii:read token: what was just stored with it (written),
 * else what the database holds; JSON null when none is readable (none given, customer erased,
 * ciphertext moved or altered). NULL when the database could not say. */
static json_t *customer_json(struct srv_req *req, const struct db_order *o, bool written,
                             uint64_t min_lsn)
{
    if (written)
        return order_customer_json(o->pii_stored ? o->pii : NULL);
    if (!o->customer_ref)
        return json_null();
    struct h_app *app = req->app;
    struct db_pii pii;
    const char *role = NULL;
    enum db_status st =
        db_order_pii_get(app->db, req->arena, req->merchant_id, o->order_id, min_lsn, &pii, &role);
    return st == DB_OK ? order_customer_json(&pii) : st == DB_NOT_FOUND ? json_null() : NULL;
}

/* Fills "delivery" of the order objects of orders[0..n) (only delivery orders can have one);
 * false when the database failed. */
static bool attach_deliveries(struct srv_req *req, json_t *const *bodies,
                              const struct db_order *orders, size_t n, uint64_t min_lsn)
{
    struct h_app *app = req->app;
    const char **ids = arena_alloc(req->arena, (n ? n : 1) * sizeof(*ids));
    size_t *which = arena_alloc(req->arena, (n ? n : 1) * sizeof(*which));
    size_t wanted = 0;
    for (size_t i = 0; i < n; i++) {
        if (orders[i].fulfillment == FULFILLMENT_DELIVERY) {
            which[wanted] = i;
            ids[wanted++] = orders[i].order_id;
        }
    }
    if (wanted == 0)
        return true;
    struct db_delivery **found = arena_alloc(req->arena, wanted * sizeof(*found));
    const char *role = NULL;
    if (db_deliveries_get(app->db, req->arena, req->merchant_id, ids, wanted, min_lsn, found,
                          &role) != DB_OK)
        return false;
    for (size_t k = 0; k < wanted; k++)
        json_object_set_new(bodies[which[k]], "delivery", delivery_to_json(found[k]));
    return true;
}

static void reply_order_as(struct srv_req *req, unsigned status, const struct db_order *o,
                           bool written, uint64_t min_lsn)
{
    json_t *body = order_to_json(o);
    if (!written && !attach_deliveries(req, &body, o, 1, min_lsn)) {
        json_decref(body);
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the database is unavailable");
        return;
    }
    if (req->principal.scopes & AUTH_SCOPE_PII_READ) {
        json_t *customer = customer_json(req, o, written, min_lsn);
        if (!customer) {
            json_decref(body);
            srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the database is unavailable");
            return;
        }
        json_object_set_new(body, "customer", customer);
        srv_add_header(req, "Cache-Control", "no-store");
    }
    srv_reply_json(req, status, body);
}

/* An order read at min_lsn (its delivery and customer are read there too). */
static void reply_order(struct srv_req *req, unsigned status, const struct db_order *o,
                        uint64_t min_lsn)
{
    reply_order_as(req, status, o, false, min_lsn);
}

/* The newest commit position of the merchant known here or (from any instance) in Redis. */
static uint64_t merchant_min_lsn(struct srv_req *req)
{
    struct h_app *app = req->app;
    uint64_t redis_lsn = 0, local = db_merchant_write_lsn(app->db, req->merchant_id);
    cache_merchant_get(app->cache, req->merchant_id, NULL, req->arena, NULL, &redis_lsn);
    return redis_lsn > local ? redis_lsn : local;
}

/* A replay: answer with the order as stored (it may have been cancelled since). */
static void reply_replayed(struct srv_req *req, const char *order_id)
{
    struct h_app *app = req->app;
    struct db_order stored;
    const char *role = NULL;
    uint64_t min_lsn = merchant_min_lsn(req);
    enum db_status st =
        db_order_get(app->db, req->arena, req->merchant_id, order_id, min_lsn, &stored, &role);
    req->log_db = role;
    if (st != DB_OK) {
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the database is unavailable");
        return;
    }
    srv_add_header(req, "Idempotent-Replayed", "true");
    reply_order(req, 200, &stored, min_lsn);
}

/* Continuation on an HTTP thread once the writer is done with the order. */
static void reply_written(struct srv_req *req)
{
    struct pending_order *p = req->handler_state;
    req->log_db = "primary";
    switch (p->write.result) {
    case INGEST_INSERTED:
        srv_add_header(req, "Location",
                       arena_sprintf(req->arena, "/v1/merchants/%" PRId64 "/orders/%s",
                                     req->merchant_id, p->order.order_id));
        reply_order_as(req, 201, &p->order, true, 0);
        break;
    case INGEST_DUPLICATE:
        reply_replayed(req, p->order.order_id);
        break;
    case INGEST_CONFLICT:
        srv_reply_problem(req, PROBLEM_CONFLICT,
                          "an order with this order_id and different content exists");
        break;
    case INGEST_UNAVAILABLE:
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the primary database is unavailable");
        break;
    case INGEST_FAILED:
        srv_reply_problem(req, PROBLEM_INTERNAL, NULL);
        break;
    }
}

/* Runs on a writer thread: only wakes the request up. */
static void order_written(struct db_write *w)
{
    struct pending_order *p = w->ud;
    srv_resume(p->req);
}

void h_orders_post(struct srv_req *req)
{
    struct h_app *app = req->app;
    json_t *body = srv_body_json_object(req);
    struct db_merchant m;
    if (!body || !find_merchant(req, &m))
        return;
    struct pending_order *p = arena_zalloc(req->arena, sizeof(*p));
    struct v_errors v = {.arena = req->arena};
    struct order_rules rules =
        order_rules_for(req->merchant_id, m.currency, now_us(), app->retention_months);
    if (!order_from_json(&v, body, "", &rules, &p->order)) {
        srv_reply_validation(req, v.list);
        return;
    }
    p->req = req;
    p->write = (struct db_write){.order = &p->order, .done = order_written, .ud = p};
    req->handler_state = p;
    srv_suspend(req, reply_written);
    if (!db_writer_submit(app->writer, &p->write)) {
        p->write.result = INGEST_UNAVAILABLE; /* shutting down: the client may retry */
        srv_resume(req);
    }
}

void h_orders_get(struct srv_req *req)
{
    struct h_app *app = req->app;
    const char *order_id = srv_param(req, "order_id");
    struct db_order o;
    const char *role = NULL;
    uint64_t min_lsn = merchant_min_lsn(req);
    enum db_status st =
        db_order_get(app->db, req->arena, req->merchant_id, order_id, min_lsn, &o, &role);
    req->log_db = role;
    if (st == DB_NOT_FOUND)
        srv_reply_problem(req, PROBLEM_NOT_FOUND, "no such order");
    else if (st != DB_OK)
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the database is unavailable");
    else
        reply_order(req, 200, &o, min_lsn);
}

/* A cancellation is one short transaction on the primary. It takes no body; an empty JSON
 * object is tolerated. */
void h_orders_cancel(struct srv_req *req)
{
    struct h_app *app = req->app;
    if (req->body_len) {
        json_t *body = srv_body_json_object(req);
        if (!body)
            return;
        struct v_errors v = {.arena = req->arena};
        static const char *const none[] = {NULL};
        v_no_unknown_fields(&v, body, "", none);
        if (!v_ok(&v)) {
            srv_reply_validation(req, v.list);
            return;
        }
    }
    const char *order_id = srv_param(req, "order_id");
    bool changed = false;
    int64_t version = 0;
    uint64_t lsn = 0;
    req->log_db = "primary";
    enum db_status st =
        db_order_cancel(app->db, req->merchant_id, order_id, &changed, &version, &lsn);
    if (st == DB_NOT_FOUND) {
        srv_reply_problem(req, PROBLEM_NOT_FOUND, "no such order");
        return;
    }
    if (st != DB_OK) {
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the primary database is unavailable");
        return;
    }
    if (changed)
        cache_merchant_bump(app->cache, &req->merchant_id, &version, 1, lsn);
    struct db_order o;
    const char *role = NULL;
    uint64_t min_lsn = merchant_min_lsn(req);
    st = db_order_get(app->db, req->arena, req->merchant_id, order_id, min_lsn, &o, &role);
    if (st != DB_OK) {
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the database is unavailable");
        return;
    }
    reply_order(req, 200, &o, min_lsn);
}

enum { LIST_DEFAULT_LIMIT = 50, LIST_MAX_LIMIT = 500 };
static const int64_t MAX_PLACED_US = 253402300799999999LL; /* 9999-12-31T23:59:59.999999Z */

/* Plain decimal digits only: no sign, no spaces, no overflow. */
static bool parse_decimal(const char *s, int64_t *out)
{
    if (!*s || strlen(s) > 19 || strspn(s, "0123456789") != strlen(s))
        return false;
    errno = 0;
    long long n = strtoll(s, NULL, 10);
    *out = n;
    return errno == 0;
}

/* The cursor is the hex of "<placed_at µs>:<order_id>" of the last order of a page. */
static const char *encode_cursor(struct arena *a, const struct db_order *last)
{
    const char *raw = arena_sprintf(a, "%lld:%s", (long long)last->placed_at_us, last->order_id);
    size_t n = strlen(raw);
    char *hex = arena_alloc(a, 2 * n + 1);
    hex_encode(hex, raw, n);
    return hex;
}

static bool decode_cursor(struct arena *a, const char *hex, struct db_order_list_query *q)
{
    size_t n = strlen(hex);
    if (n == 0 || n % 2 || n > 256)
        return false;
    char *raw = arena_alloc(a, n / 2 + 1);
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1 || !isxdigit((unsigned char)hex[2 * i]) ||
            !isxdigit((unsigned char)hex[2 * i + 1]) || v == 0)
            return false;
        raw[i] = (char)v;
    }
    raw[n / 2] = '\0';
    char *colon = strchr(raw, ':');
    if (!colon)
        return false;
    *colon = '\0';
    int64_t placed = 0;
    q->cursor_order_id = colon + 1;
    /* A position this server could have issued: an order placed from 1970 to year 9999. */
    q->has_cursor = parse_decimal(raw, &placed) && placed <= MAX_PLACED_US && *q->cursor_order_id;
    q->cursor_placed_us = placed;
    return q->has_cursor;
}

/* A query parameter given at most once; a repeated one is an error (never silently ignored). */
static const char *list_param(struct v_errors *v, struct srv_req *req, const char *name)
{
    bool repeated = false;
    const char *s = srv_query(req, name, &repeated);
    if (repeated)
        v_fail(v, name, "must be given at most once");
    return s;
}

static void list_bound(struct v_errors *v, struct srv_req *req, const char *name, bool *has,
                       int64_t *us)
{
    const char *s = list_param(v, req, name);
    *has = s != NULL;
    if (s && !v_parse_timestamp(s, us))
        v_fail(v, name, "must be an RFC 3339 timestamp with an offset");
}

static int64_t list_int(struct v_errors *v, struct srv_req *req, const char *name, int64_t def,
                        int64_t min, int64_t max)
{
    const char *s = list_param(v, req, name);
    int64_t n;
    if (!s)
        return def;
    if (!parse_decimal(s, &n) || n < min || n > max) {
        v_fail(v, name,
               arena_sprintf(req->arena, "must be an integer from %lld to %lld", (long long)min,
                             (long long)max));
        return def;
    }
    return n;
}

/* Reads the list's query parameters; false (and a 400 sent) when one is wrong. */
static bool parse_list_query(struct srv_req *req, struct db_order_list_query *q)
{
    static const char *const known[] = {"from",  "to",     "store_id", "status",
                                        "limit", "cursor", NULL};
    struct v_errors v = {.arena = req->arena};
    memset(q, 0, sizeof(*q));
    q->merchant_id = req->merchant_id;
    const char *unknown = srv_unknown_query(req, known);
    if (unknown)
        v_fail(&v, unknown, "unknown query parameter");
    list_bound(&v, req, "from", &q->has_from, &q->from_us);
    list_bound(&v, req, "to", &q->has_to, &q->to_us);
    q->store_id = list_int(&v, req, "store_id", 0, 1, INT64_MAX);
    q->limit = (unsigned)list_int(&v, req, "limit", LIST_DEFAULT_LIMIT, 1, LIST_MAX_LIMIT);
    const char *status = list_param(&v, req, "status");
    q->status = !status                            ? -1
                : strcmp(status, "placed") == 0    ? ORDER_PLACED
                : strcmp(status, "cancelled") == 0 ? ORDER_CANCELLED
                                                   : -2;
    if (q->status == -2)
        v_fail(&v, "status", "must be placed or cancelled");
    const char *cursor = list_param(&v, req, "cursor");
    if (cursor && !decode_cursor(req->arena, cursor, q))
        v_fail(&v, "cursor", "is not a cursor this server issued");
    if (v_ok(&v))
        return true;
    srv_reply_validation(req, v.list);
    return false;
}

/* RFC 8288 Link to the next page: this request's own query (kept as sent) with the cursor
 * replaced. */
static const char *next_link(struct srv_req *req, const char *cursor)
{
    struct buf b = {0};
    buf_printf(&b, "<%s?", req->path);
    for (const char *p = req->query; p && *p;) {
        size_t len = strcspn(p, "&");
        if (len && strncmp(p, "cursor=", 7) != 0 && !(len == 6 && strncmp(p, "cursor", 6) == 0))
            buf_printf(&b, "%.*s&", (int)len, p);
        p += len + (p[len] == '&');
    }
    buf_printf(&b, "cursor=%s>; rel=\"next\"", cursor);
    const char *link = arena_strndup(req->arena, b.data, b.len);
    buf_free(&b);
    return link;
}

void h_orders_list(struct srv_req *req)
{
    struct h_app *app = req->app;
    struct db_order_list_query q;
    if (!parse_list_query(req, &q))
        return;
    unsigned page = q.limit;
    q.limit = page + 1; /* one more tells whether there is a next page */
    struct db_order *orders = NULL;
    size_t n = 0;
    const char *role = NULL;
    uint64_t min_lsn = merchant_min_lsn(req);
    enum db_status st = db_order_list(app->db, req->arena, &q, min_lsn, &orders, &n, &role);
    req->log_db = role;
    if (st != DB_OK) {
        srv_reply_problem(req, st == DB_UNAVAILABLE ? PROBLEM_UNAVAILABLE : PROBLEM_INTERNAL,
                          st == DB_UNAVAILABLE ? "the database is unavailable" : NULL);
        return;
    }
    size_t shown = n < page ? n : page;
    json_t **bodies = arena_alloc(req->arena, (shown ? shown : 1) * sizeof(*bodies));
    json_t *list = json_array();
    for (size_t i = 0; i < shown; i++) {
        bodies[i] = order_to_json(&orders[i]);
        json_array_append_new(list, bodies[i]);
    }
    if (!attach_deliveries(req, bodies, orders, shown, min_lsn)) {
        json_decref(list);
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the database is unavailable");
        return;
    }
    const char *cursor = n > page ? encode_cursor(req->arena, &orders[page - 1]) : NULL;
    if (cursor)
        srv_add_header(req, "Link", next_link(req, cursor));
    srv_reply_json(req, 200,
                   json_pack("{s:o, s:o}", "orders", list, "next_cursor",
                             cursor ? json_string(cursor) : json_null()));
}
