/* Customers (GDPR): the right of access (export) and erasure. Personal data is decrypted only
 * for pii:read tokens and goes nowhere but the response body, which no cache may keep. */
#include "handlers/handlers.h"

#include "cache/cache.h"
#include "db/customers.h"
#include "db/merchants.h"
#include "handlers/order_json.h"
#include "server/arena.h"

#include <string.h>

enum { CUSTOMER_REF_MAX_BYTES = 128 * 4 }; /* 128 characters of UTF-8, as orders accept */

/* A customer_ref no order could carry is a customer never seen. */
static bool plausible_ref(const char *ref)
{
    if (!ref || !*ref || strlen(ref) > CUSTOMER_REF_MAX_BYTES)
        return false;
    for (const char *p = ref; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return false;
    return true;
}

static void reply_failure(struct srv_req *req, enum db_status st, const char *not_found)
{
    if (st == DB_NOT_FOUND)
        srv_reply_problem(req, PROBLEM_NOT_FOUND, not_found);
    else if (st == DB_UNAVAILABLE)
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the primary database is unavailable");
    else
        srv_reply_problem(req, PROBLEM_INTERNAL, NULL);
}

void h_customers_export(struct srv_req *req)
{
    struct h_app *app = req->app;
    const char *ref = srv_param(req, "customer_ref");
    if (!plausible_ref(ref)) {
        srv_reply_problem(req, PROBLEM_NOT_FOUND, "no such customer");
        return;
    }
    struct db_customer_export e;
    req->log_db = "primary";
    enum db_status st = db_customer_export(app->db, req->arena, req->merchant_id, ref, &e);
    if (st != DB_OK) {
        reply_failure(req, st, "no such customer");
        return;
    }
    json_t *ids = json_array();
    for (size_t i = 0; i < e.n_order_ids; i++)
        json_array_append_new(ids, json_string(e.order_ids[i]));
    json_t *body =
        json_pack("{s:I, s:s, s:o, s:o, s:o}", "merchant_id", (json_int_t)req->merchant_id,
                  "customer_ref", ref, "customer", order_customer_json(e.pii), "erased_at",
                  e.erased_at ? json_string(e.erased_at) : json_null(), "order_ids", ids);
    srv_add_header(req, "Cache-Control", "no-store");
    srv_reply_json(req, 200, body);
}

void h_customers_erase(struct srv_req *req)
{
    struct h_app *app = req->app;
    const char *ref = srv_param(req, "customer_ref");
    struct db_merchant m;
    enum db_status st = db_merchant_lookup(app->db, req->arena, req->merchant_id, &m);
    if (st != DB_OK) {
        reply_failure(req, st, "no such merchant");
        return;
    }
    if (!plausible_ref(ref)) {
        srv_reply_empty(req, 204); /* never seen: nothing to erase */
        return;
    }
    bool changed = false;
    int64_t version = 0;
    uint64_t lsn = 0;
    req->log_db = "primary";
    st = db_customer_erase(app->db, req->merchant_id, ref, &changed, &version, &lsn);
    if (st != DB_OK) {
        reply_failure(req, st, "no such merchant");
        return;
    }
    /* Every instance then reads this merchant only from replicas that replayed the erasure. */
    if (changed)
        cache_merchant_bump(app->cache, &req->merchant_id, &version, 1, lsn);
    srv_reply_empty(req, 204);
}
