/* batch_parse.h - a batch's orders parsed and validated while its body streams in: gathered in
 * chunks of about 128 KiB, each parsed on a parse thread (on the calling thread when two are
 * already ahead or the parse threads are busy). */
#ifndef CANGREJO_BATCH_PARSE_H
#define CANGREJO_BATCH_PARSE_H

#include "handlers/order_json.h"
#include "server/http.h"

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

struct jobs;
struct chunk;

/* One rejected order: where it was and why (a JSON object of the batch result). */
struct rejection {
    size_t index;
    json_t *entry;
};

/* What parsing made of some orders: the compact copies of the valid ones with their batch
 * indexes, and the rejected ones. */
struct parsed {
    struct arena *arena; /* where a chunk's orders live; NULL in a batch's gathered list */
    struct db_order **orders;
    size_t *indexes; /* batch index of orders[i] */
    size_t n_orders, cap_orders;
    struct rejection *rejected;
    size_t n_rejected, cap_rejected;
};

/* Adds a rejection of the order at index with one error on field. */
void parsed_reject(struct parsed *p, size_t index, const char *order_id, const char *field,
                   const char *message);
void parsed_free(struct parsed *p);

struct batch_parse {
    struct jobs *jobs;
    const struct order_rules *rules;
    struct chunk *filling;        /* orders not handed over yet */
    struct chunk *chunks, **tail; /* every chunk handed over, in batch order */
    pthread_mutex_t lock;         /* guards the three below */
    pthread_cond_t parsed;        /* signalled when a chunk is parsed */
    unsigned parsing;             /* chunks queued or being parsed on parse threads */
    struct srv_req *resume;       /* suspended until parsing is 0, or NULL */
};

/* Prepares bp; rules must hold by the first batch_parse_add. */
void batch_parse_init(struct batch_parse *bp, struct jobs *jobs, const struct order_rules *rules);
/* One order's bytes (too_large: longer than the limit, data NULL), at this batch index. */
void batch_parse_add(struct batch_parse *bp, size_t index, const char *data, size_t len,
                     bool too_large);
/* After the last order: true when every chunk is parsed. Otherwise req is suspended, and
 * resumed with `then` once they are. */
bool batch_parse_finish(struct batch_parse *bp, struct srv_req *req, srv_handler_fn then);
/* Appends every chunk's results to all, in batch order (once finished). */
void batch_parse_gather(struct batch_parse *bp, struct parsed *all);
/* Waits for chunks still being parsed (the request may end while they are), then frees. */
void batch_parse_free(struct batch_parse *bp);

#endif
