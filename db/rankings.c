#include "rankings.h"

#include "db/rankings_sql.h"
#include "server/arena.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Columns of DB_TOP_PRODUCTS_SQL and DB_PROMOTIONS_SQL (db/rankings_sql.h). */
enum {
    COL_KIND,
    COL_RANK,
    COL_FROM_LABEL,
    COL_FROM_OFFSET,
    COL_TO_LABEL,
    COL_TO_OFFSET,
    COL_FROM_S,
    COL_TO_S,
    COL_DATA_VERSION,
    COL_AS_OF_US,
    COL_KEY,
    COL_NAME,
    COL_F1,
    COL_F2,
    COL_F3,
    COL_COUNT_
};

enum { ROW_HEADER = 0, ROW_RANKED = 1, MAX_PARAMS = 8 };

/* PostgreSQL's SQLSTATE for "time zone ... not recognized" (invalid_parameter_value). */
#define SQLSTATE_UNKNOWN_TIMEZONE "22023"

static const char *int_text(struct arena *a, int64_t v)
{
    return arena_sprintf(a, "%" PRId64, v);
}

static void bound_params(struct arena *a, const struct db_sales_bound *b, const char **epoch,
                         const char **date)
{
    *epoch = b->is_date ? NULL : int_text(a, b->epoch_s);
    *date = b->is_date ? b->date : NULL;
}

static void ranking_params(struct arena *a, const struct db_ranking_query *q,
                           const char *params[MAX_PARAMS])
{
    params[0] = int_text(a, q->merchant_id);
    params[1] = q->timezone;
    bound_params(a, &q->from, &params[2], &params[3]);
    bound_params(a, &q->to, &params[4], &params[5]);
    params[6] = q->sort;
    params[7] = int_text(a, q->limit);
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
static bool read_header(struct arena *a, const PGresult *r, struct db_ranking *out)
{
    if (PQntuples(r) < 1 || PQnfields(r) != COL_COUNT_ || col_int(r, 0, COL_KIND) != ROW_HEADER ||
        PQgetisnull(r, 0, COL_DATA_VERSION))
        return false;
    out->data_version = col_int(r, 0, COL_DATA_VERSION);
    out->as_of_us = col_int(r, 0, COL_AS_OF_US);
    out->from =
        (struct db_sales_instant){col_int(r, 0, COL_FROM_S), col_text(a, r, 0, COL_FROM_LABEL),
                                  (int32_t)col_int(r, 0, COL_FROM_OFFSET)};
    out->to = (struct db_sales_instant){col_int(r, 0, COL_TO_S), col_text(a, r, 0, COL_TO_LABEL),
                                        (int32_t)col_int(r, 0, COL_TO_OFFSET)};
    return true;
}

/* Rows 1.. (kind 1, by rank) as products or promotions. */
static void read_ranked(struct arena *a, const PGresult *r, bool products, struct db_ranking *out)
{
    size_t rows = (size_t)PQntuples(r) - 1;
    out->n = 0;
    if (products)
        out->products = arena_alloc(a, (rows + 1) * sizeof(*out->products));
    else
        out->promotions = arena_alloc(a, (rows + 1) * sizeof(*out->promotions));
    for (int row = 1; row <= (int)rows; row++) {
        if (col_int(r, row, COL_KIND) != ROW_RANKED)
            continue;
        const char *key = col_text(a, r, row, COL_KEY);
        if (products)
            out->products[out->n++] =
                (struct db_product_row){key, col_text(a, r, row, COL_NAME), col_int(r, row, COL_F1),
                                        col_int(r, row, COL_F2)};
        else
            out->promotions[out->n++] = (struct db_promotion_row){
                key, col_int(r, row, COL_F1), col_int(r, row, COL_F2), col_int(r, row, COL_F3)};
    }
}

static enum db_status run_ranking(struct db_conn *c, struct arena *a, enum db_stmt stmt,
                                  const char *const *params, struct db_ranking *out,
                                  enum db_sales_refusal *refusal)
{
    PGresult *r = db_exec(c, stmt, params);
    enum db_status st = DB_OK;
    if (!db_ok(r, PGRES_TUPLES_OK)) {
        if (strcmp(db_sqlstate(r), SQLSTATE_UNKNOWN_TIMEZONE) == 0) {
            *refusal = DB_SALES_UNKNOWN_TIMEZONE;
            st = DB_ERROR;
        } else {
            st = db_failure(c, r);
        }
    } else if (!read_header(a, r, out)) {
        st = DB_NOT_FOUND;
    } else {
        read_ranked(a, r, stmt == DB_TOP_PRODUCTS, out);
    }
    PQclear(r);
    return st;
}

/* Runs the statement on c (NULL: none came free) and releases it; *lost tells whether the
 * connection itself failed, so that another server may be tried. */
static enum db_status ranking_on(struct db_conn *c, struct arena *a, enum db_stmt stmt,
                                 const char *const *params, struct db_ranking *out,
                                 enum db_sales_refusal *refusal, bool *lost)
{
    *lost = false;
    if (!c)
        return DB_UNAVAILABLE;
    enum db_status st = run_ranking(c, a, stmt, params, out, refusal);
    *lost = PQstatus(db_pg(c)) != CONNECTION_OK;
    db_release(c);
    return st;
}

static enum db_status ranking(struct db *db, uint64_t min_lsn, struct arena *a, enum db_stmt stmt,
                              const struct db_ranking_query *q, struct db_ranking *out,
                              const char **role, enum db_sales_refusal *refusal)
{
    const char *params[MAX_PARAMS];
    ranking_params(a, q, params);
    memset(out, 0, sizeof(*out));
    *refusal = DB_SALES_OK;
    bool lost;
    enum db_status st =
        ranking_on(db_acquire_read_at(db, min_lsn, role), a, stmt, params, out, refusal, &lost);
    /* A replica may not have replayed the merchant's creation yet, or may have gone away
     * since it was picked: the primary answers then. */
    if (strcmp(*role, "replica") == 0 && (st == DB_NOT_FOUND || lost)) {
        *role = "primary";
        st = ranking_on(db_acquire_primary(db), a, stmt, params, out, refusal, &lost);
    }
    return st;
}

enum db_status db_top_products(struct db *db, uint64_t min_lsn, struct arena *a,
                               const struct db_ranking_query *q, struct db_ranking *out,
                               const char **role, enum db_sales_refusal *refusal)
{
    return ranking(db, min_lsn, a, DB_TOP_PRODUCTS, q, out, role, refusal);
}

enum db_status db_promotions(struct db *db, uint64_t min_lsn, struct arena *a,
                             const struct db_ranking_query *q, struct db_ranking *out,
                             const char **role, enum db_sales_refusal *refusal)
{
    return ranking(db, min_lsn, a, DB_PROMOTIONS, q, out, role, refusal);
}
