#include "copy.h"

#include <string.h>

/* PostgreSQL's epoch, 2000-01-01 UTC, in microseconds since 1970. */
static const int64_t PG_EPOCH_UNIX_US = 946684800000000LL;

static void put_be(struct buf *b, uint64_t v, int bytes)
{
    char out[8];
    for (int i = bytes - 1; i >= 0; i--, v >>= 8)
        out[i] = (char)(v & 0xff);
    buf_append(b, out, (size_t)bytes);
}

void copy_begin(struct buf *b)
{
    static const char signature[11] = "PGCOPY\n\377\r\n";
    buf_append(b, signature, sizeof(signature)); /* its last byte is the NUL */
    put_be(b, 0, 4);                             /* flags: no OIDs */
    put_be(b, 0, 4);                             /* header extension: none */
}

void copy_row(struct buf *b, int n)
{
    put_be(b, (uint64_t)n, 2);
}

void copy_int8(struct buf *b, int64_t v)
{
    put_be(b, 8, 4);
    put_be(b, (uint64_t)v, 8);
}

void copy_int2(struct buf *b, int16_t v)
{
    put_be(b, 2, 4);
    put_be(b, (uint16_t)v, 2);
}

void copy_bytea(struct buf *b, const void *bytes, size_t n)
{
    put_be(b, (uint64_t)n, 4);
    buf_append(b, bytes, n);
}

void copy_text(struct buf *b, const char *s)
{
    if (!s)
        put_be(b, 0xffffffffu, 4); /* -1: NULL */
    else
        copy_bytea(b, s, strlen(s));
}

void copy_timestamptz(struct buf *b, int64_t unix_us)
{
    copy_int8(b, unix_us - PG_EPOCH_UNIX_US);
}

void copy_end(struct buf *b)
{
    put_be(b, 0xffff, 2); /* -1: no more rows */
}
