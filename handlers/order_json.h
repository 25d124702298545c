/* order_json.h - an order between JSON and struct db_order: validation of everything API.md
 * asks of an order, its canonical content hash, and the response body. */
#ifndef CANGREJO_ORDER_JSON_H
#define CANGREJO_ORDER_JSON_H

#include "db/orders.h"
#include "handlers/validate.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

enum {
    ORDER_MAX_ITEMS = 200,
    ORDER_MAX_FUTURE_US = 5LL * 60 * 1000000, /* placed_at at most 5 minutes ahead */
};

/* What an order is checked against besides its own content. */
struct order_rules {
    int64_t merchant_id;
    const char *currency; /* the merchant's */
    int64_t now_us;
    int64_t oldest_us; /* placed_at before this is refused (raw orders are kept that long) */
};

/* Names of channels and fulfillments as the API spells them. */
const char *order_channel_name(enum order_channel c);
const char *order_fulfillment_name(enum order_fulfillment f);
/* Fills *out from an order object, recording every problem in v under prefix ("" for a single
 * order, "orders[3]" style in batches would pass that). Computes gross/net/total and the
 * content hash (which covers the customer's PII through a keyed MAC: see server/crypto.h).
 * False when anything failed. */
bool order_from_json(struct v_errors *v, const json_t *obj, const char *prefix,
                     const struct order_rules *rules, struct db_order *out);
/* SHA-256 of the order's canonical content, which order_from_json stores in content_hash
 * (exported for its tests). */
void order_content_hash(const struct db_order *o, unsigned char hash[ORDER_HASH_BYTES]);
/* The rules for a merchant now: oldest placed_at from a retention of retention_months whole
 * months before this one (0: keep forever, anything from 1970 on). */
struct order_rules order_rules_for(int64_t merchant_id, const char *currency, int64_t now_us,
                                   unsigned retention_months);
/* The API's order object (customer PII is never included here). */
json_t *order_to_json(const struct db_order *o);
/* The API's "customer" value for pii:read tokens: {name, email, phone, address} (null where
 * not given), or JSON null when pii is NULL. */
json_t *order_customer_json(const struct db_pii *pii);

#endif
