/* Merchants: the tenants. PUT creates or updates, GET reads. */
#include "handlers/handlers.h"

#include "db/merchants.h"
#include "handlers/validate.h"
#include "server/arena.h"

#include <inttypes.h>

enum { MERCHANT_NAME_MAX_CHARS = 200 };

static json_t *merchant_json(const struct db_merchant *m)
{
    return json_pack("{s:I, s:s, s:s, s:s, s:s, s:s}", "merchant_id", (json_int_t)m->merchant_id,
                     "name", m->name, "timezone", m->timezone, "currency", m->currency,
                     "created_at", m->created_at, "updated_at", m->updated_at);
}

/* Maps a failed database call to its problem. */
static void reply_db_failure(struct srv_req *req, enum db_status st)
{
    if (st == DB_NOT_FOUND)
        srv_reply_problem(req, PROBLEM_NOT_FOUND, "no such merchant");
    else if (st == DB_CONFLICT)
        srv_reply_problem(req, PROBLEM_CONFLICT,
                          "the currency cannot change once the merchant has orders");
    else if (st == DB_UNAVAILABLE)
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the database is unavailable");
    else
        srv_reply_problem(req, PROBLEM_INTERNAL, NULL);
}

static bool parse_merchant(struct srv_req *req, const json_t *body, struct db_merchant *m)
{
    static const char *const fields[] = {"name", "timezone", "currency", NULL};
    struct v_errors v = {.arena = req->arena};
    v_no_unknown_fields(&v, body, "", fields);
    m->merchant_id = req->merchant_id;
    m->name = v_string(&v, body, "", "name", MERCHANT_NAME_MAX_CHARS);
    m->timezone = v_string(&v, body, "", "timezone", 64);
    m->currency = v_string(&v, body, "", "currency", 3);
    if (m->timezone && !v_is_timezone(m->timezone))
        v_fail(&v, "timezone", "must be an IANA time zone name such as Europe/Madrid");
    if (m->currency && !v_is_currency(m->currency))
        v_fail(&v, "currency", "must be an ISO 4217 currency code such as EUR");
    if (v_ok(&v))
        return true;
    srv_reply_validation(req, v.list);
    return false;
}

void h_merchants_put(struct srv_req *req)
{
    struct h_app *app = req->app;
    json_t *body = srv_body_json_object(req);
    struct db_merchant in, out;
    if (!body || !parse_merchant(req, body, &in))
        return;
    bool created = false;
    req->log_db = "primary";
    enum db_status st = db_merchant_put(app->db, req->arena, &in, &out, &created);
    if (st != DB_OK) {
        reply_db_failure(req, st);
        return;
    }
    if (created)
        srv_add_header(req, "Location",
                       arena_sprintf(req->arena, "/v1/merchants/%" PRId64, out.merchant_id));
    srv_reply_json(req, created ? 201 : 200, merchant_json(&out));
}

void h_merchants_get(struct srv_req *req)
{
    struct h_app *app = req->app;
    struct db_merchant m;
    enum db_status st = db_merchant_get(app->db, req->arena, req->merchant_id, &m);
    if (st != DB_OK) {
        reply_db_failure(req, st);
        return;
    }
    srv_reply_json(req, 200, merchant_json(&m));
}
