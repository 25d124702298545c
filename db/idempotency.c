#include "idempotency.h"

#include "server/arena.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum db_status db_idempotency_claim(struct db *db, struct arena *a, int64_t merchant_id,
                                    const char *key, enum db_idempotency *outcome,
                                    const char **hash_hex, unsigned *status, const char **body)
{
    char mid[24];
    snprintf(mid, sizeof(mid), "%lld", (long long)merchant_id);
    const char *params[] = {mid, key};
    PGresult *r = NULL;
    enum db_status st = db_run_primary(db, DB_IDEMPOTENCY_CLAIM, params, PGRES_TUPLES_OK, &r);
    if (st != DB_OK)
        return st;
    bool claimed = PQntuples(r) == 1;
    PQclear(r);
    if (claimed) {
        *outcome = IDEMPOTENCY_CLAIMED;
        return DB_OK;
    }
    st = db_run_primary(db, DB_IDEMPOTENCY_GET, params, PGRES_TUPLES_OK, &r);
    if (st != DB_OK)
        return st;
    /* Gone meanwhile (released by a failed first request): the client may simply retry. */
    *outcome = IDEMPOTENCY_RUNNING;
    if (PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 1), "1") == 0) {
        *outcome = IDEMPOTENCY_DONE;
        *hash_hex = arena_strdup(a, PQgetvalue(r, 0, 0));
        *status = (unsigned)atoi(PQgetvalue(r, 0, 2));
        *body = arena_strdup(a, PQgetvalue(r, 0, 3));
    }
    PQclear(r);
    return DB_OK;
}

enum db_status db_idempotency_set_hash(struct db *db, int64_t merchant_id, const char *key,
                                       const char *hash_hex)
{
    char mid[24];
    snprintf(mid, sizeof(mid), "%lld", (long long)merchant_id);
    const char *params[] = {mid, key, hash_hex};
    return db_run_primary(db, DB_IDEMPOTENCY_SET_HASH, params, PGRES_COMMAND_OK, NULL);
}

enum db_status db_idempotency_finish(struct db *db, int64_t merchant_id, const char *key,
                                     unsigned status, const char *body)
{
    char mid[24], st[8];
    snprintf(mid, sizeof(mid), "%lld", (long long)merchant_id);
    snprintf(st, sizeof(st), "%u", status);
    const char *params[] = {mid, key, st, body};
    return db_run_primary(db, DB_IDEMPOTENCY_FINISH, params, PGRES_COMMAND_OK, NULL);
}

void db_idempotency_release(struct db *db, int64_t merchant_id, const char *key)
{
    char mid[24];
    snprintf(mid, sizeof(mid), "%lld", (long long)merchant_id);
    const char *params[] = {mid, key};
    db_run_primary(db, DB_IDEMPOTENCY_RELEASE, params, PGRES_COMMAND_OK, NULL);
}
