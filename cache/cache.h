/* cache.h - the Redis cache: one hiredis connection per worker thread, short timeouts, and
 * failures that are counted and never fail a request that the database can answer. */
#ifndef CANGREJO_CACHE_H
#define CANGREJO_CACHE_H

#include "server/buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct arena;
struct cache;

enum cache_result { CACHE_HIT, CACHE_MISS, CACHE_ERROR, CACHE_DISABLED };

/* Parses REDIS_URL (redis://[:password@]host:port[/db]); an empty URL gives a disabled cache.
 * Connections open lazily. local_ms > 0 adds the in-process layer of cache/local.h (versions
 * trusted that long, at most local_max_bytes of responses). NULL with a message on a
 * malformed URL. One cache per process. */
struct cache *cache_new(const char *url, unsigned timeout_ms, unsigned local_ms,
                        size_t local_max_bytes, char *err, size_t errlen);
/* Closes every thread's connection and frees the cache. */
void cache_free(struct cache *c);
/* True when a Redis URL was configured. */
bool cache_enabled(const struct cache *c);
/* PING; true when Redis answered, with the round trip time. */
bool cache_ping(struct cache *c, double *latency_ms);
/* A cached response: its ETag and body (arena-owned on reads). */
struct cache_entry {
    const char *etag;
    const char *body;
    size_t body_len;
};

/* Per-merchant state shared by every server instance: the data version (bumped by each
 * committed write) and the primary WAL position of the merchant's last write (for
 * read-your-writes), plus cached responses, each valid only while its version is the
 * merchant's current one. One round trip, none when the in-process layer holds the response
 * at the version it trusts (then *lsn is 0). field may be NULL to read only *lsn (0 when
 * unknown; always asked of Redis). Returns CACHE_HIT only for a current entry. */
enum cache_result cache_merchant_get(struct cache *c, int64_t merchant_id, const char *field,
                                     struct arena *a, struct cache_entry *out, uint64_t *lsn);
/* Stores a response computed from data at `version`, kept ttl_s (and restores the merchant's
 * version if Redis lost it). */
void cache_merchant_put(struct cache *c, int64_t merchant_id, const char *field, int64_t version,
                        const struct cache_entry *entry, unsigned ttl_s);
/* After a commit: moves each merchant's version and LSN forward (one pipelined round trip). */
void cache_merchant_bump(struct cache *c, const int64_t *merchant_ids, const int64_t *versions,
                         size_t n, uint64_t lsn);

/* One rate-limit bucket to charge: a Redis key, q requests per window_ms (GCRA). */
struct cache_rate_bucket {
    const char *key;
    unsigned quota;
    unsigned window_ms;
    /* Filled by cache_rate_take: requests left now and ms until the bucket is full again. */
    unsigned remaining;
    unsigned reset_ms;
};

/* Charges one request to every bucket at once, with Redis's clock so that every server
 * instance shares them: all are charged, or none when one is exhausted (then *retry_ms says
 * when the request would pass). CACHE_HIT = allowed, CACHE_MISS = limited, CACHE_ERROR or
 * CACHE_DISABLED = unknown (callers fail open). One round trip. */
enum cache_result cache_rate_take(struct cache *c, struct cache_rate_bucket *buckets, size_t n,
                                  unsigned *retry_ms);

/* Writes hit/miss/error counters in Prometheus text format. */
void cache_render_metrics(struct buf *out, void *cache);

#endif
