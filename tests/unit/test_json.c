#include "server/buf.h"
#include "server/json.h"
#include "tests/unit/check.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What jansson writes for s: json_out_string must write the very same bytes. */
static int same_as_jansson(const char *s)
{
    json_t *v = json_string(s);
    char *want = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    struct buf got = {0};
    json_out_string(&got, s);
    int same = strlen(want) == got.len && memcmp(want, got.data, got.len) == 0;
    if (!same)
        fprintf(stderr, "# jansson %s, json_out_string %.*s\n", want, (int)got.len, got.data);
    free(want);
    json_decref(v);
    buf_free(&got);
    return same;
}

static void test_every_ascii_byte_escapes_as_jansson_does(void)
{
    for (int ch = 1; ch < 128; ch++) {
        char s[4] = {'a', (char)ch, 'z', 0};
        CHECK(same_as_jansson(s));
    }
}

static void test_utf8_and_runs(void)
{
    CHECK(same_as_jansson(""));
    CHECK(same_as_jansson("Café solo / ñandú \xe2\x80\xa8 \xf0\x9f\xa6\x80"));
    CHECK(same_as_jansson("\"quoted\" and \\back\\slashed\\"));
    CHECK(same_as_jansson("\x01\x1f\x7f tail"));
}

static void test_null_and_integers(void)
{
    struct buf b = {0};
    json_out_string(&b, NULL);
    CHECK_STR(b.data, "null");
    const int64_t values[] = {0, 7, -7, 1234567890123LL, INT64_MAX, INT64_MIN};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        char want[32];
        snprintf(want, sizeof(want), "%" PRId64, values[i]);
        b.len = 0;
        json_out_int(&b, values[i]);
        CHECK_STR(b.data, want);
    }
    buf_free(&b);
}

int main(void)
{
    TEST(test_every_ascii_byte_escapes_as_jansson_does);
    TEST(test_utf8_and_runs);
    TEST(test_null_and_integers);
    return check_done();
}
