/* fuzz_order.c - libFuzzer target for the single-order parser: a request body through
 * json_parse_strict and order_from_json (handlers/order_json.c, handlers/validate.c), as
 * POST /v1/merchants/{id}/orders does.
 *
 * Besides the sanitizers, one property: an accepted order, rendered by order_to_json and sent
 * back in that canonical form, is accepted again with the same amounts and the same content
 * hash (the hash decides idempotent replay versus 409, so it must not depend on spelling). */
#include "handlers/order_json.h"
#include "server/arena.h"
#include "server/crypto.h"
#include "server/json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A fixed clock, so that an input behaves the same on every run: 2026-11-21T12:40:00Z. */
static const int64_t NOW_US = 1795264800LL * 1000000;
/* 32 zero bytes: a PII key for fuzzing only, so that orders with customer data get through. */
static const char FUZZ_PII_KEY[] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

static struct order_rules rules;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[256];
    struct crypto_keyring *keys = crypto_keyring_new(FUZZ_PII_KEY, "fuzz", err, sizeof(err));
    if (!keys) {
        fprintf(stderr, "fuzz_order: %s\n", err);
        abort();
    }
    crypto_pii_install(keys); /* kept for the life of the process */
    rules = order_rules_for(42, "EUR", NOW_US, 0);
    return 0;
}

/* The order as a client would send it again: order_to_json minus what the server derives,
 * plus the customer object of the original (order_to_json never carries PII). */
static json_t *canonical_body(const struct db_order *o, const json_t *original)
{
    static const char *const derived[] = {"merchant_id",  "status",   "gross_cents", "net_cents",
                                          "customer_ref", "delivery", "created_at",  NULL};
    json_t *body = order_to_json(o);
    for (const char *const *k = derived; *k; k++)
        json_object_del(body, *k);
    json_t *customer = json_object_get(original, "customer");
    if (customer)
        json_object_set(body, "customer", customer);
    return body;
}

static void check_canonical_form_replays(const struct db_order *first, const json_t *original)
{
    struct arena *a = arena_new();
    struct v_errors v = {.arena = a};
    json_t *body = canonical_body(first, original);
    struct db_order again;
    if (!order_from_json(&v, body, "", &rules, &again)) {
        char *text = json_dumps(v.list, JSON_COMPACT);
        fprintf(stderr, "canonical form of an accepted order refused: %s\n", text);
        abort();
    }
    if (memcmp(again.content_hash, first->content_hash, sizeof(again.content_hash)) != 0 ||
        again.total_cents != first->total_cents || again.net_cents != first->net_cents ||
        again.placed_at_us != first->placed_at_us) {
        fprintf(stderr, "canonical form of an accepted order differs from the original\n");
        abort();
    }
    json_decref(body);
    json_decref(v.list);
    arena_free(a);
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
    struct db_order o;
    if (order_from_json(&v, root, "", &rules, &o))
        check_canonical_form_replays(&o, root);
    else if (v_ok(&v))
        abort(); /* refused without saying why: the client would get an empty 400 */
    json_decref(v.list);
    json_decref(root);
    arena_free(a);
    return 0;
}
