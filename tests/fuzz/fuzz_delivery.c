/* fuzz_delivery.c - libFuzzer target for the delivery-event parser: a request body of
 * POST .../orders/{order_id}/delivery-events through json_parse_strict and
 * delivery_event_from_json (handlers/deliveries.c, handlers/validate.c).
 *
 * Besides the sanitizers: an accepted event is rendered by delivery_to_json as order reads
 * show it, and every timestamp there must read back as the same instant (RFC 3339, as the
 * contract promises). */
#include "handlers/deliveries.h"
#include "server/arena.h"
#include "server/json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const int64_t NOW_US = 1795264800LL * 1000000; /* 2026-11-21T12:40:00Z */

static void check_time_reads_back(const json_t *event, const char *key, bool present, int64_t us)
{
    const json_t *value = json_object_get(event, key);
    int64_t back;
    if (!present ? !json_is_null(value)
                 : !json_is_string(value) || !v_parse_timestamp(json_string_value(value), &back) ||
                       back != us) {
        fprintf(stderr, "%s %lld rendered as %s, which does not read back\n", key, (long long)us,
                json_is_string(value) ? json_string_value(value) : "a non-string");
        abort();
    }
}

static void check_rendering(const struct db_delivery_event *e)
{
    struct db_delivery_event with_id = *e;
    with_id.order_id = "web-000123";
    struct db_delivery d = {.current = with_id, .events = &with_id, .n_events = 1};
    json_t *j = delivery_to_json(&d);
    char *text = json_dumps(j, JSON_COMPACT);
    if (!text)
        abort(); /* could not be serialized: the response would be lost */
    free(text);
    check_time_reads_back(j, "occurred_at", true, e->occurred_at_us);
    check_time_reads_back(j, "eta", e->has_eta, e->eta_us);
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t err;
    json_t *root = json_parse_strict((const char *)data, size, &err);
    if (!json_is_object(root)) { /* the server answers 400 before the parser runs */
        json_decref(root);
        return 0;
    }
    struct arena *a = arena_new();
    struct v_errors v = {.arena = a};
    struct db_delivery_event e;
    if (delivery_event_from_json(&v, root, NOW_US, &e))
        check_rendering(&e);
    else if (v_ok(&v))
        abort(); /* refused without saying why */
    json_decref(v.list);
    json_decref(root);
    arena_free(a);
    return 0;
}
