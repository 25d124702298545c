#include "db/copy.h"
#include "tests/unit/check.h"

#include <string.h>

static int bytes_equal(const struct buf *b, const void *want, size_t n)
{
    return b->len == n && memcmp(b->data, want, n) == 0;
}

static void test_header_and_trailer(void)
{
    struct buf b = {0};
    copy_begin(&b);
    copy_end(&b);
    static const unsigned char want[] = {'P',  'G',  'C', 'O', 'P', 'Y', '\n', 0xff,
                                         '\r', '\n', 0,   0,   0,   0,   0, /* flags */
                                         0,    0,    0,   0,                /* header extension */
                                         0xff, 0xff};                       /* end of data */
    CHECK(bytes_equal(&b, want, sizeof(want)));
    buf_free(&b);
}

static void test_fields_are_big_endian_with_lengths(void)
{
    struct buf b = {0};
    copy_row(&b, 4);
    copy_int8(&b, -2);
    copy_int2(&b, 258);
    copy_text(&b, "ñ");
    copy_text(&b, NULL);
    static const unsigned char want[] = {0,    4, /* 4 fields */
                                         0,    0,    0,    8,    0xff, 0xff,
                                         0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, /* int8 -2 */
                                         0,    0,    0,    2,    1,    2,    /* int2 258 */
                                         0,    0,    0,    2,    0xc3, 0xb1, /* "ñ" in UTF-8 */
                                         0xff, 0xff, 0xff, 0xff};            /* NULL */
    CHECK(bytes_equal(&b, want, sizeof(want)));
    buf_free(&b);
}

static void test_timestamptz_counts_from_2000(void)
{
    struct buf b = {0};
    copy_timestamptz(&b, 946684800000000LL + 1); /* 2000-01-01T00:00:00.000001Z */
    static const unsigned char one[] = {0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1};
    CHECK(bytes_equal(&b, one, sizeof(one)));
    b.len = 0;
    copy_timestamptz(&b, 0); /* 1970: before PostgreSQL's epoch */
    static const unsigned char epoch[] = {0,    0,    0,    8,    0xff, 0xfc, 0xa2,
                                          0xfe, 0xc4, 0xc8, 0x20, 0x00}; /* -946684800000000 */
    CHECK(bytes_equal(&b, epoch, sizeof(epoch)));
    buf_free(&b);
}

static void test_bytea_takes_any_bytes(void)
{
    struct buf b = {0};
    copy_bytea(&b, "\0\1", 2);
    static const unsigned char want[] = {0, 0, 0, 2, 0, 1};
    CHECK(bytes_equal(&b, want, sizeof(want)));
    buf_free(&b);
}

int main(void)
{
    TEST(test_header_and_trailer);
    TEST(test_fields_are_big_endian_with_lengths);
    TEST(test_timestamptz_counts_from_2000);
    TEST(test_bytea_takes_any_bytes);
    return check_done();
}
