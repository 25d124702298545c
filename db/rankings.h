/* rankings.h - a merchant's top products and its promotions over a range, summed from the
 * 15-minute product and promotion rollups in one statement on a replica that has the
 * merchant's writes. */
#ifndef CANGREJO_DB_RANKINGS_H
#define CANGREJO_DB_RANKINGS_H

#include "db/pool.h"
#include "db/sales.h"

#include <stddef.h>
#include <stdint.h>

struct arena;

/* What to rank. */
struct db_ranking_query {
    int64_t merchant_id;
    const char *timezone; /* IANA name: dates mean local midnight there */
    struct db_sales_bound from, to;
    const char *sort; /* products: "net_sales" or "quantity" */
    unsigned limit;   /* products: at most this many */
};

/* One product: sold units and net sales (each item's share of its order's net). */
struct db_product_row {
    const char *sku, *name; /* name: the latest seen */
    int64_t quantity, net_sales_cents;
};

/* One promo code: its orders, their discounts and net sales. */
struct db_promotion_row {
    const char *promo_code;
    int64_t orders, discounts_cents, net_sales_cents;
};

/* The answer, arena-owned, best first; products or promotions set by the call made. */
struct db_ranking {
    int64_t data_version; /* merchants.data_version in the same snapshot */
    int64_t as_of_us;     /* the data is complete up to at least this instant */
    struct db_sales_instant from, to;
    size_t n;
    struct db_product_row *products;
    struct db_promotion_row *promotions;
};

/* The top q->limit products of [from, to) by q->sort, descending, then by SKU. Read where
 * db_sales_series reads, with the same failures (DB_NOT_FOUND: no such merchant; DB_ERROR
 * with *refusal set: a time zone PostgreSQL does not know). */
enum db_status db_top_products(struct db *db, uint64_t min_lsn, struct arena *a,
                               const struct db_ranking_query *q, struct db_ranking *out,
                               const char **role, enum db_sales_refusal *refusal);
/* Every promo code with orders in [from, to), by net sales descending, then by code. */
enum db_status db_promotions(struct db *db, uint64_t min_lsn, struct arena *a,
                             const struct db_ranking_query *q, struct db_ranking *out,
                             const char **role, enum db_sales_refusal *refusal);

#endif
