#include "local.h"

#include "cache.h"
#include "server/alloc.h"
#include "server/arena.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    STATE_SLOTS = 4096, /* merchants whose version is remembered */
    ENTRY_SLOTS = 4096, /* responses kept */
    FIELD_MAX = 200,    /* longer cache fields are not kept here */
};

struct state_slot {
    pthread_mutex_t lock;
    int64_t merchant_id; /* 0: empty */
    int64_t version;
    int64_t seen_ms;
};

struct entry_slot {
    pthread_mutex_t lock;
    int64_t merchant_id; /* 0: empty */
    int64_t version;
    char field[FIELD_MAX + 1];
    char *etag, *body; /* one allocation: etag NUL body */
    size_t body_len, bytes;
};

struct local_cache {
    unsigned state_ms;
    size_t max_bytes;
    atomic_size_t bytes;
    struct state_slot states[STATE_SLOTS];
    struct entry_slot entries[ENTRY_SLOTS];
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* FNV-1a over the merchant id and the field. */
static uint64_t slot_hash(int64_t merchant_id, const char *field)
{
    uint64_t h = 14695981039346656037ull;
    for (int i = 0; i < 8; i++)
        h = (h ^ (uint8_t)((uint64_t)merchant_id >> (8 * i))) * 1099511628211ull;
    for (const char *p = field; p && *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    return h;
}

struct local_cache *local_new(unsigned state_ms, size_t max_bytes)
{
    if (state_ms == 0)
        return NULL;
    struct local_cache *lc = xcalloc(1, sizeof(*lc));
    lc->state_ms = state_ms;
    lc->max_bytes = max_bytes;
    for (size_t i = 0; i < STATE_SLOTS; i++)
        pthread_mutex_init(&lc->states[i].lock, NULL);
    for (size_t i = 0; i < ENTRY_SLOTS; i++)
        pthread_mutex_init(&lc->entries[i].lock, NULL);
    return lc;
}

void local_free(struct local_cache *lc)
{
    if (!lc)
        return;
    for (size_t i = 0; i < STATE_SLOTS; i++)
        pthread_mutex_destroy(&lc->states[i].lock);
    for (size_t i = 0; i < ENTRY_SLOTS; i++) {
        free(lc->entries[i].etag);
        pthread_mutex_destroy(&lc->entries[i].lock);
    }
    free(lc);
}

static struct state_slot *state_slot(struct local_cache *lc, int64_t merchant_id)
{
    return &lc->states[slot_hash(merchant_id, NULL) % STATE_SLOTS];
}

/* The merchant's remembered version and when it was learnt; false when not remembered. */
static bool read_state(struct local_cache *lc, int64_t merchant_id, int64_t *version,
                       int64_t *seen_ms)
{
    if (!lc)
        return false;
    struct state_slot *s = state_slot(lc, merchant_id);
    pthread_mutex_lock(&s->lock);
    bool known = s->merchant_id == merchant_id;
    *version = s->version;
    *seen_ms = s->seen_ms;
    pthread_mutex_unlock(&s->lock);
    return known;
}

bool local_version(struct local_cache *lc, int64_t merchant_id, int64_t *version)
{
    int64_t seen_ms;
    return read_state(lc, merchant_id, version, &seen_ms) && now_ms() - seen_ms < lc->state_ms;
}

bool local_known_version(struct local_cache *lc, int64_t merchant_id, int64_t *version)
{
    int64_t seen_ms;
    return read_state(lc, merchant_id, version, &seen_ms);
}

void local_saw_version(struct local_cache *lc, int64_t merchant_id, int64_t version)
{
    if (!lc)
        return;
    struct state_slot *s = state_slot(lc, merchant_id);
    pthread_mutex_lock(&s->lock);
    if (s->merchant_id != merchant_id) {
        s->merchant_id = merchant_id;
        s->version = version;
    } else if (version > s->version) {
        s->version = version;
    }
    s->seen_ms = now_ms();
    pthread_mutex_unlock(&s->lock);
}

static struct entry_slot *entry_slot(struct local_cache *lc, int64_t merchant_id, const char *field)
{
    return &lc->entries[slot_hash(merchant_id, field) % ENTRY_SLOTS];
}

bool local_get(struct local_cache *lc, int64_t merchant_id, const char *field, int64_t version,
               struct arena *a, struct cache_entry *out)
{
    if (!lc || strlen(field) > FIELD_MAX)
        return false;
    struct entry_slot *e = entry_slot(lc, merchant_id, field);
    pthread_mutex_lock(&e->lock);
    bool hit =
        e->merchant_id == merchant_id && e->version == version && strcmp(e->field, field) == 0;
    if (hit) {
        out->etag = arena_strdup(a, e->etag);
        out->body = arena_strndup(a, e->body, e->body_len);
        out->body_len = e->body_len;
    }
    pthread_mutex_unlock(&e->lock);
    return hit;
}

static void drop_entry(struct local_cache *lc, struct entry_slot *e)
{
    free(e->etag);
    atomic_fetch_sub(&lc->bytes, e->bytes);
    e->etag = e->body = NULL;
    e->merchant_id = 0;
    e->bytes = 0;
}

void local_put(struct local_cache *lc, int64_t merchant_id, const char *field, int64_t version,
               const struct cache_entry *entry)
{
    if (!lc)
        return;
    size_t field_len = strlen(field), etag_len = strlen(entry->etag);
    size_t bytes = etag_len + 1 + entry->body_len;
    if (field_len > FIELD_MAX)
        return;
    struct entry_slot *e = entry_slot(lc, merchant_id, field);
    pthread_mutex_lock(&e->lock);
    drop_entry(lc, e);
    if (atomic_load(&lc->bytes) + bytes <= lc->max_bytes) {
        e->etag = xmalloc(bytes);
        memcpy(e->etag, entry->etag, etag_len + 1);
        e->body = e->etag + etag_len + 1;
        memcpy(e->body, entry->body, entry->body_len);
        e->body_len = entry->body_len;
        e->bytes = bytes;
        atomic_fetch_add(&lc->bytes, bytes);
        memcpy(e->field, field, field_len + 1);
        e->merchant_id = merchant_id;
        e->version = version;
    }
    pthread_mutex_unlock(&e->lock);
}
