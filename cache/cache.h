/* cache.h - the Redis cache: one hiredis connection per worker thread, short timeouts, and
 * failures that are counted and never fail a request that the database can answer. */
#ifndef CANGREJO_CACHE_H
#define CANGREJO_CACHE_H

#include "server/buf.h"

#include <stdbool.h>
#include <stddef.h>

struct arena;
struct cache;

enum cache_result { CACHE_HIT, CACHE_MISS, CACHE_ERROR, CACHE_DISABLED };

/* Parses REDIS_URL (redis://[:password@]host:port[/db]); an empty URL gives a disabled cache.
 * Connections open lazily. NULL with a message on a malformed URL. One cache per process. */
struct cache *cache_new(const char *url, unsigned timeout_ms, char *err, size_t errlen);
/* Closes every thread's connection and frees the cache. */
void cache_free(struct cache *c);
/* True when a Redis URL was configured. */
bool cache_enabled(const struct cache *c);
/* PING; true when Redis answered, with the round trip time. */
bool cache_ping(struct cache *c, double *latency_ms);
/* GET key into arena memory. */
enum cache_result cache_get(struct cache *c, const char *key, struct arena *a, char **value,
                            size_t *len);
/* SET key value EX ttl_s; false on failure (already counted). */
bool cache_set(struct cache *c, const char *key, const char *value, size_t len, unsigned ttl_s);
/* Writes hit/miss/error counters in Prometheus text format. */
void cache_render_metrics(struct buf *out, void *cache);

#endif
