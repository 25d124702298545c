#include "sales.h"

#include "db/sales_sql.h"
#include "server/arena.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Columns of DB_SALES_SERIES_SQL (db/sales_sql.h). */
enum {
    COL_KIND,
    COL_INDEX,
    COL_KEY,
    COL_LABEL,
    COL_OFFSET,
    COL_ORDERS,
    COL_CANCELLED_ORDERS,
    COL_ITEMS_SOLD,
    COL_GROSS,
    COL_DISCOUNT,
    COL_NET,
    COL_TAX,
    COL_TOTAL,
    COL_DATA_VERSION,
    COL_FROM_S,
    COL_TO_S,
    COL_TO_LABEL,
    COL_TO_OFFSET,
    COL_AS_OF_US,
    COL_COUNT_
};

enum { ROW_HEADER = 0, ROW_BUCKET = 1, ROW_CELL = 2 };

static void series_params(struct arena *a, const struct db_sales_query *q,
                          const char *params[DB_SALES_SERIES_PARAMS])
{
    params[0] = db_int_param(a, q->merchant_id);
    params[1] = q->timezone;
    params[2] = q->granularity;
    db_bound_params(a, &q->from, &params[3], &params[4]);
    db_bound_params(a, &q->to, &params[5], &params[6]);
    params[7] = db_optional_int_param(a, q->store_id, 0);
    params[8] = db_optional_int_param(a, q->channel, -1);
    params[9] = db_optional_int_param(a, q->fulfillment, -1);
    params[10] = q->group_by;
}

/* False when the merchant does not exist (in this server's snapshot). */
static bool read_header(struct arena *a, const PGresult *r, struct db_sales_series *out)
{
    if (PQgetisnull(r, 0, COL_DATA_VERSION))
        return false;
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

static void read_figures(const PGresult *r, int row, struct db_sales_figures *f)
{
    f->orders = db_col_int(r, row, COL_ORDERS);
    f->cancelled_orders = db_col_int(r, row, COL_CANCELLED_ORDERS);
    f->items_sold = db_col_int(r, row, COL_ITEMS_SOLD);
    f->gross_cents = db_col_int(r, row, COL_GROSS);
    f->discount_cents = db_col_int(r, row, COL_DISCOUNT);
    f->net_cents = db_col_int(r, row, COL_NET);
    f->tax_cents = db_col_int(r, row, COL_TAX);
    f->total_cents = db_col_int(r, row, COL_TOTAL);
}

/* Buckets and cells from rows 1.. (ordered by kind, then bucket index, then key). */
static void read_rows(struct arena *a, const PGresult *r, struct db_sales_series *out)
{
    int rows = PQntuples(r);
    out->buckets = arena_alloc(a, (size_t)rows * sizeof(*out->buckets));
    out->cells = arena_alloc(a, (size_t)rows * sizeof(*out->cells));
    out->n_buckets = out->n_cells = 0;
    for (int row = 1; row < rows; row++) {
        int64_t kind = db_col_int(r, row, COL_KIND), index = db_col_int(r, row, COL_INDEX);
        if (kind == ROW_BUCKET) {
            out->buckets[out->n_buckets++] = (struct db_sales_bucket){
                db_col_text(a, r, row, COL_LABEL), (int32_t)db_col_int(r, row, COL_OFFSET)};
        } else if (kind == ROW_CELL && index >= 1 && (size_t)index <= out->n_buckets) {
            struct db_sales_cell *cell = &out->cells[out->n_cells++];
            cell->bucket = (size_t)index - 1;
            cell->key = db_col_int(r, row, COL_KEY);
            read_figures(r, row, &cell->figures);
        }
    }
}

static enum db_status parse_series(struct arena *a, const PGresult *r, void *out)
{
    if (PQntuples(r) < 1 || PQnfields(r) != COL_COUNT_ || !read_header(a, r, out))
        return DB_NOT_FOUND;
    read_rows(a, r, out);
    return DB_OK;
}

/* Runs the statement on c (NULL: none came free) and releases it; *lost tells whether the
 * connection itself failed, so that another server may be tried. */
static enum db_status metric_on(struct db_conn *c, struct arena *a, enum db_stmt stmt,
                                const char *const *params, db_metric_parse_fn parse, void *out,
                                enum db_sales_refusal *refusal, bool *lost)
{
    *lost = false;
    if (!c)
        return DB_UNAVAILABLE;
    PGresult *r = db_exec(c, stmt, params);
    enum db_status st;
    if (db_ok(r, PGRES_TUPLES_OK))
        st = parse(a, r, out);
    else if (strcmp(db_sqlstate(r), DB_SQLSTATE_UNKNOWN_TIMEZONE) == 0) {
        *refusal = DB_SALES_UNKNOWN_TIMEZONE;
        st = DB_ERROR;
    } else
        st = db_failure(c, r);
    PQclear(r);
    *lost = PQstatus(db_pg(c)) != CONNECTION_OK;
    db_release(c);
    return st;
}

enum db_status db_metric_read(struct db *db, uint64_t min_lsn, struct arena *a, enum db_stmt stmt,
                              const char *const *params, db_metric_parse_fn parse, void *out,
                              const char **role, enum db_sales_refusal *refusal)
{
    *refusal = DB_SALES_OK;
    bool lost;
    enum db_status st = metric_on(db_acquire_read_at(db, min_lsn, role), a, stmt, params, parse,
                                  out, refusal, &lost);
    /* A replica may not have replayed the merchant's creation yet, or may have gone away
     * since it was picked: the primary answers then. */
    if (strcmp(*role, "replica") == 0 && (st == DB_NOT_FOUND || lost)) {
        *role = "primary";
        st = metric_on(db_acquire_primary(db), a, stmt, params, parse, out, refusal, &lost);
    }
    return st;
}

enum db_status db_sales_series(struct db *db, uint64_t min_lsn, struct arena *a,
                               const struct db_sales_query *q, struct db_sales_series *out,
                               const char **role, enum db_sales_refusal *refusal)
{
    const char *params[DB_SALES_SERIES_PARAMS];
    series_params(a, q, params);
    return db_metric_read(db, min_lsn, a, DB_SALES_SERIES, params, parse_series, out, role,
                          refusal);
}

const char *db_int_param(struct arena *a, int64_t v)
{
    return arena_sprintf(a, "%" PRId64, v);
}

const char *db_optional_int_param(struct arena *a, int64_t v, int64_t none)
{
    return v == none ? NULL : db_int_param(a, v);
}

void db_bound_params(struct arena *a, const struct db_sales_bound *b, const char **epoch,
                     const char **date)
{
    *epoch = b->is_date ? NULL : db_int_param(a, b->epoch_s);
    *date = b->is_date ? b->date : NULL;
}

int64_t db_col_int(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

const char *db_col_text(struct arena *a, const PGresult *r, int row, int col)
{
    return arena_strndup(a, PQgetvalue(r, row, col), (size_t)PQgetlength(r, row, col));
}
