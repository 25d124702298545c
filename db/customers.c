#include "customers.h"

#include "server/alloc.h"
#include "server/arena.h"
#include "server/buf.h"
#include "server/log.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- sealing and opening one order's PII ---- */

/* The plaintext that is sealed: {"name", "email", "phone", "address"}, null when not given.
 * malloc'd; wipe it before freeing. */
static char *pii_plaintext(const struct db_pii *pii)
{
    json_t *obj = json_pack("{s:s?, s:s?, s:s?, s:s?}", "name", pii->name, "email", pii->email,
                            "phone", pii->phone, "address", pii->address);
    char *text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    return text;
}

static const char *field_copy(struct arena *a, const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? arena_strdup(a, s) : NULL;
}

static bool pii_from_plaintext(struct arena *a, const uint8_t *text, size_t len, struct db_pii *out)
{
    json_error_t err;
    json_t *obj = json_loadb((const char *)text, len, 0, &err);
    bool ok = json_is_object(obj);
    if (ok)
        *out = (struct db_pii){field_copy(a, obj, "name"), field_copy(a, obj, "email"),
                               field_copy(a, obj, "phone"), field_copy(a, obj, "address")};
    json_decref(obj);
    return ok;
}

bool db_pii_seal(const uint8_t data_key[CRYPTO_KEY_BYTES], int64_t merchant_id,
                 const char *order_id, const char *customer_ref, const struct db_pii *pii,
                 struct db_pii_sealed *out)
{
    char *plain = pii_plaintext(pii);
    size_t len = strlen(plain);
    struct buf aad = {0};
    crypto_pii_aad(&aad, merchant_id, order_id, customer_ref);
    out->ct_len = len + CRYPTO_TAG_BYTES;
    out->ct = xmalloc(out->ct_len);
    bool ok = crypto_seal(data_key, aad.data, aad.len, plain, len, out->nonce, out->ct);
    buf_free(&aad);
    xfree_secret(plain, len);
    if (!ok) {
        free(out->ct);
        out->ct = NULL;
    }
    return ok;
}

static int hex_digit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Bytes of PostgreSQL's encode(..., 'hex') (malloc'd); NULL when malformed. */
static uint8_t *from_hex(const char *hex, size_t *len)
{
    size_t n = hex ? strlen(hex) : 1;
    if (n % 2)
        return NULL;
    uint8_t *out = xmalloc(n / 2 + 1);
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            free(out);
            return NULL;
        }
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    *len = n / 2;
    return out;
}

bool db_customer_data_key(const char *key_id, const char *secret_hex, uint8_t out[CRYPTO_KEY_BYTES])
{
    size_t len = 0;
    uint8_t *secret = from_hex(secret_hex, &len);
    bool ok = secret && len == CRYPTO_SECRET_BYTES &&
              crypto_keyring_data_key(crypto_pii_keyring(), key_id, secret, len, out);
    if (secret)
        xfree_secret(secret, len);
    return ok;
}

/* What a stored ciphertext needs to be opened. */
struct sealed_row {
    int64_t merchant_id;
    const char *order_id, *customer_ref;
    const char *key_id, *secret_hex; /* the customer's */
    const char *nonce_hex, *ct_hex;
};

/* Opens one stored ciphertext into *out; false (and nothing readable) when it cannot be:
 * unknown master key id, or a row that does not authenticate. */
static bool open_row(struct arena *a, const struct sealed_row *row, struct db_pii *out)
{
    size_t nonce_len = 0, ct_len = 0;
    uint8_t *nonce = from_hex(row->nonce_hex, &nonce_len);
    uint8_t *ct = from_hex(row->ct_hex, &ct_len);
    uint8_t key[CRYPTO_KEY_BYTES];
    bool ok = false;
    if (!db_customer_data_key(row->key_id, row->secret_hex, key)) {
        log_warn("merchant %" PRId64 " order %s: personal data under master key id \"%s\", "
                 "which is not loaded: shown as unavailable",
                 row->merchant_id, row->order_id, row->key_id);
    } else {
        if (nonce && ct && nonce_len == CRYPTO_NONCE_BYTES && ct_len >= CRYPTO_TAG_BYTES) {
            struct buf aad = {0};
            crypto_pii_aad(&aad, row->merchant_id, row->order_id, row->customer_ref);
            size_t len = ct_len - CRYPTO_TAG_BYTES;
            uint8_t *plain = xmalloc(len + 1);
            ok = crypto_open(key, aad.data, aad.len, nonce, ct, ct_len, plain) &&
                 pii_from_plaintext(a, plain, len, out);
            xfree_secret(plain, len + 1);
            buf_free(&aad);
        }
        crypto_wipe(key, sizeof(key));
        if (!ok)
            log_warn("merchant %" PRId64 " order %s: stored personal data does not "
                     "authenticate for its row: shown as unavailable",
                     row->merchant_id, row->order_id);
    }
    free(nonce);
    free(ct);
    return ok;
}

/* ---- reads ---- */

enum db_status db_order_pii_get(struct db *db, struct arena *a, int64_t merchant_id,
                                const char *order_id, uint64_t min_lsn, struct db_pii *out,
                                const char **role)
{
    char mid[24];
    snprintf(mid, sizeof(mid), "%" PRId64, merchant_id);
    const char *params[] = {mid, order_id};
    enum db_status st;
    PGresult *r = db_read(db, min_lsn, DB_ORDER_PII_GET, params, role, &st);
    if (!r)
        return st;
    st = DB_NOT_FOUND;
    if (PQntuples(r) == 1) {
        struct sealed_row row = {merchant_id,         order_id,
                                 PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 3),
                                 PQgetvalue(r, 0, 4), PQgetvalue(r, 0, 1),
                                 PQgetvalue(r, 0, 2)};
        if (open_row(a, &row, out))
            st = DB_OK;
    }
    PQclear(r);
    return st;
}

static const char *text_or_null(struct arena *a, const PGresult *r, int col)
{
    return PQgetisnull(r, 0, col) ? NULL : arena_strdup(a, PQgetvalue(r, 0, col));
}

static void export_order_ids(struct arena *a, const char *json, struct db_customer_export *out)
{
    json_error_t err;
    json_t *ids = json ? json_loads(json, 0, &err) : NULL;
    size_t n = json_array_size(ids);
    out->order_ids = arena_alloc(a, (n ? n : 1) * sizeof(*out->order_ids));
    out->n_order_ids = 0;
    for (size_t i = 0; i < n; i++) {
        const char *id = json_string_value(json_array_get(ids, i));
        if (id)
            out->order_ids[out->n_order_ids++] = arena_strdup(a, id);
    }
    json_decref(ids);
}

/* The newest of the customer's ciphertexts that opens; NULL when none does. */
static const struct db_pii *export_newest_pii(struct arena *a, int64_t merchant_id,
                                              const char *customer_ref, const char *key_id,
                                              const char *secret_hex, const char *rows_json)
{
    json_error_t err;
    json_t *rows = rows_json && secret_hex ? json_loads(rows_json, 0, &err) : NULL;
    struct db_pii *pii = arena_zalloc(a, sizeof(*pii));
    bool found = false;
    for (size_t i = 0; i < json_array_size(rows) && !found; i++) {
        json_t *row = json_array_get(rows, i);
        const char *order_id = json_string_value(json_array_get(row, 0));
        const char *nonce = json_string_value(json_array_get(row, 1));
        const char *ct = json_string_value(json_array_get(row, 2));
        if (!order_id || !nonce || !ct)
            continue;
        struct sealed_row sealed = {merchant_id, order_id, customer_ref, key_id, secret_hex,
                                    nonce,       ct};
        found = open_row(a, &sealed, pii);
    }
    json_decref(rows);
    return found ? pii : NULL;
}

enum db_status db_customer_export(struct db *db, struct arena *a, int64_t merchant_id,
                                  const char *customer_ref, struct db_customer_export *out)
{
    char mid[24];
    snprintf(mid, sizeof(mid), "%" PRId64, merchant_id);
    const char *params[] = {mid, customer_ref};
    struct db_conn *c = db_acquire_primary(db);
    if (!c)
        return DB_UNAVAILABLE;
    PGresult *r = db_exec(c, DB_CUSTOMER_EXPORT, params);
    enum db_status st = db_ok(r, PGRES_TUPLES_OK) && PQntuples(r) == 1 ? DB_OK : db_failure(c, r);
    db_release(c);
    if (st == DB_OK) {
        memset(out, 0, sizeof(*out));
        bool has_row = PQgetvalue(r, 0, 3)[0] == 't';
        export_order_ids(a, text_or_null(a, r, 4), out);
        if (!has_row && out->n_order_ids == 0) {
            st = DB_NOT_FOUND;
        } else {
            out->erased_at = text_or_null(a, r, 2);
            out->pii = export_newest_pii(a, merchant_id, customer_ref, text_or_null(a, r, 0),
                                         text_or_null(a, r, 1), text_or_null(a, r, 5));
        }
    }
    PQclear(r);
    return st;
}

/* ---- erasure ---- */

/* Runs one statement of the erasure; false (and *st set) when it failed. */
static bool erase_step(struct db_conn *c, PGresult *r, ExecStatusType want, long *rows,
                       enum db_status *st)
{
    bool ok = db_ok(r, want);
    if (!ok)
        *st = db_failure(c, r);
    else if (rows)
        *rows = strtol(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return ok;
}

enum db_status db_customer_erase(struct db *db, int64_t merchant_id, const char *customer_ref,
                                 bool *changed, int64_t *version, uint64_t *lsn)
{
    char mid[24], ids[32];
    snprintf(mid, sizeof(mid), "%" PRId64, merchant_id);
    snprintf(ids, sizeof(ids), "{%" PRId64 "}", merchant_id);
    const struct crypto_keyring *keys = crypto_pii_keyring();
    const char *erase_params[] = {mid, customer_ref, keys ? crypto_keyring_key_id(keys) : "-"};
    const char *ref_params[] = {mid, customer_ref};
    const char *bump_params[] = {ids};
    *changed = false;
    struct db_conn *c = db_acquire_primary(db);
    if (!c)
        return DB_UNAVAILABLE;
    enum db_status st = DB_OK;
    long erased = 0, forgotten = 0;
    /* The customer row first, the merchant's version last: the order in which ingestion
     * locks them, so the two never deadlock. */
    bool ok = erase_step(c, db_exec_simple(c, "BEGIN"), PGRES_COMMAND_OK, NULL, &st) &&
              erase_step(c, db_exec(c, DB_CUSTOMER_ERASE, erase_params), PGRES_COMMAND_OK, &erased,
                         &st) &&
              erase_step(c, db_exec(c, DB_CUSTOMER_FORGET_PII, ref_params), PGRES_COMMAND_OK,
                         &forgotten, &st);
    if (ok && erased + forgotten > 0) {
        PGresult *r = db_exec(c, DB_INGEST_BUMP, bump_params);
        ok = db_ok(r, PGRES_TUPLES_OK) && PQntuples(r) == 1;
        if (ok)
            *version = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
        else
            st = db_ok(r, PGRES_TUPLES_OK) ? DB_NOT_FOUND : db_failure(c, r);
        PQclear(r);
        *changed = ok;
    }
    if (!ok) {
        PQclear(db_exec_simple(c, "ROLLBACK"));
        *changed = false;
    } else if (!erase_step(c, db_exec_simple(c, "COMMIT"), PGRES_COMMAND_OK, NULL, &st)) {
        *changed = false;
        st = DB_UNAVAILABLE; /* the outcome is unknown: the client may retry (it is idempotent) */
    } else if (*changed) {
        PGresult *r = db_exec(c, DB_WAL_LSN, NULL);
        *lsn = db_ok(r, PGRES_TUPLES_OK) ? db_parse_lsn(PQgetvalue(r, 0, 0)) : 0;
        PQclear(r);
        db_note_write_lsn(db, merchant_id, *lsn);
    }
    db_release(c);
    return st;
}
