#include "merchants.h"

#include "server/arena.h"

#include <pthread.h>
#include <time.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { LOOKUP_SLOTS = 4096, LOOKUP_TTL_MS = 3000 };

/* A small direct-mapped copy of recently used merchants. */
struct lookup_slot {
    int64_t merchant_id;
    int64_t expires_ms;
    char timezone[65];
    char currency[4];
};

static struct lookup_slot lookup_slots[LOOKUP_SLOTS];
static pthread_mutex_t lookup_lock = PTHREAD_MUTEX_INITIALIZER;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct lookup_slot *lookup_slot_for(int64_t merchant_id)
{
    return &lookup_slots[(uint64_t)merchant_id * 0x9E3779B97F4A7C15ull >> 52];
}

static void remember_merchant(const struct db_merchant *m)
{
    pthread_mutex_lock(&lookup_lock);
    struct lookup_slot *s = lookup_slot_for(m->merchant_id);
    s->merchant_id = m->merchant_id;
    s->expires_ms = now_ms() + LOOKUP_TTL_MS;
    snprintf(s->timezone, sizeof(s->timezone), "%s", m->timezone);
    snprintf(s->currency, sizeof(s->currency), "%s", m->currency);
    pthread_mutex_unlock(&lookup_lock);
}

static bool recall_merchant(struct arena *a, int64_t merchant_id, struct db_merchant *out)
{
    bool found = false;
    pthread_mutex_lock(&lookup_lock);
    struct lookup_slot *s = lookup_slot_for(merchant_id);
    if (s->merchant_id == merchant_id && s->expires_ms > now_ms()) {
        memset(out, 0, sizeof(*out));
        out->merchant_id = merchant_id;
        out->timezone = arena_strdup(a, s->timezone);
        out->currency = arena_strdup(a, s->currency);
        found = true;
    }
    pthread_mutex_unlock(&lookup_lock);
    return found;
}

static void merchant_from_row(struct arena *a, const PGresult *r, struct db_merchant *out)
{
    out->merchant_id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    out->name = arena_strdup(a, PQgetvalue(r, 0, 1));
    out->timezone = arena_strdup(a, PQgetvalue(r, 0, 2));
    out->currency = arena_strdup(a, PQgetvalue(r, 0, 3));
    out->created_at = arena_strdup(a, PQgetvalue(r, 0, 4));
    out->updated_at = arena_strdup(a, PQgetvalue(r, 0, 5));
}

static enum db_status merchant_from_result(struct arena *a, PGresult *r, struct db_merchant *out,
                                           bool *created)
{
    if (PQntuples(r) == 0)
        return DB_NOT_FOUND;
    merchant_from_row(a, r, out);
    if (created)
        *created = PQgetvalue(r, 0, 6)[0] == 't';
    return DB_OK;
}

/* The primary's WAL position now (after a write on c committed), or 0. */
static uint64_t wal_position(struct db_conn *c)
{
    PGresult *r = db_exec(c, DB_WAL_LSN, NULL);
    uint64_t lsn = db_ok(r, PGRES_TUPLES_OK) ? db_parse_lsn(PQgetvalue(r, 0, 0)) : 0;
    PQclear(r);
    return lsn;
}

enum db_status db_merchant_put(struct db *db, struct arena *a, const struct db_merchant *in,
                               struct db_merchant *out, bool *created)
{
    char id[24];
    snprintf(id, sizeof(id), "%" PRId64, in->merchant_id);
    const char *params[] = {id, in->name, in->timezone, in->currency};
    struct db_conn *c = db_acquire_primary(db);
    if (!c)
        return DB_UNAVAILABLE;
    PGresult *r = db_exec(c, DB_MERCHANT_UPSERT, params);
    enum db_status st = db_ok(r, PGRES_TUPLES_OK) ? merchant_from_result(a, r, out, created)
                                                  : db_failure(c, r);
    PQclear(r);
    if (st == DB_OK)
        db_note_write_lsn(db, in->merchant_id, wal_position(c));
    db_release(c);
    if (st == DB_NOT_FOUND)
        return DB_CONFLICT; /* the update was refused: a currency change after orders */
    if (st == DB_OK)
        remember_merchant(out);
    return st;
}

enum db_status db_merchant_get(struct db *db, struct arena *a, int64_t merchant_id,
                               struct db_merchant *out)
{
    char id[24];
    snprintf(id, sizeof(id), "%" PRId64, merchant_id);
    const char *params[] = {id};
    const char *role;
    enum db_status st;
    PGresult *r =
        db_read(db, db_merchant_write_lsn(db, merchant_id), DB_MERCHANT_GET, params, &role, &st);
    if (!r)
        return st;
    st = merchant_from_result(a, r, out, NULL);
    PQclear(r);
    return st;
}

enum db_status db_merchant_lookup(struct db *db, struct arena *a, int64_t merchant_id,
                                  struct db_merchant *out)
{
    if (recall_merchant(a, merchant_id, out))
        return DB_OK;
    enum db_status st = db_merchant_get(db, a, merchant_id, out);
    if (st == DB_OK)
        remember_merchant(out);
    return st;
}
