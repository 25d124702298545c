/* Metrics: time series and rankings of a merchant's business, read from the cache, else from
 * a replica that has the merchant's writes. GET .../metrics/sales sums the 15-minute sales
 * rollups into the calendar buckets of a time zone, GET .../metrics/deliveries the 15-minute
 * delivery rollups likewise; GET .../metrics/products and .../metrics/promotions rank the
 * 15-minute product and promotion rollups of a range. */
#include "handlers/metrics.h"

#include "cache/cache.h"
#include "db/delivery_metrics.h"
#include "db/merchants.h"
#include "db/rankings.h"
#include "handlers/handlers.h"
#include "server/arena.h"
#include "server/buf.h"
#include "server/encoding.h"
#include "server/json.h"

#include <openssl/evp.h>

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    SECONDS_PER_DAY = 86400,
    METRICS_CACHE_TTL_S = 300,
    ETAG_HEX_CHARS = 32,
    UNKNOWN_NAME_MAX = 64,
};

#define METRICS_CACHE_CONTROL "private, max-age=1"
#define SALES_CACHE_FORMAT "sales:1" /* bump when the response body changes shape */
#define DELIVERIES_CACHE_FORMAT "deliveries:1"
#define PRODUCTS_CACHE_FORMAT "products:1"
#define PROMOTIONS_CACHE_FORMAT "promotions:1"
#define JSON_CONTENT_TYPE "application/json; charset=utf-8"

/* 0001-01-01T00:00:00Z: PostgreSQL has no year 0, so nothing earlier is accepted. */
static const int64_t EARLIEST_EPOCH_S = -62135596800LL;

const char *const h_metrics_sales_param_names[] = {
    "from", "to", "granularity", "tz", "store_id", "channel", "fulfillment", "group_by", NULL};

/* Deliveries: every delivery order, so no fulfillment filter; one series, so no group_by. */
const char *const h_metrics_deliveries_param_names[] = {"from",     "to",      "granularity", "tz",
                                                        "store_id", "channel", NULL};

static const char *const granularities[] = {"hour", "day", "week", "month", NULL};
static const char *const channels[] = {"online", "pos", NULL}; /* index = stored code */
static const char *const fulfillments[] = {"pickup", "delivery", "dine_in", NULL};
static const char *const group_bys[] = {"channel", "fulfillment", "store_id", NULL};
static const char *const product_sorts[] = {"net_sales", "quantity", NULL};

/* Products and promotions are ranked over the whole range, per SKU or code only: the rollups
 * they come from have no store, channel or fulfillment, and no buckets. */
const char *const h_metrics_products_param_names[] = {"from", "to", "tz", "sort", "limit", NULL};
const char *const h_metrics_promotions_param_names[] = {"from", "to", "tz", NULL};

/* ---- query parameters ---- */

static int index_of(const char *const *names, const char *s)
{
    for (int i = 0; names[i]; i++)
        if (strcmp(names[i], s) == 0)
            return i;
    return -1;
}

/* Midnight UTC of a date: within a day of its local midnight in any zone. */
static int64_t date_epoch_utc(const char *date)
{
    int y, m, d;
    if (!v_parse_date(date, &y, &m, &d))
        return 0;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d};
    return (int64_t)timegm(&tm);
}

/* The bound's instant; for a date, a guess within a day (the zone is not applied yet). */
static int64_t nominal_epoch(const struct db_sales_bound *b)
{
    return b->is_date ? date_epoch_utc(b->date) : b->epoch_s;
}

static bool parse_bound(struct v_errors *v, const char *name, const char *s,
                        struct db_sales_bound *b)
{
    if (!s) {
        v_fail(v, name, "is required");
        return false;
    }
    int y, m, d;
    int64_t us;
    if (v_parse_date(s, &y, &m, &d)) {
        *b = (struct db_sales_bound){.is_date = true, .date = s};
        if (y >= 1)
            return true;
    } else if (!v_parse_timestamp(s, &us)) {
        v_fail(v, name,
               "must be an RFC 3339 date-time with an offset (2026-11-21T10:15:00+01:00) or a "
               "date (2026-11-21)");
        return false;
    } else if (us % ((int64_t)H_METRICS_QUARTER_HOUR_S * 1000000) != 0) {
        v_fail(v, name, "must fall on a quarter hour (minute 00, 15, 30 or 45, no seconds)");
        return false;
    } else {
        *b = (struct db_sales_bound){.is_date = false, .epoch_s = us / 1000000};
        if (b->epoch_s >= EARLIEST_EPOCH_S)
            return true;
    }
    v_fail(v, name, "must not be before the year 1");
    return false;
}

/* A parameter's value, or NULL; one given twice is a failure (and NULL, *repeated set). */
static const char *single_param(h_metrics_query_fn get, void *ctx, struct v_errors *v,
                                const char *name, bool *repeated)
{
    const char *value = get(ctx, name, repeated);
    if (*repeated)
        v_fail(v, name, "must be given at most once");
    return *repeated ? NULL : value;
}

/* A parameter's value, or NULL (also when repeated, which is recorded). */
static const char *optional_param(h_metrics_query_fn get, void *ctx, struct v_errors *v,
                                  const char *name)
{
    bool repeated = false;
    return single_param(get, ctx, v, name, &repeated);
}

/* A required range bound; false when missing, repeated or malformed (recorded). */
static bool read_bound(h_metrics_query_fn get, void *ctx, struct v_errors *v, const char *name,
                       struct db_sales_bound *b)
{
    bool repeated = false;
    const char *value = single_param(get, ctx, v, name, &repeated);
    return !repeated && parse_bound(v, name, value, b);
}

/* The range checks that need no time zone: exact for two instants, within a day of slack
 * when a date is involved (h_metrics_check_range finishes them). */
static void precheck_range(struct v_errors *v, const struct db_sales_bound *from_bound,
                           const struct db_sales_bound *to_bound)
{
    bool dates = from_bound->is_date || to_bound->is_date;
    int64_t slack = dates && !(from_bound->is_date && to_bound->is_date) ? SECONDS_PER_DAY : 0;
    int64_t from = nominal_epoch(from_bound), to = nominal_epoch(to_bound);
    int64_t max_range = H_METRICS_MAX_RANGE_S + (dates ? H_METRICS_DATE_RANGE_SLACK_S : 0);
    if (to <= from - slack)
        v_fail(v, "to", "must be after from");
    else if (to - from > max_range + slack)
        v_fail(v, "to", "must be at most 400 days after from");
}

/* from and to: required, and checked as far as they can be without the time zone. */
static void parse_range(h_metrics_query_fn get, void *ctx, struct v_errors *v,
                        struct db_sales_bound *from, struct db_sales_bound *to)
{
    bool from_ok = read_bound(get, ctx, v, "from", from);
    bool to_ok = read_bound(get, ctx, v, "to", to);
    if (from_ok && to_ok)
        precheck_range(v, from, to);
}

/* An optional parameter that must be one of names; its index, or -1 when absent. */
static int parse_choice(struct v_errors *v, const char *name, const char *value,
                        const char *const *names, const char *message)
{
    if (!value)
        return -1;
    int i = index_of(names, value);
    if (i < 0)
        v_fail(v, name, message);
    return i;
}

static int64_t parse_store_id(struct v_errors *v, const char *value)
{
    if (!value)
        return 0;
    char *end = NULL;
    errno = 0;
    long long id = isdigit((unsigned char)value[0]) ? strtoll(value, &end, 10) : 0;
    if (id <= 0 || errno || *end != '\0') {
        v_fail(v, "store_id", "must be a positive integer");
        return 0;
    }
    return (int64_t)id;
}

static const char *parse_timezone(struct v_errors *v, const char *value)
{
    if (value && !v_is_timezone(value)) {
        v_fail(v, "tz", "must be an IANA time zone name such as Europe/Madrid");
        return NULL;
    }
    return value;
}

/* The parameters of every bucketed series: range, granularity, tz, store_id and channel. */
static void parse_series_params(h_metrics_query_fn get, void *ctx, struct v_errors *v,
                                struct h_metrics_sales_params *out)
{
    memset(out, 0, sizeof(*out));
    parse_range(get, ctx, v, &out->from, &out->to);
    int g = parse_choice(v, "granularity", optional_param(get, ctx, v, "granularity"),
                         granularities, "must be hour, day, week or month");
    out->granularity = granularities[g < 0 ? 1 : g];
    out->timezone = parse_timezone(v, optional_param(get, ctx, v, "tz"));
    out->store_id = parse_store_id(v, optional_param(get, ctx, v, "store_id"));
    out->channel = parse_choice(v, "channel", optional_param(get, ctx, v, "channel"), channels,
                                "must be online or pos");
}

bool h_metrics_parse_sales_params(h_metrics_query_fn get, void *ctx, struct v_errors *v,
                                  struct h_metrics_sales_params *out)
{
    parse_series_params(get, ctx, v, out);
    out->fulfillment = parse_choice(v, "fulfillment", optional_param(get, ctx, v, "fulfillment"),
                                    fulfillments, "must be pickup, delivery or dine_in");
    int by = parse_choice(v, "group_by", optional_param(get, ctx, v, "group_by"), group_bys,
                          "must be channel, fulfillment or store_id");
    out->group_by = by < 0 ? NULL : group_bys[by];
    return v_ok(v);
}

bool h_metrics_parse_deliveries_params(h_metrics_query_fn get, void *ctx, struct v_errors *v,
                                       struct h_metrics_sales_params *out)
{
    parse_series_params(get, ctx, v, out);
    out->fulfillment = index_of(fulfillments, "delivery");
    out->group_by = NULL;
    return v_ok(v);
}

static unsigned parse_limit(struct v_errors *v, const char *value)
{
    if (!value)
        return H_METRICS_PRODUCTS_LIMIT_DEFAULT;
    char *end = NULL;
    errno = 0;
    long n = isdigit((unsigned char)value[0]) ? strtol(value, &end, 10) : 0;
    if (n < 1 || n > H_METRICS_PRODUCTS_LIMIT_MAX || errno || *end != '\0') {
        v_fail(v, "limit", "must be an integer from 1 to 100");
        return H_METRICS_PRODUCTS_LIMIT_DEFAULT;
    }
    return (unsigned)n;
}

bool h_metrics_parse_products_params(h_metrics_query_fn get, void *ctx, struct v_errors *v,
                                     struct h_metrics_products_params *out)
{
    memset(out, 0, sizeof(*out));
    parse_range(get, ctx, v, &out->from, &out->to);
    out->timezone = parse_timezone(v, optional_param(get, ctx, v, "tz"));
    int sort = parse_choice(v, "sort", optional_param(get, ctx, v, "sort"), product_sorts,
                            "must be net_sales or quantity");
    out->sort = product_sorts[sort < 0 ? 0 : sort];
    out->limit = parse_limit(v, optional_param(get, ctx, v, "limit"));
    return v_ok(v);
}

bool h_metrics_parse_promotions_params(h_metrics_query_fn get, void *ctx, struct v_errors *v,
                                       struct h_metrics_promotions_params *out)
{
    memset(out, 0, sizeof(*out));
    parse_range(get, ctx, v, &out->from, &out->to);
    out->timezone = parse_timezone(v, optional_param(get, ctx, v, "tz"));
    return v_ok(v);
}

/* ---- range checks on the resolved bounds ---- */

static bool on_quarter_hour(int64_t epoch_s)
{
    return epoch_s % H_METRICS_QUARTER_HOUR_S == 0;
}

static void check_resolved_bound(struct v_errors *v, const char *name,
                                 const struct db_sales_bound *b, const struct db_sales_instant *at)
{
    if (b->is_date && !on_quarter_hour(at->epoch_s))
        v_fail(v, name, "local midnight of this date in the time zone is not on a quarter hour");
}

/* Every real zone offset is a multiple of 15 minutes; local mean time before standard time
 * was not, and no sum of 15-minute rollups could follow it. */
static bool bucket_offsets_on_quarter_hours(const struct db_sales_series *s)
{
    for (size_t i = 0; i < s->n_buckets; i++)
        if (s->buckets[i].utc_offset_s % H_METRICS_QUARTER_HOUR_S)
            return false;
    return true;
}

static void fail_offset(struct v_errors *v)
{
    v_fail(v, "tz", "has a UTC offset that is not a multiple of 15 minutes in this range");
}

/* The checks of the resolved bounds; false when one failed, and the checks that follow in
 * h_metrics_check_range are skipped. */
static bool check_resolved_range(const struct db_sales_bound *from, const struct db_sales_bound *to,
                                 const struct db_sales_instant *at_from,
                                 const struct db_sales_instant *at_to, struct v_errors *v)
{
    check_resolved_bound(v, "from", from, at_from);
    check_resolved_bound(v, "to", to, at_to);
    bool dates = from->is_date || to->is_date;
    int64_t max_range = H_METRICS_MAX_RANGE_S + (dates ? H_METRICS_DATE_RANGE_SLACK_S : 0);
    if (at_to->epoch_s <= at_from->epoch_s)
        v_fail(v, "to", "must be after from");
    else if (at_to->epoch_s - at_from->epoch_s > max_range)
        v_fail(v, "to", "must be at most 400 days after from");
    else if (at_from->utc_offset_s % H_METRICS_QUARTER_HOUR_S ||
             at_to->utc_offset_s % H_METRICS_QUARTER_HOUR_S)
        fail_offset(v);
    else
        return true;
    return false;
}

bool h_metrics_check_range(const struct h_metrics_sales_params *p, const struct db_sales_series *s,
                           struct v_errors *v)
{
    if (!check_resolved_range(&p->from, &p->to, &s->from, &s->to, v))
        return false;
    if (!bucket_offsets_on_quarter_hours(s))
        fail_offset(v);
    else if (s->n_buckets > H_METRICS_MAX_BUCKETS)
        v_fail(v, "granularity", "gives more than 10000 buckets for this range");
    return v_ok(v);
}

bool h_metrics_check_bounds(const struct db_sales_bound *from, const struct db_sales_bound *to,
                            const struct db_sales_instant *at_from,
                            const struct db_sales_instant *at_to, struct v_errors *v)
{
    check_resolved_range(from, to, at_from, at_to, v);
    return v_ok(v);
}

/* ---- figures, labels, conditional requests, cache fields ---- */

int64_t h_metrics_round_half_up(int64_t num, int64_t den)
{
    if (den <= 0)
        return 0;
    int64_t q = num / den, r = num % den; /* r has the sign of num */
    if (r >= 0)
        return r >= den - r ? q + 1 : q; /* fraction >= 1/2: up */
    return -r > den + r ? q - 1 : q;     /* fraction below -1/2: down; -1/2 goes up */
}

void h_metrics_format_local(const char *local, int32_t utc_offset_s, char out[H_METRICS_LABEL_MAX])
{
    int32_t abs_s = utc_offset_s < 0 ? -utc_offset_s : utc_offset_s;
    snprintf(out, H_METRICS_LABEL_MAX, "%.24s%c%02d:%02d", local, utc_offset_s < 0 ? '-' : '+',
             (int)(abs_s / 3600), (int)(abs_s / 60 % 60));
}

static const char *bound_key(struct arena *a, const struct db_sales_bound *b)
{
    return b->is_date ? arena_sprintf(a, "d%s", b->date)
                      : arena_sprintf(a, "e%lld", (long long)b->epoch_s);
}

const char *h_metrics_sales_cache_field(struct arena *a, const struct h_metrics_sales_params *p,
                                        const char *timezone, const char *currency)
{
    return arena_sprintf(a, SALES_CACHE_FORMAT "|%s|%s|%s|%s|%s|%lld|%d|%d|%s",
                         bound_key(a, &p->from), bound_key(a, &p->to), p->granularity, timezone,
                         currency, (long long)p->store_id, p->channel, p->fulfillment,
                         p->group_by ? p->group_by : "");
}

const char *h_metrics_deliveries_cache_field(struct arena *a,
                                             const struct h_metrics_sales_params *p,
                                             const char *timezone, const char *currency)
{
    return arena_sprintf(a, DELIVERIES_CACHE_FORMAT "|%s|%s|%s|%s|%s|%lld|%d",
                         bound_key(a, &p->from), bound_key(a, &p->to), p->granularity, timezone,
                         currency, (long long)p->store_id, p->channel);
}

int64_t h_metrics_mean_minutes_tenths(int64_t total_us, int64_t n)
{
    enum { US_PER_TENTH_MINUTE = 6000000 };
    return n > 0 ? h_metrics_round_half_up(total_us, n * US_PER_TENTH_MINUTE) : 0;
}

const char *h_metrics_products_cache_field(struct arena *a,
                                           const struct h_metrics_products_params *p,
                                           const char *timezone, const char *currency)
{
    return arena_sprintf(a, PRODUCTS_CACHE_FORMAT "|%s|%s|%s|%s|%s|%u", bound_key(a, &p->from),
                         bound_key(a, &p->to), timezone, currency, p->sort, p->limit);
}

const char *h_metrics_promotions_cache_field(struct arena *a,
                                             const struct h_metrics_promotions_params *p,
                                             const char *timezone, const char *currency)
{
    return arena_sprintf(a, PROMOTIONS_CACHE_FORMAT "|%s|%s|%s|%s", bound_key(a, &p->from),
                         bound_key(a, &p->to), timezone, currency);
}

const char *h_metrics_group_key_name(struct arena *a, const char *group_by, int64_t key)
{
    const char *const *names = !group_by                              ? NULL
                               : strcmp(group_by, "channel") == 0     ? channels
                               : strcmp(group_by, "fulfillment") == 0 ? fulfillments
                                                                      : NULL;
    int n = 0;
    while (names && names[n])
        n++;
    if (key >= 0 && key < n)
        return names[key];
    return arena_sprintf(a, "%lld", (long long)key);
}

/* ---- the response ---- */

struct sales_request {
    struct h_metrics_sales_params params;
    const char *timezone, *currency;
};

/* A metrics read whose parameters are valid: the zone (requested, else the merchant's) and
 * currency it is computed for, its cache field, the response, and the WAL position a replica
 * must have replayed to serve it (the merchant's last write: read-your-writes). */
struct metrics_read {
    const char *timezone, *currency;
    const char *field;
    struct cache_entry entry;
    uint64_t min_lsn;
};

/* One bucket of a sales series. The sales body is written as text, not built as a jansson
 * tree and dumped: that took a third of an uncached read's server CPU. */
static void bucket_out(struct buf *b, const char *start, const struct db_sales_figures *f)
{
    static const char *const keys[] = {
        ",\"orders\":",          ",\"cancelled_orders\":", ",\"items_sold\":",
        ",\"gross_sales_cents\":", ",\"discounts_cents\":",  ",\"net_sales_cents\":",
        ",\"tax_cents\":",       ",\"total_sales_cents\":", ",\"average_order_value_cents\":"};
    const int64_t values[] = {f->orders,         f->cancelled_orders, f->items_sold,
                              f->gross_cents,    f->discount_cents,   f->net_cents,
                              f->tax_cents,      f->total_cents,
                              h_metrics_round_half_up(f->net_cents, f->orders)};
    json_out_raw(b, "{\"start\":");
    json_out_string(b, start);
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        json_out_raw(b, keys[i]);
        json_out_int(b, values[i]);
    }
    json_out_raw(b, "}");
}

/* Every bucket of one series, zero-filled; cells hold that series' cells by bucket. */
static void buckets_out(struct buf *b, char *const *labels, size_t n_buckets,
                        const struct db_sales_cell *const *cells, size_t n_cells)
{
    static const struct db_sales_figures zero;
    size_t c = 0;
    json_out_raw(b, "[");
    for (size_t i = 0; i < n_buckets; i++) {
        const struct db_sales_figures *f = &zero;
        if (c < n_cells && cells[c]->bucket == i)
            f = &cells[c++]->figures;
        if (i > 0)
            json_out_raw(b, ",");
        bucket_out(b, labels[i], f);
    }
    json_out_raw(b, "]");
}

/* A cell and what its group sorts by: the key's API name, or NULL (store ids sort as numbers). */
struct sortable_cell {
    const char *name;
    const struct db_sales_cell *cell;
};

static int compare_cells(const void *pa, const void *pb)
{
    const struct sortable_cell *a = pa, *b = pb;
    int by_key = a->name ? strcmp(a->name, b->name)
                         : (a->cell->key > b->cell->key) - (a->cell->key < b->cell->key);
    if (by_key)
        return by_key;
    return (a->cell->bucket > b->cell->bucket) - (a->cell->bucket < b->cell->bucket);
}

static struct sortable_cell *cells_by_group(struct arena *a, const struct db_sales_series *s,
                                            const char *group_by)
{
    struct sortable_cell *sorted = arena_alloc(a, (s->n_cells + 1) * sizeof(*sorted));
    bool numeric = strcmp(group_by, "store_id") == 0;
    for (size_t i = 0; i < s->n_cells; i++)
        sorted[i] = (struct sortable_cell){
            numeric ? NULL : h_metrics_group_key_name(a, group_by, s->cells[i].key), &s->cells[i]};
    qsort(sorted, s->n_cells, sizeof(*sorted), compare_cells);
    return sorted;
}

static void group_key_out(struct buf *b, struct arena *a, const char *group_by, int64_t key)
{
    if (strcmp(group_by, "store_id") == 0)
        json_out_int(b, key);
    else
        json_out_string(b, h_metrics_group_key_name(a, group_by, key));
}

/* One series per key with any order (cancelled ones included) in the range, sorted by key. */
static void groups_out(struct buf *b, struct arena *a, const struct db_sales_series *s,
                       char *const *labels, const char *group_by)
{
    struct sortable_cell *sorted = cells_by_group(a, s, group_by);
    const struct db_sales_cell **cells = arena_alloc(a, (s->n_cells + 1) * sizeof(*cells));
    bool first = true;
    json_out_raw(b, "[");
    for (size_t start = 0, end; start < s->n_cells; start = end) {
        int64_t key = sorted[start].cell->key;
        bool any_orders = false;
        for (end = start; end < s->n_cells && sorted[end].cell->key == key; end++) {
            const struct db_sales_figures *f = &sorted[end].cell->figures;
            cells[end - start] = sorted[end].cell;
            any_orders = any_orders || f->orders > 0 || f->cancelled_orders > 0;
        }
        if (!any_orders)
            continue;
        json_out_raw(b, first ? "{\"key\":" : ",{\"key\":");
        first = false;
        group_key_out(b, a, group_by, key);
        json_out_raw(b, ",\"buckets\":");
        buckets_out(b, labels, s->n_buckets, cells, end - start);
        json_out_raw(b, "}");
    }
    json_out_raw(b, "]");
}

static void ungrouped_buckets_out(struct buf *b, struct arena *a,
                                  const struct db_sales_series *s, char *const *labels)
{
    const struct db_sales_cell **cells = arena_alloc(a, (s->n_cells + 1) * sizeof(*cells));
    for (size_t i = 0; i < s->n_cells; i++)
        cells[i] = &s->cells[i];
    buckets_out(b, labels, s->n_buckets, cells, s->n_cells);
}

static char *local_label(struct arena *a, const char *local, int32_t utc_offset_s)
{
    char *label = arena_alloc(a, H_METRICS_LABEL_MAX);
    h_metrics_format_local(local, utc_offset_s, label);
    return label;
}

/* The header every metrics body starts with (API.md): merchant_id, from, to, granularity
 * (when the route has one, else NULL), timezone, currency, as_of; the object is left open. */
static void header_out(struct buf *b, struct srv_req *req, const struct db_sales_instant *from,
                       const struct db_sales_instant *to, const char *granularity,
                       const char *timezone, const char *currency, int64_t as_of_us)
{
    char as_of[32], label[H_METRICS_LABEL_MAX];
    v_format_utc(as_of_us, as_of);
    json_out_raw(b, "{\"merchant_id\":");
    json_out_int(b, req->merchant_id);
    json_out_raw(b, ",\"from\":");
    h_metrics_format_local(from->local, from->utc_offset_s, label);
    json_out_string(b, label);
    json_out_raw(b, ",\"to\":");
    h_metrics_format_local(to->local, to->utc_offset_s, label);
    json_out_string(b, label);
    if (granularity) {
        json_out_raw(b, ",\"granularity\":");
        json_out_string(b, granularity);
    }
    json_out_raw(b, ",\"timezone\":");
    json_out_string(b, timezone);
    json_out_raw(b, ",\"currency\":");
    json_out_string(b, currency);
    json_out_raw(b, ",\"as_of\":");
    json_out_string(b, as_of);
}

static void sales_out(struct buf *b, struct srv_req *req, const struct sales_request *sr,
                      const struct db_sales_series *s)
{
    struct arena *a = req->arena;
    char **labels = arena_alloc(a, (s->n_buckets + 1) * sizeof(*labels));
    for (size_t i = 0; i < s->n_buckets; i++)
        labels[i] = local_label(a, s->buckets[i].local_start, s->buckets[i].utc_offset_s);
    header_out(b, req, &s->from, &s->to, sr->params.granularity, sr->timezone, sr->currency,
               s->as_of_us);
    const char *group_by = sr->params.group_by;
    if (!group_by) {
        json_out_raw(b, ",\"buckets\":");
        ungrouped_buckets_out(b, a, s, labels);
    } else {
        json_out_raw(b, ",\"group_by\":");
        json_out_string(b, group_by);
        json_out_raw(b, ",\"groups\":");
        groups_out(b, a, s, labels, group_by);
    }
    json_out_raw(b, "}");
}

/* average_delivery_minutes: the mean rounded half up to one decimal, or null. */
static json_t *average_minutes_json(const struct db_delivery_figures *f)
{
    if (f->delivered <= 0)
        return json_null();
    return json_real((double)h_metrics_mean_minutes_tenths(f->delivered_us, f->delivered) / 10.0);
}

/* The fields after the header, for fields_out. */
static json_t *deliveries_fields(struct srv_req *req, const struct db_delivery_series *d)
{
    struct arena *a = req->arena;
    const struct db_sales_series *s = &d->frame;
    json_t *body = json_object();
    json_t *buckets = json_array();
    for (size_t i = 0; i < s->n_buckets; i++) {
        const struct db_delivery_figures *f = &d->figures[i];
        json_array_append_new(
            buckets,
            json_pack("{s:s, s:I, s:I, s:I, s:o}", "start",
                      local_label(a, s->buckets[i].local_start, s->buckets[i].utc_offset_s),
                      "deliveries", (json_int_t)f->deliveries, "delivered",
                      (json_int_t)f->delivered, "failed", (json_int_t)f->failed,
                      "average_delivery_minutes", average_minutes_json(f)));
    }
    json_object_set_new(body, "buckets", buckets);
    return body;
}

static json_t *products_fields(const struct h_metrics_products_params *p,
                               const struct db_ranking *r)
{
    json_t *body = json_object();
    json_t *products = json_array();
    for (size_t i = 0; i < r->n; i++) {
        const struct db_product_row *row = &r->products[i];
        json_array_append_new(products,
                              json_pack("{s:s, s:s, s:I, s:I}", "sku", row->sku, "name", row->name,
                                        "quantity", (json_int_t)row->quantity, "net_sales_cents",
                                        (json_int_t)row->net_sales_cents));
    }
    json_object_set_new(body, "sort", json_string(p->sort));
    json_object_set_new(body, "products", products);
    return body;
}

static json_t *promotions_fields(const struct db_ranking *r)
{
    json_t *body = json_object();
    json_t *promotions = json_array();
    for (size_t i = 0; i < r->n; i++) {
        const struct db_promotion_row *row = &r->promotions[i];
        json_array_append_new(promotions,
                              json_pack("{s:s, s:I, s:I, s:I}", "promo_code", row->promo_code,
                                        "orders", (json_int_t)row->orders, "discounts_cents",
                                        (json_int_t)row->discounts_cents, "net_sales_cents",
                                        (json_int_t)row->net_sales_cents));
    }
    json_object_set_new(body, "promotions", promotions);
    return body;
}

/* "\"" + the first 32 hex digits of SHA-256(body) + "\"". */
static const char *etag_of(struct arena *a, const char *body, size_t len)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (!EVP_Digest(body, len, md, &md_len, EVP_sha256(), NULL) || md_len * 2 < ETAG_HEX_CHARS)
        return "\"0\"";
    char *etag = arena_alloc(a, ETAG_HEX_CHARS + 3), *p = etag;
    *p++ = '"';
    hex_encode(p, md, ETAG_HEX_CHARS / 2);
    p += ETAG_HEX_CHARS;
    *p++ = '"';
    *p = '\0';
    return etag;
}

/* ---- the request ---- */

static void reply_db_failure(struct srv_req *req, enum db_status st)
{
    if (st == DB_NOT_FOUND)
        srv_reply_problem(req, PROBLEM_NOT_FOUND, "no such merchant");
    else if (st == DB_UNAVAILABLE)
        srv_reply_problem(req, PROBLEM_UNAVAILABLE, "the database is unavailable");
    else
        srv_reply_problem(req, PROBLEM_INTERNAL, NULL);
}

static void reply_field_error(struct srv_req *req, const char *field, const char *message)
{
    struct v_errors v = {.arena = req->arena};
    v_fail(&v, field, message);
    srv_reply_validation(req, v.list);
}

static const char *request_query(void *ctx, const char *name, bool *repeated)
{
    return srv_query(ctx, name, repeated);
}

/* A parameter name fit to echo in an error: printable ASCII, bounded. */
static const char *printable_name(struct arena *a, const char *name)
{
    char *out = arena_strndup(a, name, strnlen(name, UNKNOWN_NAME_MAX));
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            *p = '?';
    return out;
}

/* Starts the validation errors of a request with its unknown parameters. */
static struct v_errors unknown_params(struct srv_req *req, const char *const *names)
{
    struct v_errors v = {.arena = req->arena};
    const char *unknown = srv_unknown_query(req, names);
    if (unknown)
        v_fail(&v, printable_name(req->arena, unknown), "unknown parameter");
    return v;
}

/* True when nothing failed; else replies 400 with the errors. */
static bool params_valid(struct srv_req *req, const struct v_errors *v)
{
    if (v_ok(v))
        return true;
    srv_reply_validation(req, v->list);
    return false;
}

static const char *cache_result_name(enum cache_result r)
{
    switch (r) {
    case CACHE_HIT:
        return "hit";
    case CACHE_MISS:
        return "miss";
    case CACHE_ERROR:
        return "error";
    case CACHE_DISABLED:
        break;
    }
    return "bypass";
}

static void reply_entry(struct srv_req *req, const struct cache_entry *e)
{
    srv_add_header(req, "ETag", e->etag);
    srv_add_header(req, "Cache-Control", METRICS_CACHE_CONTROL);
    if (enc_etag_matches(srv_header(req, "If-None-Match"), e->etag))
        srv_reply_empty(req, 304);
    else
        srv_reply_bytes(req, 200, JSON_CONTENT_TYPE, e->body, e->body_len);
}

static struct db_sales_query sales_query(const struct srv_req *req, const struct sales_request *sr)
{
    const struct h_metrics_sales_params *p = &sr->params;
    return (struct db_sales_query){.merchant_id = req->merchant_id,
                                   .timezone = sr->timezone,
                                   .granularity = p->granularity,
                                   .from = p->from,
                                   .to = p->to,
                                   .store_id = p->store_id,
                                   .channel = p->channel,
                                   .fulfillment = p->fulfillment,
                                   .group_by = p->group_by};
}

/* Closes a body that header_out began with fields' members, in their order (fields is
 * released): the routes other than sales build these with jansson. */
static void fields_out(struct buf *b, json_t *fields)
{
    const char *key;
    json_t *value;
    json_object_foreach(fields, key, value) {
        json_out_raw(b, ",");
        json_out_string(b, key);
        json_out_raw(b, ":");
        json_out_value(b, value);
    }
    json_out_raw(b, "}");
    json_decref(fields);
}

/* Makes the body text mr's entry, with its ETag (text is freed). */
static void set_entry(struct srv_req *req, struct metrics_read *mr, struct buf *text)
{
    mr->entry.body = arena_strndup(req->arena, text->data ? text->data : "", text->len);
    mr->entry.body_len = text->len;
    mr->entry.etag = etag_of(req->arena, mr->entry.body, mr->entry.body_len);
    buf_free(text);
}

/* False, after replying, when a computation failed (the time zone PostgreSQL does not know,
 * or the database). */
static bool computed(struct srv_req *req, enum db_status st, enum db_sales_refusal refusal,
                     const char *role)
{
    req->log_db = role;
    if (refusal == DB_SALES_UNKNOWN_TIMEZONE) {
        reply_field_error(req, "tz", "is not a time zone the database knows");
        return false;
    }
    if (st != DB_OK) {
        reply_db_failure(req, st);
        return false;
    }
    return true;
}

/* Computes the response from the database into mr's entry; replies itself and returns false
 * on failure. *version is the data version the response reflects. */
static bool compute_sales(struct srv_req *req, const void *params, struct metrics_read *mr,
                          int64_t *version)
{
    const struct sales_request *sr = params;
    struct h_app *app = req->app;
    struct db_sales_query q = sales_query(req, sr);
    struct db_sales_series s;
    enum db_sales_refusal refusal;
    const char *role = NULL;
    enum db_status st = db_sales_series(app->db, mr->min_lsn, req->arena, &q, &s, &role, &refusal);
    if (!computed(req, st, refusal, role))
        return false;
    struct v_errors v = {.arena = req->arena};
    if (!h_metrics_check_range(&sr->params, &s, &v)) {
        srv_reply_validation(req, v.list);
        return false;
    }
    struct buf body = {0};
    sales_out(&body, req, sr, &s);
    set_entry(req, mr, &body);
    *version = s.data_version;
    return true;
}

static bool compute_deliveries(struct srv_req *req, const void *params, struct metrics_read *mr,
                               int64_t *version)
{
    const struct sales_request *sr = params;
    struct h_app *app = req->app;
    struct db_sales_query q = sales_query(req, sr);
    struct db_delivery_series d;
    enum db_sales_refusal refusal;
    const char *role = NULL;
    enum db_status st =
        db_delivery_series(app->db, mr->min_lsn, req->arena, &q, &d, &role, &refusal);
    if (!computed(req, st, refusal, role))
        return false;
    struct v_errors v = {.arena = req->arena};
    if (!h_metrics_check_range(&sr->params, &d.frame, &v)) {
        srv_reply_validation(req, v.list);
        return false;
    }
    struct buf body = {0};
    const struct db_sales_series *s = &d.frame;
    header_out(&body, req, &s->from, &s->to, sr->params.granularity, sr->timezone, sr->currency,
               s->as_of_us);
    fields_out(&body, deliveries_fields(req, &d));
    set_entry(req, mr, &body);
    *version = d.frame.data_version;
    return true;
}

static bool compute_products(struct srv_req *req, const void *params, struct metrics_read *mr,
                             int64_t *version)
{
    const struct h_metrics_products_params *p = params;
    struct h_app *app = req->app;
    struct db_ranking_query q = {.merchant_id = req->merchant_id,
                                 .timezone = mr->timezone,
                                 .from = p->from,
                                 .to = p->to,
                                 .sort = p->sort,
                                 .limit = p->limit};
    struct db_ranking r;
    enum db_sales_refusal refusal;
    const char *role = NULL;
    enum db_status st = db_top_products(app->db, mr->min_lsn, req->arena, &q, &r, &role, &refusal);
    if (!computed(req, st, refusal, role))
        return false;
    struct v_errors v = {.arena = req->arena};
    if (!h_metrics_check_bounds(&p->from, &p->to, &r.from, &r.to, &v)) {
        srv_reply_validation(req, v.list);
        return false;
    }
    struct buf body = {0};
    header_out(&body, req, &r.from, &r.to, NULL, mr->timezone, mr->currency, r.as_of_us);
    fields_out(&body, products_fields(p, &r));
    set_entry(req, mr, &body);
    *version = r.data_version;
    return true;
}

static bool compute_promotions(struct srv_req *req, const void *params, struct metrics_read *mr,
                               int64_t *version)
{
    const struct h_metrics_promotions_params *p = params;
    struct h_app *app = req->app;
    struct db_ranking_query q = {
        .merchant_id = req->merchant_id, .timezone = mr->timezone, .from = p->from, .to = p->to};
    struct db_ranking r;
    enum db_sales_refusal refusal;
    const char *role = NULL;
    enum db_status st = db_promotions(app->db, mr->min_lsn, req->arena, &q, &r, &role, &refusal);
    if (!computed(req, st, refusal, role))
        return false;
    struct v_errors v = {.arena = req->arena};
    if (!h_metrics_check_bounds(&p->from, &p->to, &r.from, &r.to, &v)) {
        srv_reply_validation(req, v.list);
        return false;
    }
    struct buf body = {0};
    header_out(&body, req, &r.from, &r.to, NULL, mr->timezone, mr->currency, r.as_of_us);
    fields_out(&body, promotions_fields(&r));
    set_entry(req, mr, &body);
    *version = r.data_version;
    return true;
}

/* Resolves the merchant's zone (unless one was requested) and currency; false after
 * replying when the merchant is unknown or the database is down. */
static bool begin_read(struct srv_req *req, const char *timezone, struct metrics_read *mr)
{
    struct h_app *app = req->app;
    struct db_merchant m;
    enum db_status st = db_merchant_lookup(app->db, req->arena, req->merchant_id, &m);
    if (st != DB_OK) {
        reply_db_failure(req, st);
        return false;
    }
    memset(mr, 0, sizeof(*mr));
    mr->timezone = timezone ? timezone : m.timezone;
    mr->currency = m.currency;
    return true;
}

/* True when the cache holds the response at the merchant's current data version (mr->entry
 * is set); else sets mr->min_lsn for the database read. */
static bool cached(struct srv_req *req, struct metrics_read *mr)
{
    struct h_app *app = req->app;
    uint64_t lsn = 0;
    enum cache_result r =
        cache_merchant_get(app->cache, req->merchant_id, mr->field, req->arena, &mr->entry, &lsn);
    req->log_cache = cache_result_name(r);
    if (r == CACHE_HIT)
        return true;
    uint64_t written = db_merchant_write_lsn(app->db, req->merchant_id);
    mr->min_lsn = written > lsn ? written : lsn;
    return false;
}

static void store(struct srv_req *req, const struct metrics_read *mr, int64_t version)
{
    struct h_app *app = req->app;
    cache_merchant_put(app->cache, req->merchant_id, mr->field, version, &mr->entry,
                       METRICS_CACHE_TTL_S);
}

/* Computes a response into mr->entry; false after replying with the failure. */
typedef bool (*compute_fn)(struct srv_req *req, const void *params, struct metrics_read *mr,
                           int64_t *version);

/* The cached response, else a computed (and then cached) one. */
static void serve(struct srv_req *req, struct metrics_read *mr, compute_fn compute,
                  const void *params)
{
    if (!cached(req, mr)) {
        int64_t version;
        if (!compute(req, params, mr, &version))
            return;
        store(req, mr, version);
    }
    reply_entry(req, &mr->entry);
}

void h_metrics_sales(struct srv_req *req)
{
    struct sales_request sr;
    struct v_errors v = unknown_params(req, h_metrics_sales_param_names);
    h_metrics_parse_sales_params(request_query, req, &v, &sr.params);
    struct metrics_read mr;
    if (!params_valid(req, &v) || !begin_read(req, sr.params.timezone, &mr))
        return;
    sr.timezone = mr.timezone;
    sr.currency = mr.currency;
    mr.field = h_metrics_sales_cache_field(req->arena, &sr.params, mr.timezone, mr.currency);
    serve(req, &mr, compute_sales, &sr);
}

void h_metrics_deliveries(struct srv_req *req)
{
    struct sales_request sr;
    struct v_errors v = unknown_params(req, h_metrics_deliveries_param_names);
    h_metrics_parse_deliveries_params(request_query, req, &v, &sr.params);
    struct metrics_read mr;
    if (!params_valid(req, &v) || !begin_read(req, sr.params.timezone, &mr))
        return;
    sr.timezone = mr.timezone;
    sr.currency = mr.currency;
    mr.field = h_metrics_deliveries_cache_field(req->arena, &sr.params, mr.timezone, mr.currency);
    serve(req, &mr, compute_deliveries, &sr);
}

void h_metrics_products(struct srv_req *req)
{
    struct h_metrics_products_params p;
    struct v_errors v = unknown_params(req, h_metrics_products_param_names);
    h_metrics_parse_products_params(request_query, req, &v, &p);
    struct metrics_read mr;
    if (!params_valid(req, &v) || !begin_read(req, p.timezone, &mr))
        return;
    mr.field = h_metrics_products_cache_field(req->arena, &p, mr.timezone, mr.currency);
    serve(req, &mr, compute_products, &p);
}

void h_metrics_promotions(struct srv_req *req)
{
    struct h_metrics_promotions_params p;
    struct v_errors v = unknown_params(req, h_metrics_promotions_param_names);
    h_metrics_parse_promotions_params(request_query, req, &v, &p);
    struct metrics_read mr;
    if (!params_valid(req, &v) || !begin_read(req, p.timezone, &mr))
        return;
    mr.field = h_metrics_promotions_cache_field(req->arena, &p, mr.timezone, mr.currency);
    serve(req, &mr, compute_promotions, &p);
}
