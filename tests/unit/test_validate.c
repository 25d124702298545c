#include "handlers/validate.h"
#include "server/arena.h"
#include "tests/unit/check.h"

static void test_timezones(void)
{
    CHECK(v_is_timezone("Europe/Madrid"));
    CHECK(v_is_timezone("Asia/Kathmandu"));
    CHECK(v_is_timezone("America/St_Johns"));
    CHECK(v_is_timezone("America/Argentina/Buenos_Aires"));
    CHECK(v_is_timezone("UTC"));
    CHECK(!v_is_timezone("Europe/Atlantis"));
    CHECK(!v_is_timezone(""));
    CHECK(!v_is_timezone("../../etc/passwd"));
    CHECK(!v_is_timezone("/etc/passwd"));
    CHECK(!v_is_timezone("Europe/../../etc/passwd"));
    CHECK(!v_is_timezone("Europe"));       /* a directory, not a zone */
    CHECK(!v_is_timezone("posix/Europe/Madrid"));
    CHECK(!v_is_timezone("localtime"));
    CHECK(!v_is_timezone("Europe/Madrid "));
    CHECK(!v_is_timezone("CET")); /* PostgreSQL would read it as a fixed +01:00 */
    CHECK(!v_is_timezone("WET"));
}

static void test_currencies(void)
{
    CHECK(v_is_currency("EUR"));
    CHECK(v_is_currency("USD"));
    CHECK(v_is_currency("AED"));
    CHECK(v_is_currency("ZWG"));
    CHECK(!v_is_currency("eur"));
    CHECK(!v_is_currency("EURO"));
    CHECK(!v_is_currency("XAU")); /* gold is not money a merchant sells in */
    CHECK(!v_is_currency("ABC"));
    CHECK(!v_is_currency(""));
}

static void test_unknown_fields_and_strings(void)
{
    struct arena *a = arena_new();
    struct v_errors v = {.arena = a};
    json_t *obj = json_pack("{s:s, s:i, s:s, s:s}", "name", "ok", "nmae", 1, "empty", "", "ctl",
                            "a\tb");
    static const char *const known[] = {"name", "empty", "ctl", NULL};
    v_no_unknown_fields(&v, obj, "customer", known);
    CHECK_STR(v_string(&v, obj, "customer", "name", 10), "ok");
    CHECK(v_string(&v, obj, "customer", "empty", 10) == NULL);
    CHECK(v_string(&v, obj, "customer", "ctl", 10) == NULL);
    CHECK(v_string(&v, obj, "customer", "missing", 10) == NULL);
    CHECK(!v_ok(&v));
    CHECK_INT(json_array_size(v.list), 4);
    CHECK_STR(json_string_value(json_object_get(json_array_get(v.list, 0), "field")),
              "customer.nmae");
    CHECK_STR(json_string_value(json_object_get(json_array_get(v.list, 3), "field")),
              "customer.missing");
    json_decref(v.list);
    json_decref(obj);
    arena_free(a);
}

static void test_string_length_counts_characters(void)
{
    struct arena *a = arena_new();
    struct v_errors v = {.arena = a};
    json_t *obj = json_pack("{s:s}", "name", "Caf\xc3\xa9"); /* 4 characters, 5 bytes */
    CHECK(v_string(&v, obj, "", "name", 4) != NULL);
    CHECK(v_ok(&v));
    CHECK(v_string(&v, obj, "", "name", 3) == NULL);
    CHECK(!v_ok(&v));
    json_decref(v.list);
    json_decref(obj);
    arena_free(a);
}

/* Every accepted timestamp is written back in RFC 3339 as the same instant (found by
 * tests/fuzz: delivery events of the year 1 came back as "1-01-01T00:00:00Z"). */
static void test_timestamps_render_back(void)
{
    static const char *const cases[][2] = {
        {"2026-11-21T12:31:07+01:00", "2026-11-21T11:31:07Z"},
        {"2026-11-21T17:59:59.123456+05:45", "2026-11-21T12:14:59.123456Z"},
        {"2024-02-29t23:59:59.5-12:00", "2024-03-01T11:59:59.500Z"},
        {"0001-01-01T00:00:00+00:00", "0001-01-01T00:00:00Z"},
        {"0999-12-31T23:59:59Z", "0999-12-31T23:59:59Z"},
        {"0000-01-01T00:00:00Z", "0000-01-01T00:00:00Z"},
        {"9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999Z"},
        {"1969-12-31T23:59:59.000001Z", "1969-12-31T23:59:59.000001Z"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int64_t us = 0, back = 0;
        char text[32] = "";
        CHECK(v_parse_timestamp(cases[i][0], &us));
        v_format_utc(us, text);
        CHECK_STR(text, cases[i][1]);
        CHECK(v_parse_timestamp(text, &back));
        CHECK_INT(back, us);
    }
    int64_t us;
    /* Valid local times whose UTC instant has no four-digit year. */
    CHECK(!v_parse_timestamp("0000-01-01T00:30:00+01:00", &us));
    CHECK(!v_parse_timestamp("9999-12-31T23:59:59-23:59", &us));
    CHECK(!v_parse_timestamp("2026-11-21T10:00:00", &us));
    CHECK(!v_parse_timestamp("2023-02-29T00:00:00Z", &us));
}

int main(void)
{
    TEST(test_timezones);
    TEST(test_currencies);
    TEST(test_unknown_fields_and_strings);
    TEST(test_string_length_counts_characters);
    TEST(test_timestamps_render_back);
    return check_done();
}
