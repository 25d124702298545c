#include "handlers/batch_stream.h"
#include "tests/unit/check.h"

#include <stdio.h>
#include <string.h>

static char seen[16][256];
static int n_seen, n_large;

static bool collect(void *ud, const char *data, size_t len, bool too_large)
{
    if (too_large)
        n_large++;
    else if (n_seen < 16)
        snprintf(seen[n_seen++], sizeof(seen[0]), "%.*s", (int)len, data);
    return true;
}

/* Feeds text one byte at a time (the worst split) and returns whether it was accepted. */
static bool run(enum batch_format f, const char *text, size_t max)
{
    struct batch_stream s;
    n_seen = n_large = 0;
    batch_stream_init(&s, f, max, collect, NULL);
    bool ok = true;
    for (size_t i = 0; ok && text[i]; i++)
        ok = batch_stream_feed(&s, text + i, 1);
    ok = ok && batch_stream_finish(&s);
    batch_stream_free(&s);
    return ok;
}

static void test_json_orders_are_split(void)
{
    CHECK(run(BATCH_JSON, " {\"orders\" : [ {\"a\":\"}\\\"{\"}, {\"b\":[1,{\"c\":2}]} ,7, \"x\"] } ",
              1024));
    CHECK_INT(n_seen, 4);
    CHECK_STR(seen[0], "{\"a\":\"}\\\"{\"}");
    CHECK_STR(seen[1], "{\"b\":[1,{\"c\":2}]}");
    CHECK_STR(seen[2], "7");
    CHECK_STR(seen[3], "\"x\"");
}

static void test_json_empty_and_malformed(void)
{
    CHECK(run(BATCH_JSON, "{\"orders\":[]}", 64));
    CHECK_INT(n_seen, 0);
    CHECK(!run(BATCH_JSON, "{\"orders\":[{}],}", 64));
    CHECK(!run(BATCH_JSON, "{\"orders\":[{},]}", 64));
    CHECK(!run(BATCH_JSON, "{\"orders\":[,{}]}", 64));
    CHECK(!run(BATCH_JSON, "{\"order\":[]}", 64));
    CHECK(!run(BATCH_JSON, "{\"ordersx\":[]}", 64));
    CHECK(!run(BATCH_JSON, "{\"orders\":[], \"other\": 1}", 64));
    CHECK(!run(BATCH_JSON, "[{}]", 64));
    CHECK(!run(BATCH_JSON, "{\"orders\":[{}]", 64));
    CHECK(!run(BATCH_JSON, "{\"orders\":[{}]} x", 64));
    CHECK(!run(BATCH_JSON, "{\"orders\":{}}", 64));
}

static void test_json_large_order_is_flagged_not_kept(void)
{
    CHECK(run(BATCH_JSON, "{\"orders\":[{\"a\":\"0123456789\"},{}]}", 8));
    CHECK_INT(n_large, 1);
    CHECK_INT(n_seen, 1);
    CHECK_STR(seen[0], "{}");
}

static void test_ndjson_lines(void)
{
    CHECK(run(BATCH_NDJSON, "{\"a\":1}\n\n  \n{\"b\":2}\r\n{\"c\":3}", 64));
    CHECK_INT(n_seen, 3);
    CHECK_STR(seen[0], "{\"a\":1}");
    CHECK_STR(seen[1], "{\"b\":2}");
    CHECK_STR(seen[2], "{\"c\":3}");
    CHECK(run(BATCH_NDJSON, "{\"a\":\"0123456789\"}\n{}\n", 8));
    CHECK_INT(n_large, 1);
    CHECK_INT(n_seen, 1);
}

int main(void)
{
    TEST(test_json_orders_are_split);
    TEST(test_json_empty_and_malformed);
    TEST(test_json_large_order_is_flagged_not_kept);
    TEST(test_ndjson_lines);
    return check_done();
}
