/* local.h - the in-process layer in front of Redis for cached metrics responses.
 *
 * Redis stays the authority: a merchant's data version read from Redis (or moved by this
 * instance's own commits) is trusted here for state_ms only, and a response is served from
 * memory only at that version. So this instance's writes show at once, another instance's
 * within state_ms (well inside the 1 s freshness of API.md), and nothing older than the
 * version Redis last said is ever served. Fixed-size tables, one lock per slot; a slot holds
 * the last entry hashed to it, and entries stop being kept once max_bytes are held. */
#ifndef CANGREJO_CACHE_LOCAL_H
#define CANGREJO_CACHE_LOCAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct arena;
struct cache_entry;
struct local_cache;

/* NULL (no local layer) when state_ms is 0. */
struct local_cache *local_new(unsigned state_ms, size_t max_bytes);
void local_free(struct local_cache *lc);
/* The merchant's version when it was learnt less than state_ms ago. */
bool local_version(struct local_cache *lc, int64_t merchant_id, int64_t *version);
/* The latest version this process saw for the merchant, however long ago. */
bool local_known_version(struct local_cache *lc, int64_t merchant_id, int64_t *version);
/* Records a version seen now (from Redis or a commit); versions only move forward. */
void local_saw_version(struct local_cache *lc, int64_t merchant_id, int64_t version);
/* The response for (merchant, field) computed at exactly `version`, copied into the arena. */
bool local_get(struct local_cache *lc, int64_t merchant_id, const char *field, int64_t version,
               struct arena *a, struct cache_entry *out);
/* Keeps a response computed at `version`. */
void local_put(struct local_cache *lc, int64_t merchant_id, const char *field, int64_t version,
               const struct cache_entry *entry);

#endif
