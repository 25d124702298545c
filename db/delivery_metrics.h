/* delivery_metrics.h - delivery series from the 15-minute delivery rollups: the buckets of a
 * time zone's calendar (as for sales), summed per bucket of placed_at, in one statement on a
 * replica that has the merchant's writes. */
#ifndef CANGREJO_DB_DELIVERY_METRICS_H
#define CANGREJO_DB_DELIVERY_METRICS_H

#include "db/pool.h"
#include "db/sales.h"

#include <stdint.h>

struct arena;

/* The delivery orders placed in a bucket (cancelled ones left out), how many of them are now
 * delivered or failed, and the sum of occurred_at - placed_at over the delivered ones. */
struct db_delivery_figures {
    int64_t deliveries, delivered, failed, delivered_us;
};

/* The answer, arena-owned: header and buckets as for sales (frame has no cells), and the
 * figures of every bucket (figures[i] of frame.buckets[i], zero when it has none). */
struct db_delivery_series {
    struct db_sales_series frame;
    struct db_delivery_figures *figures;
};

/* Sums the delivery rollups of q (its fulfillment and group_by are not used) where
 * db_sales_series reads, with the same failures (DB_NOT_FOUND: no such merchant; DB_ERROR
 * with *refusal set: a time zone PostgreSQL does not know). */
enum db_status db_delivery_series(struct db *db, uint64_t min_lsn, struct arena *a,
                                  const struct db_sales_query *q, struct db_delivery_series *out,
                                  const char **role, enum db_sales_refusal *refusal);

#endif
