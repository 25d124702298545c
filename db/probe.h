/* probe.h - dependency checks for /readyz: primary and schema, replicas and their lag. */
#ifndef CANGREJO_DB_PROBE_H
#define CANGREJO_DB_PROBE_H

#include "db/pool.h"

#include <stdbool.h>

struct db_probe {
    bool ok;
    double latency_ms;
    long long value; /* schema version (primary) or replay lag in ms (replica); -1 unknown */
};

/* Asks the primary for the applied schema version, waiting at most wait_ms for a connection. */
struct db_probe db_probe_primary(struct db *db, unsigned wait_ms);
/* Asks replica i for its replay lag. */
struct db_probe db_probe_replica(struct db *db, size_t i, unsigned wait_ms);

#endif
