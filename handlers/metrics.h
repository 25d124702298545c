/* metrics.h - the pure parts of the metrics handlers (query parameters, range checks, labels,
 * rounding, conditional requests), kept apart from HTTP and the database so that unit tests
 * reach them. */
#ifndef CANGREJO_HANDLERS_METRICS_H
#define CANGREJO_HANDLERS_METRICS_H

#include "db/sales.h"
#include "handlers/validate.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct arena;

enum {
    H_METRICS_MAX_RANGE_S = 400 * 86400, /* API.md: from and to at most 400 days apart */
    H_METRICS_DATE_RANGE_SLACK_S = 3600, /* dates: a DST change may add an hour */
    H_METRICS_MAX_BUCKETS = 10000,
    H_METRICS_QUARTER_HOUR_S = 900,
    H_METRICS_LABEL_MAX = 40,
    H_METRICS_PRODUCTS_LIMIT_DEFAULT = 10,
    H_METRICS_PRODUCTS_LIMIT_MAX = 100,
};

/* The query parameters of a sales request, validated. */
struct h_metrics_sales_params {
    struct db_sales_bound from, to;
    const char *granularity;  /* "hour", "day", "week" or "month" */
    const char *timezone;     /* NULL: the merchant's */
    int64_t store_id;         /* 0: every store */
    int channel, fulfillment; /* -1: no filter */
    const char *group_by;     /* NULL, "channel", "fulfillment" or "store_id" */
};

/* The query parameters of a products request, validated. */
struct h_metrics_products_params {
    struct db_sales_bound from, to;
    const char *timezone; /* NULL: the merchant's */
    const char *sort;     /* "net_sales" or "quantity" */
    unsigned limit;       /* 1..H_METRICS_PRODUCTS_LIMIT_MAX */
};

/* The query parameters of a promotions request, validated. */
struct h_metrics_promotions_params {
    struct db_sales_bound from, to;
    const char *timezone; /* NULL: the merchant's */
};

/* One query parameter by name, or NULL; sets *repeated when it was given more than once. */
typedef const char *(*h_metrics_query_fn)(void *ctx, const char *name, bool *repeated);

/* The parameter names of the sales route, NULL-terminated. */
extern const char *const h_metrics_sales_param_names[];

/* The parameter names of the deliveries route, NULL-terminated. */
extern const char *const h_metrics_deliveries_param_names[];
/* The parameter names of the products route, NULL-terminated. */
extern const char *const h_metrics_products_param_names[];
/* The parameter names of the promotions route, NULL-terminated. */
extern const char *const h_metrics_promotions_param_names[];

/* Validates the sales parameters into *out, recording each failure under the parameter's
 * name; the range checks that need the time zone come later (h_metrics_check_range). */
bool h_metrics_parse_sales_params(h_metrics_query_fn get, void *ctx, struct v_errors *v,
                                  struct h_metrics_sales_params *out);
/* Validates the deliveries parameters: the sales ones without fulfillment (always delivery,
 * which *out gets) and group_by. */
bool h_metrics_parse_deliveries_params(h_metrics_query_fn get, void *ctx, struct v_errors *v,
                                       struct h_metrics_sales_params *out);
/* Validates the products parameters (range and tz as for sales; sort, limit). */
bool h_metrics_parse_products_params(h_metrics_query_fn get, void *ctx, struct v_errors *v,
                                     struct h_metrics_products_params *out);
/* Validates the promotions parameters (range and tz as for sales). */
bool h_metrics_parse_promotions_params(h_metrics_query_fn get, void *ctx, struct v_errors *v,
                                       struct h_metrics_promotions_params *out);
/* The exact checks of a range once the database resolved its bounds and buckets. */
bool h_metrics_check_range(const struct h_metrics_sales_params *p, const struct db_sales_series *s,
                           struct v_errors *v);
/* The exact checks of a range without buckets once the database resolved its bounds. */
bool h_metrics_check_bounds(const struct db_sales_bound *from, const struct db_sales_bound *to,
                            const struct db_sales_instant *at_from,
                            const struct db_sales_instant *at_to, struct v_errors *v);
/* num / den rounded half up (towards +infinity on a tie); 0 when den <= 0. */
int64_t h_metrics_round_half_up(int64_t num, int64_t den);
/* "YYYY-MM-DDTHH:MM:SS" and an offset as RFC 3339 with +hh:mm/-hh:mm (never Z). */
void h_metrics_format_local(const char *local, int32_t utc_offset_s, char out[H_METRICS_LABEL_MAX]);
/* The cache field of a sales response: every parameter, normalized, with the zone and
 * currency it is computed for. */
const char *h_metrics_sales_cache_field(struct arena *a, const struct h_metrics_sales_params *p,
                                        const char *timezone, const char *currency);
/* The cache field of a deliveries response (parameters normalized, zone, currency). */
const char *h_metrics_deliveries_cache_field(struct arena *a,
                                             const struct h_metrics_sales_params *p,
                                             const char *timezone, const char *currency);
/* Tenths of a minute in the mean of n durations summing to total_us, rounded half up. */
int64_t h_metrics_mean_minutes_tenths(int64_t total_us, int64_t n);
/* The cache field of a products response (parameters normalized, zone, currency). */
const char *h_metrics_products_cache_field(struct arena *a,
                                           const struct h_metrics_products_params *p,
                                           const char *timezone, const char *currency);
/* The cache field of a promotions response (parameters normalized, zone, currency). */
const char *h_metrics_promotions_cache_field(struct arena *a,
                                             const struct h_metrics_promotions_params *p,
                                             const char *timezone, const char *currency);
/* The API name of a group key ("online", "dine_in", or the store id as text). */
const char *h_metrics_group_key_name(struct arena *a, const char *group_by, int64_t key);

#endif
