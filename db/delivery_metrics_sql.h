/* delivery_metrics_sql.h - the SQL of the delivery series (see db/delivery_metrics.c), one
 * statement per request, bucketed like the sales series (db/sales_sql.h).
 *
 * Parameters: $1 merchant_id, $2 time zone, $3 granularity (hour|day|week|month), $4/$5 from as
 * epoch seconds or as a local date (exactly one is non-NULL), $6/$7 to likewise, $8 store_id,
 * $9 channel (NULL: no filter). The delivery rollup rows of [from, to) (by the 15-minute bucket
 * of placed_at) are placed into the buckets by width_bucket over the sorted starts. Rows come
 * back ordered by kind, then bucket index:
 *   0  one header: from/to resolved (label, offset, epoch), data_version, as_of
 *   1  one per bucket: index (1-based), local start label, UTC offset in seconds
 *   2  one per bucket with rollup rows: deliveries, delivered, failed, delivered_us (sums) */
#ifndef CANGREJO_DB_DELIVERY_METRICS_SQL_H
#define CANGREJO_DB_DELIVERY_METRICS_SQL_H

#include "db/sales_sql.h"

#define DB_DELIVERY_SERIES_PARAMS 9
#define DB_DELIVERY_SERIES_SQL                                                                     \
    DB_SALES_RANGE_BUCKETS ","                                                                     \
    " agg AS ("                                                                                    \
    " SELECT width_bucket(r.bucket, s.starts) AS i,"                                               \
    "  sum(r.deliveries)::bigint AS deliveries, sum(r.delivered)::bigint AS delivered,"            \
    "  sum(r.failed)::bigint AS failed, sum(r.delivered_us)::bigint AS delivered_us"               \
    " FROM p, s, delivery_rollup_15m AS r"                                                         \
    " WHERE r.merchant_id = $1::bigint AND r.bucket >= p.t_from AND r.bucket < p.t_to"             \
    "  AND ($8::bigint IS NULL OR r.store_id = $8::bigint)"                                        \
    "  AND ($9::smallint IS NULL OR r.channel = $9::smallint)"                                     \
    " GROUP BY 1)"                                                                                 \
    " SELECT 0 AS kind, NULL::int AS i,"                                                           \
    "  " DB_SALES_LOCAL_LABEL("p.t_from") " AS label, " DB_SALES_UTC_OFFSET("p.t_from")            \
    " AS utc_offset,"                                                                              \
    "  NULL::bigint AS deliveries, NULL::bigint AS delivered, NULL::bigint AS failed,"             \
    "  NULL::bigint AS delivered_us,"                                                              \
    "  (SELECT m.data_version FROM merchants AS m WHERE m.merchant_id = $1::bigint)"               \
    "  AS data_version,"                                                                           \
    "  extract(epoch FROM p.t_from)::bigint AS from_s, extract(epoch FROM p.t_to)::bigint AS to_s,"\
    "  " DB_SALES_LOCAL_LABEL("p.t_to") " AS to_label, " DB_SALES_UTC_OFFSET("p.t_to")             \
    " AS to_offset,"                                                                               \
    "  " DB_SALES_AS_OF_US " AS as_of_us"                                                          \
    " FROM p"                                                                                      \
    " UNION ALL"                                                                                   \
    " SELECT 1, u.i::int, " DB_SALES_LOCAL_LABEL("u.start") ","                                    \
    "  " DB_SALES_UTC_OFFSET("u.start") ","                                                        \
    "  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL"                                 \
    " FROM p, s, unnest(s.starts) WITH ORDINALITY AS u(start, i)"                                  \
    " UNION ALL"                                                                                   \
    " SELECT 2, agg.i, NULL, NULL, agg.deliveries, agg.delivered, agg.failed, agg.delivered_us,"   \
    "  NULL, NULL, NULL, NULL, NULL, NULL"                                                         \
    " FROM agg"                                                                                    \
    " ORDER BY 1, 2"

#endif
