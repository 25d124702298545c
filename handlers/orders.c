/* Orders: POST writes one order through the group-commit writer; GET reads it back with
 * read-your-writes. */
#include "handlers/handlers.h"

#include "cache/cache.h"
#include "db/merchants.h"
#include "db/orders.h"
#include "db/writer.h"
#include "handlers/order_json.h"
#include "server/arena.h"

#include <inttypes.h>
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

static void reply_order(struct srv_req *req, unsigned status, const struct db_order *o)
{
    srv_reply_json(req, status, order_to_json(o));
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
    enum db_status st = db_order_get(app->db, req->arena, req->merchant_id, order_id,
                                     merchant_min_lsn(req), &stored, &role);
    req->log_db = role;
    if (st != DB_OK) {
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the database is unavailable");
        return;
    }
    srv_add_header(req, "Idempotent-Replayed", "true");
    reply_order(req, 200, &stored);
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
        reply_order(req, 201, &p->order);
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
    if (!order_from_json(&v, body, "", req->merchant_id, m.currency, now_us(), &p->order)) {
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
    enum db_status st = db_order_get(app->db, req->arena, req->merchant_id, order_id,
                                     merchant_min_lsn(req), &o, &role);
    req->log_db = role;
    if (st == DB_NOT_FOUND)
        srv_reply_problem(req, PROBLEM_NOT_FOUND, "no such order");
    else if (st != DB_OK)
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the database is unavailable");
    else
        reply_order(req, 200, &o);
}
