/* orders.h - orders as stored: the records the write path ingests and the read path returns. */
#ifndef CANGREJO_DB_ORDERS_H
#define CANGREJO_DB_ORDERS_H

#include "db/pool.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct arena;

/* Stored as smallint; the order of each list is the API's spelling table. */
enum order_channel { CHANNEL_ONLINE, CHANNEL_POS, CHANNEL_COUNT_ };
enum order_fulfillment { FULFILLMENT_PICKUP, FULFILLMENT_DELIVERY, FULFILLMENT_DINE_IN, FULFILLMENT_COUNT_ };
enum order_status { ORDER_PLACED, ORDER_CANCELLED };

enum { ORDER_HASH_BYTES = 32 };

struct db_item {
    const char *sku, *name;
    int64_t quantity, unit_price_cents;
};

/* A customer's personal data as given with an order; a field is NULL when not given. Never
 * logged, cached or stored in clear (see db/customers.h). */
struct db_pii {
    const char *name, *email, *phone, *address;
};

struct db_order {
    int64_t merchant_id;
    const char *order_id;
    int64_t store_id;
    enum order_channel channel;
    enum order_fulfillment fulfillment;
    enum order_status status;
    int64_t placed_at_us; /* microseconds since the epoch, UTC */
    char currency[4];
    struct db_item *items;
    size_t n_items;
    int64_t gross_cents, discount_cents, net_cents, tax_cents, total_cents, items_sold;
    const char *promo_code;   /* NULL when none */
    const char *customer_ref; /* NULL when none */
    const struct db_pii *pii; /* given with the order (write path); NULL when none */
    bool pii_stored;          /* set by db_ingest once committed: pii is stored, encrypted */
    unsigned char content_hash[ORDER_HASH_BYTES];
    char created_at[24]; /* RFC 3339 UTC, set once stored ("" before) */
};

/* What became of one order handed to db_ingest. */
enum db_ingest_result {
    INGEST_INSERTED,  /* new: stored and counted */
    INGEST_DUPLICATE, /* the same order_id with the same content was already stored */
    INGEST_CONFLICT,  /* the same order_id with other content was already stored */
    INGEST_FAILED,    /* this order could not be stored (see the log); others may have been */
    INGEST_UNAVAILABLE, /* the primary could not be reached or the commit is unknown */
};

/* A copy of o whose strings all live in the arena (o may point into a parsed request). */
struct db_order *db_order_copy(struct arena *a, const struct db_order *o);
/* Reads one order with its items; DB_NOT_FOUND when unknown. Served by a replica that has
 * replayed min_lsn, else the primary; *role tells which. */
enum db_status db_order_get(struct db *db, struct arena *a, int64_t merchant_id,
                            const char *order_id, uint64_t min_lsn, struct db_order *out,
                            const char **role);

/* Cancels an order on the primary, once: it leaves every sales figure and counts in
 * cancelled_orders, in the same transaction. *changed is false when it was already cancelled
 * (a no-op); DB_NOT_FOUND for an unknown order. On a change, *version is the merchant's new
 * data version and *lsn the primary's WAL position after the commit. */
enum db_status db_order_cancel(struct db *db, int64_t merchant_id, const char *order_id,
                               bool *changed, int64_t *version, uint64_t *lsn);

/* Filters and position of an order list, newest first. */
struct db_order_list_query {
    int64_t merchant_id;
    bool has_from, has_to, has_cursor;
    int64_t from_us, to_us;   /* placed_at in [from, to) */
    int64_t store_id;         /* 0: any */
    int status;               /* -1: any */
    int64_t cursor_placed_us; /* the last order of the previous page */
    const char *cursor_order_id;
    unsigned limit;
};

/* Reads up to q->limit orders into *out (arena-owned); *n is how many. */
enum db_status db_order_list(struct db *db, struct arena *a, const struct db_order_list_query *q,
                             uint64_t min_lsn, struct db_order **out, size_t *n,
                             const char **role);

#endif
