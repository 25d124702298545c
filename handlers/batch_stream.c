#include "batch_stream.h"

#include "server/alloc.h"

#include <stdlib.h>
#include <string.h>

/* Where the JSON scanner is in {"orders": [ order, order ]}. */
enum {
    EXPECT_OBJECT,   /* { */
    EXPECT_KEY,      /* "orders" */
    IN_KEY,          /* inside the key string */
    EXPECT_COLON,    /* : */
    EXPECT_ARRAY,    /* [ */
    EXPECT_ORDER,    /* an order, or ] right after [ */
    IN_ORDER,        /* inside an order's bytes */
    AFTER_ORDER,     /* , or ] */
    EXPECT_END,      /* } */
    DONE,            /* only whitespace may follow */
};

static const char ORDERS_KEY[] = "orders";

void batch_stream_init(struct batch_stream *s, enum batch_format format, size_t max_order_bytes,
                       batch_order_fn on_order, void *ud)
{
    memset(s, 0, sizeof(*s));
    s->format = format;
    s->max_order_bytes = max_order_bytes;
    s->on_order = on_order;
    s->ud = ud;
    s->state = format == BATCH_JSON ? EXPECT_OBJECT : IN_ORDER;
}

void batch_stream_free(struct batch_stream *s)
{
    free(s->buf);
    s->buf = NULL;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void keep(struct batch_stream *s, char c)
{
    if (s->overflow)
        return;
    if (s->len == s->max_order_bytes) {
        s->overflow = true;
        return;
    }
    if (s->len == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        if (s->cap > s->max_order_bytes)
            s->cap = s->max_order_bytes;
        s->buf = xrealloc(s->buf, s->cap);
    }
    s->buf[s->len++] = c;
}

static bool emit(struct batch_stream *s)
{
    bool go_on = s->on_order(s->ud, s->overflow ? NULL : s->buf, s->len, s->overflow);
    s->len = 0;
    s->overflow = false;
    return go_on;
}

static bool fail(struct batch_stream *s, const char *why)
{
    s->error = why;
    return false;
}

/* NDJSON: one order per line; blank lines are skipped. */
static bool feed_ndjson(struct batch_stream *s, char c)
{
    if (c != '\n') {
        keep(s, c);
        return true;
    }
    size_t n = s->len;
    while (n > 0 && is_space(s->buf[n - 1]))
        n--;
    if (n == 0 && !s->overflow) {
        s->len = 0;
        return true;
    }
    s->len = s->overflow ? s->len : n;
    return emit(s);
}

static bool end_order(struct batch_stream *s)
{
    s->state = AFTER_ORDER;
    return emit(s);
}

/* Inside an order: track strings and nesting to find where it ends. */
static bool feed_order_byte(struct batch_stream *s, char c)
{
    keep(s, c);
    if (s->in_string) {
        if (s->escaped)
            s->escaped = false;
        else if (c == '\\')
            s->escaped = true;
        else if (c == '"') {
            s->in_string = false;
            if (s->depth == 0)
                return end_order(s); /* an order that is a bare string */
        }
        return true;
    }
    if (c == '"')
        s->in_string = true;
    else if (c == '{' || c == '[')
        s->depth++;
    else if ((c == '}' || c == ']') && --s->depth == 0)
        return end_order(s);
    return true;
}

/* A scalar order (a number, true, ...) ends at , ] or whitespace: hand it over as it is. */
static bool end_scalar_order(struct batch_stream *s, char c)
{
    if (!(c == ',' || c == ']' || is_space(c)))
        return feed_order_byte(s, c);
    s->state = AFTER_ORDER;
    if (!emit(s))
        return false;
    return c == ',' ? (s->state = EXPECT_ORDER, true) : c == ']' ? (s->state = EXPECT_END, true)
                                                                 : true;
}

static bool feed_json(struct batch_stream *s, char c)
{
    switch (s->state) {
    case EXPECT_OBJECT:
        return is_space(c) || (c == '{' ? (s->state = EXPECT_KEY, true)
                                        : fail(s, "the body must be {\"orders\": [...]}"));
    case EXPECT_KEY:
        if (is_space(c))
            return true;
        if (c == '"' && !s->key_seen) {
            s->state = IN_KEY;
            s->len = 0;
            return true;
        }
        return fail(s, "the body must be {\"orders\": [...]} with no other member");
    case IN_KEY:
        if (c != '"') {
            if (s->len >= sizeof(ORDERS_KEY) - 1 || c != ORDERS_KEY[s->len])
                return fail(s, "the body must have only the member \"orders\"");
            s->len++;
            return true;
        }
        if (s->len != sizeof(ORDERS_KEY) - 1)
            return fail(s, "the body must have only the member \"orders\"");
        s->len = 0;
        s->key_seen = true;
        s->state = EXPECT_COLON;
        return true;
    case EXPECT_COLON:
        return is_space(c) || (c == ':' ? (s->state = EXPECT_ARRAY, true)
                                        : fail(s, "malformed JSON after \"orders\""));
    case EXPECT_ARRAY:
        return is_space(c) || (c == '[' ? (s->state = EXPECT_ORDER, s->depth = -1, true)
                                        : fail(s, "\"orders\" must be an array"));
    case EXPECT_ORDER:
        if (is_space(c))
            return true;
        if (c == ']' && s->depth == -1) {
            s->state = EXPECT_END;
            return true;
        }
        if (c == ']' || c == ',')
            return fail(s, "an order is missing between commas");
        s->depth = 0;
        s->state = IN_ORDER;
        if (c == '{' || c == '[' || c == '"')
            return feed_order_byte(s, c);
        keep(s, c);
        return true;
    case IN_ORDER:
        if (s->depth == 0 && !s->in_string)
            return end_scalar_order(s, c);
        return feed_order_byte(s, c);
    case AFTER_ORDER:
        if (is_space(c))
            return true;
        if (c == ',') {
            s->state = EXPECT_ORDER;
            return true;
        }
        return c == ']' ? (s->state = EXPECT_END, true)
                        : fail(s, "orders must be separated by commas");
    case EXPECT_END:
        return is_space(c) || (c == '}' ? (s->state = DONE, true)
                                        : fail(s, "the body must have only the member \"orders\""));
    default:
        return is_space(c) || fail(s, "unexpected bytes after the end of the body");
    }
}

bool batch_stream_feed(struct batch_stream *s, const char *data, size_t len)
{
    if (s->error)
        return false;
    for (size_t i = 0; i < len; i++) {
        bool ok = s->format == BATCH_NDJSON ? feed_ndjson(s, data[i]) : feed_json(s, data[i]);
        if (!ok)
            return false;
    }
    return true;
}

bool batch_stream_finish(struct batch_stream *s)
{
    if (s->error)
        return false;
    if (s->format == BATCH_NDJSON)
        return (s->len == 0 && !s->overflow) || feed_ndjson(s, '\n');
    return s->state == DONE || fail(s, "the body ended before the end of {\"orders\": [...]}");
}
