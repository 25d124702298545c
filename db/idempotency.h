/* idempotency.h - Idempotency-Key records of batch uploads (kept at least 24 hours). */
#ifndef CANGREJO_DB_IDEMPOTENCY_H
#define CANGREJO_DB_IDEMPOTENCY_H

#include "db/pool.h"

#include <stdint.h>

struct arena;

enum db_idempotency {
    IDEMPOTENCY_CLAIMED, /* first use: go ahead, set the body hash, then finish or release */
    IDEMPOTENCY_RUNNING, /* the first request with this key is still running */
    IDEMPOTENCY_DONE,    /* answered before: compare *hash_hex, then replay *status, *body */
};

/* Claims key as soon as a request with it starts (its body may still be arriving); DB_OK with
 * *outcome, or why not. For IDEMPOTENCY_DONE the first request's body hash and answer are set
 * (arena-owned). */
enum db_status db_idempotency_claim(struct db *db, struct arena *a, int64_t merchant_id,
                                    const char *key, enum db_idempotency *outcome,
                                    const char **hash_hex, unsigned *status, const char **body);
/* Records the body hash of a claimed key once the body is complete. */
enum db_status db_idempotency_set_hash(struct db *db, int64_t merchant_id, const char *key,
                                       const char *hash_hex);
/* Records the answer of a claimed key. */
enum db_status db_idempotency_finish(struct db *db, int64_t merchant_id, const char *key,
                                     unsigned status, const char *body);
/* Gives a claimed key up (the request failed and may be retried). */
void db_idempotency_release(struct db *db, int64_t merchant_id, const char *key);

#endif
