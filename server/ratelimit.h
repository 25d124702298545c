/* ratelimit.h - request quotas per token subject and per merchant, per scope, shared by every
 * server instance through Redis (GCRA), answered with 429, Retry-After and the IETF RateLimit
 * headers (draft-ietf-httpapi-ratelimit-headers). When Redis cannot answer, requests pass. */
#ifndef CANGREJO_RATELIMIT_H
#define CANGREJO_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf;
struct cache;
struct auth_principal;

/* One request's identity as the limiter sees it. */
struct ratelimit_subject {
    uint32_t route_scopes; /* the scopes that let a token use the route */
    const struct auth_principal *principal;
    int64_t merchant_id; /* 0 when the route names no merchant */
};

/* The decision for one request: the headers to send, and whether it may go on. */
struct ratelimit_verdict {
    bool limited;         /* answer 429 */
    unsigned retry_after; /* seconds, when limited */
    char policy[160];     /* RateLimit-Policy value, "" when no rule applies */
    char state[96];       /* RateLimit value, "" when unknown (Redis down) */
};

struct ratelimit;

/* Parses RATE_LIMIT_SUBJECT and RATE_LIMIT_MERCHANT, each "SCOPE=N/WINDOW,..." (SCOPE a scope
 * name or *, WINDOW like 1s, 60s, 1m, 1h, at most a day); NULL or "" means no limit of that
 * kind. False with a message in err on bad syntax; *out is NULL when no limit is set. */
bool ratelimit_new(const char *per_subject, const char *per_merchant, struct cache *cache,
                   struct ratelimit **out, char *err, size_t errlen);
void ratelimit_free(struct ratelimit *rl);
/* Charges a request to its quotas; the verdict says whether it may go on. */
void ratelimit_check(struct ratelimit *rl, const struct ratelimit_subject *who,
                     struct ratelimit_verdict *v);
/* Writes the limited-requests counter in Prometheus text format. */
void ratelimit_render_metrics(struct buf *out, void *rl);

#endif
