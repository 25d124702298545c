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

int main(void)
{
    TEST(test_timezones);
    TEST(test_currencies);
    TEST(test_unknown_fields_and_strings);
    TEST(test_string_length_counts_characters);
    return check_done();
}
