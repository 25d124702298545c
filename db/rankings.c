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

static void ranking_params(struct arena *a, const struct db_ranking_query *q,
                           const char *params[MAX_PARAMS])
{
    params[0] = db_int_param(a, q->merchant_id);
    params[1] = q->timezone;
    db_bound_params(a, &q->from, &params[2], &params[3]);
    db_bound_params(a, &q->to, &params[4], &params[5]);
    params[6] = q->sort;
    params[7] = db_int_param(a, q->limit);
}

/* False when the merchant does not exist (in this server's snapshot). */
static bool read_header(struct arena *a, const PGresult *r, struct db_ranking *out)
{
    if (PQntuples(r) < 1 || PQnfields(r) != COL_COUNT_ ||
        db_col_int(r, 0, COL_KIND) != ROW_HEADER || PQgetisnull(r, 0, COL_DATA_VERSION))
        return false;
    out->data_version = db_col_int(r, 0, COL_DATA_VERSION);
    out->as_of_us = db_col_int(r, 0, COL_AS_OF_US);
    out->from = (struct db_sales_instant){db_col_int(r, 0, COL_FROM_S),
                                          db_col_text(a, r, 0, COL_FROM_LABEL),
                                          (int32_t)db_col_int(r, 0, COL_FROM_OFFSET)};
    out->to =
        (struct db_sales_instant){db_col_int(r, 0, COL_TO_S), db_col_text(a, r, 0, COL_TO_LABEL),
                                  (int32_t)db_col_int(r, 0, COL_TO_OFFSET)};
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
        if (db_col_int(r, row, COL_KIND) != ROW_RANKED)
            continue;
        const char *key = db_col_text(a, r, row, COL_KEY);
        if (products)
            out->products[out->n++] =
                (struct db_product_row){key, db_col_text(a, r, row, COL_NAME),
                                        db_col_int(r, row, COL_F1), db_col_int(r, row, COL_F2)};
        else
            out->promotions[out->n++] =
                (struct db_promotion_row){key, db_col_int(r, row, COL_F1),
                                          db_col_int(r, row, COL_F2), db_col_int(r, row, COL_F3)};
    }
}

/* What parse_ranking fills: the ranking, and whether it is of products (else promotions). */
struct ranking_result {
    struct db_ranking *out;
    bool products;
};

static enum db_status parse_ranking(struct arena *a, const PGresult *r, void *ud)
{
    struct ranking_result *res = ud;
    if (!read_header(a, r, res->out))
        return DB_NOT_FOUND;
    read_ranked(a, r, res->products, res->out);
    return DB_OK;
}

static enum db_status ranking(struct db *db, uint64_t min_lsn, struct arena *a, enum db_stmt stmt,
                              const struct db_ranking_query *q, struct db_ranking *out,
                              const char **role, enum db_sales_refusal *refusal)
{
    const char *params[MAX_PARAMS];
    ranking_params(a, q, params);
    memset(out, 0, sizeof(*out));
    struct ranking_result res = {out, stmt == DB_TOP_PRODUCTS};
    return db_metric_read(db, min_lsn, a, stmt, params, parse_ranking, &res, role, refusal);
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
