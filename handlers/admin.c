/* Operators: rebuilding derived figures (reprocess jobs) and following their progress. */
#include "handlers/handlers.h"

#include "cache/cache.h"
#include "db/merchants.h"
#include "db/reprocess.h"
#include "handlers/validate.h"
#include "server/alloc.h"
#include "server/arena.h"
#include "server/buf.h"
#include "server/jobs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

static const int64_t QUARTER_HOUR_US = 15 * 60 * 1000000LL;
static const int64_t MAX_RANGE_US = 400LL * 86400 * 1000000;

/* A job handed to a job thread. */
struct job_run {
    struct h_app *app;
    char job_id[33];
};

void h_admin_publish_rebuild(void *ud, int64_t merchant_id, int64_t version, uint64_t lsn)
{
    cache_merchant_bump(ud, &merchant_id, &version, 1, lsn);
}

static void run_job(void *arg)
{
    struct job_run *j = arg;
    db_reprocess_run(j->app->db, j->job_id, h_admin_publish_rebuild, j->app->cache,
                     &j->app->stopping);
    free(j);
}

bool h_admin_start_job(struct h_app *app, const char *job_id)
{
    struct job_run *j = xcalloc(1, sizeof(*j));
    j->app = app;
    snprintf(j->job_id, sizeof(j->job_id), "%s", job_id);
    if (jobs_submit(app->jobs, run_job, j))
        return true;
    free(j);
    return false;
}

void h_admin_new_job_id(char out[33])
{
    unsigned char raw[16];
    if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw))
        abort(); /* no randomness: nothing safe to do */
    hex_encode(out, raw, sizeof(raw));
}

static void parse_bound(struct v_errors *v, const json_t *body, const char *key, int64_t *us)
{
    const char *s = v_string(v, body, "", key, 64);
    if (!s)
        return;
    if (!v_parse_timestamp(s, us))
        v_fail(v, key, "must be an RFC 3339 timestamp with an offset");
    else if (*us % QUARTER_HOUR_US != 0)
        v_fail(v, key, "must fall on a quarter hour");
}

/* Reads {"merchant_id": id | null, "from", "to"}; false (and a 400 sent) when wrong. */
static bool parse_reprocess(struct srv_req *req, const json_t *body, int64_t *merchant,
                            int64_t *from, int64_t *to)
{
    static const char *const fields[] = {"merchant_id", "from", "to", NULL};
    struct v_errors v = {.arena = req->arena};
    v_no_unknown_fields(&v, body, "", fields);
    json_t *m = json_object_get(body, "merchant_id");
    *merchant = 0;
    if (m && !json_is_null(m) && (!json_is_integer(m) || json_integer_value(m) < 1))
        v_fail(&v, "merchant_id", "must be a positive integer or null (every merchant)");
    else if (m && json_is_integer(m))
        *merchant = json_integer_value(m);
    *from = *to = 0;
    parse_bound(&v, body, "from", from);
    parse_bound(&v, body, "to", to);
    if (v_ok(&v) && *to <= *from)
        v_fail(&v, "to", "must be after from");
    else if (v_ok(&v) && *to - *from > MAX_RANGE_US)
        v_fail(&v, "to", "must be at most 400 days after from");
    if (v_ok(&v))
        return true;
    srv_reply_validation(req, v.list);
    return false;
}

/* The token must cover the job's merchant, or every merchant for a job over all of them. */
static bool may_touch(struct srv_req *req, int64_t merchant_id)
{
    bool ok = merchant_id ? auth_may_act_for(&req->principal, merchant_id)
                          : req->principal.all_merchants;
    if (!ok)
        srv_reply_problem(req, PROBLEM_FORBIDDEN, "the token is not valid for this merchant");
    return ok;
}

void h_admin_reprocess(struct srv_req *req)
{
    struct h_app *app = req->app;
    json_t *body = srv_body_json_object(req);
    int64_t merchant, from, to;
    if (!body || !parse_reprocess(req, body, &merchant, &from, &to) || !may_touch(req, merchant))
        return;
    struct db_merchant m;
    enum db_status st =
        merchant ? db_merchant_lookup(app->db, req->arena, merchant, &m) : DB_OK;
    char job_id[33];
    h_admin_new_job_id(job_id);
    req->log_db = "primary";
    if (st == DB_OK)
        st = db_reprocess_create(app->db, job_id, merchant, from / 1000000, to / 1000000);
    if (st == DB_NOT_FOUND) {
        srv_reply_problem(req, PROBLEM_NOT_FOUND, "no such merchant");
        return;
    }
    if (st != DB_OK || !h_admin_start_job(app, job_id)) {
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the job could not be started");
        return;
    }
    srv_add_header(req, "Location", arena_sprintf(req->arena, "/v1/admin/jobs/%s", job_id));
    srv_reply_json(req, 202, json_pack("{s:s}", "job_id", job_id));
}

void h_admin_job(struct srv_req *req)
{
    struct h_app *app = req->app;
    struct db_reprocess_job job;
    enum db_status st = db_reprocess_get(app->db, req->arena, srv_param(req, "job_id"), &job);
    req->log_db = "primary";
    if (st == DB_NOT_FOUND && !req->principal.all_merchants) {
        /* The same answer as for another merchant's job: a missing id reveals nothing. */
        srv_reply_problem(req, PROBLEM_FORBIDDEN, "the token is not valid for this merchant");
        return;
    }
    if (st == DB_NOT_FOUND) {
        srv_reply_problem(req, PROBLEM_NOT_FOUND, "no such job");
        return;
    }
    if (st != DB_OK) {
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the database is unavailable");
        return;
    }
    if (!may_touch(req, job.merchant_id))
        return;
    srv_add_header(req, "Cache-Control", "no-store");
    srv_reply_json(
        req, 200,
        json_pack("{s:s, s:s, s:o, s:s, s:s, s:{s:I, s:I}, s:o}", "job_id", job.job_id, "state",
                  job.state, "merchant_id",
                  job.merchant_id ? json_integer(job.merchant_id) : json_null(), "from", job.from,
                  "to", job.to, "progress", "merchants_done", (json_int_t)job.merchants_done,
                  "merchants_total", (json_int_t)job.merchants_total, "error",
                  job.error ? json_string(job.error) : json_null()));
}
