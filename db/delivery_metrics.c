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

/* PostgreSQL's SQLSTATE for "time zone ... not recognized" (invalid_parameter_value). */
#define SQLSTATE_UNKNOWN_TIMEZONE "22023"

static const char *int_text(struct arena *a, int64_t v)
{
    return arena_sprintf(a, "%" PRId64, v);
}

static const char *optional_int_text(struct arena *a, int64_t v, int64_t none)
{
    return v == none ? NULL : int_text(a, v);
}

static void bound_params(struct arena *a, const struct db_sales_bound *b, const char **epoch,
                         const char **date)
{
    *epoch = b->is_date ? NULL : int_text(a, b->epoch_s);
    *date = b->is_date ? b->date : NULL;
}

static void series_params(struct arena *a, const struct db_sales_query *q,
                          const char *params[DB_DELIVERY_SERIES_PARAMS])
{
    params[0] = int_text(a, q->merchant_id);
    params[1] = q->timezone;
    params[2] = q->granularity;
    bound_params(a, &q->from, &params[3], &params[4]);
    bound_params(a, &q->to, &params[5], &params[6]);
    params[7] = optional_int_text(a, q->store_id, 0);
    params[8] = optional_int_text(a, q->channel, -1);
}

static int64_t col_int(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static const char *col_text(struct arena *a, const PGresult *r, int row, int col)
{
    return arena_strndup(a, PQgetvalue(r, row, col), (size_t)PQgetlength(r, row, col));
}

/* False when the merchant does not exist (in this server's snapshot). */
static bool read_header(struct arena *a, const PGresult *r, struct db_sales_series *out)
{
    if (PQntuples(r) < 1 || PQnfields(r) != COL_COUNT_ || col_int(r, 0, COL_KIND) != ROW_HEADER ||
        PQgetisnull(r, 0, COL_DATA_VERSION))
        return false;
    memset(out, 0, sizeof(*out));
    out->data_version = col_int(r, 0, COL_DATA_VERSION);
    out->as_of_us = col_int(r, 0, COL_AS_OF_US);
    out->from = (struct db_sales_instant){col_int(r, 0, COL_FROM_S), col_text(a, r, 0, COL_LABEL),
                                          (int32_t)col_int(r, 0, COL_OFFSET)};
    out->to = (struct db_sales_instant){col_int(r, 0, COL_TO_S), col_text(a, r, 0, COL_TO_LABEL),
                                        (int32_t)col_int(r, 0, COL_TO_OFFSET)};
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
        int64_t kind = col_int(r, row, COL_KIND), index = col_int(r, row, COL_INDEX);
        if (kind == ROW_BUCKET) {
            frame->buckets[frame->n_buckets++] = (struct db_sales_bucket){
                col_text(a, r, row, COL_LABEL), (int32_t)col_int(r, row, COL_OFFSET)};
        } else if (kind == ROW_FIGURES && index >= 1 && (size_t)index <= frame->n_buckets) {
            out->figures[index - 1] = (struct db_delivery_figures){
                col_int(r, row, COL_DELIVERIES), col_int(r, row, COL_DELIVERED),
                col_int(r, row, COL_FAILED), col_int(r, row, COL_DELIVERED_US)};
        }
    }
}

static enum db_status run_series(struct db_conn *c, struct arena *a, const char *const *params,
                                 struct db_delivery_series *out, enum db_sales_refusal *refusal)
{
    PGresult *r = db_exec(c, DB_DELIVERY_SERIES, params);
    enum db_status st = DB_OK;
    if (!db_ok(r, PGRES_TUPLES_OK)) {
        if (strcmp(db_sqlstate(r), SQLSTATE_UNKNOWN_TIMEZONE) == 0) {
            *refusal = DB_SALES_UNKNOWN_TIMEZONE;
            st = DB_ERROR;
        } else {
            st = db_failure(c, r);
        }
    } else if (!read_header(a, r, &out->frame)) {
        st = DB_NOT_FOUND;
    } else {
        read_rows(a, r, out);
    }
    PQclear(r);
    return st;
}

/* Runs the statement on c (NULL: none came free) and releases it; *lost tells whether the
 * connection itself failed, so that another server may be tried. */
static enum db_status series_on(struct db_conn *c, struct arena *a, const char *const *params,
                                struct db_delivery_series *out, enum db_sales_refusal *refusal,
                                bool *lost)
{
    *lost = false;
    if (!c)
        return DB_UNAVAILABLE;
    enum db_status st = run_series(c, a, params, out, refusal);
    *lost = PQstatus(db_pg(c)) != CONNECTION_OK;
    db_release(c);
    return st;
}

enum db_status db_delivery_series(struct db *db, uint64_t min_lsn, struct arena *a,
                                  const struct db_sales_query *q, struct db_delivery_series *out,
                                  const char **role, enum db_sales_refusal *refusal)
{
    const char *params[DB_DELIVERY_SERIES_PARAMS];
    series_params(a, q, params);
    memset(out, 0, sizeof(*out));
    *refusal = DB_SALES_OK;
    bool lost;
    enum db_status st =
        series_on(db_acquire_read_at(db, min_lsn, role), a, params, out, refusal, &lost);
    /* A replica may not have replayed the merchant's creation yet, or may have gone away
     * since it was picked: the primary answers then. */
    if (strcmp(*role, "replica") == 0 && (st == DB_NOT_FOUND || lost)) {
        *role = "primary";
        st = series_on(db_acquire_primary(db), a, params, out, refusal, &lost);
    }
    return st;
}
