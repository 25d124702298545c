#include "probe.h"

#include <stdlib.h>
#include <time.h>

static double ms_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) * 1e3 +
           (double)(now.tv_nsec - start->tv_nsec) / 1e6;
}

static struct db_probe probe_with(struct db_conn *c, enum db_stmt stmt,
                                  const struct timespec *start)
{
    struct db_probe p = {.ok = false, .latency_ms = 0, .value = -1};
    if (c) {
        PGresult *r = db_exec(c, stmt, NULL);
        if (db_ok(r, PGRES_TUPLES_OK) && PQntuples(r) == 1) {
            p.ok = true;
            p.value = atoll(PQgetvalue(r, 0, 0));
        }
        PQclear(r);
        db_release(c);
    }
    p.latency_ms = ms_since(start);
    return p;
}

struct db_probe db_probe_primary(struct db *db, unsigned wait_ms)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    return probe_with(db_acquire_primary_wait(db, wait_ms), DB_SCHEMA_VERSION, &start);
}

struct db_probe db_probe_replica(struct db *db, size_t i, unsigned wait_ms)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    return probe_with(db_acquire_replica_n(db, i, wait_ms), DB_REPLICA_LAG, &start);
}
