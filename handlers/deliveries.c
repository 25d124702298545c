/* Delivery events from 3rd-party logistics: idempotent per provider event_id, applied in
 * occurred_at order whatever order they arrive in. */
#include "handlers/deliveries.h"

#include "cache/cache.h"
#include "handlers/handlers.h"
#include "handlers/validate.h"
#include "server/arena.h"

#include <string.h>
#include <time.h>

enum { EVENT_ID_MAX = 128, PROVIDER_MAX = 64, COURIER_REF_MAX = 128 };

static const char *const status_names[DELIVERY_STATUS_COUNT_] = {
    "assigned", "picked_up", "in_transit", "delivered", "failed", "cancelled"};

static json_t *time_or_null(bool present, int64_t us)
{
    if (!present)
        return json_null();
    char text[32];
    v_format_utc(us, text);
    return json_string(text);
}

static json_t *event_json(const struct db_delivery_event *e, bool with_id)
{
    json_t *j = json_object();
    if (with_id)
        json_object_set_new(j, "event_id", json_string(e->event_id));
    json_object_set_new(j, "provider", json_string(e->provider));
    json_object_set_new(j, "status", json_string(status_names[e->status]));
    json_object_set_new(j, "occurred_at", time_or_null(true, e->occurred_at_us));
    json_object_set_new(j, "eta", time_or_null(e->has_eta, e->eta_us));
    json_object_set_new(j, "courier_ref",
                        e->courier_ref ? json_string(e->courier_ref) : json_null());
    return j;
}

json_t *delivery_to_json(const struct db_delivery *d)
{
    if (!d)
        return json_null();
    json_t *j = event_json(&d->current, false);
    json_t *events = json_array();
    for (size_t i = 0; i < d->n_events; i++)
        json_array_append_new(events, event_json(&d->events[i], true));
    json_object_set_new(j, "events", events);
    return j;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void parse_time(struct v_errors *v, const json_t *body, const char *key, bool required,
                       bool *present, int64_t *us)
{
    json_t *value = json_object_get(body, key);
    *present = value && !json_is_null(value);
    if (!*present) {
        if (required)
            v_fail(v, key, "is required");
        return;
    }
    if (!json_is_string(value) || !v_parse_timestamp(json_string_value(value), us))
        v_fail(v, key, "must be an RFC 3339 timestamp with an offset");
}

bool delivery_event_from_json(struct v_errors *v, const json_t *body, int64_t now,
                              struct db_delivery_event *e)
{
    static const char *const fields[] = {"event_id", "provider",    "status", "occurred_at",
                                         "eta",      "courier_ref", NULL};
    memset(e, 0, sizeof(*e));
    v_no_unknown_fields(v, body, "", fields);
    e->event_id = v_string(v, body, "", "event_id", EVENT_ID_MAX);
    e->provider = v_string(v, body, "", "provider", PROVIDER_MAX);
    const char *status = v_string(v, body, "", "status", 32);
    int found = -1;
    for (int i = 0; status && i < DELIVERY_STATUS_COUNT_; i++)
        if (strcmp(status, status_names[i]) == 0)
            found = i;
    if (status && found < 0)
        v_fail(v, "status",
               "must be one of assigned, picked_up, in_transit, delivered, failed, cancelled");
    e->status = (enum delivery_status)(found < 0 ? 0 : found);
    bool occurred;
    parse_time(v, body, "occurred_at", true, &occurred, &e->occurred_at_us);
    if (occurred && e->occurred_at_us > now + 5LL * 60 * 1000000)
        v_fail(v, "occurred_at", "must not be more than 5 minutes in the future");
    parse_time(v, body, "eta", false, &e->has_eta, &e->eta_us);
    json_t *courier = json_object_get(body, "courier_ref");
    if (courier && !json_is_null(courier))
        e->courier_ref = v_string(v, body, "", "courier_ref", COURIER_REF_MAX);
    return v_ok(v);
}

static bool parse_event(struct srv_req *req, const json_t *body, struct db_delivery_event *e)
{
    struct v_errors v = {.arena = req->arena};
    bool ok = delivery_event_from_json(&v, body, now_us(), e);
    e->order_id = srv_param(req, "order_id");
    if (ok)
        return true;
    srv_reply_validation(req, v.list);
    return false;
}

void h_deliveries_post(struct srv_req *req)
{
    struct h_app *app = req->app;
    json_t *body = srv_body_json_object(req);
    struct db_delivery_event e;
    if (!body || !parse_event(req, body, &e))
        return;
    enum db_delivery_outcome outcome = DELIVERY_NO_ORDER;
    struct db_delivery d;
    int64_t version = 0;
    uint64_t lsn = 0;
    req->log_db = "primary";
    enum db_status st =
        db_delivery_record(app->db, req->arena, req->merchant_id, &e, &outcome, &d, &version, &lsn);
    if (st != DB_OK) {
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the primary database is unavailable");
        return;
    }
    if (outcome == DELIVERY_NO_ORDER) {
        srv_reply_problem(req, PROBLEM_NOT_FOUND, "no such order");
        return;
    }
    if (outcome == DELIVERY_NOT_DELIVERY) {
        srv_reply_problem(req, PROBLEM_CONFLICT,
                          "only orders with fulfillment delivery take delivery events");
        return;
    }
    if (outcome == DELIVERY_RECORDED)
        cache_merchant_bump(app->cache, &req->merchant_id, &version, 1, lsn);
    srv_reply_json(req, outcome == DELIVERY_RECORDED ? 201 : 200, delivery_to_json(&d));
}
