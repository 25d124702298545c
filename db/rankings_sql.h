/* rankings_sql.h - the SQL of the product and promotion rankings (see db/rankings.c), one
 * statement per request.
 *
 * Parameters: $1 merchant_id, $2 time zone, $3/$4 from as epoch seconds or as a local date
 * (exactly one is non-NULL), $5/$6 to likewise; products also $7 sort (net_sales|quantity) and
 * $8 limit. The rollup rows of [from, to) (15-minute buckets: every real zone offset is a
 * multiple of 15 minutes, so a range on quarter hours holds whole buckets) are summed per SKU
 * or promo code and ranked by the sort figure, descending, then by key in byte order. Keys
 * whose orders were all cancelled are left out. Rows come back ordered by kind, then rank:
 *   0  one header: from/to resolved (label, offset, epoch), data_version, as_of
 *   1  one per ranked key: rank, key, name (products), figures */
#ifndef CANGREJO_DB_RANKINGS_SQL_H
#define CANGREJO_DB_RANKINGS_SQL_H

#include "db/sales_sql.h"

#define DB_RANKINGS_RANGE                                                                          \
    "WITH p AS MATERIALIZED (SELECT $2::text AS tz,"                                               \
    " " DB_SALES_BOUND("$3", "$4", "$2") " AS t_from,"                                             \
    " " DB_SALES_BOUND("$5", "$6", "$2") " AS t_to)"

/* Columns: kind, rank, from label, from offset, to label, to offset, from and to in epoch
 * seconds, data_version, as_of (microseconds), key, name, three figures. */
#define DB_RANKINGS_HEADER                                                                         \
    " SELECT 0 AS kind, 0::bigint AS rank,"                                                        \
    " " DB_SALES_LOCAL_LABEL("p.t_from") " AS from_label,"                                         \
    " " DB_SALES_UTC_OFFSET("p.t_from") " AS from_offset,"                                         \
    " " DB_SALES_LOCAL_LABEL("p.t_to") " AS to_label,"                                             \
    " " DB_SALES_UTC_OFFSET("p.t_to") " AS to_offset,"                                             \
    " extract(epoch FROM p.t_from)::bigint AS from_s, extract(epoch FROM p.t_to)::bigint AS to_s," \
    " (SELECT m.data_version FROM merchants AS m WHERE m.merchant_id = $1::bigint)"                \
    " AS data_version,"                                                                            \
    " " DB_SALES_AS_OF_US " AS as_of_us,"                                                          \
    " NULL::text AS key, NULL::text AS name,"                                                      \
    " NULL::bigint AS f1, NULL::bigint AS f2, NULL::bigint AS f3"                                  \
    " FROM p"

/* A ranked row, up to its key. */
#define DB_RANKINGS_ROW_PREFIX                                                                     \
    " SELECT 1, top.rank, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"

#define DB_TOP_PRODUCTS_PARAMS 8
#define DB_TOP_PRODUCTS_SQL                                                                        \
    DB_RANKINGS_RANGE ","                                                                          \
    " top AS (SELECT r.sku, sum(r.quantity)::bigint AS quantity,"                                  \
    "  sum(r.net_sales_cents)::bigint AS net,"                                                     \
    "  row_number() OVER (ORDER BY CASE WHEN $7::text = 'quantity' THEN sum(r.quantity)"           \
    "   ELSE sum(r.net_sales_cents) END DESC, r.sku) AS rank"                                      \
    "  FROM p, product_rollup_15m AS r"                                                            \
    "  WHERE r.merchant_id = $1::bigint AND r.bucket >= p.t_from AND r.bucket < p.t_to"            \
    "  GROUP BY r.sku HAVING sum(r.quantity) > 0"                                                  \
    "  ORDER BY rank LIMIT $8::bigint)"                                                            \
    DB_RANKINGS_HEADER                                                                             \
    " UNION ALL"                                                                                   \
    DB_RANKINGS_ROW_PREFIX " top.sku::text, coalesce(n.name, top.sku)::text,"                      \
    "  top.quantity, top.net, NULL"                                                                \
    " FROM top LEFT JOIN product_names AS n ON n.merchant_id = $1::bigint AND n.sku = top.sku"     \
    " ORDER BY 1, 2"

#define DB_PROMOTIONS_PARAMS 6
#define DB_PROMOTIONS_SQL                                                                          \
    DB_RANKINGS_RANGE ","                                                                          \
    " top AS (SELECT r.promo_code, sum(r.orders)::bigint AS orders,"                               \
    "  sum(r.discounts_cents)::bigint AS discounts, sum(r.net_sales_cents)::bigint AS net,"        \
    "  row_number() OVER (ORDER BY sum(r.net_sales_cents) DESC, r.promo_code) AS rank"             \
    "  FROM p, promo_rollup_15m AS r"                                                              \
    "  WHERE r.merchant_id = $1::bigint AND r.bucket >= p.t_from AND r.bucket < p.t_to"            \
    "  GROUP BY r.promo_code HAVING sum(r.orders) > 0)"                                            \
    DB_RANKINGS_HEADER                                                                             \
    " UNION ALL"                                                                                   \
    DB_RANKINGS_ROW_PREFIX " top.promo_code::text, NULL, top.orders, top.discounts, top.net"       \
    " FROM top"                                                                                    \
    " ORDER BY 1, 2"

#endif
