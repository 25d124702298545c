/* ratelimit.c - quotas per token subject and per merchant: configuration, the choice of rule
 * for a route, bucket keys, and the RateLimit headers. The counting itself is one Redis script
 * (cache_rate_take), so every server instance shares the same buckets. */
#include "ratelimit.h"

#include "cache/cache.h"
#include "server/alloc.h"
#include "server/auth.h"
#include "server/buf.h"
#include "server/metrics.h"

#include <openssl/sha.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { RULES_MAX = 16, SCOPE_NAME_MAX = 24 };

enum kind { KIND_SUBJECT, KIND_MERCHANT, KIND_COUNT };

static const char *const kind_names[KIND_COUNT] = {"subject", "merchant"};

/* "orders:write=600/60s": at most quota requests per window from one subject or merchant. */
struct rule {
    char scope[SCOPE_NAME_MAX]; /* scope name, or "*" for routes no other rule names */
    uint32_t scope_bit;         /* 0 for "*" */
    unsigned quota, window_s;
};

struct ruleset {
    struct rule rules[RULES_MAX];
    size_t n;
};

struct ratelimit {
    struct cache *cache;
    struct ruleset kinds[KIND_COUNT];
    atomic_uint_fast64_t limited, unknown;
};

static bool parse_window(const char *s, unsigned *seconds)
{
    char *end;
    unsigned long n = strtoul(s, &end, 10);
    unsigned long unit = 1;
    if (end == s || n == 0)
        return false;
    if (*end == 'm')
        unit = 60;
    else if (*end == 'h')
        unit = 3600;
    else if (*end != 's' && *end != '\0')
        return false;
    if (*end && end[1])
        return false;
    if (n * unit > 86400)
        return false;
    *seconds = (unsigned)(n * unit);
    return true;
}

/* One "SCOPE=N/WINDOW" entry (len bytes of s). */
static bool parse_rule(const char *s, size_t len, struct rule *r)
{
    char text[96];
    if (len == 0 || len >= sizeof(text))
        return false;
    memcpy(text, s, len);
    text[len] = '\0';
    char *eq = strchr(text, '='), *slash = eq ? strchr(eq, '/') : NULL;
    if (!eq || !slash || (size_t)(eq - text) >= SCOPE_NAME_MAX || eq == text)
        return false;
    *eq = *slash = '\0';
    memcpy(r->scope, text, (size_t)(eq - text) + 1);
    r->scope_bit = strcmp(text, "*") == 0 ? 0 : auth_parse_scopes(text, strlen(text));
    if (strcmp(text, "*") != 0 && (r->scope_bit == 0 || (r->scope_bit & (r->scope_bit - 1))))
        return false;
    char *end;
    unsigned long q = strtoul(eq + 1, &end, 10);
    if (end == eq + 1 || *end || q == 0 || q > 1000000000)
        return false;
    r->quota = (unsigned)q;
    return parse_window(slash + 1, &r->window_s);
}

static bool parse_ruleset(const char *var, const char *spec, struct ruleset *set, char *err,
                          size_t errlen)
{
    for (const char *s = spec; s && *s;) {
        size_t len = strcspn(s, ",");
        if (set->n == RULES_MAX || !parse_rule(s, len, &set->rules[set->n])) {
            snprintf(err, errlen,
                     "%s: expected SCOPE=N/WINDOW entries (e.g. orders:write=600/60s,*=100/1s), "
                     "at most %d, with known scope names",
                     var, RULES_MAX);
            return false;
        }
        set->n++;
        s += len + (s[len] == ',');
    }
    return true;
}

bool ratelimit_new(const char *per_subject, const char *per_merchant, struct cache *cache,
                   struct ratelimit **out, char *err, size_t errlen)
{
    struct ratelimit *rl = xcalloc(1, sizeof(*rl));
    rl->cache = cache;
    *out = NULL;
    if (!parse_ruleset("RATE_LIMIT_SUBJECT", per_subject, &rl->kinds[KIND_SUBJECT], err, errlen) ||
        !parse_ruleset("RATE_LIMIT_MERCHANT", per_merchant, &rl->kinds[KIND_MERCHANT], err,
                       errlen)) {
        free(rl);
        return false;
    }
    if (rl->kinds[KIND_SUBJECT].n + rl->kinds[KIND_MERCHANT].n == 0)
        free(rl);
    else
        *out = rl;
    return true;
}

void ratelimit_free(struct ratelimit *rl)
{
    free(rl);
}

/* The rule for a route: the first naming one of its scopes, else "*", else none. */
static const struct rule *rule_for(const struct ruleset *set, uint32_t route_scopes)
{
    const struct rule *any = NULL;
    for (size_t i = 0; i < set->n; i++) {
        if (set->rules[i].scope_bit & route_scopes)
            return &set->rules[i];
        if (!set->rules[i].scope_bit && !any)
            any = &set->rules[i];
    }
    return any;
}

/* Subjects are hashed: keys stay short and Redis never holds a caller's identity in clear. */
static void subject_key(char *key, size_t size, const struct rule *r, const char *sub)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)sub, strlen(sub), md);
    char hex[33];
    hex_encode(hex, md, 16);
    snprintf(key, size, "cgj:rl:s:%s:%s", r->scope, hex);
}

/* Appends one list member of a RateLimit-Policy ("name";q=Q;w=W) or RateLimit ("name";r=R;t=T)
 * structured field. */
static void append_item(char *dst, size_t size, const char *name, char k1, unsigned v1, char k2,
                        unsigned v2)
{
    size_t used = strlen(dst);
    snprintf(dst + used, size - used, "%s\"%s\";%c=%u;%c=%u", used ? ", " : "", name, k1, v1, k2,
             v2);
}

void ratelimit_check(struct ratelimit *rl, const struct ratelimit_subject *who,
                     struct ratelimit_verdict *v)
{
    memset(v, 0, sizeof(*v));
    char keys[KIND_COUNT][96];
    struct cache_rate_bucket buckets[KIND_COUNT];
    const char *names[KIND_COUNT];
    size_t n = 0;
    for (int k = 0; k < KIND_COUNT; k++) {
        const struct rule *r = rule_for(&rl->kinds[k], who->route_scopes);
        if (!r || (k == KIND_MERCHANT && who->merchant_id <= 0))
            continue;
        if (k == KIND_SUBJECT)
            subject_key(keys[n], sizeof(keys[n]), r, who->principal->sub);
        else
            snprintf(keys[n], sizeof(keys[n]), "cgj:rl:m:%s:%lld", r->scope,
                     (long long)who->merchant_id);
        buckets[n] = (struct cache_rate_bucket){keys[n], r->quota, r->window_s * 1000u, 0, 0};
        names[n] = kind_names[k];
        append_item(v->policy, sizeof(v->policy), names[n], 'q', r->quota, 'w', r->window_s);
        n++;
    }
    if (n == 0)
        return;
    unsigned retry_ms = 0;
    enum cache_result res = cache_rate_take(rl->cache, buckets, n, &retry_ms);
    if (res != CACHE_HIT && res != CACHE_MISS) {
        atomic_fetch_add(&rl->unknown, 1); /* fail open: Redis cannot count right now */
        return;
    }
    for (size_t i = 0; i < n; i++)
        append_item(v->state, sizeof(v->state), names[i], 'r', buckets[i].remaining, 't',
                    (buckets[i].reset_ms + 999) / 1000);
    if (res == CACHE_MISS) {
        v->limited = true;
        v->retry_after = retry_ms ? (retry_ms + 999) / 1000 : 1;
        atomic_fetch_add(&rl->limited, 1);
    }
}

void ratelimit_render_metrics(struct buf *out, void *ud)
{
    struct ratelimit *rl = ud;
    metrics_write_header(out, "cangrejo_rate_limited_total", "counter",
                         "Requests answered 429 because a quota was used up.");
    buf_printf(out, "cangrejo_rate_limited_total %llu\n",
               (unsigned long long)atomic_load(&rl->limited));
    metrics_write_header(out, "cangrejo_rate_limit_unknown_total", "counter",
                         "Requests let through unchecked because Redis could not count them.");
    buf_printf(out, "cangrejo_rate_limit_unknown_total %llu\n",
               (unsigned long long)atomic_load(&rl->unknown));
}
