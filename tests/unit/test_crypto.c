#include "server/crypto.h"
#include "tests/unit/check.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* base64 of the bytes 0x40..0x5f, the integration suite's test key. */
static const char TEST_KEY_B64[] = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=";

static int hex_value(char c)
{
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

static size_t from_hex(const char *hex, uint8_t *out)
{
    size_t n = strlen(hex) / 2;
    for (size_t i = 0; i < n; i++)
        out[i] = (uint8_t)(hex_value(hex[2 * i]) << 4 | hex_value(hex[2 * i + 1]));
    return n;
}

static struct crypto_keyring *test_keyring(const char *key_id)
{
    char err[256];
    struct crypto_keyring *k = crypto_keyring_new(TEST_KEY_B64, key_id, err, sizeof(err));
    CHECK(k != NULL);
    return k;
}

/* One sealed PII record: the data key of a customer secret, and the row identity. */
struct sealed {
    uint8_t nonce[CRYPTO_NONCE_BYTES];
    uint8_t ct[64 + CRYPTO_TAG_BYTES];
    size_t ct_len;
};

static const char PLAIN[] = "{\"email\":\"ada@example.com\",\"name\":\"Ada\"}";

static void seal_for(const struct crypto_keyring *k, const uint8_t *secret, int64_t merchant,
                     const char *order_id, const char *ref, struct sealed *s)
{
    uint8_t key[CRYPTO_KEY_BYTES];
    struct buf aad = {0};
    crypto_pii_aad(&aad, merchant, order_id, ref);
    CHECK(crypto_keyring_data_key(k, crypto_keyring_key_id(k), secret, CRYPTO_SECRET_BYTES, key));
    s->ct_len = strlen(PLAIN) + CRYPTO_TAG_BYTES;
    CHECK(crypto_seal(key, aad.data, aad.len, PLAIN, strlen(PLAIN), s->nonce, s->ct));
    crypto_wipe(key, sizeof(key));
    buf_free(&aad);
}

/* True when s opens under the secret and row identity given, with PLAIN as the result. */
static bool opens_as(const struct crypto_keyring *k, const char *key_id, const uint8_t *secret,
                     int64_t merchant, const char *order_id, const char *ref,
                     const struct sealed *s)
{
    uint8_t key[CRYPTO_KEY_BYTES], out[64];
    memset(out, 0xAA, sizeof(out));
    if (!crypto_keyring_data_key(k, key_id, secret, CRYPTO_SECRET_BYTES, key))
        return false;
    struct buf aad = {0};
    crypto_pii_aad(&aad, merchant, order_id, ref);
    bool ok = crypto_open(key, aad.data, aad.len, s->nonce, s->ct, s->ct_len, out);
    buf_free(&aad);
    crypto_wipe(key, sizeof(key));
    if (!ok) {
        for (size_t i = 0; i + CRYPTO_TAG_BYTES < s->ct_len; i++)
            CHECK(out[i] == 0); /* a failed open leaves nothing readable behind */
        return false;
    }
    return memcmp(out, PLAIN, strlen(PLAIN)) == 0;
}

static void test_hkdf_rfc5869_case_1(void)
{
    uint8_t ikm[22], salt[13], info[10], okm[42], want[42];
    memset(ikm, 0x0b, sizeof(ikm));
    from_hex("000102030405060708090a0b0c", salt);
    from_hex("f0f1f2f3f4f5f6f7f8f9", info);
    from_hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
             "34007208d5b887185865",
             want);
    CHECK(crypto_hkdf_sha256(ikm, sizeof(ikm), salt, sizeof(salt), info, sizeof(info), okm,
                             sizeof(okm)));
    CHECK(memcmp(okm, want, sizeof(want)) == 0);
}

static void test_decode_key(void)
{
    uint8_t key[CRYPTO_KEY_BYTES];
    CHECK(crypto_decode_key(TEST_KEY_B64, key));
    for (int i = 0; i < CRYPTO_KEY_BYTES; i++)
        CHECK_INT(key[i], 0x40 + i);
    CHECK(!crypto_decode_key("", key));
    CHECK(!crypto_decode_key(NULL, key));
    CHECK(!crypto_decode_key("QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXg==", key)); /* 31 bytes */
    CHECK(!crypto_decode_key("QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl9A", key)); /* 33 */
    CHECK(!crypto_decode_key("QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8", key));  /* no = */
    CHECK(!crypto_decode_key("QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl-=", key)); /* url */
    CHECK(!crypto_decode_key("QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl9=", key)); /* bits */
    CHECK(!crypto_decode_key(" QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=", key));
}

static void test_key_ids(void)
{
    CHECK(crypto_key_id_valid("k1"));
    CHECK(crypto_key_id_valid("prod-2026_11"));
    CHECK(crypto_key_id_valid("abcdefghijklmnopqrstuvwxyz012345")); /* 32 */
    CHECK(!crypto_key_id_valid("abcdefghijklmnopqrstuvwxyz0123456"));
    CHECK(!crypto_key_id_valid(""));
    CHECK(!crypto_key_id_valid(NULL));
    CHECK(!crypto_key_id_valid("k 1"));
    CHECK(!crypto_key_id_valid("k1/"));
}

static void test_keyring_errors_name_the_variable_not_the_key(void)
{
    char err[256];
    CHECK(crypto_keyring_new(NULL, "k1", err, sizeof(err)) == NULL);
    CHECK(strstr(err, "PII_MASTER_KEY") != NULL);
    CHECK(crypto_keyring_new("c2VjcmV0LWtleS1tYXRlcmlhbA==", "k1", err, sizeof(err)) == NULL);
    CHECK(strstr(err, "PII_MASTER_KEY must be") != NULL);
    CHECK(strstr(err, "c2VjcmV0") == NULL);
    CHECK(crypto_keyring_new(TEST_KEY_B64, "bad id", err, sizeof(err)) == NULL);
    CHECK(strstr(err, "PII_MASTER_KEY_ID") != NULL);
}

static void test_round_trip(void)
{
    struct crypto_keyring *k = test_keyring("test1");
    uint8_t secret[CRYPTO_SECRET_BYTES];
    CHECK(crypto_random(secret, sizeof(secret)));
    struct sealed s;
    seal_for(k, secret, 42, "web-1", "c-1", &s);
    CHECK(memmem(s.ct, s.ct_len, "ada@example.com", 15) == NULL);
    CHECK(opens_as(k, "test1", secret, 42, "web-1", "c-1", &s));
    /* Two seals of the same record differ (fresh nonce) and both open. */
    struct sealed again;
    seal_for(k, secret, 42, "web-1", "c-1", &again);
    CHECK(memcmp(s.nonce, again.nonce, sizeof(s.nonce)) != 0);
    CHECK(memcmp(s.ct, again.ct, s.ct_len) != 0);
    CHECK(opens_as(k, "test1", secret, 42, "web-1", "c-1", &again));
    crypto_keyring_free(k);
}

static void test_wrong_aad_fails(void)
{
    struct crypto_keyring *k = test_keyring("test1");
    uint8_t secret[CRYPTO_SECRET_BYTES];
    CHECK(crypto_random(secret, sizeof(secret)));
    struct sealed s;
    seal_for(k, secret, 42, "web-1", "c-1", &s);
    CHECK(!opens_as(k, "test1", secret, 42, "web-2", "c-1", &s)); /* another order */
    CHECK(!opens_as(k, "test1", secret, 43, "web-1", "c-1", &s)); /* another merchant */
    CHECK(!opens_as(k, "test1", secret, 42, "web-1", "c-2", &s)); /* another customer */
    /* Length prefixes: ("web-1", "c-1") and ("web-1c", "-1") are different identities. */
    CHECK(!opens_as(k, "test1", secret, 42, "web-1c", "-1", &s));
    crypto_keyring_free(k);
}

static void test_tampered_ciphertext_fails(void)
{
    struct crypto_keyring *k = test_keyring("test1");
    uint8_t secret[CRYPTO_SECRET_BYTES];
    CHECK(crypto_random(secret, sizeof(secret)));
    struct sealed s;
    seal_for(k, secret, 7, "pos-9", "c-9", &s);
    for (size_t i = 0; i < s.ct_len; i += 5) { /* data and tag bytes */
        struct sealed t = s;
        t.ct[i] ^= 0x01;
        CHECK(!opens_as(k, "test1", secret, 7, "pos-9", "c-9", &t));
    }
    struct sealed t = s;
    t.nonce[0] ^= 0x80;
    CHECK(!opens_as(k, "test1", secret, 7, "pos-9", "c-9", &t));
    t = s;
    t.ct_len -= 1; /* truncated */
    CHECK(!opens_as(k, "test1", secret, 7, "pos-9", "c-9", &t));
    CHECK(opens_as(k, "test1", secret, 7, "pos-9", "c-9", &s));
    crypto_keyring_free(k);
}

static void test_wrong_secret_fails(void)
{
    struct crypto_keyring *k = test_keyring("test1");
    uint8_t secret[CRYPTO_SECRET_BYTES], other[CRYPTO_SECRET_BYTES];
    CHECK(crypto_random(secret, sizeof(secret)));
    memcpy(other, secret, sizeof(other));
    other[31] ^= 0x01;
    struct sealed s;
    seal_for(k, secret, 42, "web-1", "c-1", &s);
    CHECK(!opens_as(k, "test1", other, 42, "web-1", "c-1", &s));
    crypto_keyring_free(k);
}

static void test_key_id_selects_the_master_key(void)
{
    struct crypto_keyring *k1 = test_keyring("test1"), *k2 = test_keyring("test2");
    uint8_t secret[CRYPTO_SECRET_BYTES], a[CRYPTO_KEY_BYTES], b[CRYPTO_KEY_BYTES];
    CHECK(crypto_random(secret, sizeof(secret)));
    CHECK(crypto_keyring_data_key(k1, "test1", secret, sizeof(secret), a));
    CHECK(crypto_keyring_data_key(k2, "test2", secret, sizeof(secret), b));
    CHECK(memcmp(a, b, sizeof(a)) != 0); /* the key id is part of the derivation */
    /* A customer stored under a key id that is not loaded cannot be read. */
    CHECK(!crypto_keyring_data_key(k1, "test2", secret, sizeof(secret), a));
    CHECK(!crypto_keyring_data_key(k1, "old", secret, sizeof(secret), a));
    struct sealed s;
    seal_for(k1, secret, 42, "web-1", "c-1", &s);
    CHECK(!opens_as(k2, "test2", secret, 42, "web-1", "c-1", &s));
    crypto_keyring_free(k1);
    crypto_keyring_free(k2);
}

static void test_mac_is_keyed_and_deterministic(void)
{
    struct crypto_keyring *k = test_keyring("test1");
    char err[256];
    struct crypto_keyring *other = crypto_keyring_new(
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "test1", err, sizeof(err));
    CHECK(other != NULL);
    uint8_t m1[CRYPTO_MAC_BYTES], m2[CRYPTO_MAC_BYTES], m3[CRYPTO_MAC_BYTES], m4[CRYPTO_MAC_BYTES];
    CHECK(crypto_keyring_mac(k, PLAIN, strlen(PLAIN), m1));
    CHECK(crypto_keyring_mac(k, PLAIN, strlen(PLAIN), m2));
    CHECK(crypto_keyring_mac(k, PLAIN, strlen(PLAIN) - 1, m3));
    CHECK(crypto_keyring_mac(other, PLAIN, strlen(PLAIN), m4));
    CHECK(memcmp(m1, m2, sizeof(m1)) == 0);
    CHECK(memcmp(m1, m3, sizeof(m1)) != 0);
    CHECK(memcmp(m1, m4, sizeof(m1)) != 0);
    crypto_keyring_free(k);
    crypto_keyring_free(other);
}

static void test_install(void)
{
    CHECK(crypto_pii_keyring() == NULL);
    struct crypto_keyring *k = test_keyring("k1");
    crypto_pii_install(k);
    CHECK(crypto_pii_keyring() == k);
    crypto_pii_install(NULL);
    CHECK(crypto_pii_keyring() == NULL);
    crypto_keyring_free(k);
}

int main(void)
{
    TEST(test_hkdf_rfc5869_case_1);
    TEST(test_decode_key);
    TEST(test_key_ids);
    TEST(test_keyring_errors_name_the_variable_not_the_key);
    TEST(test_round_trip);
    TEST(test_wrong_aad_fails);
    TEST(test_tampered_ciphertext_fails);
    TEST(test_wrong_secret_fails);
    TEST(test_key_id_selects_the_master_key);
    TEST(test_mac_is_keyed_and_deterministic);
    TEST(test_install);
    return check_done();
}
