#include "handlers/order_json.h"
#include "server/arena.h"
#include "server/buf.h"
#include "server/crypto.h"
#include "tests/unit/check.h"

#include <openssl/sha.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* 2026-11-21T12:40:00Z */
static const int64_t NOW_US = 1795264800LL * 1000000;

static int64_t utc_us(int y, int m, int d)
{
    struct tm tm = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d};
    return (int64_t)timegm(&tm) * 1000000;
}

static void test_retention_window_starts_on_a_month(void)
{
    int64_t now = utc_us(2026, 11, 21) + 3600LL * 1000000;
    CHECK_INT(order_rules_for(1, "EUR", now, 0).oldest_us, 0);
    CHECK_INT(order_rules_for(1, "EUR", now, 1).oldest_us, utc_us(2026, 10, 1));
    CHECK_INT(order_rules_for(1, "EUR", now, 12).oldest_us, utc_us(2025, 11, 1));
    CHECK_INT(order_rules_for(1, "EUR", now, 11).oldest_us, utc_us(2025, 12, 1));
    CHECK_INT(order_rules_for(1, "EUR", utc_us(2026, 1, 1), 1).oldest_us, utc_us(2025, 12, 1));
}

static bool accepts(const struct order_rules *rules, const char *placed_at)
{
    struct arena *a = arena_new();
    struct v_errors v = {.arena = a};
    json_t *o = json_pack("{s:s, s:i, s:s, s:s, s:s, s:s, s:[{s:s, s:s, s:i, s:i}]}", "order_id",
                          "o-1", "store_id", 1, "channel", "pos", "fulfillment", "pickup",
                          "placed_at", placed_at, "currency", "EUR", "items", "sku", "A", "name",
                          "A", "quantity", 1, "unit_price_cents", 100);
    struct db_order out;
    bool ok = order_from_json(&v, o, "", rules, &out);
    json_decref(v.list);
    json_decref(o);
    arena_free(a);
    return ok;
}

static void test_orders_older_than_the_retention_are_refused(void)
{
    struct order_rules r = order_rules_for(7, "EUR", utc_us(2026, 11, 21), 12);
    CHECK(accepts(&r, "2025-11-01T00:00:00Z"));
    CHECK(!accepts(&r, "2025-10-31T23:59:59Z"));
    CHECK(!accepts(&r, "2025-11-01T00:30:00+01:00")); /* 2025-10-31T23:30Z */
    struct order_rules forever = order_rules_for(7, "EUR", utc_us(2026, 11, 21), 0);
    CHECK(accepts(&forever, "1999-01-01T00:00:00Z"));
    CHECK(!accepts(&forever, "2026-11-21T00:06:00Z")); /* more than 5 minutes ahead */
    CHECK(accepts(&forever, "2026-11-21T00:04:00Z"));
}

/* The old content hash, as order_json.c computed it with jansson until it wrote the canonical
 * text itself: the text behind every hash stored until then, kept here as the oracle. */
static const char *jansson_pii_mac_hex(const struct db_order *o, char hex[2 * CRYPTO_MAC_BYTES + 1])
{
    const struct crypto_keyring *keys = crypto_pii_keyring();
    if (!o->pii || !keys)
        return NULL;
    json_t *canon =
        json_pack("[s?, s?, s?, s?]", o->pii->name, o->pii->email, o->pii->phone, o->pii->address);
    char *text = json_dumps(canon, JSON_COMPACT);
    json_decref(canon);
    uint8_t mac[CRYPTO_MAC_BYTES];
    CHECK(crypto_keyring_mac(keys, text, strlen(text), mac));
    free(text);
    hex_encode(hex, mac, sizeof(mac));
    return hex;
}

static char *jansson_canonical_text(const struct db_order *o)
{
    char mac_hex[2 * CRYPTO_MAC_BYTES + 1];
    json_t *items = json_array();
    for (size_t i = 0; i < o->n_items; i++)
        json_array_append_new(items, json_pack("[s, s, I, I]", o->items[i].sku, o->items[i].name,
                                               (json_int_t)o->items[i].quantity,
                                               (json_int_t)o->items[i].unit_price_cents));
    json_t *canon = json_pack(
        "{s:s, s:I, s:s, s:s, s:I, s:s, s:o, s:I, s:I, s:s?, s:s?}", "order_id", o->order_id,
        "store_id", (json_int_t)o->store_id, "channel", order_channel_name(o->channel),
        "fulfillment", order_fulfillment_name(o->fulfillment), "placed_at_us",
        (json_int_t)o->placed_at_us, "currency", o->currency, "items", items, "discount_cents",
        (json_int_t)o->discount_cents, "tax_cents", (json_int_t)o->tax_cents, "promo_code",
        o->promo_code, "customer_ref", o->customer_ref);
    const char *pii_mac = jansson_pii_mac_hex(o, mac_hex);
    if (pii_mac)
        json_object_set_new(canon, "customer_pii", json_string(pii_mac));
    char *text = json_dumps(canon, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(canon);
    return text;
}

static bool hash_matches_jansson(const struct db_order *o)
{
    char *text = jansson_canonical_text(o);
    if (!text)
        return false; /* jansson refused a string: the generator made invalid UTF-8 */
    unsigned char expected[ORDER_HASH_BYTES], got[ORDER_HASH_BYTES];
    SHA256((const unsigned char *)text, strlen(text), expected);
    order_content_hash(o, got);
    bool same = memcmp(expected, got, sizeof(got)) == 0;
    static int reported;
    if (!same && reported++ < 3)
        printf("# differs from jansson's %s\n", text);
    free(text);
    return same;
}

static uint64_t rng_state = 20261121;

/* splitmix64: a fixed seed, so that a failure reproduces. */
static uint64_t next_random(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t random_below(uint64_t n)
{
    return next_random() % n;
}

static void append_utf8(struct buf *b, uint32_t cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | cp >> 6);
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12);
        u[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | cp >> 18);
        u[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        u[2] = (char)(0x80 | (cp >> 6 & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    buf_append(b, u, n);
}

/* Any code point but U+0000 and the surrogates, weighted towards what escaping treats
 * specially and towards the boundaries of UTF-8 sequence lengths. */
static uint32_t random_code_point(void)
{
    static const uint32_t special[] = {'"',    '\\',    '/',     0x7F,    0x80,    0xE9,
                                       0x7FF,  0x800,   0x2028,  0x2029,  0xFEFF,  0xFFFD,
                                       0xFFFF, 0x10000, 0x1D11E, 0x1F600, 0x10FFFF};
    switch (random_below(5)) {
    case 0:
        return 1 + (uint32_t)random_below(0x1F); /* control characters 0x01..0x1F */
    case 1:
        return special[random_below(sizeof(special) / sizeof(special[0]))];
    case 2: {
        uint32_t cp = 0x80 + (uint32_t)random_below(0x110000 - 0x80 - 0x800);
        return cp < 0xD800 ? cp : cp + 0x800;
    }
    default:
        return 0x20 + (uint32_t)random_below(0x5F); /* printable ASCII */
    }
}

/* Mostly short (empty included), one in sixteen up to 1,000 code points. */
static const char *random_string(struct arena *a)
{
    size_t n = random_below(16) ? random_below(12) : random_below(1000);
    struct buf b = {0};
    for (size_t i = 0; i < n; i++)
        append_utf8(&b, random_code_point());
    char *s = arena_strndup(a, b.data ? b.data : "", b.len);
    buf_free(&b);
    return s;
}

static const char *random_string_or_null(struct arena *a)
{
    return random_below(2) ? random_string(a) : NULL;
}

/* Any int64_t, weighted towards the edges and the points where a digit is added. */
static int64_t random_int(void)
{
    static const int64_t small[] = {0, 1, -1, 9, 10, -10, 999999, 1000000, 1000000000000000LL};
    static const int64_t large[] = {
        INT32_MAX,     2147483648LL, 999999999999999999LL, 1000000000000000000LL, INT64_MAX,
        INT64_MIN + 1, INT64_MIN,    -62135596800000000LL /* 0001-01-01T00:00:00Z in µs */};
    switch (random_below(4)) {
    case 0:
        return small[random_below(sizeof(small) / sizeof(small[0]))];
    case 1:
        return large[random_below(sizeof(large) / sizeof(large[0]))];
    case 2:
        return (int64_t)(next_random() >> (1 + random_below(63))) * (random_below(2) ? 1 : -1);
    default:
        return (int64_t)(next_random() >> 1) - (int64_t)(next_random() >> 1);
    }
}

static const struct db_pii *random_pii(struct arena *a)
{
    struct db_pii *pii = arena_zalloc(a, sizeof(*pii));
    pii->name = random_string_or_null(a);
    pii->email = random_string_or_null(a);
    pii->phone = random_string_or_null(a);
    pii->address = random_string_or_null(a);
    return pii;
}

/* Not a valid order (order_from_json would refuse most), but anything the hash must render. */
static void random_order(struct arena *a, struct db_order *o)
{
    memset(o, 0, sizeof(*o));
    o->order_id = random_string(a);
    o->store_id = random_int();
    o->channel = (enum order_channel)random_below(CHANNEL_COUNT_);
    o->fulfillment = (enum order_fulfillment)random_below(FULFILLMENT_COUNT_);
    o->placed_at_us = random_int();
    for (size_t i = random_below(4); i-- > 0;)
        o->currency[i] = (char)(1 + random_below(0x7F));
    o->n_items = random_below(2) ? 1 : 1 + random_below(ORDER_MAX_ITEMS);
    o->items = arena_zalloc(a, o->n_items * sizeof(*o->items));
    for (size_t i = 0; i < o->n_items; i++)
        o->items[i] = (struct db_item){.sku = random_string(a),
                                       .name = random_string(a),
                                       .quantity = random_int(),
                                       .unit_price_cents = random_int()};
    o->discount_cents = random_int();
    o->tax_cents = random_int();
    o->promo_code = random_string_or_null(a);
    o->customer_ref = random_string_or_null(a);
    o->pii = random_below(3) == 0 ? random_pii(a) : NULL;
}

static void test_content_hash_matches_jansson_on_random_orders(void)
{
    int differing = 0;
    for (int i = 0; i < 3000; i++) {
        struct arena *a = arena_new();
        struct db_order o;
        random_order(a, &o);
        differing += !hash_matches_jansson(&o);
        arena_free(a);
    }
    CHECK_INT(differing, 0);
}

/* Every byte below 0x80 but NUL in each string, and a large order (text far beyond the
 * writer's stack buffer). */
static void test_content_hash_matches_jansson_on_every_ascii_byte(void)
{
    char ascii[0x80];
    for (int i = 1; i < 0x80; i++)
        ascii[i - 1] = (char)i;
    ascii[0x7F] = '\0';
    struct db_item items[ORDER_MAX_ITEMS];
    for (size_t i = 0; i < ORDER_MAX_ITEMS; i++)
        items[i] = (struct db_item){ascii, ascii, INT64_MAX, INT64_MIN};
    struct db_pii pii = {ascii, NULL, ascii, ""};
    struct db_order o = {.order_id = ascii,
                         .store_id = INT64_MAX,
                         .channel = CHANNEL_POS,
                         .fulfillment = FULFILLMENT_DINE_IN,
                         .placed_at_us = -1,
                         .currency = "\"\\\x7f",
                         .items = items,
                         .n_items = 1,
                         .promo_code = ascii,
                         .customer_ref = ascii};
    CHECK(hash_matches_jansson(&o));
    o.pii = &pii;
    o.n_items = ORDER_MAX_ITEMS;
    o.customer_ref = NULL;
    CHECK(hash_matches_jansson(&o));
}

static bool accept_order(const char *body, const char *prefix, struct db_order *out, char *errors,
                         size_t errors_size)
{
    struct arena *a = arena_new();
    struct v_errors v = {.arena = a};
    json_t *obj = json_loads(body, 0, NULL);
    CHECK(obj != NULL);
    struct order_rules rules = order_rules_for(42, "EUR", NOW_US, 0);
    bool ok = obj && order_from_json(&v, obj, prefix, &rules, out);
    char *text = v.list ? json_dumps(v.list, JSON_COMPACT) : NULL;
    snprintf(errors, errors_size, "%s", text ? text : "");
    free(text);
    json_decref(v.list);
    json_decref(obj);
    arena_free(a);
    return ok;
}

/* Hashes computed by the jansson version (before order_json.c wrote the canonical text
 * itself), so that a change of the canonical form shows even if the oracle changed with it. */
static void test_content_hash_known_answers(void)
{
    static const struct {
        const char *body, *hash;
    } known[] = {
        {"{\"order_id\":\"kat-1.A:z_9\",\"store_id\":9007199254740993,\"channel\":\"online\","
         "\"fulfillment\":\"dine_in\",\"placed_at\":\"2026-11-21T12:31:07.123456+01:00\","
         "\"currency\":\"EUR\",\"items\":[{\"sku\":\"SKU \\\"q\\\" \\\\ /\","
         "\"name\":\"Caf\\u00e9 \\u2615 \\ud834\\udd1e \\u2028\\u2029 end\",\"quantity\":1000000,"
         "\"unit_price_cents\":999999999},{\"sku\":\"B\",\"name\":\"b\",\"quantity\":1,"
         "\"unit_price_cents\":0}],\"discount_cents\":5,\"tax_cents\":1000000000000000,"
         "\"promo_code\":null,\"customer\":{\"ref\":\"ref-\\\"7\\\"\"}}",
         "cff4175ab35e4149382af56dd05fc2b2c503bbc2db0c7bd7a0ac1c271d51f202"},
        {"{\"order_id\":\"kat-2\",\"store_id\":1,\"channel\":\"pos\",\"fulfillment\":\"delivery\","
         "\"placed_at\":\"1970-01-01T00:00:00Z\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"A\","
         "\"name\":\"x\",\"quantity\":2,\"unit_price_cents\":150}],\"promo_code\":\"SPRING/25\","
         "\"customer\":{\"ref\":\"c-2\",\"name\":\"Zo\\u00eb\",\"email\":\"z@example.com\"}}",
         "7c6036dd5b4658eb0296627eb26bca9a08df0b120a8882e9e4827c9e5940570a"},
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        struct db_order o;
        char errors[512], hex[2 * ORDER_HASH_BYTES + 1];
        CHECK(accept_order(known[i].body, "", &o, errors, sizeof(errors)));
        CHECK_STR(errors, "");
        hex_encode(hex, o.content_hash, sizeof(o.content_hash));
        CHECK_STR(hex, known[i].hash);
    }
}

/* Item paths are built only for failing items now; the errors must read as before. */
static void test_item_errors_name_their_item(void)
{
    static const char body[] =
        "{\"order_id\":\"e-1\",\"store_id\":1,\"channel\":\"pos\",\"fulfillment\":\"pickup\","
        "\"placed_at\":\"2026-11-21T12:00:00Z\",\"currency\":\"EUR\",\"items\":["
        "{\"sku\":\"A\",\"name\":\"a\",\"quantity\":1,\"unit_price_cents\":1},"
        "{\"sku\":\" \",\"name\":\"x\",\"quantity\":0,\"unit_price_cents\":-1,\"extra\":1},5,"
        "{\"name\":\"n\\u0001\",\"quantity\":\"2\"},"
        "{\"sku\":\"B\",\"name\":\"b\",\"quantity\":1,\"unit_price_cents\":2}],\"tax_cents\":-1}";
    static const char *const prefixes[] = {"", "orders[3]."};
    for (size_t i = 0; i < 2; i++) {
        const char *p = prefixes[i];
        char expected[2048], errors[2048];
        snprintf(expected, sizeof(expected),
                 "[{\"field\":\"%sitems[1].extra\",\"message\":\"unknown field\"},"
                 "{\"field\":\"%sitems[1].sku\",\"message\":\"must not be blank\"},"
                 "{\"field\":\"%sitems[1].quantity\",\"message\":\"must be from 1 to 1000000\"},"
                 "{\"field\":\"%sitems[1].unit_price_cents\","
                 "\"message\":\"must be from 0 to 1000000000000000\"},"
                 "{\"field\":\"%sitems[2]\",\"message\":\"must be an object\"},"
                 "{\"field\":\"%sitems[3].sku\",\"message\":\"is required\"},"
                 "{\"field\":\"%sitems[3].name\","
                 "\"message\":\"must not contain control characters\"},"
                 "{\"field\":\"%sitems[3].quantity\",\"message\":\"must be an integer\"},"
                 "{\"field\":\"%sitems[3].unit_price_cents\",\"message\":\"is required\"},"
                 "{\"field\":\"%stax_cents\",\"message\":\"must be from 0 to 1000000000000000\"}]",
                 p, p, p, p, p, p, p, p, p, p);
        struct db_order o;
        CHECK(!accept_order(body, i ? "orders[3]" : "", &o, errors, sizeof(errors)));
        CHECK_STR(errors, expected);
    }
}

int main(void)
{
    TEST(test_retention_window_starts_on_a_month);
    TEST(test_orders_older_than_the_retention_are_refused);
    char err[256];
    /* 32 zero bytes: a PII key for tests, so that orders with customer data get through. */
    struct crypto_keyring *keys = crypto_keyring_new(
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "test", err, sizeof(err));
    if (!keys) {
        printf("Bail out! %s\n", err);
        return 1;
    }
    crypto_pii_install(keys);
    TEST(test_content_hash_matches_jansson_on_random_orders);
    TEST(test_content_hash_matches_jansson_on_every_ascii_byte);
    TEST(test_content_hash_known_answers);
    TEST(test_item_errors_name_their_item);
    crypto_pii_install(NULL);
    crypto_keyring_free(keys);
    return check_done();
}
