#include "cache.h"

#include "local.h"

#include "server/alloc.h"
#include "server/arena.h"
#include "server/log.h"
#include "server/metrics.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    RECONNECT_BACKOFF_MS = 1000,
    PENDING_SLOTS = 1 << 17, /* hash table of merchants whose version move waits for Redis */
    PENDING_MAX = PENDING_SLOTS / 2,
    PENDING_BATCH = 1024,    /* moves sent in one pipeline */
    PENDING_RETRY_MS = 100,  /* how often a waiting move is tried again */
    CACHE_MERCHANT_TTL_S = 24 * 3600, /* versions and LSNs outlive any cached response */
};

/* One thread's connection; all of them are listed so cache_free can close them. */
struct cache_conn {
    redisContext *ctx;
    int64_t down_until_ms;
    struct cache_conn *next;
};

struct cache {
    char *host, *password;
    int port, db;
    unsigned timeout_ms;
    pthread_mutex_t lock;
    struct cache_conn *conns;
    struct local_cache *local; /* NULL when off */
    atomic_uint_fast64_t hits, misses, errors, local_hits;
    /* Version moves that did not reach Redis (stall, timeout, outage): retried until they do,
     * else other instances would take responses of the old version for current. */
    pthread_mutex_t pending_lock;
    struct pending_bump *pending; /* PENDING_SLOTS, open addressing; merchant_id 0 is empty */
    size_t n_pending;
    atomic_bool has_pending;
    pthread_t retrier; /* retries them when no request comes to do it */
    pthread_cond_t retrier_wake;
    bool retrier_running, retrier_stop;
};

struct pending_bump {
    int64_t merchant_id, version;
    uint64_t lsn;
};

static _Thread_local struct cache_conn *thread_conn;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool parse_url(struct cache *c, const char *url, char *err, size_t errlen)
{
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "REDIS_URL must start with redis://");
        return false;
    }
    const char *s = url + 8;
    const char *at = strrchr(s, '@');
    if (at) {
        const char *colon = memchr(s, ':', (size_t)(at - s));
        const char *pw = colon ? colon + 1 : s;
        c->password = xstrndup(pw, (size_t)(at - pw));
        s = at + 1;
    }
    size_t host_len = strcspn(s, ":/");
    if (host_len == 0 || s[host_len] != ':') {
        snprintf(err, errlen, "REDIS_URL must be redis://[:password@]host:port[/db]");
        return false;
    }
    c->host = xstrndup(s, host_len);
    char *end;
    long port = strtol(s + host_len + 1, &end, 10);
    long db = 0;
    if (*end == '/' && end[1])
        db = strtol(end + 1, &end, 10);
    else if (*end == '/')
        end++;
    if (*end || port < 1 || port > 65535 || db < 0 || db > 1000) {
        snprintf(err, errlen, "REDIS_URL has a bad port or database number");
        return false;
    }
    c->port = (int)port;
    c->db = (int)db;
    return true;
}

static void retry_pending(struct cache *c);

/* Every PENDING_RETRY_MS while moves wait for Redis, on its own Redis connection. */
static void *run_retrier(void *arg)
{
    struct cache *c = arg;
    pthread_mutex_lock(&c->pending_lock);
    while (!c->retrier_stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += PENDING_RETRY_MS * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&c->retrier_wake, &c->pending_lock, &until);
        pthread_mutex_unlock(&c->pending_lock);
        retry_pending(c);
        pthread_mutex_lock(&c->pending_lock);
    }
    pthread_mutex_unlock(&c->pending_lock);
    return NULL;
}

static void start_retrier(struct cache *c)
{
    pthread_cond_init(&c->retrier_wake, NULL);
    c->retrier_running = pthread_create(&c->retrier, NULL, run_retrier, c) == 0;
    if (!c->retrier_running)
        log_warn("cache: no retrier thread: a version move that misses Redis waits for the "
                 "cached responses' TTL");
}

static void stop_retrier(struct cache *c)
{
    if (!c->retrier_running)
        return;
    pthread_mutex_lock(&c->pending_lock);
    c->retrier_stop = true;
    pthread_cond_signal(&c->retrier_wake);
    pthread_mutex_unlock(&c->pending_lock);
    pthread_join(c->retrier, NULL);
    pthread_cond_destroy(&c->retrier_wake);
    c->retrier_running = false;
}

struct cache *cache_new(const char *url, unsigned timeout_ms, unsigned local_ms,
                        size_t local_max_bytes, char *err, size_t errlen)
{
    struct cache *c = xcalloc(1, sizeof(*c));
    c->timeout_ms = timeout_ms;
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->pending_lock, NULL);
    if (url && *url && !parse_url(c, url, err, errlen)) {
        cache_free(c);
        return NULL;
    }
    if (cache_enabled(c)) {
        c->local = local_new(local_ms, local_max_bytes); /* Redis is its authority */
        start_retrier(c);
    }
    return c;
}

void cache_free(struct cache *c)
{
    if (!c)
        return;
    stop_retrier(c);
    while (c->conns) {
        struct cache_conn *cc = c->conns;
        c->conns = cc->next;
        if (cc->ctx)
            redisFree(cc->ctx);
        free(cc);
    }
    if (c->password)
        xfree_secret(c->password, strlen(c->password));
    free(c->host);
    local_free(c->local);
    free(c->pending);
    pthread_mutex_destroy(&c->pending_lock);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

bool cache_enabled(const struct cache *c)
{
    return c && c->host;
}

static bool command_ok(redisContext *ctx, const char *fmt, const char *arg)
{
    redisReply *r = arg ? redisCommand(ctx, fmt, arg) : redisCommand(ctx, fmt);
    bool ok = r && r->type != REDIS_REPLY_ERROR;
    if (r)
        freeReplyObject(r);
    return ok;
}

static redisContext *open_context(struct cache *c)
{
    struct timeval tv = {.tv_sec = c->timeout_ms / 1000,
                         .tv_usec = (long)(c->timeout_ms % 1000) * 1000};
    redisContext *ctx = redisConnectWithTimeout(c->host, c->port, tv);
    if (!ctx || ctx->err || redisSetTimeout(ctx, tv) != REDIS_OK) {
        if (ctx)
            redisFree(ctx);
        return NULL;
    }
    char db[16];
    snprintf(db, sizeof(db), "%d", c->db);
    if ((c->password && !command_ok(ctx, "AUTH %s", c->password)) ||
        (c->db && !command_ok(ctx, "SELECT %s", db))) {
        redisFree(ctx);
        return NULL;
    }
    return ctx;
}

/* This thread's live connection, or NULL while Redis is down (retried after a backoff). */
static redisContext *thread_context(struct cache *c)
{
    if (!thread_conn) {
        thread_conn = xcalloc(1, sizeof(*thread_conn));
        pthread_mutex_lock(&c->lock);
        thread_conn->next = c->conns;
        c->conns = thread_conn;
        pthread_mutex_unlock(&c->lock);
    }
    struct cache_conn *cc = thread_conn;
    if (cc->ctx)
        return cc->ctx;
    if (cc->down_until_ms > now_ms())
        return NULL;
    cc->ctx = open_context(c);
    if (!cc->ctx) {
        cc->down_until_ms = now_ms() + RECONNECT_BACKOFF_MS;
        atomic_fetch_add(&c->errors, 1);
    }
    return cc->ctx;
}

/* Drops this thread's connection after an I/O error or timeout: a late reply must never be
 * read as the answer to the next command. */
static void drop_context(struct cache *c)
{
    atomic_fetch_add(&c->errors, 1);
    redisFree(thread_conn->ctx);
    thread_conn->ctx = NULL;
    thread_conn->down_until_ms = now_ms() + RECONNECT_BACKOFF_MS;
}

bool cache_ping(struct cache *c, double *latency_ms)
{
    if (!cache_enabled(c))
        return false;
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    redisContext *ctx = thread_context(c);
    redisReply *r = ctx ? redisCommand(ctx, "PING") : NULL;
    bool ok = r && r->type == REDIS_REPLY_STATUS;
    if (r)
        freeReplyObject(r);
    else if (ctx)
        drop_context(c);
    clock_gettime(CLOCK_MONOTONIC, &end);
    *latency_ms = (double)(end.tv_sec - start.tv_sec) * 1e3 +
                  (double)(end.tv_nsec - start.tv_nsec) / 1e6;
    return ok;
}

/* Per merchant, two kinds of keys: cgj:s:{merchant} = "<version> <lsn>" (kept a day), and
 * one cgj:q:{merchant}:{field} = "<version> <etag> <body>" per cached response (kept ttl_s),
 * so every entry expires on its own and a reader needs one MGET. */
static bool parse_entry(struct arena *a, const char *raw, size_t len, int64_t current,
                        struct cache_entry *out)
{
    const char *sp1 = memchr(raw, ' ', len);
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', len - (size_t)(sp1 + 1 - raw)) : NULL;
    if (!sp2 || strtoll(raw, NULL, 10) != current)
        return false;
    out->etag = arena_strndup(a, sp1 + 1, (size_t)(sp2 - sp1 - 1));
    out->body = arena_strndup(a, sp2 + 1, len - (size_t)(sp2 + 1 - raw));
    out->body_len = len - (size_t)(sp2 + 1 - raw);
    return true;
}

static void state_key(char *key, size_t size, int64_t merchant_id)
{
    snprintf(key, size, "cgj:s:%lld", (long long)merchant_id);
}

/* Reads "<version> <lsn>"; false when the state is missing or malformed. */
static bool parse_state(const redisReply *r, int64_t *version, uint64_t *lsn)
{
    if (r->type != REDIS_REPLY_STRING)
        return false;
    char *end;
    *version = strtoll(r->str, &end, 10);
    if (*end != ' ')
        return false;
    *lsn = strtoull(end + 1, NULL, 10);
    return true;
}

/* The in-process layer's answer, when it trusts a version and holds the response at it. */
static bool local_hit(struct cache *c, int64_t merchant_id, const char *field, struct arena *a,
                      struct cache_entry *out)
{
    int64_t version;
    if (!field || !local_version(c->local, merchant_id, &version) ||
        !local_get(c->local, merchant_id, field, version, a, out))
        return false;
    atomic_fetch_add(&c->local_hits, 1);
    atomic_fetch_add(&c->hits, 1);
    return true;
}

/* True when Redis holds an older version than one this process committed (its move is still
 * pending): then nothing cached at that version may be served. */
static bool behind_local(struct cache *c, int64_t merchant_id, int64_t redis_version)
{
    int64_t known;
    return local_known_version(c->local, merchant_id, &known) && known > redis_version;
}

enum cache_result cache_merchant_get(struct cache *c, int64_t merchant_id, const char *field,
                                     struct arena *a, struct cache_entry *out, uint64_t *lsn)
{
    *lsn = 0;
    if (!cache_enabled(c))
        return CACHE_DISABLED;
    if (local_hit(c, merchant_id, field, a, out))
        return CACHE_HIT;
    redisContext *ctx = thread_context(c);
    if (!ctx)
        return CACHE_ERROR;
    char key[40];
    state_key(key, sizeof(key), merchant_id);
    redisReply *r = field ? redisCommand(ctx, "MGET %s cgj:q:%lld:%s", key,
                                         (long long)merchant_id, field)
                          : redisCommand(ctx, "MGET %s", key);
    if (!r) {
        drop_context(c);
        return CACHE_ERROR;
    }
    enum cache_result res = CACHE_MISS;
    int64_t version = -1;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1) {
        atomic_fetch_add(&c->errors, 1);
        res = CACHE_ERROR;
    } else if (parse_state(r->element[0], &version, lsn) && !behind_local(c, merchant_id, version)) {
        local_saw_version(c->local, merchant_id, version);
        if (field && r->elements == 2 && r->element[1]->type == REDIS_REPLY_STRING &&
            parse_entry(a, r->element[1]->str, r->element[1]->len, version, out)) {
            res = CACHE_HIT;
            local_put(c->local, merchant_id, field, version, out);
        }
    }
    freeReplyObject(r);
    if (field && res != CACHE_ERROR)
        atomic_fetch_add(res == CACHE_HIT ? &c->hits : &c->misses, 1);
    return res;
}

/* Reads and discards n pipelined replies; false when the connection failed. */
static bool drain_replies(struct cache *c, redisContext *ctx, int n)
{
    for (int i = 0; i < n; i++) {
        void *reply = NULL;
        if (redisGetReply(ctx, &reply) != REDIS_OK) {
            drop_context(c);
            return false;
        }
        if (((redisReply *)reply)->type == REDIS_REPLY_ERROR)
            atomic_fetch_add(&c->errors, 1);
        freeReplyObject(reply);
    }
    return true;
}

/* Two writers may report their commits out of order: version and LSN only ever move forward,
 * else a response computed before the newer write could pass for current. */
#define BUMP_SCRIPT                                                                                \
    "local v, l = -1, 0 "                                                                          \
    "local cur = redis.call('GET', KEYS[1]) "                                                      \
    "if cur then local sp = string.find(cur, ' ') "                                                \
    "v = tonumber(string.sub(cur, 1, sp - 1)) l = tonumber(string.sub(cur, sp + 1)) end "          \
    "v = math.max(v, tonumber(ARGV[1])) l = math.max(l, tonumber(ARGV[2])) "                       \
    "redis.call('SET', KEYS[1], string.format('%.0f %.0f', v, l), 'EX', ARGV[3]) return 1"

void cache_merchant_put(struct cache *c, int64_t merchant_id, const char *field, int64_t version,
                        const struct cache_entry *entry, unsigned ttl_s)
{
    if (!cache_enabled(c))
        return;
    local_put(c->local, merchant_id, field, version, entry);
    redisContext *ctx = thread_context(c);
    if (!ctx)
        return;
    char key[40], head[96];
    state_key(key, sizeof(key), merchant_id);
    int head_len = snprintf(head, sizeof(head), "%lld %s ", (long long)version, entry->etag);
    size_t len = (size_t)head_len + entry->body_len;
    char *value = xmalloc(len);
    memcpy(value, head, (size_t)head_len);
    memcpy(value + head_len, entry->body, entry->body_len);
    redisAppendCommand(ctx, "SET cgj:q:%lld:%s %b EX %u", (long long)merchant_id, field, value,
                       len, ttl_s);
    /* The data was at `version` when this response was computed: the state is moved there if
     * it is behind (Redis lost it, or a writer's move did not reach it yet). */
    redisAppendCommand(ctx, "EVAL %s 1 %s %lld 0 %u", BUMP_SCRIPT, key, (long long)version,
                       CACHE_MERCHANT_TTL_S);
    free(value);
    drain_replies(c, ctx, 2);
}


/* Sends the moves of n merchants in one pipeline; true when Redis applied every one. */
static bool send_bumps(struct cache *c, const struct pending_bump *b, size_t n)
{
    redisContext *ctx = thread_context(c);
    if (!ctx)
        return false;
    for (size_t i = 0; i < n; i++) {
        char key[40];
        state_key(key, sizeof(key), b[i].merchant_id);
        redisAppendCommand(ctx, "EVAL %s 1 %s %lld %llu %u", BUMP_SCRIPT, key,
                           (long long)b[i].version, (unsigned long long)b[i].lsn,
                           CACHE_MERCHANT_TTL_S);
    }
    uint64_t errors = atomic_load(&c->errors);
    return drain_replies(c, ctx, (int)n) && atomic_load(&c->errors) == errors;
}

/* The slot of a merchant's pending move, or the empty one where it goes (linear probing). */
static struct pending_bump *pending_slot(struct cache *c, int64_t merchant_id)
{
    size_t i = ((uint64_t)merchant_id * 11400714819323198485ull) >> (64 - 17);
    while (c->pending[i].merchant_id && c->pending[i].merchant_id != merchant_id)
        i = (i + 1) & (PENDING_SLOTS - 1);
    return &c->pending[i];
}

/* Keeps moves for later, one per merchant (the furthest). */
static void add_pending(struct cache *c, const struct pending_bump *b, size_t n)
{
    pthread_mutex_lock(&c->pending_lock);
    if (!c->pending)
        c->pending = xcalloc(PENDING_SLOTS, sizeof(*c->pending));
    for (size_t i = 0; i < n; i++) {
        struct pending_bump *p = pending_slot(c, b[i].merchant_id);
        if (!p->merchant_id && c->n_pending == PENDING_MAX) {
            log_warn("cache: %d version moves wait for Redis; dropping more (cached responses "
                     "expire within their TTL)", PENDING_MAX);
            break;
        }
        if (!p->merchant_id) {
            *p = b[i];
            c->n_pending++;
        } else {
            p->version = p->version > b[i].version ? p->version : b[i].version;
            p->lsn = p->lsn > b[i].lsn ? p->lsn : b[i].lsn;
        }
    }
    atomic_store(&c->has_pending, c->n_pending > 0);
    pthread_mutex_unlock(&c->pending_lock);
}

/* Takes every pending move out of the table. */
static struct pending_bump *take_pending(struct cache *c, size_t *n)
{
    pthread_mutex_lock(&c->pending_lock);
    struct pending_bump *todo = xmalloc((c->n_pending + 1) * sizeof(*todo));
    *n = 0;
    for (size_t i = 0; c->n_pending && i < PENDING_SLOTS; i++)
        if (c->pending[i].merchant_id) {
            todo[(*n)++] = c->pending[i];
            c->pending[i].merchant_id = 0;
            c->n_pending--;
        }
    atomic_store(&c->has_pending, false);
    pthread_mutex_unlock(&c->pending_lock);
    return todo;
}

/* Tries the waiting moves again (on the retrier thread, every PENDING_RETRY_MS). */
static void retry_pending(struct cache *c)
{
    if (!atomic_load(&c->has_pending))
        return;
    size_t n;
    struct pending_bump *todo = take_pending(c, &n);
    for (size_t done = 0; done < n; done += PENDING_BATCH) {
        size_t k = n - done < PENDING_BATCH ? n - done : PENDING_BATCH;
        if (!send_bumps(c, todo + done, k)) {
            add_pending(c, todo + done, n - done);
            break;
        }
    }
    free(todo);
}

void cache_merchant_bump(struct cache *c, const int64_t *merchant_ids, const int64_t *versions,
                         size_t n, uint64_t lsn)
{
    if (!cache_enabled(c) || n == 0)
        return;
    struct pending_bump *b = xmalloc(n * sizeof(*b));
    for (size_t i = 0; i < n; i++) {
        local_saw_version(c->local, merchant_ids[i], versions[i]); /* our own writes show at once */
        b[i] = (struct pending_bump){merchant_ids[i], versions[i], lsn};
    }
    if (!send_bumps(c, b, n))
        add_pending(c, b, n); /* the retrier thread sends them once Redis answers */
    free(b);
}

/* GCRA over n buckets (KEYS[i]; ARGV[2i-1] = quota, ARGV[2i] = window in ms): a bucket's key
 * holds its theoretical arrival time (TAT); a request passes when TAT + interval - window is
 * not in the future. Returns {allowed, retry_ms, remaining_1, reset_ms_1, ...}. */
#define RATE_SCRIPT                                                                                \
    "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "              \
    "local ok, retry, tats, out = 1, 0, {}, {} "                                                   \
    "for i = 1, #KEYS do "                                                                         \
    "  local q, w = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i]) "                            \
    "  local tat = math.max(tonumber(redis.call('GET', KEYS[i]) or now), now) "                   \
    "  local wait = tat + w / q - w - now "                                                        \
    "  if wait > 0 then ok = 0 retry = math.max(retry, wait) tats[i] = tat "                      \
    "  else tats[i] = tat + w / q end "                                                            \
    "end "                                                                                         \
    "for i = 1, #KEYS do "                                                                         \
    "  local q, w = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i]) "                            \
    "  if ok == 1 then redis.call('SET', KEYS[i], string.format('%.3f', tats[i]), 'PX', "          \
    "    math.ceil(tats[i] - now) + 1) end "                                                       \
    "  out[2 * i - 1] = math.max(0, math.floor((now + w - tats[i]) / (w / q))) "                  \
    "  out[2 * i] = math.ceil(tats[i] - now) "                                                     \
    "end "                                                                                         \
    "return {ok, math.ceil(retry), unpack(out)}"

static void rate_command(const struct cache_rate_bucket *b, size_t n, const char **argv,
                         size_t *argvlen, char (*nums)[16])
{
    argv[0] = "EVAL";
    argv[1] = RATE_SCRIPT;
    snprintf(nums[0], sizeof(nums[0]), "%zu", n);
    argv[2] = nums[0];
    for (size_t i = 0; i < n; i++) {
        argv[3 + i] = b[i].key;
        snprintf(nums[1 + 2 * i], sizeof(nums[0]), "%u", b[i].quota);
        snprintf(nums[2 + 2 * i], sizeof(nums[0]), "%u", b[i].window_ms);
        argv[3 + n + 2 * i] = nums[1 + 2 * i];
        argv[4 + n + 2 * i] = nums[2 + 2 * i];
    }
    for (size_t i = 0; i < 3 + 3 * n; i++)
        argvlen[i] = strlen(argv[i]);
}

static bool rate_reply_ok(const redisReply *r, size_t n)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 + 2 * n)
        return false;
    for (size_t i = 0; i < r->elements; i++)
        if (r->element[i]->type != REDIS_REPLY_INTEGER || r->element[i]->integer < 0)
            return false;
    return true;
}

enum cache_result cache_rate_take(struct cache *c, struct cache_rate_bucket *buckets, size_t n,
                                  unsigned *retry_ms)
{
    enum { MAX_BUCKETS = 4 };
    if (!cache_enabled(c) || n == 0 || n > MAX_BUCKETS)
        return CACHE_DISABLED;
    redisContext *ctx = thread_context(c);
    if (!ctx)
        return CACHE_ERROR;
    const char *argv[3 + 3 * MAX_BUCKETS];
    size_t argvlen[3 + 3 * MAX_BUCKETS];
    char nums[1 + 2 * MAX_BUCKETS][16];
    rate_command(buckets, n, argv, argvlen, nums);
    redisReply *r = redisCommandArgv(ctx, (int)(3 + 3 * n), argv, argvlen);
    if (!r) {
        drop_context(c);
        return CACHE_ERROR;
    }
    enum cache_result res = CACHE_ERROR;
    if (rate_reply_ok(r, n)) {
        res = r->element[0]->integer ? CACHE_HIT : CACHE_MISS;
        *retry_ms = (unsigned)r->element[1]->integer;
        for (size_t i = 0; i < n; i++) {
            buckets[i].remaining = (unsigned)r->element[2 + 2 * i]->integer;
            buckets[i].reset_ms = (unsigned)r->element[3 + 2 * i]->integer;
        }
    } else {
        atomic_fetch_add(&c->errors, 1);
    }
    freeReplyObject(r);
    return res;
}

void cache_render_metrics(struct buf *out, void *ud)
{
    struct cache *c = ud;
    metrics_write_header(out, "cangrejo_cache_requests_total", "counter",
                         "Cache lookups by result.");
    buf_printf(out, "cangrejo_cache_requests_total{result=\"hit\"} %llu\n",
               (unsigned long long)atomic_load(&c->hits));
    buf_printf(out, "cangrejo_cache_requests_total{result=\"miss\"} %llu\n",
               (unsigned long long)atomic_load(&c->misses));
    metrics_write_header(out, "cangrejo_cache_local_hits_total", "counter",
                         "Cache hits answered from process memory (part of the hits above).");
    buf_printf(out, "cangrejo_cache_local_hits_total %llu\n",
               (unsigned long long)atomic_load(&c->local_hits));
    metrics_write_header(out, "cangrejo_cache_errors_total", "counter",
                         "Redis connection failures, timeouts and error replies.");
    buf_printf(out, "cangrejo_cache_errors_total %llu\n",
               (unsigned long long)atomic_load(&c->errors));
}
