/* sales_sql.h - the SQL of the sales series (see db/sales.c), one statement per request.
 *
 * Parameters: $1 merchant_id, $2 time zone, $3 granularity (hour|day|week|month), $4/$5 from as
 * epoch seconds or as a local date (exactly one is non-NULL), $6/$7 to likewise, $8 store_id,
 * $9 channel, $10 fulfillment (NULL: no filter), $11 group_by (NULL, channel, fulfillment or
 * store_id).
 *
 * Bucket starts: for hours, the distinct local hours of every 15-minute instant of [from, to)
 * (exact for +05:45 zones and 25-hour days); for days, weeks and months, a series of local
 * timestamps (calendar arithmetic, so 23- and 25-hour days come out right) converted back to
 * instants. Rollup rows of [from, to) are placed into buckets by width_bucket over the sorted
 * starts: hourly rows (sales_rollup_1h) for the whole UTC hours of an unfiltered series whose
 * bucket boundaries are all whole UTC hours, 15-minute rows for the rest. Rows come back ordered by kind:
 *   0  one header: from/to resolved (label, offset, epoch), data_version, as_of
 *   1  one per bucket: index (1-based), local start label, UTC offset in seconds
 *   2  one per non-empty (bucket, group key): the summed figures
 * as_of is now() on the primary or on a replica that has replayed all it received, else the
 * commit time of the last transaction replayed. */
#ifndef CANGREJO_DB_SALES_SQL_H
#define CANGREJO_DB_SALES_SQL_H

#define DB_SALES_LOCAL_LABEL(ts) "to_char(" ts " AT TIME ZONE p.tz, 'YYYY-MM-DD\"T\"HH24:MI:SS')"
#define DB_SALES_UTC_OFFSET(ts)                                                                    \
    "(extract(epoch FROM " ts " AT TIME ZONE p.tz) - extract(epoch FROM " ts "))::int"

/* A range bound: epoch seconds, else local midnight of a date in the time zone. */
#define DB_SALES_BOUND(epoch_s, date, tz)                                                          \
    "coalesce(to_timestamp(" epoch_s "::bigint), " date "::date::timestamp AT TIME ZONE " tz       \
    "::text)"
/* as_of in microseconds (see above). */
#define DB_SALES_AS_OF_US                                                                          \
    "(extract(epoch FROM CASE WHEN NOT pg_is_in_recovery()"                                        \
    " OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN now()"                          \
    " ELSE coalesce(pg_last_xact_replay_timestamp(), now()) END) * 1000000)::bigint"

/* The CTEs p (tz, gran, t_from, t_to from $2-$7) and s (the sorted bucket starts), shared by
 * every bucketed series (db/delivery_metrics_sql.h too). */
#define DB_SALES_RANGE_BUCKETS                                                                     \
    "WITH p AS MATERIALIZED ("                                                                     \
    " SELECT $2::text AS tz, $3::text AS gran,"                                                    \
    " " DB_SALES_BOUND("$4", "$5", "$2") " AS t_from,"                                             \
    " " DB_SALES_BOUND("$6", "$7", "$2") " AS t_to),"                                              \
    " s AS MATERIALIZED ("                                                                         \
    " SELECT coalesce(array_agg(DISTINCT b.start ORDER BY b.start), '{}') AS starts FROM ("        \
    "  SELECT date_trunc('hour', g, p.tz) AS start FROM p, generate_series(p.t_from,"              \
    "   p.t_to - interval '15 minutes', interval '15 minutes') AS g WHERE p.gran = 'hour'"         \
    "  UNION ALL"                                                                                  \
    "  SELECT l AT TIME ZONE p.tz FROM p, generate_series("                                        \
    "   date_trunc(p.gran, p.t_from, p.tz) AT TIME ZONE p.tz,"                                     \
    "   (p.t_to - interval '15 minutes') AT TIME ZONE p.tz, ('1 ' || p.gran)::interval) AS l"      \
    "   WHERE p.gran <> 'hour') AS b)"

#define DB_SALES_SERIES_PARAMS 11
/* The figures of one rollup row, in the order agg sums them. */
#define DB_SALES_FIGURES(r)                                                                        \
    r ".orders, " r ".cancelled_orders, " r ".items_sold, " r ".gross_cents, " r                   \
    ".discount_cents, " r ".net_cents, " r ".tax_cents, " r ".total_cents"

#define DB_SALES_SERIES_SQL                                                                        \
    DB_SALES_RANGE_BUCKETS ","                                                                     \
    /* h: whether whole UTC hours may come from sales_rollup_1h (no filter, no grouping, every   \
     * bucket boundary a whole UTC hour), and which hours lie inside the range. */                \
    " h AS MATERIALIZED ("                                                                         \
    " SELECT ($8::bigint IS NULL AND $9::smallint IS NULL AND $10::smallint IS NULL"               \
    "  AND $11::text IS NULL AND NOT EXISTS (SELECT 1 FROM unnest(s.starts) AS st"                 \
    "  WHERE extract(epoch FROM st)::bigint % 3600 <> 0)"                                          \
    "  AND ceil(extract(epoch FROM p.t_from) / 3600) < floor(extract(epoch FROM p.t_to) / 3600))"  \
    "  AS ok,"                                                                                     \
    "  to_timestamp(ceil(extract(epoch FROM p.t_from) / 3600) * 3600) AS h_from,"                  \
    "  to_timestamp(floor(extract(epoch FROM p.t_to) / 3600) * 3600) AS h_to"                      \
    " FROM p, s),"                                                                                 \
    " rows AS ("                                                                                   \
    " SELECT r.hour AS bucket, 0::smallint AS channel, 0::smallint AS fulfillment,"                \
    "  0::bigint AS store_id, " DB_SALES_FIGURES("r")                                              \
    " FROM h, sales_rollup_1h AS r"                                                                \
    " WHERE h.ok AND r.merchant_id = $1::bigint AND r.hour >= h.h_from AND r.hour < h.h_to"        \
    " UNION ALL"                                                                                   \
    " SELECT r.bucket, r.channel, r.fulfillment, r.store_id, " DB_SALES_FIGURES("r")               \
    " FROM p, h, sales_rollup_15m AS r"                                                            \
    " WHERE r.merchant_id = $1::bigint AND r.bucket >= p.t_from"                                   \
    "  AND r.bucket < CASE WHEN h.ok THEN h.h_from ELSE p.t_to END"                                \
    "  AND ($8::bigint IS NULL OR r.store_id = $8::bigint)"                                        \
    "  AND ($9::smallint IS NULL OR r.channel = $9::smallint)"                                     \
    "  AND ($10::smallint IS NULL OR r.fulfillment = $10::smallint)"                               \
    " UNION ALL"                                                                                   \
    " SELECT r.bucket, r.channel, r.fulfillment, r.store_id, " DB_SALES_FIGURES("r")               \
    " FROM p, h, sales_rollup_15m AS r"                                                            \
    " WHERE h.ok AND r.merchant_id = $1::bigint AND r.bucket >= h.h_to AND r.bucket < p.t_to),"    \
    " agg AS ("                                                                                    \
    " SELECT width_bucket(r.bucket, s.starts) AS i,"                                               \
    "  CASE $11::text WHEN 'channel' THEN r.channel::bigint"                                       \
    "   WHEN 'fulfillment' THEN r.fulfillment::bigint WHEN 'store_id' THEN r.store_id"             \
    "   ELSE 0 END AS k,"                                                                          \
    "  sum(r.orders)::bigint AS orders, sum(r.cancelled_orders)::bigint AS cancelled_orders,"      \
    "  sum(r.items_sold)::bigint AS items_sold, sum(r.gross_cents)::bigint AS gross,"              \
    "  sum(r.discount_cents)::bigint AS discount, sum(r.net_cents)::bigint AS net,"                \
    "  sum(r.tax_cents)::bigint AS tax, sum(r.total_cents)::bigint AS total"                       \
    " FROM s, rows AS r"                                                                           \
    " GROUP BY 1, 2)"                                                                              \
    " SELECT 0 AS kind, NULL::int AS i, NULL::bigint AS k,"                                        \
    "  " DB_SALES_LOCAL_LABEL("p.t_from") " AS label, " DB_SALES_UTC_OFFSET("p.t_from")            \
    " AS utc_offset,"                                                                              \
    "  NULL::bigint AS orders, NULL::bigint AS cancelled_orders, NULL::bigint AS items_sold,"      \
    "  NULL::bigint AS gross, NULL::bigint AS discount, NULL::bigint AS net,"                      \
    "  NULL::bigint AS tax, NULL::bigint AS total,"                                                \
    "  (SELECT m.data_version FROM merchants AS m WHERE m.merchant_id = $1::bigint)"               \
    "  AS data_version,"                                                                           \
    "  extract(epoch FROM p.t_from)::bigint AS from_s, extract(epoch FROM p.t_to)::bigint AS to_s,"\
    "  " DB_SALES_LOCAL_LABEL("p.t_to") " AS to_label, " DB_SALES_UTC_OFFSET("p.t_to")             \
    " AS to_offset,"                                                                               \
    "  " DB_SALES_AS_OF_US " AS as_of_us"                                                          \
    " FROM p"                                                                                      \
    " UNION ALL"                                                                                   \
    " SELECT 1, u.i::int, NULL, " DB_SALES_LOCAL_LABEL("u.start") ","                              \
    "  " DB_SALES_UTC_OFFSET("u.start") ","                                                        \
    "  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL"         \
    " FROM p, s, unnest(s.starts) WITH ORDINALITY AS u(start, i)"                                  \
    " UNION ALL"                                                                                   \
    " SELECT 2, agg.i, agg.k, NULL, NULL, agg.orders, agg.cancelled_orders, agg.items_sold,"       \
    "  agg.gross, agg.discount, agg.net, agg.tax, agg.total,"                                      \
    "  NULL, NULL, NULL, NULL, NULL, NULL"                                                         \
    " FROM agg"                                                                                    \
    " ORDER BY 1, 2, 3"

#endif
