#include "crypto.h"

#include "alloc.h"

#include <limits.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

static const char DATA_KEY_INFO[] = "cangrejo pii v1";
static const char HASH_KEY_INFO[] = "cangrejo pii hash v1";

struct crypto_keyring {
    char key_id[CRYPTO_KEY_ID_MAX + 1];
    uint8_t master[CRYPTO_KEY_BYTES];
    uint8_t mac_key[CRYPTO_KEY_BYTES];
};

/* Set before serve's threads start, cleared after they stop: no lock needed. */
static const struct crypto_keyring *installed;

bool crypto_random(void *buf, size_t n)
{
    return n <= INT_MAX && RAND_bytes(buf, (int)n) == 1;
}

void crypto_wipe(void *p, size_t n)
{
    if (p)
        explicit_bzero(p, n);
}

static int base64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

bool crypto_decode_key(const char *b64, uint8_t out[CRYPTO_KEY_BYTES])
{
    /* 32 bytes are 43 characters of data and one '=' of padding, nothing else. */
    enum { CHARS = 4 * ((CRYPTO_KEY_BYTES + 2) / 3) };
    if (!b64 || strlen(b64) != CHARS || b64[CHARS - 1] != '=')
        return false;
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (size_t i = 0; i < CHARS - 1; i++) {
        int v = base64_value(b64[i]);
        if (v < 0)
            return false;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    bool canonical = (acc & ((1u << bits) - 1)) == 0; /* the unused low bits must be zero */
    crypto_wipe(&acc, sizeof(acc));
    if (n != CRYPTO_KEY_BYTES || !canonical) {
        crypto_wipe(out, CRYPTO_KEY_BYTES);
        return false;
    }
    return true;
}

bool crypto_key_id_valid(const char *key_id)
{
    size_t n = key_id ? strlen(key_id) : 0;
    if (n == 0 || n > CRYPTO_KEY_ID_MAX)
        return false;
    for (const char *p = key_id; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-'))
            return false;
    return true;
}

bool crypto_hkdf_sha256(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
                        const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len)
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM params[5], *p = params;
    *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikm_len);
    if (salt_len)
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, info_len);
    *p = OSSL_PARAM_construct_end();
    bool ok = ctx && EVP_KDF_derive(ctx, out, out_len, params) == 1;
    EVP_KDF_CTX_free(ctx);
    EVP_KDF_free(kdf);
    if (!ok)
        crypto_wipe(out, out_len);
    return ok;
}

bool crypto_seal(const uint8_t key[CRYPTO_KEY_BYTES], const void *aad, size_t aad_len,
                 const void *plain, size_t len, uint8_t nonce[CRYPTO_NONCE_BYTES], uint8_t *out)
{
    if (aad_len > INT_MAX || len > INT_MAX - CRYPTO_TAG_BYTES ||
        !crypto_random(nonce, CRYPTO_NONCE_BYTES))
        return false;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, tail = 0;
    bool ok = ctx && EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, CRYPTO_NONCE_BYTES, NULL) == 1 &&
              EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) == 1 &&
              EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len) == 1 &&
              EVP_EncryptUpdate(ctx, out, &n, plain, (int)len) == 1 &&
              EVP_EncryptFinal_ex(ctx, out + n, &tail) == 1 && (size_t)(n + tail) == len &&
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, CRYPTO_TAG_BYTES, out + len) == 1;
    EVP_CIPHER_CTX_free(ctx);
    return ok;
}

bool crypto_open(const uint8_t key[CRYPTO_KEY_BYTES], const void *aad, size_t aad_len,
                 const uint8_t nonce[CRYPTO_NONCE_BYTES], const uint8_t *ct, size_t ct_len,
                 uint8_t *out)
{
    if (ct_len < CRYPTO_TAG_BYTES || ct_len > INT_MAX || aad_len > INT_MAX)
        return false;
    size_t len = ct_len - CRYPTO_TAG_BYTES;
    uint8_t tag[CRYPTO_TAG_BYTES];
    memcpy(tag, ct + len, sizeof(tag));
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0, tail = 0;
    bool ok = ctx && EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, CRYPTO_NONCE_BYTES, NULL) == 1 &&
              EVP_DecryptInit_ex(ctx, NULL, NULL, key, nonce) == 1 &&
              EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len) == 1 &&
              EVP_DecryptUpdate(ctx, out, &n, ct, (int)len) == 1 &&
              EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, CRYPTO_TAG_BYTES, tag) == 1 &&
              EVP_DecryptFinal_ex(ctx, out + n, &tail) == 1 && (size_t)(n + tail) == len;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok)
        crypto_wipe(out, len);
    return ok;
}

static void put_be(struct buf *out, uint64_t v, int bytes)
{
    char b[8];
    for (int i = 0; i < bytes; i++)
        b[i] = (char)(v >> (8 * (bytes - 1 - i)));
    buf_append(out, b, (size_t)bytes);
}

void crypto_pii_aad(struct buf *out, int64_t merchant_id, const char *order_id,
                    const char *customer_ref)
{
    put_be(out, (uint64_t)merchant_id, 8);
    const char *parts[] = {order_id, customer_ref};
    for (int i = 0; i < 2; i++) {
        size_t n = strlen(parts[i]);
        put_be(out, n, 4);
        buf_append(out, parts[i], n);
    }
}

struct crypto_keyring *crypto_keyring_new(const char *master_key_b64, const char *key_id, char *err,
                                          size_t errlen)
{
    if (!master_key_b64 || !*master_key_b64) {
        snprintf(err, errlen,
                 "PII_MASTER_KEY is required (base64 of 32 random bytes, or "
                 "PII_MASTER_KEY_FILE naming a file that holds it)");
        return NULL;
    }
    if (!crypto_key_id_valid(key_id)) {
        snprintf(err, errlen,
                 "PII_MASTER_KEY_ID must be 1 to %d characters of A-Z, a-z, 0-9, '_' or '-'",
                 CRYPTO_KEY_ID_MAX);
        return NULL;
    }
    struct crypto_keyring *k = xcalloc(1, sizeof(*k));
    snprintf(k->key_id, sizeof(k->key_id), "%s", key_id);
    if (!crypto_decode_key(master_key_b64, k->master)) {
        snprintf(err, errlen,
                 "PII_MASTER_KEY must be standard base64 (with '=' padding) of "
                 "exactly 32 bytes");
        crypto_keyring_free(k);
        return NULL;
    }
    if (!crypto_hkdf_sha256(k->master, sizeof(k->master), NULL, 0, (const uint8_t *)HASH_KEY_INFO,
                            strlen(HASH_KEY_INFO), k->mac_key, sizeof(k->mac_key))) {
        snprintf(err, errlen, "PII_MASTER_KEY: key derivation failed (OpenSSL)");
        crypto_keyring_free(k);
        return NULL;
    }
    return k;
}

void crypto_keyring_free(struct crypto_keyring *k)
{
    xfree_secret(k, sizeof(*k));
}

const char *crypto_keyring_key_id(const struct crypto_keyring *k)
{
    return k->key_id;
}

bool crypto_keyring_data_key(const struct crypto_keyring *k, const char *key_id,
                             const uint8_t *secret, size_t secret_len,
                             uint8_t out[CRYPTO_KEY_BYTES])
{
    if (!k || !key_id || strcmp(key_id, k->key_id) != 0 || secret_len == 0)
        return false; /* only the current master key is loaded for now */
    uint8_t info[sizeof(DATA_KEY_INFO) - 1 + CRYPTO_KEY_ID_MAX];
    size_t prefix = sizeof(DATA_KEY_INFO) - 1, id_len = strlen(k->key_id);
    memcpy(info, DATA_KEY_INFO, prefix);
    memcpy(info + prefix, k->key_id, id_len);
    return crypto_hkdf_sha256(k->master, sizeof(k->master), secret, secret_len, info,
                              prefix + id_len, out, CRYPTO_KEY_BYTES);
}

bool crypto_keyring_mac(const struct crypto_keyring *k, const void *data, size_t len,
                        uint8_t out[CRYPTO_MAC_BYTES])
{
    unsigned out_len = 0;
    return HMAC(EVP_sha256(), k->mac_key, (int)sizeof(k->mac_key), data, len, out, &out_len) &&
           out_len == CRYPTO_MAC_BYTES;
}

void crypto_pii_install(const struct crypto_keyring *k)
{
    installed = k;
}

const struct crypto_keyring *crypto_pii_keyring(void)
{
    return installed;
}
