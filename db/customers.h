/* customers.h - customers' personal data (DESIGN.md decision 6): sealed per order under the
 * customer's own data key, read back for pii:read tokens, exported, and erased by destroying
 * the customer's secret (crypto-shredding). Keys come from the process's PII keyring
 * (server/crypto.h). Plaintext PII never leaves these functions except to their caller. */
#ifndef CANGREJO_DB_CUSTOMERS_H
#define CANGREJO_DB_CUSTOMERS_H

#include "db/orders.h"
#include "db/pool.h"
#include "server/crypto.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct arena;

/* A customer's data key from its row (key_id, and secret as hex); false when the secret is
 * malformed or no master key of that id is loaded. */
bool db_customer_data_key(const char *key_id, const char *secret_hex,
                          uint8_t out[CRYPTO_KEY_BYTES]);

/* One order's PII as stored in order_pii. */
struct db_pii_sealed {
    uint8_t nonce[CRYPTO_NONCE_BYTES];
    uint8_t *ct; /* ciphertext and tag, malloc'd */
    size_t ct_len;
};

/* Encrypts pii for the order_pii row (merchant_id, order_id, customer_ref) under the
 * customer's data key, with that row identity as associated data; free out->ct. */
bool db_pii_seal(const uint8_t data_key[CRYPTO_KEY_BYTES], int64_t merchant_id,
                 const char *order_id, const char *customer_ref, const struct db_pii *pii,
                 struct db_pii_sealed *out);

/* The personal data stored with one order, decrypted into *out (arena-owned). DB_NOT_FOUND
 * when there is none to show: none was given, the customer was erased, its master key id is
 * not loaded, or the ciphertext does not authenticate for this row (moved or altered; logged
 * without any PII). Served like db_order_get. */
enum db_status db_order_pii_get(struct db *db, struct arena *a, int64_t merchant_id,
                                const char *order_id, uint64_t min_lsn, struct db_pii *out,
                                const char **role);

/* What is stored of one customer (arena-owned). */
struct db_customer_export {
    const struct db_pii *pii; /* the newest readable personal data; NULL when none */
    const char *erased_at;    /* RFC 3339 UTC; NULL when not erased */
    const char **order_ids;   /* every order the customer appears in, oldest first */
    size_t n_order_ids;
};

/* Reads a customer's data from the primary (so that an erasure anywhere is seen at once);
 * DB_NOT_FOUND when the customer has neither orders nor a customer row. */
enum db_status db_customer_export(struct db *db, struct arena *a, int64_t merchant_id,
                                  const char *customer_ref, struct db_customer_export *out);

/* Erases a customer in one transaction: the secret is destroyed (every copy of its
 * ciphertexts, on replicas and in backups, becomes unreadable), erased_at set, its order_pii
 * rows deleted; orders and metrics stay. A customer known only from orders is marked erased;
 * one never seen is left alone. *changed is false when there was nothing to erase; else
 * *version is the merchant's new data version and *lsn the primary's WAL position after the
 * commit (noted for read-your-writes). */
enum db_status db_customer_erase(struct db *db, int64_t merchant_id, const char *customer_ref,
                                 bool *changed, int64_t *version, uint64_t *lsn);

#endif
