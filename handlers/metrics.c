/* Metrics: time series of a merchant's business, read from the cache, else from a replica
 * that has the merchant's writes. GET .../metrics/sales sums the 15-minute sales rollups into
 * the calendar buckets of a time zone. */
#include "handlers/metrics.h"

#include "cache/cache.h"
#include "db/merchants.h"
#include "handlers/handlers.h"
#include "server/arena.h"
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
    SALES_CACHE_TTL_S = 300,
    ETAG_HEX_CHARS = 32,
    UNKNOWN_NAME_MAX = 64,
};

#define SALES_CACHE_CONTROL "private, max-age=1"
#define SALES_CACHE_FORMAT "sales:1" /* bump when the response body changes shape */
#define JSON_CONTENT_TYPE "application/json; charset=utf-8"

/* 0001-01-01T00:00:00Z: PostgreSQL has no year 0, so nothing earlier is accepted. */
static const int64_t EARLIEST_EPOCH_S = -62135596800LL;

const char *const h_metrics_sales_param_names[] = {
    "from", "to", "granularity", "tz", "store_id", "channel", "fulfillment", "group_by", NULL};

static const char *const granularities[] = {"hour", "day", "week", "month", NULL};
static const char *const channels[] = {"online", "pos", NULL}; /* index = stored code */
static const char *const fulfillments[] = {"pickup", "delivery", "dine_in", NULL};
static const char *const group_bys[] = {"channel", "fulfillment", "store_id", NULL};

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
static void precheck_range(struct v_errors *v, const struct h_metrics_sales_params *p)
{
    bool dates = p->from.is_date || p->to.is_date;
    int64_t slack = dates && !(p->from.is_date && p->to.is_date) ? SECONDS_PER_DAY : 0;
    int64_t from = nominal_epoch(&p->from), to = nominal_epoch(&p->to);
    int64_t max_range = H_METRICS_MAX_RANGE_S + (dates ? H_METRICS_DATE_RANGE_SLACK_S : 0);
    if (to <= from - slack)
        v_fail(v, "to", "must be after from");
    else if (to - from > max_range + slack)
        v_fail(v, "to", "must be at most 400 days after from");
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

bool h_metrics_parse_sales_params(h_metrics_query_fn get, void *ctx, struct v_errors *v,
                                  struct h_metrics_sales_params *out)
{
    memset(out, 0, sizeof(*out));
    bool from_ok = read_bound(get, ctx, v, "from", &out->from);
    bool to_ok = read_bound(get, ctx, v, "to", &out->to);
    if (from_ok && to_ok)
        precheck_range(v, out);
    int g = parse_choice(v, "granularity", optional_param(get, ctx, v, "granularity"),
                         granularities, "must be hour, day, week or month");
    out->granularity = granularities[g < 0 ? 1 : g];
    out->timezone = parse_timezone(v, optional_param(get, ctx, v, "tz"));
    out->store_id = parse_store_id(v, optional_param(get, ctx, v, "store_id"));
    out->channel = parse_choice(v, "channel", optional_param(get, ctx, v, "channel"), channels,
                                "must be online or pos");
    out->fulfillment = parse_choice(v, "fulfillment", optional_param(get, ctx, v, "fulfillment"),
                                    fulfillments, "must be pickup, delivery or dine_in");
    int by = parse_choice(v, "group_by", optional_param(get, ctx, v, "group_by"), group_bys,
                          "must be channel, fulfillment or store_id");
    out->group_by = by < 0 ? NULL : group_bys[by];
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
static bool offsets_on_quarter_hours(const struct db_sales_series *s)
{
    if (s->from.utc_offset_s % H_METRICS_QUARTER_HOUR_S ||
        s->to.utc_offset_s % H_METRICS_QUARTER_HOUR_S)
        return false;
    for (size_t i = 0; i < s->n_buckets; i++)
        if (s->buckets[i].utc_offset_s % H_METRICS_QUARTER_HOUR_S)
            return false;
    return true;
}

bool h_metrics_check_range(const struct h_metrics_sales_params *p, const struct db_sales_series *s,
                           struct v_errors *v)
{
    check_resolved_bound(v, "from", &p->from, &s->from);
    check_resolved_bound(v, "to", &p->to, &s->to);
    bool dates = p->from.is_date || p->to.is_date;
    int64_t max_range = H_METRICS_MAX_RANGE_S + (dates ? H_METRICS_DATE_RANGE_SLACK_S : 0);
    if (s->to.epoch_s <= s->from.epoch_s)
        v_fail(v, "to", "must be after from");
    else if (s->to.epoch_s - s->from.epoch_s > max_range)
        v_fail(v, "to", "must be at most 400 days after from");
    else if (!offsets_on_quarter_hours(s))
        v_fail(v, "tz", "has a UTC offset that is not a multiple of 15 minutes in this range");
    else if (s->n_buckets > H_METRICS_MAX_BUCKETS)
        v_fail(v, "granularity", "gives more than 10000 buckets for this range");
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

bool h_metrics_etag_matches(const char *if_none_match, const char *etag)
{
    if (!if_none_match || !etag)
        return false;
    size_t etag_len = strlen(etag);
    const char *p = if_none_match;
    for (;;) {
        p += strspn(p, " \t,");
        if (*p == '*')
            return true;
        if (strncmp(p, "W/", 2) == 0)
            p += 2; /* If-None-Match compares weakly */
        const char *end = *p == '"' ? strchr(p + 1, '"') : NULL;
        if (!end)
            return false;
        size_t len = (size_t)(end + 1 - p);
        if (len == etag_len && memcmp(p, etag, len) == 0)
            return true;
        p = end + 1;
    }
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

static json_t *bucket_json(const char *start, const struct db_sales_figures *f)
{
    return json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "start", start, "orders",
                     (json_int_t)f->orders, "cancelled_orders", (json_int_t)f->cancelled_orders,
                     "items_sold", (json_int_t)f->items_sold, "gross_sales_cents",
                     (json_int_t)f->gross_cents, "discounts_cents", (json_int_t)f->discount_cents,
                     "net_sales_cents", (json_int_t)f->net_cents, "tax_cents",
                     (json_int_t)f->tax_cents, "total_sales_cents", (json_int_t)f->total_cents,
                     "average_order_value_cents",
                     (json_int_t)h_metrics_round_half_up(f->net_cents, f->orders));
}

/* Every bucket of one series, zero-filled; cells hold that series' cells by bucket. */
static json_t *buckets_json(char *const *labels, size_t n_buckets,
                            const struct db_sales_cell *const *cells, size_t n_cells)
{
    static const struct db_sales_figures zero;
    json_t *buckets = json_array();
    size_t c = 0;
    for (size_t b = 0; b < n_buckets; b++) {
        const struct db_sales_figures *f = &zero;
        if (c < n_cells && cells[c]->bucket == b)
            f = &cells[c++]->figures;
        json_array_append_new(buckets, bucket_json(labels[b], f));
    }
    return buckets;
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

static json_t *group_json(struct arena *a, const char *group_by, int64_t key, json_t *buckets)
{
    json_t *k = strcmp(group_by, "store_id") == 0
                    ? json_integer((json_int_t)key)
                    : json_string(h_metrics_group_key_name(a, group_by, key));
    return json_pack("{s:o, s:o}", "key", k, "buckets", buckets);
}

/* One series per key with any order (cancelled ones included) in the range, sorted by key. */
static json_t *groups_json(struct arena *a, const struct db_sales_series *s, char *const *labels,
                           const char *group_by)
{
    struct sortable_cell *sorted = cells_by_group(a, s, group_by);
    const struct db_sales_cell **cells = arena_alloc(a, (s->n_cells + 1) * sizeof(*cells));
    json_t *groups = json_array();
    for (size_t start = 0, end; start < s->n_cells; start = end) {
        int64_t key = sorted[start].cell->key;
        bool any_orders = false;
        for (end = start; end < s->n_cells && sorted[end].cell->key == key; end++) {
            const struct db_sales_figures *f = &sorted[end].cell->figures;
            cells[end - start] = sorted[end].cell;
            any_orders = any_orders || f->orders > 0 || f->cancelled_orders > 0;
        }
        if (any_orders)
            json_array_append_new(
                groups, group_json(a, group_by, key,
                                   buckets_json(labels, s->n_buckets, cells, end - start)));
    }
    return groups;
}

static json_t *ungrouped_buckets_json(struct arena *a, const struct db_sales_series *s,
                                      char *const *labels)
{
    const struct db_sales_cell **cells = arena_alloc(a, (s->n_cells + 1) * sizeof(*cells));
    for (size_t i = 0; i < s->n_cells; i++)
        cells[i] = &s->cells[i];
    return buckets_json(labels, s->n_buckets, cells, s->n_cells);
}

static char *local_label(struct arena *a, const char *local, int32_t utc_offset_s)
{
    char *label = arena_alloc(a, H_METRICS_LABEL_MAX);
    h_metrics_format_local(local, utc_offset_s, label);
    return label;
}

static json_t *sales_json(struct srv_req *req, const struct sales_request *sr,
                          const struct db_sales_series *s)
{
    struct arena *a = req->arena;
    char **labels = arena_alloc(a, (s->n_buckets + 1) * sizeof(*labels));
    for (size_t i = 0; i < s->n_buckets; i++)
        labels[i] = local_label(a, s->buckets[i].local_start, s->buckets[i].utc_offset_s);
    char as_of[32];
    v_format_utc(s->as_of_us, as_of);
    json_t *body = json_pack(
        "{s:I, s:s, s:s, s:s, s:s, s:s, s:s}", "merchant_id", (json_int_t)req->merchant_id, "from",
        local_label(a, s->from.local, s->from.utc_offset_s), "to",
        local_label(a, s->to.local, s->to.utc_offset_s), "granularity", sr->params.granularity,
        "timezone", sr->timezone, "currency", sr->currency, "as_of", as_of);
    const char *group_by = sr->params.group_by;
    if (!group_by) {
        json_object_set_new(body, "buckets", ungrouped_buckets_json(a, s, labels));
        return body;
    }
    json_object_set_new(body, "group_by", json_string(group_by));
    json_object_set_new(body, "groups", groups_json(a, s, labels, group_by));
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
    for (int i = 0; i < ETAG_HEX_CHARS / 2; i++, p += 2)
        snprintf(p, 3, "%02x", md[i]);
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

static bool read_sales_params(struct srv_req *req, struct h_metrics_sales_params *p)
{
    struct v_errors v = {.arena = req->arena};
    const char *unknown = srv_unknown_query(req, h_metrics_sales_param_names);
    if (unknown)
        v_fail(&v, printable_name(req->arena, unknown), "unknown parameter");
    h_metrics_parse_sales_params(request_query, req, &v, p);
    if (v_ok(&v))
        return true;
    srv_reply_validation(req, v.list);
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
    srv_add_header(req, "Cache-Control", SALES_CACHE_CONTROL);
    if (h_metrics_etag_matches(srv_header(req, "If-None-Match"), e->etag))
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

/* Computes the response from the database into *entry; replies itself and returns false on
 * failure. *version is the data version the response reflects. */
static bool compute_sales(struct srv_req *req, const struct sales_request *sr, uint64_t min_lsn,
                          struct cache_entry *entry, int64_t *version)
{
    struct h_app *app = req->app;
    struct db_sales_query q = sales_query(req, sr);
    struct db_sales_series s;
    enum db_sales_refusal refusal;
    const char *role = NULL;
    enum db_status st = db_sales_series(app->db, min_lsn, req->arena, &q, &s, &role, &refusal);
    req->log_db = role;
    if (refusal == DB_SALES_UNKNOWN_TIMEZONE) {
        reply_field_error(req, "tz", "is not a time zone the database knows");
        return false;
    }
    if (st != DB_OK) {
        reply_db_failure(req, st);
        return false;
    }
    struct v_errors v = {.arena = req->arena};
    if (!h_metrics_check_range(&sr->params, &s, &v)) {
        srv_reply_validation(req, v.list);
        return false;
    }
    json_t *body = sales_json(req, sr, &s);
    entry->body = json_to_arena(req->arena, body, &entry->body_len);
    json_decref(body);
    entry->etag = etag_of(req->arena, entry->body, entry->body_len);
    *version = s.data_version;
    return true;
}

void h_metrics_sales(struct srv_req *req)
{
    struct h_app *app = req->app;
    struct sales_request sr;
    if (!read_sales_params(req, &sr.params))
        return;
    struct db_merchant m;
    enum db_status st = db_merchant_lookup(app->db, req->arena, req->merchant_id, &m);
    if (st != DB_OK) {
        reply_db_failure(req, st);
        return;
    }
    sr.timezone = sr.params.timezone ? sr.params.timezone : m.timezone;
    sr.currency = m.currency;
    const char *field =
        h_metrics_sales_cache_field(req->arena, &sr.params, sr.timezone, sr.currency);
    struct cache_entry entry;
    uint64_t lsn = 0;
    enum cache_result cached =
        cache_merchant_get(app->cache, req->merchant_id, field, req->arena, &entry, &lsn);
    req->log_cache = cache_result_name(cached);
    if (cached != CACHE_HIT) {
        uint64_t written = db_merchant_write_lsn(app->db, req->merchant_id);
        int64_t version;
        if (!compute_sales(req, &sr, written > lsn ? written : lsn, &entry, &version))
            return;
        cache_merchant_put(app->cache, req->merchant_id, field, version, &entry, SALES_CACHE_TTL_S);
    }
    reply_entry(req, &entry);
}
