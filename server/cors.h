/* cors.h - cross-origin access for browser dashboards (Fetch standard, CORS protocol): which
 * origins may call the API, and the headers that say so. Tokens travel in Authorization, never
 * in cookies, so credentials mode is never allowed. */
#ifndef CANGREJO_CORS_H
#define CANGREJO_CORS_H

#include <stdbool.h>
#include <stddef.h>

/* Request headers a page may send, response headers it may read, preflight cache time. */
#define CORS_ALLOW_HEADERS                                                                         \
    "Authorization, Content-Type, Idempotency-Key, If-None-Match, X-Request-Id, traceparent"
#define CORS_EXPOSE_HEADERS                                                                        \
    "ETag, Link, Location, Retry-After, RateLimit, RateLimit-Policy, X-Request-Id, "               \
    "Idempotent-Replayed"
#define CORS_MAX_AGE "600"

struct cors;

/* Parses CORS_ALLOWED_ORIGINS: "*" or comma-separated origins like https://app.example.com
 * (scheme://host[:port], no path). NULL or "" gives *out = NULL: no cross-origin access.
 * False with a message on a malformed entry. */
bool cors_new(const char *origins, struct cors **out, char *err, size_t errlen);
void cors_free(struct cors *c);
/* True when a request from this Origin may read responses. */
bool cors_allows(const struct cors *c, const char *origin);

#endif
