/* merchants.h - merchant rows: the tenants every other record belongs to. */
#ifndef CANGREJO_DB_MERCHANTS_H
#define CANGREJO_DB_MERCHANTS_H

#include "db/pool.h"

#include <stdbool.h>
#include <stdint.h>

struct arena;

struct db_merchant {
    int64_t merchant_id;
    const char *name, *timezone, *currency;
    const char *created_at, *updated_at; /* RFC 3339 UTC text */
};

/* Creates or updates a merchant on the primary; *created tells which. DB_CONFLICT when the
 * currency would change although orders exist. Strings in out are arena-owned. */
enum db_status db_merchant_put(struct db *db, struct arena *a, const struct db_merchant *in,
                               struct db_merchant *out, bool *created);
/* Reads a merchant from a replica that has this instance's last write of it, else the
 * primary. */
enum db_status db_merchant_get(struct db *db, struct arena *a, int64_t merchant_id,
                               struct db_merchant *out);

/* The merchant (name and timestamps left out) from a per-process copy at most a few seconds
 * old, read from the primary on a miss: for the hot paths that need its time zone and
 * currency. Unknown merchants are not remembered. */
enum db_status db_merchant_lookup(struct db *db, struct arena *a, int64_t merchant_id,
                                  struct db_merchant *out);

#endif
