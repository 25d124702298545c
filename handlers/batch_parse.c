#include "batch_parse.h"

#include "db/orders.h"
#include "handlers/validate.h"
#include "server/alloc.h"
#include "server/arena.h"
#include "server/buf.h"
#include "server/jobs.h"
#include "server/problem.h"

#include <stdint.h>
#include <stdlib.h>

enum {
    CHUNK_BYTES = 128 * 1024, /* order bytes parsed together on one thread */
    CHUNKS_AHEAD = 2,         /* chunks queued or parsing at most; past that, parsed here */
};

/* Consecutive orders of a batch, parsed together on one thread. */
struct chunk {
    struct batch_parse *bp;
    size_t first;     /* batch index of its first order */
    struct buf bytes; /* the orders' bytes, back to back */
    size_t *ends;     /* ends[i]: where order i ends in bytes; SIZE_MAX: it was too large */
    size_t n, cap;
    struct parsed out;
    struct chunk *next;
};

/* ---- what parsing made of the orders ---- */

static void add_rejection(struct parsed *p, struct rejection r)
{
    if (p->n_rejected == p->cap_rejected) {
        p->cap_rejected = p->cap_rejected ? 2 * p->cap_rejected : 64;
        p->rejected = xrealloc(p->rejected, p->cap_rejected * sizeof(*p->rejected));
    }
    p->rejected[p->n_rejected++] = r;
}

static void reject(struct parsed *p, size_t index, const char *order_id, json_t *errors)
{
    json_t *entry = json_pack("{s:I, s:o, s:o}", "index", (json_int_t)index, "order_id",
                              order_id ? json_string(order_id) : json_null(), "errors", errors);
    add_rejection(p, (struct rejection){index, entry});
}

void parsed_reject(struct parsed *p, size_t index, const char *order_id, const char *field,
                   const char *message)
{
    json_t *errors = NULL;
    problem_add_field_error(&errors, field, message);
    reject(p, index, order_id, errors);
}

static void add_order(struct parsed *p, size_t index, struct db_order *o)
{
    if (p->n_orders == p->cap_orders) {
        p->cap_orders = p->cap_orders ? 2 * p->cap_orders : 256;
        p->orders = xrealloc(p->orders, p->cap_orders * sizeof(*p->orders));
        p->indexes = xrealloc(p->indexes, p->cap_orders * sizeof(*p->indexes));
    }
    p->orders[p->n_orders] = o;
    p->indexes[p->n_orders++] = index;
}

void parsed_free(struct parsed *p)
{
    for (size_t i = 0; i < p->n_rejected; i++)
        json_decref(p->rejected[i].entry);
    free(p->rejected);
    free(p->orders);
    free(p->indexes);
    arena_free(p->arena);
}

/* ---- one chunk ---- */

/* One order's bytes: validated; only the compact copy of a valid order is kept. */
static void parse_order(const struct order_rules *rules, struct parsed *out, size_t index,
                        const char *data, size_t len)
{
    json_error_t err;
    json_t *obj = json_loadb(data, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);
    if (!json_is_object(obj)) {
        parsed_reject(out, index, NULL, "", obj ? "must be a JSON object" : "is not valid JSON");
        json_decref(obj);
        return;
    }
    struct arena *scratch = arena_new();
    struct v_errors v = {.arena = scratch};
    struct db_order o;
    if (order_from_json(&v, obj, "", rules, &o))
        add_order(out, index, db_order_copy(out->arena, &o));
    else
        reject(out, index,
               json_string_value(json_object_get(obj, "order_id")) && o.order_id ? o.order_id
                                                                                 : NULL,
               json_incref(v.list));
    json_decref(v.list);
    arena_free(scratch);
    json_decref(obj);
}

static void parse_chunk(struct chunk *c)
{
    c->out.arena = arena_new();
    for (size_t i = 0, start = 0; i < c->n; i++) {
        if (c->ends[i] == SIZE_MAX) {
            parsed_reject(&c->out, c->first + i, NULL, "", "an order must be at most 256 KiB");
            continue;
        }
        parse_order(c->bp->rules, &c->out, c->first + i, c->bytes.data + start,
                    c->ends[i] - start);
        start = c->ends[i];
    }
    buf_free(&c->bytes); /* the compact copies are all that is kept */
}

/* On a parse thread; the last chunk parsed resumes a request waiting for it. */
static void parse_chunk_job(void *arg)
{
    struct chunk *c = arg;
    struct batch_parse *bp = c->bp;
    parse_chunk(c);
    pthread_mutex_lock(&bp->lock);
    struct srv_req *resume = --bp->parsing == 0 ? bp->resume : NULL;
    if (resume)
        bp->resume = NULL;
    pthread_cond_broadcast(&bp->parsed);
    pthread_mutex_unlock(&bp->lock); /* bp may be gone from here on, unless resume is set */
    if (resume)
        srv_resume(resume);
}

static void free_chunk(struct chunk *c)
{
    buf_free(&c->bytes);
    free(c->ends);
    parsed_free(&c->out);
    free(c);
}

/* ---- the batch's chunks ---- */

void batch_parse_init(struct batch_parse *bp, struct jobs *jobs, const struct order_rules *rules)
{
    *bp = (struct batch_parse){.jobs = jobs, .rules = rules};
    bp->tail = &bp->chunks;
    pthread_mutex_init(&bp->lock, NULL);
    pthread_cond_init(&bp->parsed, NULL);
}

/* Hands the chunk being filled to a parse thread, or parses it here when enough are ahead. */
static void hand_off(struct batch_parse *bp)
{
    struct chunk *c = bp->filling;
    if (!c)
        return;
    bp->filling = NULL;
    *bp->tail = c;
    bp->tail = &c->next;
    pthread_mutex_lock(&bp->lock);
    bool queued = bp->parsing < CHUNKS_AHEAD && jobs_submit(bp->jobs, parse_chunk_job, c);
    bp->parsing += queued;
    pthread_mutex_unlock(&bp->lock);
    if (!queued)
        parse_chunk(c);
}

void batch_parse_add(struct batch_parse *bp, size_t index, const char *data, size_t len,
                     bool too_large)
{
    struct chunk *c = bp->filling;
    if (!c) {
        c = bp->filling = xcalloc(1, sizeof(*c));
        c->bp = bp;
        c->first = index;
    }
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 256;
        c->ends = xrealloc(c->ends, c->cap * sizeof(*c->ends));
    }
    if (!too_large)
        buf_append(&c->bytes, data, len);
    c->ends[c->n++] = too_large ? SIZE_MAX : c->bytes.len;
    if (c->bytes.len >= CHUNK_BYTES)
        hand_off(bp);
}

bool batch_parse_finish(struct batch_parse *bp, struct srv_req *req, srv_handler_fn then)
{
    hand_off(bp);
    pthread_mutex_lock(&bp->lock);
    bool done = bp->parsing == 0;
    if (!done) { /* suspended under the lock: the last chunk cannot resume it before */
        bp->resume = req;
        srv_suspend(req, then);
    }
    pthread_mutex_unlock(&bp->lock);
    return done;
}

/* Waits for the chunks still on parse threads: they write into bp. */
static void wait_parsed(struct batch_parse *bp)
{
    pthread_mutex_lock(&bp->lock);
    while (bp->parsing > 0)
        pthread_cond_wait(&bp->parsed, &bp->lock);
    pthread_mutex_unlock(&bp->lock);
}

void batch_parse_gather(struct batch_parse *bp, struct parsed *all)
{
    wait_parsed(bp); /* returns at once; what the parse threads wrote is visible after it */
    for (struct chunk *c = bp->chunks; c; c = c->next) {
        for (size_t i = 0; i < c->out.n_orders; i++)
            add_order(all, c->out.indexes[i], c->out.orders[i]);
        for (size_t i = 0; i < c->out.n_rejected; i++)
            add_rejection(all, c->out.rejected[i]);
        c->out.n_rejected = 0; /* the entries are all's now; the orders stay in c's arena */
    }
}

void batch_parse_free(struct batch_parse *bp)
{
    wait_parsed(bp);
    for (struct chunk *c = bp->chunks, *next; c; c = next) {
        next = c->next;
        free_chunk(c);
    }
    if (bp->filling)
        free_chunk(bp->filling);
    pthread_mutex_destroy(&bp->lock);
    pthread_cond_destroy(&bp->parsed);
}
