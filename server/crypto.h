/* crypto.h - the server's own cryptography (OpenSSL): the PII master key and the keys derived
 * from it, AES-256-GCM with associated data, and the CSPRNG. Knows nothing of HTTP or SQL.
 *
 * Keys: a customer's data key is HKDF-SHA256(master key, salt = the customer's random secret,
 * info = "cangrejo pii v1" || key id); the key id names the master key (stored with each
 * customer, so a master key can rotate). The content-hash key is HKDF-SHA256(master key,
 * no salt, info = "cangrejo pii hash v1"). */
#ifndef CANGREJO_CRYPTO_H
#define CANGREJO_CRYPTO_H

#include "server/buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    CRYPTO_KEY_BYTES = 32,    /* AES-256 and HMAC-SHA256 keys, and the master key */
    CRYPTO_SECRET_BYTES = 32, /* a customer's random secret */
    CRYPTO_NONCE_BYTES = 12,  /* AES-GCM nonce */
    CRYPTO_TAG_BYTES = 16,    /* AES-GCM tag, appended to the ciphertext */
    CRYPTO_MAC_BYTES = 32,    /* HMAC-SHA256 */
    CRYPTO_KEY_ID_MAX = 32,   /* a key id is 1..32 of [A-Za-z0-9_-] */
};

/* Fills buf with n bytes from the CSPRNG; false (nothing usable) when it fails. */
bool crypto_random(void *buf, size_t n);
/* Overwrites n bytes so the compiler cannot elide it. */
void crypto_wipe(void *p, size_t n);

/* Decodes standard base64 (with padding) of exactly CRYPTO_KEY_BYTES bytes; false otherwise. */
bool crypto_decode_key(const char *b64, uint8_t out[CRYPTO_KEY_BYTES]);
/* True for a key id of 1..CRYPTO_KEY_ID_MAX characters of A-Z, a-z, 0-9, '_' or '-'. */
bool crypto_key_id_valid(const char *key_id);

/* HKDF-SHA256 (RFC 5869); a salt of length 0 means none. False when OpenSSL fails. */
bool crypto_hkdf_sha256(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
                        const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len);

/* AES-256-GCM under key with a fresh random nonce (written to nonce); out receives len bytes
 * of ciphertext followed by the CRYPTO_TAG_BYTES tag. */
bool crypto_seal(const uint8_t key[CRYPTO_KEY_BYTES], const void *aad, size_t aad_len,
                 const void *plain, size_t len, uint8_t nonce[CRYPTO_NONCE_BYTES], uint8_t *out);
/* Reverses crypto_seal: ct is ciphertext and tag (ct_len >= CRYPTO_TAG_BYTES); out receives
 * ct_len - CRYPTO_TAG_BYTES bytes. False when anything (key, nonce, data, tag, associated
 * data) does not authenticate; out is wiped then. */
bool crypto_open(const uint8_t key[CRYPTO_KEY_BYTES], const void *aad, size_t aad_len,
                 const uint8_t nonce[CRYPTO_NONCE_BYTES], const uint8_t *ct, size_t ct_len,
                 uint8_t *out);

/* Appends the associated data that binds a PII ciphertext to its row: the merchant id (8
 * bytes, big-endian), then the order id and the customer ref, each after its length (4 bytes,
 * big-endian), so that no two identities share an encoding. */
void crypto_pii_aad(struct buf *out, int64_t merchant_id, const char *order_id,
                    const char *customer_ref);

/* The master key and its id, with the keys derived from it alone; immutable once built. */
struct crypto_keyring;

/* Builds a keyring from a base64 master key and its id; NULL with a message naming
 * PII_MASTER_KEY or PII_MASTER_KEY_ID (never the key) when either is malformed. */
struct crypto_keyring *crypto_keyring_new(const char *master_key_b64, const char *key_id, char *err,
                                          size_t errlen);
/* Wipes and frees a keyring (NULL is fine). */
void crypto_keyring_free(struct crypto_keyring *k);
/* The id of the current master key: new customers are stored with it. */
const char *crypto_keyring_key_id(const struct crypto_keyring *k);
/* Derives a customer's data key from the master key named key_id and the customer's secret;
 * false when no master key of that id is loaded (the customer's PII is then unreadable). */
bool crypto_keyring_data_key(const struct crypto_keyring *k, const char *key_id,
                             const uint8_t *secret, size_t secret_len,
                             uint8_t out[CRYPTO_KEY_BYTES]);
/* HMAC-SHA256 of data under the content-hash key. */
bool crypto_keyring_mac(const struct crypto_keyring *k, const void *data, size_t len,
                        uint8_t out[CRYPTO_MAC_BYTES]);

/* Makes k the process's PII keyring (NULL removes it). Called by serve before any thread
 * starts and after every thread has stopped; k stays owned by the caller. */
void crypto_pii_install(const struct crypto_keyring *k);
/* The process's PII keyring, or NULL when none is installed (no command but serve has one). */
const struct crypto_keyring *crypto_pii_keyring(void);

#endif
