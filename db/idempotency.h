/* idempotency.h - Idempotency-Key records of batch uploads (kept at least 24 hours). */
#ifndef CANGREJO_DB_IDEMPOTENCY_H
#define CANGREJO_DB_IDEMPOTENCY_H

#include "db/pool.h"

#include <stdint.h>

struct arena;

enum db_idempotency {
    IDEMPOTENCY_CLAIMED,  /* first use: go ahead, then finish or release */
    IDEMPOTENCY_REPLAY,   /* done before with the same request: *status and *body say how */
    IDEMPOTENCY_RUNNING,  /* the first request with this key is still running */
    IDEMPOTENCY_MISMATCH, /* used before with another request */
};

/* Claims key for a request whose body hashes to hash_hex; DB_OK with *outcome, or why not. */
enum db_status db_idempotency_claim(struct db *db, struct arena *a, int64_t merchant_id,
                                    const char *key, const char *hash_hex,
                                    enum db_idempotency *outcome, unsigned *status,
                                    const char **body);
/* Records the response of a claimed key. */
enum db_status db_idempotency_finish(struct db *db, int64_t merchant_id, const char *key,
                                     unsigned status, const char *body);
/* Gives a claimed key up (the request failed and may be retried). */
void db_idempotency_release(struct db *db, int64_t merchant_id, const char *key);

#endif
