#include "handlers/metrics.h"
#include "server/arena.h"
#include "tests/unit/check.h"

#include <stdbool.h>
#include <string.h>

/* A query string split into name=value pairs (no decoding: the tests use plain text). */
struct fake_query {
    const char *pairs[16][2];
    size_t n;
};

static const char *fake_get(void *ctx, const char *name, bool *repeated)
{
    struct fake_query *q = ctx;
    const char *found = NULL;
    *repeated = false;
    for (size_t i = 0; i < q->n; i++) {
        if (strcmp(q->pairs[i][0], name) != 0)
            continue;
        if (found) {
            *repeated = true;
            return NULL;
        }
        found = q->pairs[i][1];
    }
    return found;
}

/* Parses "a=1&b=2" into q (the text must outlive q). */
static void split_query(char *text, struct fake_query *q)
{
    q->n = 0;
    for (char *pair = strtok(text, "&"); pair && q->n < 16; pair = strtok(NULL, "&")) {
        char *eq = strchr(pair, '=');
        if (eq)
            *eq = '\0';
        q->pairs[q->n][0] = pair;
        q->pairs[q->n][1] = eq ? eq + 1 : "";
        q->n++;
    }
}

/* Parses query; returns the first failing field ("" when valid). */
static const char *parse(struct arena *a, const char *query, struct h_metrics_sales_params *p)
{
    char *text = arena_strdup(a, query);
    struct fake_query q;
    split_query(text, &q);
    struct v_errors v = {.arena = a};
    if (h_metrics_parse_sales_params(fake_get, &q, &v, p))
        return "";
    json_t *first = json_array_get(v.list, 0);
    const char *field = arena_strdup(a, json_string_value(json_object_get(first, "field")));
    json_decref(v.list);
    return field;
}

static void test_parse_valid(void)
{
    struct arena *a = arena_new();
    struct h_metrics_sales_params p;
    CHECK_STR(parse(a, "from=2026-10-20&to=2026-10-27", &p), "");
    CHECK(p.from.is_date && p.to.is_date);
    CHECK_STR(p.from.date, "2026-10-20");
    CHECK_STR(p.granularity, "day");
    CHECK(p.timezone == NULL && p.store_id == 0 && p.channel == -1 && p.fulfillment == -1);
    CHECK(p.group_by == NULL);

    CHECK_STR(parse(a,
                    "from=2026-10-20T10:15:00+05:45&to=2026-10-21T00:00:00Z&granularity=hour&"
                    "tz=Asia/Kathmandu&store_id=17&channel=pos&fulfillment=dine_in&"
                    "group_by=store_id",
                    &p),
              "");
    CHECK(!p.from.is_date);
    CHECK_INT(p.from.epoch_s, 1792470600); /* 2026-10-20T04:30:00Z */
    CHECK_INT(p.to.epoch_s, 1792540800);
    CHECK_STR(p.granularity, "hour");
    CHECK_STR(p.timezone, "Asia/Kathmandu");
    CHECK_INT(p.store_id, 17);
    CHECK_INT(p.channel, 1);
    CHECK_INT(p.fulfillment, 2);
    CHECK_STR(p.group_by, "store_id");
    /* zero fractional seconds are still on the quarter hour */
    CHECK_STR(parse(a, "from=2026-10-20T00:00:00.000Z&to=2026-10-20T00:15:00Z", &p), "");
    arena_free(a);
}

static void test_parse_failures(void)
{
    struct arena *a = arena_new();
    struct h_metrics_sales_params p;
    static const char *const cases[][2] = {
        {"to=2026-10-27", "from"},
        {"from=2026-10-20", "to"},
        {"from=2026-10-20&from=2026-10-21&to=2026-10-27", "from"},
        {"from=2026-10-20T00:00:00&to=2026-10-27", "from"},  /* no offset */
        {"from=2026-10-20T00:07:00Z&to=2026-10-27", "from"}, /* not a quarter hour */
        {"from=2026-10-20T00:15:30Z&to=2026-10-27", "from"},
        {"from=2026-10-20T00:15:00.5Z&to=2026-10-27", "from"},
        {"from=2026-02-30&to=2026-10-27", "from"},
        {"from=0000-01-01&to=0000-01-02", "from"},
        {"from=2026-10-20&to=2026-10-20T00:10:00Z", "to"},
        {"from=2026-10-20&to=2026-10-19", "to"}, /* dates: exact order */
        {"from=2026-10-20T00:00:00Z&to=2026-10-20T00:00:00Z", "to"},
        {"from=2025-01-01T00:00:00Z&to=2026-02-05T00:15:00Z", "to"}, /* 400 days + 15 min */
        {"from=2025-10-01&to=2026-11-06", "to"},                     /* 401 days */
        {"from=2026-10-20&to=2026-10-27&granularity=year", "granularity"},
        {"from=2026-10-20&to=2026-10-27&granularity=", "granularity"},
        {"from=2026-10-20&to=2026-10-27&tz=Mars/Olympus", "tz"},
        {"from=2026-10-20&to=2026-10-27&tz=../etc/passwd", "tz"},
        {"from=2026-10-20&to=2026-10-27&store_id=0", "store_id"},
        {"from=2026-10-20&to=2026-10-27&store_id=-3", "store_id"},
        {"from=2026-10-20&to=2026-10-27&store_id=+3", "store_id"},
        {"from=2026-10-20&to=2026-10-27&store_id=1.5", "store_id"},
        {"from=2026-10-20&to=2026-10-27&store_id=9223372036854775808", "store_id"},
        {"from=2026-10-20&to=2026-10-27&channel=web", "channel"},
        {"from=2026-10-20&to=2026-10-27&channel=online&channel=pos", "channel"},
        {"from=2026-10-20&to=2026-10-27&fulfillment=drive_thru", "fulfillment"},
        {"from=2026-10-20&to=2026-10-27&group_by=promo_code", "group_by"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *field = parse(a, cases[i][0], &p);
        if (strcmp(field, cases[i][1]) != 0)
            printf("# case %zu: %s\n", i, cases[i][0]);
        CHECK_STR(field, cases[i][1]);
    }
    /* the limits themselves are allowed */
    CHECK_STR(parse(a, "from=2025-01-01T00:00:00Z&to=2026-02-05T00:00:00Z", &p), "");
    CHECK_STR(parse(a, "from=2025-10-01&to=2026-11-05", &p), "");
    CHECK_STR(parse(a, "from=2026-10-20&to=2026-10-27&store_id=9223372036854775807", &p), "");
    arena_free(a);
}

static struct db_sales_series series_of(int64_t from_s, int64_t to_s, size_t n_buckets,
                                        struct db_sales_bucket *buckets)
{
    struct db_sales_series s = {.from = {from_s, "x", 3600}, .to = {to_s, "y", 3600}};
    s.n_buckets = n_buckets;
    s.buckets = buckets;
    return s;
}

static const char *check_range(struct arena *a, const char *query, const struct db_sales_series *s)
{
    struct h_metrics_sales_params p;
    const char *parsed = parse(a, query, &p);
    if (*parsed)
        return parsed;
    struct v_errors v = {.arena = a};
    if (h_metrics_check_range(&p, s, &v))
        return "";
    const char *field =
        arena_strdup(a, json_string_value(json_object_get(json_array_get(v.list, 0), "field")));
    json_decref(v.list);
    return field;
}

static void test_check_range(void)
{
    struct arena *a = arena_new();
    static struct db_sales_bucket buckets[10001];
    for (size_t i = 0; i < 10001; i++)
        buckets[i] = (struct db_sales_bucket){"2026-10-20T00:00:00", 3600};
    const char *dates = "from=2025-10-01&to=2026-11-05";
    int64_t from = 1759269600; /* 2025-10-01T00:00:00+02:00 */
    struct db_sales_series s = series_of(from, from + 400 * 86400 + 3600, 1, buckets);
    CHECK_STR(check_range(a, dates, &s), ""); /* 400 days and the DST hour */
    s = series_of(from, from + 400 * 86400 + 4500, 1, buckets);
    CHECK_STR(check_range(a, dates, &s), "to");
    s = series_of(from, from, 1, buckets);
    CHECK_STR(check_range(a, "from=2026-10-20&to=2026-10-21", &s), "to");
    s = series_of(from + 60, from + 86400, 1, buckets); /* local midnight off the grid */
    CHECK_STR(check_range(a, "from=2026-10-20&to=2026-10-21", &s), "from");
    s = series_of(from, from + 86400, 10000, buckets);
    CHECK_STR(check_range(a, "from=2026-10-20&to=2026-10-21", &s), "");
    s = series_of(from, from + 86400, 10001, buckets);
    CHECK_STR(check_range(a, "from=2026-10-20&to=2026-10-21", &s), "granularity");
    struct db_sales_bucket lmt[2] = {{"1900-01-01T00:00:00", -884}, {"1900-01-02T00:00:00", -884}};
    s = series_of(from, from + 86400, 2, lmt);
    CHECK_STR(check_range(a, "from=2026-10-20T00:00:00Z&to=2026-10-21T00:00:00Z", &s), "tz");
    arena_free(a);
}

static void test_round_half_up(void)
{
    CHECK_INT(h_metrics_round_half_up(5, 2), 3);
    CHECK_INT(h_metrics_round_half_up(4, 3), 1);
    CHECK_INT(h_metrics_round_half_up(5, 3), 2);
    CHECK_INT(h_metrics_round_half_up(1, 2), 1);
    CHECK_INT(h_metrics_round_half_up(7, 7), 1);
    CHECK_INT(h_metrics_round_half_up(0, 4), 0);
    CHECK_INT(h_metrics_round_half_up(1234, 0), 0);
    CHECK_INT(h_metrics_round_half_up(-5, 2), -2); /* -2.5 rounds up to -2 */
    CHECK_INT(h_metrics_round_half_up(-7, 4), -2); /* -1.75 */
    CHECK_INT(h_metrics_round_half_up(-5, 4), -1); /* -1.25 */
    CHECK_INT(h_metrics_round_half_up(INT64_MAX, 2), INT64_MAX / 2 + 1);
    CHECK_INT(h_metrics_round_half_up(INT64_MAX, INT64_MAX), 1);
    CHECK_INT(h_metrics_round_half_up(INT64_MIN, INT64_MAX), -1);
}

static void test_format_local(void)
{
    char out[H_METRICS_LABEL_MAX];
    h_metrics_format_local("2026-10-25T00:00:00", 7200, out);
    CHECK_STR(out, "2026-10-25T00:00:00+02:00");
    h_metrics_format_local("2026-10-25T00:00:00", 0, out);
    CHECK_STR(out, "2026-10-25T00:00:00+00:00");
    h_metrics_format_local("2026-10-20T05:00:00", 20700, out);
    CHECK_STR(out, "2026-10-20T05:00:00+05:45");
    h_metrics_format_local("2026-11-01T00:00:00", -12600, out);
    CHECK_STR(out, "2026-11-01T00:00:00-03:30");
    h_metrics_format_local("2026-11-02T00:00:00", -9000, out);
    CHECK_STR(out, "2026-11-02T00:00:00-02:30");
}

static void test_cache_field_and_keys(void)
{
    struct arena *a = arena_new();
    struct h_metrics_sales_params p, q;
    parse(a, "from=2026-10-20&to=2026-10-20T22:00:00Z&channel=pos", &p);
    /* the same instant written another way, parameters in another order: the same field */
    parse(a, "channel=pos&to=2026-10-21T00:00:00+02:00&from=2026-10-20", &q);
    CHECK_STR(h_metrics_sales_cache_field(a, &p, "Europe/Madrid", "EUR"),
              h_metrics_sales_cache_field(a, &q, "Europe/Madrid", "EUR"));
    CHECK(strcmp(h_metrics_sales_cache_field(a, &p, "Europe/Madrid", "EUR"),
                 h_metrics_sales_cache_field(a, &p, "Europe/Paris", "EUR")) != 0);
    CHECK(strcmp(h_metrics_sales_cache_field(a, &p, "Europe/Madrid", "EUR"),
                 h_metrics_sales_cache_field(a, &p, "Europe/Madrid", "USD")) != 0);
    CHECK_STR(h_metrics_group_key_name(a, "channel", 1), "pos");
    CHECK_STR(h_metrics_group_key_name(a, "fulfillment", 2), "dine_in");
    CHECK_STR(h_metrics_group_key_name(a, "store_id", 17), "17");
    arena_free(a);
}

int main(void)
{
    TEST(test_parse_valid);
    TEST(test_parse_failures);
    TEST(test_check_range);
    TEST(test_round_half_up);
    TEST(test_format_local);
    TEST(test_cache_field_and_keys);
    return check_done();
}
