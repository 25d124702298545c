#include "order_json.h"

#include "server/alloc.h"
#include "server/arena.h"
#include "server/buf.h"
#include "server/crypto.h"
#include "server/json.h"

#include <ctype.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    ORDER_ID_MAX = 64,
    SKU_MAX = 64,
    NAME_MAX_CHARS = 200,
    PROMO_MAX = 64,
    CUSTOMER_REF_MAX = 128,
    PII_FIELD_MAX = 500,
};

static const int64_t MAX_QUANTITY = 1000000;
static const int64_t MAX_AMOUNT_CENTS = 1000000000000000LL; /* 10^15 minor units */

static const char *const channel_names[CHANNEL_COUNT_] = {"online", "pos"};
static const char *const fulfillment_names[FULFILLMENT_COUNT_] = {"pickup", "delivery",
                                                                  "dine_in"};

const char *order_channel_name(enum order_channel c)
{
    return channel_names[c];
}

const char *order_fulfillment_name(enum order_fulfillment f)
{
    return fulfillment_names[f];
}

static const char *path(struct v_errors *v, const char *prefix, const char *key)
{
    return *prefix ? arena_sprintf(v->arena, "%s.%s", prefix, key) : key;
}

static bool is_order_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > ORDER_ID_MAX)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("._:-", *s))
            return false;
    return true;
}

/* An integer member within [min, max]; absent gives def (when optional) or an error. */
static bool int_field(struct v_errors *v, const json_t *obj, const char *prefix, const char *key,
                      bool required, int64_t def, int64_t min, int64_t max, int64_t *out)
{
    json_t *value = json_object_get(obj, key);
    *out = def;
    if (!value || (!required && json_is_null(value))) {
        if (required)
            v_fail(v, path(v, prefix, key), "is required");
        return !required;
    }
    if (!json_is_integer(value)) {
        v_fail(v, path(v, prefix, key), "must be an integer");
        return false;
    }
    json_int_t n = json_integer_value(value);
    if (n < min || n > max) {
        v_fail(v, path(v, prefix, key),
               max == INT64_MAX ? arena_sprintf(v->arena, "must be at least %lld", (long long)min)
                                : arena_sprintf(v->arena, "must be from %lld to %lld",
                                                (long long)min, (long long)max));
        return false;
    }
    *out = n;
    return true;
}

/* An optional string member: NULL when absent or null. */
static const char *optional_string(struct v_errors *v, const json_t *obj, const char *prefix,
                                   const char *key, size_t max_chars)
{
    json_t *value = json_object_get(obj, key);
    if (!value || json_is_null(value))
        return NULL;
    return v_string(v, obj, prefix, key, max_chars);
}

static int enum_field(struct v_errors *v, const json_t *obj, const char *prefix, const char *key,
                      const char *const *names, int count)
{
    const char *s = v_string(v, obj, prefix, key, 32);
    if (!s)
        return -1;
    for (int i = 0; i < count; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    char list[96] = "";
    for (int i = 0; i < count; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "",
                 names[i]);
    v_fail(v, path(v, prefix, key), arena_sprintf(v->arena, "must be one of %s", list));
    return -1;
}

static void parse_order_id(struct v_errors *v, const json_t *obj, const char *prefix,
                           struct db_order *o)
{
    json_t *value = json_object_get(obj, "order_id");
    o->order_id = NULL;
    if (!value)
        v_fail(v, path(v, prefix, "order_id"), "is required");
    else if (!json_is_string(value) || !is_order_id(json_string_value(value)))
        v_fail(v, path(v, prefix, "order_id"),
               "must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'");
    else
        o->order_id = json_string_value(value);
}

static void parse_placed_at(struct v_errors *v, const json_t *obj, const char *prefix,
                            const struct order_rules *rules, struct db_order *o)
{
    const char *s = v_string(v, obj, prefix, "placed_at", 64);
    if (!s)
        return;
    if (!v_parse_timestamp(s, &o->placed_at_us))
        v_fail(v, path(v, prefix, "placed_at"),
               "must be an RFC 3339 timestamp with an offset, e.g. 2026-11-21T12:31:07+01:00");
    else if (o->placed_at_us < 0)
        v_fail(v, path(v, prefix, "placed_at"), "must not be before 1970-01-01T00:00:00Z");
    else if (o->placed_at_us < rules->oldest_us)
        v_fail(v, path(v, prefix, "placed_at"),
               "is older than the retention period of raw orders");
    else if (o->placed_at_us > rules->now_us + ORDER_MAX_FUTURE_US)
        v_fail(v, path(v, prefix, "placed_at"), "must not be more than 5 minutes in the future");
}

static void parse_currency(struct v_errors *v, const json_t *obj, const char *prefix,
                           const char *merchant_currency, struct db_order *o)
{
    const char *s = v_string(v, obj, prefix, "currency", 3);
    if (!s)
        return;
    if (strcmp(s, merchant_currency) != 0)
        v_fail(v, path(v, prefix, "currency"),
               arena_sprintf(v->arena, "must be the merchant's currency, %s", merchant_currency));
    else
        snprintf(o->currency, sizeof(o->currency), "%s", s);
}

static bool parse_item(struct v_errors *v, const json_t *item, const char *item_path,
                       struct db_item *out)
{
    static const char *const fields[] = {"sku", "name", "quantity", "unit_price_cents", NULL};
    if (!json_is_object(item)) {
        v_fail(v, item_path, "must be an object");
        return false;
    }
    v_no_unknown_fields(v, item, item_path, fields);
    out->sku = v_string(v, item, item_path, "sku", SKU_MAX);
    out->name = v_string(v, item, item_path, "name", NAME_MAX_CHARS);
    bool ok = int_field(v, item, item_path, "quantity", true, 0, 1, MAX_QUANTITY, &out->quantity);
    ok &= int_field(v, item, item_path, "unit_price_cents", true, 0, 0, MAX_AMOUNT_CENTS,
                    &out->unit_price_cents);
    return ok && out->sku && out->name;
}

/* Item i of items. Only an error needs the item's path ("items[3]", and "items[3].sku" in
 * v_string), so the item is parsed first without one; an item that fails is parsed again with
 * its path, which records the same errors as ever. */
static void parse_item_at(struct v_errors *v, const json_t *items, const char *items_path, size_t i,
                          struct db_item *out)
{
    const json_t *item = json_array_get(items, i);
    struct v_errors quiet = {.arena = v->arena};
    parse_item(&quiet, item, "", out);
    if (v_ok(&quiet))
        return;
    json_decref(quiet.list);
    parse_item(v, item, arena_sprintf(v->arena, "%s[%zu]", items_path, i), out);
}

static void parse_items(struct v_errors *v, const json_t *obj, const char *prefix,
                        struct db_order *o)
{
    json_t *items = json_object_get(obj, "items");
    const char *items_path = path(v, prefix, "items");
    if (!items) {
        v_fail(v, items_path, "is required");
        return;
    }
    size_t n = json_array_size(items);
    if (!json_is_array(items) || n == 0 || n > ORDER_MAX_ITEMS) {
        v_fail(v, items_path, "must be an array of 1 to 200 items");
        return;
    }
    o->items = arena_zalloc(v->arena, n * sizeof(*o->items));
    o->n_items = n;
    for (size_t i = 0; i < n; i++)
        parse_item_at(v, items, items_path, i, &o->items[i]);
}

/* gross = Σ quantity × unit price, net = gross − discount, total = net + tax, all checked. */
static void compute_amounts(struct v_errors *v, const json_t *obj, const char *prefix,
                            struct db_order *o)
{
    int64_t gross = 0, sold = 0;
    for (size_t i = 0; i < o->n_items; i++) {
        int64_t line;
        if (__builtin_mul_overflow(o->items[i].quantity, o->items[i].unit_price_cents, &line) ||
            __builtin_add_overflow(gross, line, &gross) || gross > MAX_AMOUNT_CENTS) {
            v_fail(v, path(v, prefix, "items"), "the order's gross amount is too large");
            return;
        }
        sold += o->items[i].quantity;
    }
    o->gross_cents = gross;
    o->items_sold = sold;
    o->net_cents = gross - o->discount_cents;
    if (o->net_cents < 0) {
        v_fail(v, path(v, prefix, "discount_cents"), "must not exceed the gross amount");
        return;
    }
    o->total_cents = o->net_cents + o->tax_cents;
    json_t *total = json_object_get(obj, "total_cents");
    if (total && !json_is_null(total) &&
        (!json_is_integer(total) || json_integer_value(total) != o->total_cents))
        v_fail(v, path(v, prefix, "total_cents"),
               arena_sprintf(v->arena, "must equal gross - discount + tax = %lld",
                             (long long)o->total_cents));
}

static void parse_customer(struct v_errors *v, const json_t *obj, const char *prefix,
                           struct db_order *o)
{
    static const char *const fields[] = {"ref", "name", "email", "phone", "address", NULL};
    json_t *customer = json_object_get(obj, "customer");
    o->customer_ref = NULL;
    if (!customer || json_is_null(customer))
        return;
    const char *cpath = path(v, prefix, "customer");
    if (!json_is_object(customer)) {
        v_fail(v, cpath, "must be an object");
        return;
    }
    v_no_unknown_fields(v, customer, cpath, fields);
    o->customer_ref = v_string(v, customer, cpath, "ref", CUSTOMER_REF_MAX);
    struct db_pii *pii = arena_zalloc(v->arena, sizeof(*pii));
    const char **slots[] = {&pii->name, &pii->email, &pii->phone, &pii->address};
    bool any = false;
    for (size_t i = 0; i < sizeof(slots) / sizeof(slots[0]); i++) {
        *slots[i] = optional_string(v, customer, cpath, fields[i + 1], PII_FIELD_MAX);
        any |= *slots[i] != NULL;
    }
    if (any && !crypto_pii_keyring())
        v_fail(v, cpath, "personal data cannot be accepted: this server has no PII key");
    o->pii = any ? pii : NULL;
}

/* Hex of the HMAC (under a key derived from the PII master key) of the canonical personal
 * data: the content hash covers the PII without holding anything that reveals it. NULL when
 * the order has none. */
static const char *pii_mac_hex(const struct db_order *o, char hex[2 * CRYPTO_MAC_BYTES + 1])
{
    const struct crypto_keyring *keys = crypto_pii_keyring();
    if (!o->pii || !keys)
        return NULL;
    json_t *canon =
        json_pack("[s?, s?, s?, s?]", o->pii->name, o->pii->email, o->pii->phone, o->pii->address);
    char *text = json_dumps(canon, JSON_COMPACT);
    json_decref(canon);
    size_t len = strlen(text);
    uint8_t mac[CRYPTO_MAC_BYTES];
    bool ok = crypto_keyring_mac(keys, text, len, mac);
    crypto_wipe(text, len);
    free(text);
    if (!ok)
        abort(); /* HMAC-SHA256 does not fail short of a broken OpenSSL */
    hex_encode(hex, mac, sizeof(mac));
    return hex;
}

/* The canonical text of an order is the JSON that jansson 2.14's json_dumps(JSON_COMPACT |
 * JSON_SORT_KEYS) wrote when the first content hashes were stored; stored hashes depend on it,
 * so it must not change by a byte (tests/unit/test_order_json.c compares it with jansson). */
static void canon_item(struct buf *c, const struct db_item *item)
{
    json_out_raw(c, "[");
    json_out_string(c, item->sku);
    json_out_raw(c, ",");
    json_out_string(c, item->name);
    json_out_raw(c, ",");
    json_out_int(c, item->quantity);
    json_out_raw(c, ",");
    json_out_int(c, item->unit_price_cents);
    json_out_raw(c, "]");
}

/* Every stored field, normalized (placed_at as UTC microseconds, defaults filled in), keys in
 * byte order, no whitespace, null for an absent customer_ref or promo_code; the customer's
 * personal data only as its keyed MAC ("customer_pii", absent when none). */
static void write_canonical_order(struct buf *c, const struct db_order *o, const char *pii_mac)
{
    json_out_raw(c, "{\"channel\":");
    json_out_string(c, channel_names[o->channel]);
    json_out_raw(c, ",\"currency\":");
    json_out_string(c, o->currency);
    if (pii_mac) {
        json_out_raw(c, ",\"customer_pii\":");
        json_out_string(c, pii_mac);
    }
    json_out_raw(c, ",\"customer_ref\":");
    json_out_string(c, o->customer_ref);
    json_out_raw(c, ",\"discount_cents\":");
    json_out_int(c, o->discount_cents);
    json_out_raw(c, ",\"fulfillment\":");
    json_out_string(c, fulfillment_names[o->fulfillment]);
    json_out_raw(c, ",\"items\":[");
    for (size_t i = 0; i < o->n_items; i++) {
        if (i > 0)
            json_out_raw(c, ",");
        canon_item(c, &o->items[i]);
    }
    json_out_raw(c, "],\"order_id\":");
    json_out_string(c, o->order_id);
    json_out_raw(c, ",\"placed_at_us\":");
    json_out_int(c, o->placed_at_us);
    json_out_raw(c, ",\"promo_code\":");
    json_out_string(c, o->promo_code);
    json_out_raw(c, ",\"store_id\":");
    json_out_int(c, o->store_id);
    json_out_raw(c, ",\"tax_cents\":");
    json_out_int(c, o->tax_cents);
    json_out_raw(c, "}");
}

void order_content_hash(const struct db_order *o, unsigned char hash[ORDER_HASH_BYTES])
{
    char mac_hex[2 * CRYPTO_MAC_BYTES + 1];
    struct buf c = {0};
    write_canonical_order(&c, o, pii_mac_hex(o, mac_hex));
    SHA256((const unsigned char *)c.data, c.len, hash);
    buf_free(&c);
}

struct order_rules order_rules_for(int64_t merchant_id, const char *currency, int64_t now_us,
                                   unsigned retention_months)
{
    struct order_rules r = {merchant_id, currency, now_us, 0};
    if (retention_months == 0)
        return r;
    time_t now = (time_t)(now_us / 1000000);
    struct tm tm;
    gmtime_r(&now, &tm);
    int months = tm.tm_year * 12 + tm.tm_mon - (int)retention_months;
    struct tm first = {.tm_year = months / 12, .tm_mon = months % 12, .tm_mday = 1};
    r.oldest_us = (int64_t)timegm(&first) * 1000000;
    return r;
}

bool order_from_json(struct v_errors *v, const json_t *obj, const char *prefix,
                     const struct order_rules *rules, struct db_order *o)
{
    static const char *const fields[] = {
        "order_id",      "store_id",  "channel",     "fulfillment", "placed_at", "currency",
        "items",         "discount_cents", "tax_cents", "total_cents", "promo_code", "customer",
        NULL};
    memset(o, 0, sizeof(*o));
    o->merchant_id = rules->merchant_id;
    o->status = ORDER_PLACED;
    v_no_unknown_fields(v, obj, prefix, fields);
    parse_order_id(v, obj, prefix, o);
    int_field(v, obj, prefix, "store_id", true, 0, 1, INT64_MAX, &o->store_id);
    int channel = enum_field(v, obj, prefix, "channel", channel_names, CHANNEL_COUNT_);
    int fulfillment =
        enum_field(v, obj, prefix, "fulfillment", fulfillment_names, FULFILLMENT_COUNT_);
    parse_placed_at(v, obj, prefix, rules, o);
    parse_currency(v, obj, prefix, rules->currency, o);
    parse_items(v, obj, prefix, o);
    bool amounts_ok =
        int_field(v, obj, prefix, "discount_cents", false, 0, 0, MAX_AMOUNT_CENTS,
                  &o->discount_cents) &
        int_field(v, obj, prefix, "tax_cents", false, 0, 0, MAX_AMOUNT_CENTS, &o->tax_cents);
    o->promo_code = optional_string(v, obj, prefix, "promo_code", PROMO_MAX);
    parse_customer(v, obj, prefix, o);
    if (!v_ok(v))
        return false;
    o->channel = (enum order_channel)channel;
    o->fulfillment = (enum order_fulfillment)fulfillment;
    if (amounts_ok)
        compute_amounts(v, obj, prefix, o);
    if (!v_ok(v))
        return false;
    order_content_hash(o, o->content_hash);
    return true;
}

json_t *order_to_json(const struct db_order *o)
{
    char placed_at[32];
    v_format_utc(o->placed_at_us, placed_at);
    json_t *items = json_array();
    for (size_t i = 0; i < o->n_items; i++)
        json_array_append_new(items,
                              json_pack("{s:s, s:s, s:I, s:I}", "sku", o->items[i].sku, "name",
                                        o->items[i].name, "quantity",
                                        (json_int_t)o->items[i].quantity, "unit_price_cents",
                                        (json_int_t)o->items[i].unit_price_cents));
    json_t *body = json_pack(
        "{s:I, s:s, s:I, s:s, s:s, s:s, s:s, s:s, s:o, s:I, s:I, s:I, s:I, s:I}", "merchant_id",
        (json_int_t)o->merchant_id, "order_id", o->order_id, "store_id", (json_int_t)o->store_id,
        "channel", channel_names[o->channel], "fulfillment", fulfillment_names[o->fulfillment],
        "status", o->status == ORDER_CANCELLED ? "cancelled" : "placed", "placed_at", placed_at,
        "currency", o->currency, "items", items, "gross_cents", (json_int_t)o->gross_cents,
        "discount_cents", (json_int_t)o->discount_cents, "net_cents", (json_int_t)o->net_cents,
        "tax_cents", (json_int_t)o->tax_cents, "total_cents", (json_int_t)o->total_cents);
    json_object_set_new(body, "promo_code",
                        o->promo_code ? json_string(o->promo_code) : json_null());
    json_object_set_new(body, "customer_ref",
                        o->customer_ref ? json_string(o->customer_ref) : json_null());
    json_object_set_new(body, "delivery", json_null());
    json_object_set_new(body, "created_at",
                        o->created_at[0] ? json_string(o->created_at) : json_null());
    return body;
}

static json_t *string_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

json_t *order_customer_json(const struct db_pii *pii)
{
    if (!pii)
        return json_null();
    json_t *c = json_object();
    json_object_set_new(c, "name", string_or_null(pii->name));
    json_object_set_new(c, "email", string_or_null(pii->email));
    json_object_set_new(c, "phone", string_or_null(pii->phone));
    json_object_set_new(c, "address", string_or_null(pii->address));
    return c;
}
