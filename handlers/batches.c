/* POS batch uploads: the body is split into orders as it streams in (batch_stream.c) and the
 * orders are parsed meanwhile (batch_parse.c); once the body is complete, they are stored on a
 * job thread (the HTTP thread is released meanwhile), with an optional Idempotency-Key. A large
 * batch is stored as two transactions at once on two connections, split in time at an hour
 * boundary so that they add to different rollup rows and do not wait for each other. */
#include "handlers/handlers.h"

#include "cache/cache.h"
#include "db/idempotency.h"
#include "db/ingest.h"
#include "db/merchants.h"
#include "handlers/batch_parse.h"
#include "handlers/batch_stream.h"
#include "handlers/order_json.h"
#include "server/alloc.h"
#include "server/arena.h"
#include "server/buf.h"
#include "server/jobs.h"
#include "server/json.h"
#include "server/log.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    BATCH_MAX_ORDERS = 10000,
    BATCH_ORDER_MAX_BYTES = 256 * 1024,
    BATCH_GROUP = 2500,     /* orders per transaction at most */
    BATCH_SPLIT_MIN = 2000, /* from this many orders, two transactions at once */
    HOUR_US = 3600000000LL,
    IDEMPOTENCY_KEY_MAX = 255,
};

/* A batch from its first byte to its answer; lives in the request arena. */
struct batch {
    struct srv_req *req;
    struct db_merchant merchant;
    struct order_rules rules;
    struct batch_stream stream;
    struct batch_parse parse;
    EVP_MD_CTX *sha;
    size_t count;      /* orders seen */
    struct parsed all; /* what parsing made of every order, in batch order */
    bool too_many;
    const char *key; /* Idempotency-Key, or NULL */
    bool key_open;   /* this request holds the key and has not finished or released it */
    enum db_idempotency key_state;
    const char *key_hash; /* the first request's body hash, when key_state is DONE */
    unsigned key_status;
    const char *key_body;
    char hash_hex[65];     /* SHA-256 of the body */
    const char *malformed; /* why the body as a whole is not a batch, or NULL */
    size_t accepted, duplicates;
    bool unavailable;
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void free_batch(void *p)
{
    struct batch *b = p;
    batch_parse_free(&b->parse); /* first: the request may end while its orders are parsed */
    if (b->key_open) { /* ended without an answer of its own (e.g. a body over the limit) */
        struct h_app *app = b->req->app;
        db_idempotency_release(app->db, b->req->merchant_id, b->key);
    }
    batch_stream_free(&b->stream);
    EVP_MD_CTX_free(b->sha);
    parsed_free(&b->all);
}

/* One order's bytes, from the stream splitter: on to the parser. */
static bool take_order(void *ud, const char *data, size_t len, bool too_large)
{
    struct batch *b = ud;
    size_t index = b->count++;
    if (b->count > BATCH_MAX_ORDERS) {
        b->too_many = true;
        return false;
    }
    batch_parse_add(&b->parse, index, data, len, too_large);
    return true;
}

static bool valid_idempotency_key(const char *k)
{
    size_t n = strlen(k);
    if (n == 0 || n > IDEMPOTENCY_KEY_MAX)
        return false;
    for (; *k; k++)
        if (!isprint((unsigned char)*k))
            return false;
    return true;
}

/* First bytes: the merchant, the format and the key are settled before anything is parsed. */
static struct batch *start_batch(struct srv_req *req)
{
    struct h_app *app = req->app;
    struct batch *b = arena_zalloc(req->arena, sizeof(*b));
    b->req = req;
    batch_parse_init(&b->parse, app->parse_jobs, &b->rules);
    b->sha = EVP_MD_CTX_new();
    EVP_DigestInit_ex(b->sha, EVP_sha256(), NULL);
    arena_defer(req->arena, free_batch, b);
    req->handler_state = b;
    const char *ct = srv_header(req, "Content-Type");
    enum batch_format format =
        ct && strncasecmp(ct, "application/x-ndjson", 20) == 0 ? BATCH_NDJSON : BATCH_JSON;
    batch_stream_init(&b->stream, format, BATCH_ORDER_MAX_BYTES, take_order, b);
    b->key = srv_header(req, "Idempotency-Key");
    if (b->key && !valid_idempotency_key(b->key)) {
        srv_reply_problem(req, PROBLEM_BAD_REQUEST,
                          "Idempotency-Key must be 1 to 255 printable characters");
        return NULL;
    }
    enum db_status st = db_merchant_lookup(app->db, req->arena, req->merchant_id, &b->merchant);
    if (st != DB_OK) {
        srv_reply_problem(req, st == DB_NOT_FOUND ? PROBLEM_NOT_FOUND : PROBLEM_UNAVAILABLE,
                          st == DB_NOT_FOUND ? "no such merchant" : "the database is unavailable");
        return NULL;
    }
    b->rules =
        order_rules_for(req->merchant_id, b->merchant.currency, now_us(), app->retention_months);
    /* The key is taken now, not when the body is complete: a second request with it while
     * this one is still uploading must see it running. */
    if (b->key && db_idempotency_claim(app->db, req->arena, req->merchant_id, b->key, &b->key_state,
                                       &b->key_hash, &b->key_status, &b->key_body) != DB_OK) {
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the primary database is unavailable");
        return NULL;
    }
    b->key_open = b->key && b->key_state == IDEMPOTENCY_CLAIMED;
    return b;
}

bool h_batches_body(struct srv_req *req, const char *data, size_t size)
{
    struct batch *b = req->handler_state;
    if (!b && !(b = start_batch(req)))
        return false;
    EVP_DigestUpdate(b->sha, data, size);
    if (batch_stream_feed(&b->stream, data, size) || b->too_many)
        return !b->too_many;
    b->malformed = b->stream.error; /* answered once the body is read, see h_batches_post */
    return false;
}

/* ---- storing, on a job thread ---- */

static void count_result(struct batch *b, size_t i, enum db_ingest_result r)
{
    const struct db_order *o = b->all.orders[i];
    switch (r) {
    case INGEST_INSERTED:
        b->accepted++;
        break;
    case INGEST_DUPLICATE:
        b->duplicates++;
        break;
    case INGEST_CONFLICT:
        parsed_reject(&b->all, b->all.indexes[i], o->order_id, "order_id",
                    "an order with this order_id and different content exists");
        break;
    case INGEST_FAILED:
        parsed_reject(&b->all, b->all.indexes[i], o->order_id, "", "the order could not be stored");
        break;
    case INGEST_UNAVAILABLE:
        b->unavailable = true;
        break;
    }
}

/* Stores orders[first, first + n) on connection c (when it has one) in transactions of at
 * most BATCH_GROUP; results[i] is what became of orders[first + i]. Runs on its own thread for
 * a second half, so it only writes its own slice of results. */
struct slice {
    struct batch *b;
    struct db_conn *c;
    size_t first, n;
    enum db_ingest_result *results;
};

static void *store_slice(void *arg)
{
    struct slice *s = arg;
    struct h_app *app = s->b->req->app;
    struct db_conn *c = s->c;
    for (size_t done = 0; done < s->n;) {
        size_t n = s->n - done < BATCH_GROUP ? s->n - done : BATCH_GROUP;
        struct db_ingest_commit commit = {0};
        if (c)
            db_ingest(app->db, c, s->b->all.orders + s->first + done, n, s->results + done,
                      &commit);
        else
            for (size_t i = 0; i < n; i++)
                s->results[done + i] = INGEST_UNAVAILABLE;
        cache_merchant_bump(app->cache, commit.merchant_ids, commit.versions, commit.n_merchants,
                            commit.lsn);
        db_ingest_commit_free(&commit);
        if (s->results[done] == INGEST_UNAVAILABLE)
            c = NULL; /* the primary went away: the rest is not tried */
        done += n;
    }
    return NULL;
}

struct placed_order {
    struct db_order *order;
    size_t index;
};

static int compare_placed(const void *pa, const void *pb)
{
    const struct placed_order *a = pa, *b = pb;
    int64_t x = a->order->placed_at_us, y = b->order->placed_at_us;
    return (x > y) - (x < y);
}

/* Sorts the orders by placed_at (keeping their batch indexes) and returns where a second
 * transaction can start: the hour boundary nearest the middle, or 0 when there is none. */
static size_t split_by_hour(struct batch *b)
{
    struct placed_order *p = xmalloc(b->all.n_orders * sizeof(*p));
    for (size_t i = 0; i < b->all.n_orders; i++)
        p[i] = (struct placed_order){b->all.orders[i], b->all.indexes[i]};
    qsort(p, b->all.n_orders, sizeof(*p), compare_placed);
    for (size_t i = 0; i < b->all.n_orders; i++) {
        b->all.orders[i] = p[i].order;
        b->all.indexes[i] = p[i].index;
    }
    free(p);
    size_t best = 0, mid = b->all.n_orders / 2;
    for (size_t i = 1; i < b->all.n_orders; i++) {
        bool boundary = b->all.orders[i - 1]->placed_at_us / HOUR_US !=
                        b->all.orders[i]->placed_at_us / HOUR_US;
        size_t off = i > mid ? i - mid : mid - i, best_off = best > mid ? best - mid : mid - best;
        if (boundary && (best == 0 || off < best_off))
            best = i;
    }
    return best;
}

static void store_batch(void *arg)
{
    struct batch *b = arg;
    struct h_app *app = b->req->app;
    enum db_ingest_result *results = xmalloc((b->all.n_orders + 1) * sizeof(*results));
    size_t split = b->all.n_orders >= BATCH_SPLIT_MIN ? split_by_hour(b) : 0;
    struct db_conn *c1 = b->all.n_orders ? db_acquire_primary(app->db) : NULL;
    struct slice first = {b, c1, 0, split ? split : b->all.n_orders, results};
    struct slice second = {b, c1, first.n, b->all.n_orders - first.n, results + first.n};
    struct db_conn *c2 = c1 && second.n ? db_acquire_primary(app->db) : NULL;
    pthread_t thread;
    bool threaded = c2 && (second.c = c2, pthread_create(&thread, NULL, store_slice, &second) == 0);
    store_slice(&first);
    if (threaded) {
        pthread_join(thread, NULL);
    } else if (second.n) {
        second.c = c1;
        store_slice(&second);
    }
    db_release(c2);
    db_release(c1);
    for (size_t i = 0; i < b->all.n_orders; i++)
        count_result(b, i, results[i]);
    free(results);
    srv_resume(b->req);
}

/* ---- the answer ---- */

static int compare_rejections(const void *pa, const void *pb)
{
    const struct rejection *a = pa, *b = pb;
    return (a->index > b->index) - (a->index < b->index);
}

static json_t *batch_result(struct batch *b)
{
    if (b->all.n_rejected > 1)
        qsort(b->all.rejected, b->all.n_rejected, sizeof(*b->all.rejected), compare_rejections);
    json_t *rejected = json_array();
    for (size_t i = 0; i < b->all.n_rejected; i++)
        json_array_append(rejected, b->all.rejected[i].entry);
    return json_pack("{s:I, s:I, s:o}", "accepted", (json_int_t)b->accepted, "duplicates",
                     (json_int_t)b->duplicates, "rejected", rejected);
}

static void release_key(struct srv_req *req, struct batch *b);

/* Continuation once the job thread is done. */
static void reply_stored(struct srv_req *req)
{
    struct h_app *app = req->app;
    struct batch *b = req->handler_state;
    req->log_db = "primary";
    if (b->unavailable) {
        release_key(req, b);
        srv_reply_problem(req, PROBLEM_UNAVAILABLE,
                          "the primary database is unavailable; orders stored so far are kept "
                          "and a retry counts them as duplicates");
        return;
    }
    json_t *result = batch_result(b);
    size_t len;
    const char *text = json_to_arena(req->arena, result, &len);
    json_decref(result);
    if (b->key_open)
        db_idempotency_finish(app->db, req->merchant_id, b->key, 200, text);
    b->key_open = false;
    srv_reply_bytes(req, 200, "application/json; charset=utf-8", text, len);
}

/* Gives the key up: the request ends without a result a replay could return. */
static void release_key(struct srv_req *req, struct batch *b)
{
    struct h_app *app = req->app;
    if (b->key_open)
        db_idempotency_release(app->db, req->merchant_id, b->key);
    b->key_open = false;
}

/* When another request holds or held the key, its state decides the answer: true then. */
static bool answered_by_key(struct srv_req *req, struct batch *b)
{
    if (!b->key || b->key_state == IDEMPOTENCY_CLAIMED)
        return false;
    if (b->key_state == IDEMPOTENCY_RUNNING)
        srv_reply_problem(req, PROBLEM_IN_PROGRESS,
                          "the first request with this Idempotency-Key is still running");
    else if (strcmp(b->key_hash, b->hash_hex) != 0)
        srv_reply_problem(req, PROBLEM_IDEMPOTENCY_MISMATCH,
                          "this Idempotency-Key was used with a different request body");
    else {
        srv_add_header(req, "Idempotent-Replayed", "true");
        srv_reply_bytes(req, b->key_status, "application/json; charset=utf-8", b->key_body,
                        strlen(b->key_body));
    }
    return true;
}

static void finish_hash(struct batch *b)
{
    unsigned char digest[32];
    unsigned int n = 0;
    EVP_DigestFinal_ex(b->sha, digest, &n);
    hex_encode(b->hash_hex, digest, n);
}

/* Once every order is parsed: the answer, or the orders handed to a job thread to store. */
static void answer_parsed(struct srv_req *req)
{
    struct h_app *app = req->app;
    struct batch *b = req->handler_state;
    batch_parse_gather(&b->parse, &b->all);
    if (answered_by_key(req, b))
        return;
    if (b->too_many || b->malformed) {
        release_key(req, b);
        if (b->too_many)
            srv_reply_problem(req, PROBLEM_PAYLOAD_TOO_LARGE,
                              "a batch holds at most 10000 orders; nothing was stored");
        else
            srv_reply_problem(req, PROBLEM_MALFORMED_JSON, b->malformed);
        return;
    }
    if (b->key_open &&
        db_idempotency_set_hash(app->db, req->merchant_id, b->key, b->hash_hex) != DB_OK) {
        release_key(req, b);
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the primary database is unavailable");
        return;
    }
    srv_suspend(req, reply_stored);
    if (!jobs_submit(app->jobs, store_batch, b)) {
        b->unavailable = true; /* the continuation releases the key and answers 503 */
        srv_resume(req);
    }
}

void h_batches_post(struct srv_req *req)
{
    struct batch *b = req->handler_state;
    if (!b) {
        srv_reply_problem(req, PROBLEM_MALFORMED_JSON, "a batch body is required");
        return;
    }
    finish_hash(b);
    if (!b->too_many && !b->malformed && !batch_stream_finish(&b->stream))
        b->malformed = b->stream.error;
    if (batch_parse_finish(&b->parse, req, answer_parsed))
        answer_parsed(req);
}
