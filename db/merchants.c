#include "merchants.h"

#include "server/arena.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void merchant_from_row(struct arena *a, const PGresult *r, struct db_merchant *out)
{
    out->merchant_id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    out->name = arena_strdup(a, PQgetvalue(r, 0, 1));
    out->timezone = arena_strdup(a, PQgetvalue(r, 0, 2));
    out->currency = arena_strdup(a, PQgetvalue(r, 0, 3));
    out->created_at = arena_strdup(a, PQgetvalue(r, 0, 4));
    out->updated_at = arena_strdup(a, PQgetvalue(r, 0, 5));
}

/* Runs stmt with params on a primary connection and turns a one-row result into *out. */
static enum db_status one_merchant_row(struct db *db, struct arena *a, enum db_stmt stmt,
                                       const char *const *params, struct db_merchant *out,
                                       bool *created)
{
    struct db_conn *c = db_acquire_primary(db);
    if (!c)
        return DB_UNAVAILABLE;
    PGresult *r = db_exec(c, stmt, params);
    enum db_status st = DB_OK;
    if (!db_ok(r, PGRES_TUPLES_OK))
        st = db_failure(c, r);
    else if (PQntuples(r) == 0)
        st = DB_NOT_FOUND;
    else {
        merchant_from_row(a, r, out);
        if (created)
            *created = PQgetvalue(r, 0, 6)[0] == 't';
    }
    PQclear(r);
    db_release(c);
    return st;
}

enum db_status db_merchant_put(struct db *db, struct arena *a, const struct db_merchant *in,
                               struct db_merchant *out, bool *created)
{
    char id[24];
    snprintf(id, sizeof(id), "%" PRId64, in->merchant_id);
    const char *params[] = {id, in->name, in->timezone, in->currency};
    return one_merchant_row(db, a, DB_MERCHANT_UPSERT, params, out, created);
}

enum db_status db_merchant_get(struct db *db, struct arena *a, int64_t merchant_id,
                               struct db_merchant *out)
{
    char id[24];
    snprintf(id, sizeof(id), "%" PRId64, merchant_id);
    const char *params[] = {id};
    return one_merchant_row(db, a, DB_MERCHANT_GET, params, out, NULL);
}
