/* ingest.h - storing orders exactly once: one transaction per group, with the rollup deltas
 * of the rows actually inserted. Shared by the group-commit writer, batches and seed. */
#ifndef CANGREJO_DB_INGEST_H
#define CANGREJO_DB_INGEST_H

#include "db/orders.h"
#include "db/pool.h"

#include <stddef.h>
#include <stdint.h>

/* What a committed group changed: the merchants whose data moved, their new data versions, and
 * the primary's WAL position after the commit (for read-your-writes). Freed by
 * db_ingest_commit_free. */
struct db_ingest_commit {
    size_t n_merchants;
    int64_t *merchant_ids;
    int64_t *versions;
    uint64_t lsn;
};

/* Stores orders[0..n) on the primary connection c; results[i] tells what became of orders[i].
 * New orders get created_at. A group that fails on data is retried in halves so that a bad
 * order fails alone; connection trouble makes the uncommitted ones INGEST_UNAVAILABLE.
 * Merchants changed by every committed transaction are added to *commit. */
void db_ingest(struct db *db, struct db_conn *c, struct db_order **orders, size_t n,
               enum db_ingest_result *results, struct db_ingest_commit *commit);
/* Adds the product and promotion figures of orders[0..n) to their 15-minute rollups (sign 1),
 * or takes them back out (sign -1), on c inside the caller's transaction: each item's net is
 * its share of the order's net (db/allocation.h); deltas are merged per key and upserted in key
 * order, after the sales rollup and before the merchants' versions, like every writer. */
enum db_status db_ingest_item_rollups(struct db_conn *c, struct db_order *const *orders, size_t n,
                                      int sign);
/* A change to one row of the delivery rollups (db/migrations/0006): the key (bucket_s: the
 * 15-minute UTC bucket of placed_at, in epoch seconds), then the figures. */
struct db_delivery_delta {
    int64_t merchant_id, bucket_s, store_id;
    int channel;
    int64_t deliveries, delivered, failed, delivered_us;
};
/* A delta with no figures yet for the row of an order placed at placed_at_us. */
struct db_delivery_delta db_delivery_delta_of(int64_t merchant_id, int64_t placed_at_us,
                                              int64_t store_id, int channel);
/* Applies d[0..n) to the delivery rollups on c inside the caller's transaction: merged per key
 * (d is reordered) and upserted in key order, after the other rollups and before the
 * merchants' versions, like every writer; deltas that change nothing are left out. */
enum db_status db_ingest_delivery_rollups(struct db_conn *c, struct db_delivery_delta *d,
                                          size_t n);
/* Frees what db_ingest added to a commit record. */
void db_ingest_commit_free(struct db_ingest_commit *commit);

#endif
