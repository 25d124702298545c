/* fuzz_batch.c - libFuzzer target for the batch parser (handlers/batch_stream.c): the input is a
 * POST /v1/merchants/{id}/order-batches body, read both as {"orders": [...]} JSON and as NDJSON.
 *
 * Properties besides the sanitizers: how the body is cut into pieces on the wire must not
 * matter (whole, byte by byte and at input-derived points all give the same orders and the
 * same verdict); no order handed over is longer than the limit; and each order goes on, as in
 * handlers/batches.c, through jansson and order_from_json. */
#include "db/orders.h"
#include "handlers/batch_stream.h"
#include "handlers/order_json.h"
#include "server/arena.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum {
    REAL_ORDER_LIMIT = 256 * 1024, /* handlers/batches.c: BATCH_ORDER_MAX_BYTES */
    SMALL_ORDER_LIMIT = 48,        /* small enough that fuzzed orders hit it */
    MAX_RECORDED = 64,
};

static const int64_t NOW_US = 1795264800LL * 1000000; /* 2026-11-21T12:40:00Z */

/* What one pass over the body produced. */
struct outcome {
    size_t limit;
    bool validate; /* run every order through order_from_json (once per input is enough) */
    bool ok;
    const char *error;
    size_t n_orders, n_too_large;
    uint64_t digest; /* of every order's bytes and boundaries, in order */
};

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ULL;
    return h;
}

/* Does with an order what handlers/batches.c does: parse, validate, keep a copy. */
static void validate_order(const char *data, size_t len)
{
    json_t *obj = json_loadb(data, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, NULL);
    if (json_is_object(obj)) {
        struct arena *a = arena_new();
        struct v_errors v = {.arena = a};
        struct order_rules rules = order_rules_for(42, "EUR", NOW_US, 0);
        struct db_order o;
        if (order_from_json(&v, obj, "", &rules, &o))
            db_order_copy(a, &o);
        json_decref(v.list);
        arena_free(a);
    }
    json_decref(obj);
}

static bool take_order(void *ud, const char *data, size_t len, bool too_large)
{
    struct outcome *out = ud;
    if (too_large ? data != NULL : data == NULL || len == 0 || len > out->limit) {
        fprintf(stderr, "order handed over with len %zu, too_large %d, limit %zu\n", len, too_large,
                out->limit);
        abort();
    }
    out->n_orders++;
    out->n_too_large += too_large;
    out->digest = fnv1a(out->digest, &len, sizeof(len));
    if (!too_large) {
        out->digest = fnv1a(out->digest, data, len);
        if (out->validate)
            validate_order(data, len);
    }
    return true;
}

/* Feeds the body in pieces: step 0 whole, 1 byte by byte, else lengths from the bytes. */
static struct outcome run(enum batch_format format, size_t limit, const uint8_t *data, size_t size,
                          int step, bool validate)
{
    struct outcome out = {.limit = limit, .validate = validate, .digest = 14695981039346656037ULL};
    struct batch_stream s;
    batch_stream_init(&s, format, limit, take_order, &out);
    bool ok = true;
    for (size_t i = 0; ok && i < size;) {
        size_t n = step == 0 ? size : step == 1 ? 1 : 1 + (data[i] * 7u + i) % 23;
        if (n > size - i)
            n = size - i;
        ok = batch_stream_feed(&s, (const char *)data + i, n);
        i += n;
    }
    out.ok = ok && batch_stream_finish(&s);
    out.error = s.error;
    batch_stream_free(&s);
    return out;
}

static void check_same(const struct outcome *a, const struct outcome *b, const char *what)
{
    bool same_error =
        (a->error == NULL) == (b->error == NULL) && (!a->error || strcmp(a->error, b->error) == 0);
    if (a->ok != b->ok || !same_error || a->n_orders != b->n_orders ||
        a->n_too_large != b->n_too_large || a->digest != b->digest) {
        fprintf(stderr,
                "%s: whole body gave ok=%d error=%s orders=%zu large=%zu, pieces gave ok=%d "
                "error=%s orders=%zu large=%zu\n",
                what, a->ok, a->error ? a->error : "-", a->n_orders, a->n_too_large, b->ok,
                b->error ? b->error : "-", b->n_orders, b->n_too_large);
        abort();
    }
}

static void check_format(enum batch_format format, size_t limit, const uint8_t *data, size_t size)
{
    const char *name = format == BATCH_JSON ? "json" : "ndjson";
    struct outcome whole = run(format, limit, data, size, 0, limit == REAL_ORDER_LIMIT);
    struct outcome bytes = run(format, limit, data, size, 1, false);
    struct outcome cuts = run(format, limit, data, size, 2, false);
    check_same(&whole, &bytes, name);
    check_same(&whole, &cuts, name);
    if (!whole.ok && !whole.error && format == BATCH_JSON) {
        fprintf(stderr, "%s: refused without a reason\n", name);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_format(BATCH_JSON, REAL_ORDER_LIMIT, data, size);
    check_format(BATCH_NDJSON, REAL_ORDER_LIMIT, data, size);
    check_format(BATCH_JSON, SMALL_ORDER_LIMIT, data, size);
    check_format(BATCH_NDJSON, SMALL_ORDER_LIMIT, data, size);
    return 0;
}
