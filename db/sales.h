/* sales.h - sales series from the 15-minute rollups: buckets of a time zone's calendar, summed
 * per bucket (and per group), in one statement on a replica that has the merchant's writes. */
#ifndef CANGREJO_DB_SALES_H
#define CANGREJO_DB_SALES_H

#include "db/pool.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct arena;

/* A range bound: an instant, or a calendar date meaning local midnight in the time zone. */
struct db_sales_bound {
    bool is_date;
    int64_t epoch_s;  /* when !is_date */
    const char *date; /* "YYYY-MM-DD" when is_date */
};

/* What to sum. channel 0 online / 1 pos, fulfillment 0 pickup / 1 delivery / 2 dine_in. */
struct db_sales_query {
    int64_t merchant_id;
    const char *timezone;    /* IANA name */
    const char *granularity; /* "hour", "day", "week" or "month" */
    struct db_sales_bound from, to;
    int64_t store_id;         /* 0: every store */
    int channel, fulfillment; /* -1: no filter */
    const char *group_by;     /* NULL, "channel", "fulfillment" or "store_id" */
};

struct db_sales_figures {
    int64_t orders, cancelled_orders, items_sold;
    int64_t gross_cents, discount_cents, net_cents, tax_cents, total_cents;
};

/* One bucket: its local start ("YYYY-MM-DDTHH:MM:SS") and the zone's UTC offset there. */
struct db_sales_bucket {
    const char *local_start;
    int32_t utc_offset_s;
};

/* The sums of one (bucket, group key) that had rollup rows; key is 0 without group_by. */
struct db_sales_cell {
    size_t bucket; /* index into buckets */
    int64_t key;
    struct db_sales_figures figures;
};

/* A resolved range bound: the instant, its local time and the zone's offset there. */
struct db_sales_instant {
    int64_t epoch_s;
    const char *local;
    int32_t utc_offset_s;
};

/* The answer, arena-owned. Cells are ordered by bucket, then key. */
struct db_sales_series {
    int64_t data_version; /* merchants.data_version in the same snapshot */
    int64_t as_of_us;     /* the data is complete up to at least this instant */
    struct db_sales_instant from, to;
    size_t n_buckets, n_cells;
    struct db_sales_bucket *buckets;
    struct db_sales_cell *cells;
};

/* Why a series could not be computed, beyond enum db_status. */
enum db_sales_refusal { DB_SALES_OK, DB_SALES_UNKNOWN_TIMEZONE };

/* Runs the series on a replica that has replayed min_lsn (else the primary); *role says which.
 * DB_NOT_FOUND for an unknown merchant; DB_ERROR with *refusal set when PostgreSQL does not
 * know the time zone. */
enum db_status db_sales_series(struct db *db, uint64_t min_lsn, struct arena *a,
                               const struct db_sales_query *q, struct db_sales_series *out,
                               const char **role, enum db_sales_refusal *refusal);

/* Shared by the metric queries (sales, rankings, deliveries): PostgreSQL's SQLSTATE for
 * "time zone ... not recognized" (invalid_parameter_value), and parameter/column helpers. */
#define DB_SQLSTATE_UNKNOWN_TIMEZONE "22023"
/* Reads one successful result into out: DB_OK, or DB_NOT_FOUND when the merchant is missing
 * (a replica that has not replayed its creation yet). */
typedef enum db_status (*db_metric_parse_fn)(struct arena *a, const PGresult *r, void *out);
/* Runs a metric statement on a replica that has replayed min_lsn, and again on the primary
 * when that replica went away or lacks the merchant; an unknown time zone sets *refusal. */
enum db_status db_metric_read(struct db *db, uint64_t min_lsn, struct arena *a, enum db_stmt stmt,
                              const char *const *params, db_metric_parse_fn parse, void *out,
                              const char **role, enum db_sales_refusal *refusal);
/* v as a text parameter (arena-owned). */
const char *db_int_param(struct arena *a, int64_t v);
/* v as a text parameter, or NULL (SQL NULL) when v == none. */
const char *db_optional_int_param(struct arena *a, int64_t v, int64_t none);
/* A range bound as the (epoch seconds, local date) parameter pair; exactly one is non-NULL. */
void db_bound_params(struct arena *a, const struct db_sales_bound *b, const char **epoch,
                     const char **date);
/* An integer column of a result row. */
int64_t db_col_int(const PGresult *r, int row, int col);
/* A text column of a result row, copied into the arena. */
const char *db_col_text(struct arena *a, const PGresult *r, int row, int col);

#endif
