#include "delivery_metrics.h"

#include "db/delivery_metrics_sql.h"
#include "server/arena.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Columns of DB_DELIVERY_SERIES_SQL (db/delivery_metrics_sql.h). */
enum {
    COL_KIND,
    COL_INDEX,
    COL_LABEL,
    COL_OFFSET,
    COL_DELIVERIES,
    COL_DELIVERED,
    COL_FAILED,
    COL_DELIVERED_US,
    COL_DATA_VERSION,
    COL_FROM_S,
    COL_TO_S,
    COL_TO_LABEL,
    COL_TO_OFFSET,
    COL_AS_OF_US,
    COL_COUNT_
};

enum { ROW_HEADER = 0, ROW_BUCKET = 1, ROW_FIGURES = 2 };

static void series_params(struct arena *a, const struct db_sales_query *q,
                          const char *params[DB_DELIVERY_SERIES_PARAMS])
{
    params[0] = db_int_param(a, q->merchant_id);
    params[1] = q->timezone;
    params[2] = q->granularity;
    db_bound_params(a, &q->from, &params[3], &params[4]);
    db_bound_params(a, &q->to, &params[5], &params[6]);
    params[7] = db_optional_int_param(a, q->store_id, 0);
    params[8] = db_optional_int_param(a, q->channel, -1);
}

/* False when the merchant does not exist (in this server's snapshot). */
static bool read_header(struct arena *a, const PGresult *r, struct db_sales_series *out)
{
    if (PQntuples(r) < 1 || PQnfields(r) != COL_COUNT_ ||
        db_col_int(r, 0, COL_KIND) != ROW_HEADER || PQgetisnull(r, 0, COL_DATA_VERSION))
        return false;
    memset(out, 0, sizeof(*out));
    out->data_version = db_col_int(r, 0, COL_DATA_VERSION);
    out->as_of_us = db_col_int(r, 0, COL_AS_OF_US);
    out->from =
        (struct db_sales_instant){db_col_int(r, 0, COL_FROM_S), db_col_text(a, r, 0, COL_LABEL),
                                  (int32_t)db_col_int(r, 0, COL_OFFSET)};
    out->to =
        (struct db_sales_instant){db_col_int(r, 0, COL_TO_S), db_col_text(a, r, 0, COL_TO_LABEL),
                                  (int32_t)db_col_int(r, 0, COL_TO_OFFSET)};
    return true;
}

/* Buckets, then their figures, from rows 1.. (ordered by kind, then bucket index). */
static void read_rows(struct arena *a, const PGresult *r, struct db_delivery_series *out)
{
    int rows = PQntuples(r);
    struct db_sales_series *frame = &out->frame;
    frame->buckets = arena_alloc(a, (size_t)rows * sizeof(*frame->buckets));
    out->figures = arena_zalloc(a, (size_t)rows * sizeof(*out->figures));
    for (int row = 1; row < rows; row++) {
        int64_t kind = db_col_int(r, row, COL_KIND), index = db_col_int(r, row, COL_INDEX);
        if (kind == ROW_BUCKET) {
            frame->buckets[frame->n_buckets++] = (struct db_sales_bucket){
                db_col_text(a, r, row, COL_LABEL), (int32_t)db_col_int(r, row, COL_OFFSET)};
        } else if (kind == ROW_FIGURES && index >= 1 && (size_t)index <= frame->n_buckets) {
            out->figures[index - 1] = (struct db_delivery_figures){
                db_col_int(r, row, COL_DELIVERIES), db_col_int(r, row, COL_DELIVERED),
                db_col_int(r, row, COL_FAILED), db_col_int(r, row, COL_DELIVERED_US)};
        }
    }
}

static enum db_status parse_series(struct arena *a, const PGresult *r, void *out)
{
    struct db_delivery_series *series = out;
    if (!read_header(a, r, &series->frame))
        return DB_NOT_FOUND;
    read_rows(a, r, series);
    return DB_OK;
}

enum db_status db_delivery_series(struct db *db, uint64_t min_lsn, struct arena *a,
                                  const struct db_sales_query *q, struct db_delivery_series *out,
                                  const char **role, enum db_sales_refusal *refusal)
{
    const char *params[DB_DELIVERY_SERIES_PARAMS];
    series_params(a, q, params);
    memset(out, 0, sizeof(*out));
    return db_metric_read(db, min_lsn, a, DB_DELIVERY_SERIES, params, parse_series, out, role,
                          refusal);
}
