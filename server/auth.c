/* auth.c - JWT bearer-token verification (RFC 7515, 7517, 7519, 8725) and dev-token minting.
 *
 * Signatures are checked with OpenSSL directly, against keys parsed once in auth_new: every
 * key is an EVP_PKEY whose type fixes the one algorithm it may verify, so a token's `alg` can
 * never make a public key act as an HMAC secret, and no PEM is re-parsed per request. Header
 * and claims are parsed here with jansson (JSON_REJECT_DUPLICATES) and a strict base64url decoder,
 * not by libjwt, whose jwt_decode silently keeps the last of duplicate claims. libjwt only mints
 * development tokens. Header members that point at keys (jku, jwk, x5u, x5c) are ignored. */
#include "auth.h"

#include "alloc.h"
#include "arena.h"

#include <ctype.h>
#include <jansson.h>
#include <jwt.h>
#include <limits.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    AUTH_MIN_SECRET_BYTES = 32,
    AUTH_MIN_RSA_BITS = 2048,
    AUTH_MAX_MERCHANTS = 10000,
    AUTH_DEFAULT_MAX_TOKEN_BYTES = 8192,
    SHA256_BYTES = 32,
    P256_COORD_BYTES = 32,
};

enum jws_alg { ALG_HS256, ALG_RS256, ALG_ES256, ALG_COUNT };

static const char *const alg_names[ALG_COUNT] = {"HS256", "RS256", "ES256"};

#define ALG_BIT(alg) (1u << (alg))

struct auth_key {
    char *kid;
    EVP_PKEY *pkey;
    enum jws_alg alg; /* the only algorithm this key verifies, from its type */
};

struct auth {
    unsigned allowed; /* ALG_BIT set */
    unsigned char *secret;
    size_t secret_len;
    struct auth_key *keys;
    size_t n_keys;
    char *issuer;
    char *audience;
    int64_t leeway;
    size_t max_token_bytes;
    EVP_MD *sha256;
    uint64_t generation; /* unique per verifier: tokens it verified are remembered under it */
};

/* ---- small helpers ---- */

/* Writes the message into err (when given) and returns false, for `return fail(...)`. */
static bool fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return false;
}

/* Empty environment values count as unset. */
static bool is_set(const char *s)
{
    return s && *s;
}

static int64_t add_saturated(int64_t a, int64_t b)
{
    if (b > 0 && a > INT64_MAX - b)
        return INT64_MAX;
    if (b < 0 && a < INT64_MIN - b)
        return INT64_MIN;
    return a + b;
}

static void trim(const char **s, size_t *len)
{
    while (*len && isspace((unsigned char)**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len && isspace((unsigned char)(*s)[*len - 1]))
        (*len)--;
}

/* Yields the next comma-separated item of *cursor, trimmed; false when the list is done. */
static bool next_item(const char **cursor, const char **item, size_t *len)
{
    const char *p = *cursor;
    if (!p)
        return false;
    const char *comma = strchr(p, ',');
    *item = p;
    *len = comma ? (size_t)(comma - p) : strlen(p);
    *cursor = comma ? comma + 1 : NULL;
    trim(item, len);
    return true;
}

static bool parse_alg(const char *s, size_t len, enum jws_alg *alg)
{
    for (int i = 0; i < ALG_COUNT; i++) {
        if (strlen(alg_names[i]) == len && memcmp(alg_names[i], s, len) == 0) {
            *alg = (enum jws_alg)i;
            return true;
        }
    }
    return false;
}

/* ---- strict base64url (RFC 7515 section 2: no padding, no other alphabet) ---- */

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

static bool b64url_valid(const char *s, size_t len)
{
    if (len % 4 == 1)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (b64url_value((unsigned char)s[i]) < 0)
            return false;
    }
    return true;
}

/* Decodes into a malloc'd buffer; NULL unless the text is canonical base64url. */
static unsigned char *b64url_decode(const char *s, size_t len, size_t *out_len)
{
    if (!b64url_valid(s, len))
        return NULL;
    unsigned char *out = xmalloc(len * 3 / 4 + 1);
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        acc = (acc << 6) | (uint32_t)b64url_value((unsigned char)s[i]);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    /* Leftover bits must be zero, or two texts would decode to the same bytes. */
    if (acc & ((1u << bits) - 1)) {
        free(out);
        return NULL;
    }
    *out_len = n;
    return out;
}

static json_t *load_json_object(const char *text, size_t len)
{
    json_t *v = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
    if (v && !json_is_object(v)) {
        json_decref(v);
        return NULL;
    }
    return v;
}

static json_t *decode_json_segment(const char *seg, size_t len)
{
    size_t n;
    unsigned char *raw = b64url_decode(seg, len, &n);
    if (!raw)
        return NULL;
    json_t *v = load_json_object((const char *)raw, n);
    free(raw);
    return v;
}

/* ---- keys ---- */

static bool classify_key(EVP_PKEY *pkey, enum jws_alg *alg, const char **why)
{
    if (EVP_PKEY_is_a(pkey, "RSA")) {
        *alg = ALG_RS256;
        *why = "RSA key shorter than 2048 bits";
        return EVP_PKEY_get_bits(pkey) >= AUTH_MIN_RSA_BITS;
    }
    if (EVP_PKEY_is_a(pkey, "EC")) {
        char group[64] = "";
        *alg = ALG_ES256;
        *why = "EC key not on curve P-256";
        return EVP_PKEY_get_group_name(pkey, group, sizeof group, NULL) == 1 &&
               strcmp(group, SN_X9_62_prime256v1) == 0;
    }
    *why = "neither an RSA nor an EC P-256 key";
    return false;
}

static const struct auth_key *find_key(const struct auth *a, const char *kid)
{
    for (size_t i = 0; i < a->n_keys; i++) {
        if (strcmp(a->keys[i].kid, kid) == 0)
            return &a->keys[i];
    }
    return NULL;
}

/* Takes ownership of pkey, whatever the outcome. */
static bool add_key(struct auth *a, const char *kid, EVP_PKEY *pkey, const char *source, char *err,
                    size_t errlen)
{
    enum jws_alg alg;
    const char *why;
    if (!classify_key(pkey, &alg, &why)) {
        EVP_PKEY_free(pkey);
        return fail(err, errlen, "%s: key \"%s\": %s", source, kid, why);
    }
    if (find_key(a, kid)) {
        EVP_PKEY_free(pkey);
        return fail(err, errlen, "%s: key id \"%s\" is used twice", source, kid);
    }
    a->keys = xrealloc(a->keys, (a->n_keys + 1) * sizeof(*a->keys));
    a->keys[a->n_keys++] = (struct auth_key){.kid = xstrdup(kid), .pkey = pkey, .alg = alg};
    return true;
}

static int no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
    return 0;
}

static EVP_PKEY *read_pem_public_key(const char *path)
{
    BIO *bio = BIO_new_file(path, "r");
    if (!bio)
        return NULL;
    EVP_PKEY *pkey = PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    return pkey;
}

static bool load_pem_entry(struct auth *a, const char *item, size_t len, char *err, size_t errlen)
{
    const char *eq = memchr(item, '=', len);
    if (!eq)
        return fail(err, errlen, "JWT_PUBLIC_KEYS: entry \"%.*s\" is not kid=path.pem", (int)len,
                    item);
    const char *kid_start = item, *path_start = eq + 1;
    size_t kid_len = (size_t)(eq - item), path_len = len - kid_len - 1;
    trim(&kid_start, &kid_len);
    trim(&path_start, &path_len);
    if (!kid_len || !path_len)
        return fail(err, errlen, "JWT_PUBLIC_KEYS: entry \"%.*s\" is not kid=path.pem", (int)len,
                    item);
    char *kid = xstrndup(kid_start, kid_len), *path = xstrndup(path_start, path_len);
    EVP_PKEY *pkey = read_pem_public_key(path);
    bool ok =
        pkey ? add_key(a, kid, pkey, "JWT_PUBLIC_KEYS", err, errlen)
             : fail(err, errlen, "JWT_PUBLIC_KEYS: cannot read a PEM public key from %s", path);
    free(kid);
    free(path);
    return ok;
}

static bool load_pem_keys(struct auth *a, const char *list, char *err, size_t errlen)
{
    const char *cursor = list, *item;
    size_t len;
    while (next_item(&cursor, &item, &len)) {
        if (len && !load_pem_entry(a, item, len, err, errlen))
            return false;
    }
    return true;
}

/* ---- JWKS (RFC 7517, 7518 section 6) ---- */

static BIGNUM *jwk_bignum(const json_t *jwk, const char *field)
{
    const json_t *v = json_object_get(jwk, field);
    size_t n;
    unsigned char *raw =
        json_is_string(v) ? b64url_decode(json_string_value(v), json_string_length(v), &n) : NULL;
    if (!raw)
        return NULL;
    BIGNUM *bn = n ? BN_bin2bn(raw, (int)n, NULL) : NULL;
    free(raw);
    return bn;
}

static bool jwk_coordinate(const json_t *jwk, const char *field, unsigned char *out)
{
    const json_t *v = json_object_get(jwk, field);
    size_t n = 0;
    unsigned char *raw =
        json_is_string(v) ? b64url_decode(json_string_value(v), json_string_length(v), &n) : NULL;
    bool ok = raw && n == P256_COORD_BYTES;
    if (ok)
        memcpy(out, raw, n);
    free(raw);
    return ok;
}

static EVP_PKEY *pkey_from_params(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY *pkey = NULL;
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

static bool public_key_is_sound(EVP_PKEY *pkey)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    bool ok = ctx && EVP_PKEY_public_check(ctx) == 1;
    EVP_PKEY_CTX_free(ctx);
    return ok;
}

static EVP_PKEY *jwk_rsa_key(const json_t *jwk)
{
    BIGNUM *n = jwk_bignum(jwk, "n"), *e = jwk_bignum(jwk, "e");
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    EVP_PKEY *pkey = NULL;
    if (n && e && bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
        pkey = pkey_from_params("RSA", bld);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    return pkey;
}

static EVP_PKEY *jwk_ec_key(const json_t *jwk)
{
    unsigned char point[1 + 2 * P256_COORD_BYTES] = {POINT_CONVERSION_UNCOMPRESSED};
    if (!jwk_coordinate(jwk, "x", point + 1) ||
        !jwk_coordinate(jwk, "y", point + 1 + P256_COORD_BYTES))
        return NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    EVP_PKEY *pkey = NULL;
    if (bld &&
        OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, SN_X9_62_prime256v1, 0) &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point))
        pkey = pkey_from_params("EC", bld);
    OSSL_PARAM_BLD_free(bld);
    if (pkey && !public_key_is_sound(pkey)) {
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }
    return pkey;
}

static bool jwk_member_is(const json_t *jwk, const char *field, const char *want)
{
    const char *v = json_string_value(json_object_get(jwk, field));
    return v && strcmp(v, want) == 0;
}

/* Which algorithm a JWK is for; false for keys this server does not verify with (encryption
 * keys, symmetric `oct` keys, other curves and algorithms), which are skipped. */
static bool jwk_signing_alg(const json_t *jwk, enum jws_alg *alg)
{
    if (json_object_get(jwk, "use") && !jwk_member_is(jwk, "use", "sig"))
        return false;
    if (jwk_member_is(jwk, "kty", "RSA"))
        *alg = ALG_RS256;
    else if (jwk_member_is(jwk, "kty", "EC") && jwk_member_is(jwk, "crv", "P-256"))
        *alg = ALG_ES256;
    else
        return false;
    return !json_object_get(jwk, "alg") || jwk_member_is(jwk, "alg", alg_names[*alg]);
}

static bool load_jwk(struct auth *a, const json_t *jwk, size_t index, char *err, size_t errlen)
{
    enum jws_alg alg;
    if (!json_is_object(jwk))
        return fail(err, errlen, "JWT_JWKS_FILE: keys[%zu] is not an object", index);
    if (!jwk_signing_alg(jwk, &alg))
        return true;
    const char *kid = json_string_value(json_object_get(jwk, "kid"));
    if (!kid || !*kid)
        return fail(err, errlen, "JWT_JWKS_FILE: keys[%zu] has no kid", index);
    EVP_PKEY *pkey = alg == ALG_RS256 ? jwk_rsa_key(jwk) : jwk_ec_key(jwk);
    if (!pkey)
        return fail(err, errlen, "JWT_JWKS_FILE: key \"%s\" has invalid %s", kid,
                    alg == ALG_RS256 ? "n/e" : "x/y");
    return add_key(a, kid, pkey, "JWT_JWKS_FILE", err, errlen);
}

static bool load_jwks(struct auth *a, const char *path, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *doc = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) {
        char *near = strstr(jerr.text, " near '");
        if (near)
            *near = '\0'; /* jansson quotes the file there, which may hold key material */
        return fail(err, errlen, "JWT_JWKS_FILE: cannot load %s: %s (line %d)", path, jerr.text,
                    jerr.line);
    }
    const json_t *keys = json_object_get(doc, "keys");
    size_t before = a->n_keys;
    bool ok = json_is_array(keys) || fail(err, errlen, "JWT_JWKS_FILE: no \"keys\" array");
    for (size_t i = 0; ok && i < json_array_size(keys); i++)
        ok = load_jwk(a, json_array_get(keys, i), i, err, errlen);
    if (ok && a->n_keys == before)
        ok = fail(err, errlen, "JWT_JWKS_FILE: %s holds no RSA or EC P-256 signing key", path);
    json_decref(doc);
    return ok;
}

/* ---- configuration ---- */

static bool has_key_for(const struct auth *a, enum jws_alg alg)
{
    if (alg == ALG_HS256)
        return a->secret != NULL;
    for (size_t i = 0; i < a->n_keys; i++) {
        if (a->keys[i].alg == alg)
            return true;
    }
    return false;
}

static bool parse_algorithms(struct auth *a, const char *list, char *err, size_t errlen)
{
    const char *cursor = list, *item;
    size_t len;
    enum jws_alg alg;
    while (next_item(&cursor, &item, &len)) {
        if (len == 4 && memcmp(item, "none", 4) == 0)
            return fail(err, errlen, "JWT_ALGORITHMS: \"none\" is never allowed");
        if (len && !parse_alg(item, len, &alg))
            return fail(err, errlen,
                        "JWT_ALGORITHMS: unknown algorithm \"%.*s\" (supported: HS256, RS256, "
                        "ES256; names are case-sensitive)",
                        (int)(len > 32 ? 32 : len), item);
        if (len)
            a->allowed |= ALG_BIT(alg);
    }
    return true;
}

static bool choose_algorithms(struct auth *a, const char *list, char *err, size_t errlen)
{
    if (is_set(list)) {
        if (!parse_algorithms(a, list, err, errlen))
            return false;
    } else {
        for (int alg = 0; alg < ALG_COUNT; alg++)
            a->allowed |= has_key_for(a, (enum jws_alg)alg) ? ALG_BIT(alg) : 0;
    }
    if (!a->allowed)
        return fail(err, errlen,
                    "no JWT algorithm usable: set JWT_HS256_SECRET, JWT_PUBLIC_KEYS or "
                    "JWT_JWKS_FILE (and JWT_ALGORITHMS to match)");
    for (int alg = 0; alg < ALG_COUNT; alg++) {
        if ((a->allowed & ALG_BIT(alg)) && !has_key_for(a, (enum jws_alg)alg))
            return fail(err, errlen, "JWT_ALGORITHMS allows %s but no %s is configured",
                        alg_names[alg],
                        alg == ALG_HS256   ? "JWT_HS256_SECRET"
                        : alg == ALG_RS256 ? "RSA key (JWT_PUBLIC_KEYS or JWT_JWKS_FILE)"
                                           : "EC P-256 key (JWT_PUBLIC_KEYS or JWT_JWKS_FILE)");
    }
    return true;
}

static bool load_secret(struct auth *a, const char *secret, char *err, size_t errlen)
{
    size_t len = strlen(secret);
    if (len < AUTH_MIN_SECRET_BYTES)
        return fail(err, errlen, "JWT_HS256_SECRET must be at least %d bytes (it has %zu)",
                    AUTH_MIN_SECRET_BYTES, len);
    a->secret = xmalloc(len);
    memcpy(a->secret, secret, len);
    a->secret_len = len;
    return true;
}

static bool load_settings(struct auth *a, const struct auth_config *cfg, char *err, size_t errlen)
{
    if (cfg->leeway_seconds < 0)
        return fail(err, errlen, "JWT_LEEWAY_SECONDS must not be negative");
    a->leeway = cfg->leeway_seconds;
    a->max_token_bytes = cfg->max_token_bytes ? cfg->max_token_bytes : AUTH_DEFAULT_MAX_TOKEN_BYTES;
    a->issuer = is_set(cfg->issuer) ? xstrdup(cfg->issuer) : NULL;
    a->audience = is_set(cfg->audience) ? xstrdup(cfg->audience) : NULL;
    a->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    return a->sha256 || fail(err, errlen, "OpenSSL has no SHA-256");
}

struct auth *auth_new(const struct auth_config *cfg, char *err, size_t errlen)
{
    static atomic_uint_fast64_t generations;
    struct auth *a = xcalloc(1, sizeof(*a));
    a->generation = atomic_fetch_add(&generations, 1) + 1;
    bool ok = load_settings(a, cfg, err, errlen) &&
              (!is_set(cfg->hs256_secret) || load_secret(a, cfg->hs256_secret, err, errlen)) &&
              (!is_set(cfg->public_keys) || load_pem_keys(a, cfg->public_keys, err, errlen)) &&
              (!is_set(cfg->jwks_file) || load_jwks(a, cfg->jwks_file, err, errlen)) &&
              choose_algorithms(a, cfg->algorithms, err, errlen);
    ERR_clear_error();
    if (ok)
        return a;
    auth_free(a);
    return NULL;
}

void auth_free(struct auth *auth)
{
    if (!auth)
        return;
    for (size_t i = 0; i < auth->n_keys; i++) {
        free(auth->keys[i].kid);
        EVP_PKEY_free(auth->keys[i].pkey);
    }
    free(auth->keys);
    xfree_secret(auth->secret, auth->secret_len);
    free(auth->issuer);
    free(auth->audience);
    EVP_MD_free(auth->sha256);
    free(auth);
}

/* ---- signature ---- */

struct jws {
    const char *signing_input; /* "header.payload", as sent */
    size_t signing_len;
    const char *payload_b64;
    size_t payload_len;
    unsigned char *sig;
    size_t sig_len;
    json_t *header;
    json_t *claims;
    enum jws_alg alg;
};

static void jws_release(struct jws *jws)
{
    free(jws->sig);
    json_decref(jws->header);
    json_decref(jws->claims);
}

/* Splits a compact JWS into its three segments and decodes the header and the signature. */
static enum auth_result split_jws(const char *token, size_t len, struct jws *jws)
{
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
        return AUTH_MALFORMED;
    size_t header_len = (size_t)(dot1 - token);
    jws->signing_input = token;
    jws->signing_len = (size_t)(dot2 - token);
    jws->payload_b64 = dot1 + 1;
    jws->payload_len = (size_t)(dot2 - dot1 - 1);
    if (!header_len || !jws->payload_len || !b64url_valid(jws->payload_b64, jws->payload_len))
        return AUTH_MALFORMED;
    jws->sig = b64url_decode(dot2 + 1, len - jws->signing_len - 1, &jws->sig_len);
    jws->header = decode_json_segment(token, header_len);
    return jws->sig && jws->header ? AUTH_OK : AUTH_MALFORMED;
}

static enum auth_result check_header(const struct auth *a, struct jws *jws)
{
    /* No extension is understood here, so any critical one must be refused (RFC 7515 4.1.11). */
    if (json_object_get(jws->header, "crit"))
        return AUTH_MALFORMED;
    const json_t *alg = json_object_get(jws->header, "alg");
    if (!json_is_string(alg))
        return AUTH_MALFORMED;
    if (!parse_alg(json_string_value(alg), json_string_length(alg), &jws->alg) ||
        !(a->allowed & ALG_BIT(jws->alg)))
        return AUTH_ALGORITHM;
    return AUTH_OK;
}

static enum auth_result choose_key(const struct auth *a, const struct jws *jws,
                                   const struct auth_key **key)
{
    *key = NULL;
    if (jws->alg == ALG_HS256)
        return a->secret ? AUTH_OK : AUTH_KEY;
    const json_t *kid = json_object_get(jws->header, "kid");
    if (!kid)
        return AUTH_KEY;
    if (!json_is_string(kid))
        return AUTH_MALFORMED;
    *key = find_key(a, json_string_value(kid));
    return *key && (*key)->alg == jws->alg ? AUTH_OK : AUTH_KEY;
}

static bool hmac_matches(const struct auth *a, const struct jws *jws)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    if (jws->sig_len != SHA256_BYTES ||
        !HMAC(a->sha256, a->secret, (int)a->secret_len, (const unsigned char *)jws->signing_input,
              jws->signing_len, mac, &mac_len) ||
        mac_len != SHA256_BYTES)
        return false;
    return CRYPTO_memcmp(mac, jws->sig, SHA256_BYTES) == 0;
}

static bool digest_verify(const struct auth *a, EVP_PKEY *pkey, const unsigned char *sig,
                          size_t sig_len, const struct jws *jws)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, a->sha256, NULL, pkey) == 1 &&
              EVP_DigestVerify(ctx, sig, sig_len, (const unsigned char *)jws->signing_input,
                               jws->signing_len) == 1;
    EVP_MD_CTX_free(ctx);
    return ok;
}

/* JWS carries ES256 signatures as raw r||s (RFC 7518 3.4); OpenSSL wants DER. */
static bool es256_matches(const struct auth *a, EVP_PKEY *pkey, const struct jws *jws)
{
    if (jws->sig_len != 2 * P256_COORD_BYTES)
        return false;
    ECDSA_SIG *esig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(jws->sig, P256_COORD_BYTES, NULL);
    BIGNUM *s = BN_bin2bn(jws->sig + P256_COORD_BYTES, P256_COORD_BYTES, NULL);
    unsigned char *der = NULL;
    int der_len = -1;
    if (esig && r && s && ECDSA_SIG_set0(esig, r, s) == 1) {
        r = s = NULL; /* owned by esig now */
        der_len = i2d_ECDSA_SIG(esig, &der);
    }
    bool ok = der_len > 0 && digest_verify(a, pkey, der, (size_t)der_len, jws);
    OPENSSL_free(der);
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(esig);
    return ok;
}

static enum auth_result check_signature(const struct auth *a, const struct jws *jws,
                                        const struct auth_key *key)
{
    bool ok;
    switch (jws->alg) {
    case ALG_HS256:
        ok = hmac_matches(a, jws);
        break;
    case ALG_RS256:
        ok = digest_verify(a, key->pkey, jws->sig, jws->sig_len, jws);
        break;
    case ALG_ES256:
        ok = es256_matches(a, key->pkey, jws);
        break;
    default:
        ok = false;
    }
    return ok ? AUTH_OK : AUTH_SIGNATURE;
}

/* ---- claims ---- */

static enum auth_result check_times(const struct auth *a, const json_t *claims, time_t now)
{
    const json_t *exp = json_object_get(claims, "exp");
    const json_t *nbf = json_object_get(claims, "nbf");
    const json_t *iat = json_object_get(claims, "iat");
    if (!json_is_integer(exp) || (nbf && !json_is_integer(nbf)) || (iat && !json_is_integer(iat)))
        return AUTH_CLAIMS;
    int64_t late = add_saturated((int64_t)now, -a->leeway);
    int64_t early = add_saturated((int64_t)now, a->leeway);
    if (late >= json_integer_value(exp))
        return AUTH_EXPIRED;
    if (nbf && early < json_integer_value(nbf))
        return AUTH_NOT_YET_VALID;
    if (iat && json_integer_value(iat) > early)
        return AUTH_NOT_YET_VALID;
    return AUTH_OK;
}

static enum auth_result check_issuer(const struct auth *a, const json_t *claims)
{
    const json_t *iss = json_object_get(claims, "iss");
    if (iss && !json_is_string(iss))
        return AUTH_CLAIMS;
    if (a->issuer && (!iss || strcmp(json_string_value(iss), a->issuer) != 0))
        return AUTH_ISSUER;
    return AUTH_OK;
}

static enum auth_result check_audience(const struct auth *a, const json_t *claims)
{
    const json_t *aud = json_object_get(claims, "aud");
    if (json_is_string(aud))
        return !a->audience || strcmp(json_string_value(aud), a->audience) == 0 ? AUTH_OK
                                                                                : AUTH_AUDIENCE;
    if (aud && !json_is_array(aud))
        return AUTH_CLAIMS;
    bool found = false;
    for (size_t i = 0; i < json_array_size(aud); i++) {
        const json_t *v = json_array_get(aud, i);
        if (!json_is_string(v))
            return AUTH_CLAIMS;
        found = found || (a->audience && strcmp(json_string_value(v), a->audience) == 0);
    }
    return !a->audience || found ? AUTH_OK : AUTH_AUDIENCE;
}

static int compare_int64(const void *pa, const void *pb)
{
    int64_t x = *(const int64_t *)pa, y = *(const int64_t *)pb;
    return (x > y) - (x < y);
}

static size_t sort_unique(int64_t *v, size_t n)
{
    if (n < 2)
        return n;
    qsort(v, n, sizeof(*v), compare_int64);
    size_t out = 1;
    for (size_t i = 1; i < n; i++) {
        if (v[i] != v[out - 1])
            v[out++] = v[i];
    }
    return out;
}

static enum auth_result read_merchants(const json_t *m, struct arena *arena,
                                       struct auth_principal *p)
{
    if (!m)
        return AUTH_OK;
    if (json_is_string(m)) {
        p->all_merchants = strcmp(json_string_value(m), "*") == 0;
        return p->all_merchants ? AUTH_OK : AUTH_CLAIMS;
    }
    if (!json_is_array(m) || json_array_size(m) > AUTH_MAX_MERCHANTS)
        return AUTH_CLAIMS;
    size_t n = json_array_size(m);
    int64_t *ids = arena_alloc(arena, n * sizeof(*ids));
    for (size_t i = 0; i < n; i++) {
        const json_t *id = json_array_get(m, i);
        if (!json_is_integer(id) || json_integer_value(id) < 1)
            return AUTH_CLAIMS;
        ids[i] = json_integer_value(id);
    }
    p->n_merchants = sort_unique(ids, n);
    p->merchants = ids;
    return AUTH_OK;
}

static enum auth_result read_principal(const json_t *claims, struct arena *arena,
                                       struct auth_principal *p)
{
    const json_t *sub = json_object_get(claims, "sub");
    const json_t *scope = json_object_get(claims, "scope");
    if ((sub && !json_is_string(sub)) || (scope && !json_is_string(scope)))
        return AUTH_CLAIMS;
    p->sub = sub ? arena_strndup(arena, json_string_value(sub), json_string_length(sub)) : "";
    p->scopes = scope ? auth_parse_scopes(json_string_value(scope), json_string_length(scope)) : 0;
    return read_merchants(json_object_get(claims, "merchants"), arena, p);
}

/* ---- verification ---- */

static enum auth_result verify_jws(const struct auth *a, const char *token, size_t len, time_t now,
                                   struct arena *arena, struct jws *jws, struct auth_principal *p)
{
    const struct auth_key *key;
    enum auth_result r;
    if ((r = split_jws(token, len, jws)) != AUTH_OK || (r = check_header(a, jws)) != AUTH_OK ||
        (r = choose_key(a, jws, &key)) != AUTH_OK || (r = check_signature(a, jws, key)) != AUTH_OK)
        return r;
    /* The payload is only parsed once its signature is known good. */
    jws->claims = decode_json_segment(jws->payload_b64, jws->payload_len);
    if (!jws->claims)
        return AUTH_MALFORMED;
    if ((r = check_times(a, jws->claims, now)) != AUTH_OK ||
        (r = check_issuer(a, jws->claims)) != AUTH_OK ||
        (r = check_audience(a, jws->claims)) != AUTH_OK)
        return r;
    return read_principal(jws->claims, arena, p);
}

/* ---- verified tokens, remembered ----
 *
 * A client sends the same token with every request until it expires; verifying it again costs
 * a signature check and a JSON parse each time. Each thread remembers the tokens it verified
 * (byte for byte, with the verifier's generation, so a key reload forgets them all) and their
 * principal; a remembered token is only re-checked against the clock (exp; nbf and iat only
 * get more valid with time). Small, per thread, no locks; freed when the thread ends. */

enum { TOKEN_CACHE_SLOTS = 64, TOKEN_CACHE_MAX_BYTES = 2048 };

struct cached_token {
    uint64_t generation; /* 0: empty */
    uint64_t hash;
    size_t len;
    int64_t exp;
    struct auth_principal p; /* sub and merchants point into block */
    char *block;             /* token, sub, merchants */
};

static pthread_key_t token_cache_key;
static pthread_once_t token_cache_once = PTHREAD_ONCE_INIT;

static void free_token_cache(void *ptr)
{
    struct cached_token *cache = ptr;
    for (size_t i = 0; i < TOKEN_CACHE_SLOTS; i++)
        free(cache[i].block);
    free(cache);
}

static void make_token_cache_key(void)
{
    pthread_key_create(&token_cache_key, free_token_cache);
}

static struct cached_token *thread_token_cache(void)
{
    pthread_once(&token_cache_once, make_token_cache_key);
    struct cached_token *cache = pthread_getspecific(token_cache_key);
    if (!cache) {
        cache = xcalloc(TOKEN_CACHE_SLOTS, sizeof(*cache));
        pthread_setspecific(token_cache_key, cache);
    }
    return cache;
}

static uint64_t token_hash(const char *token, size_t len)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)token[i]) * 1099511628211ull;
    return h;
}

/* The remembered principal of this exact token, copied into the arena, when it is still
 * within its exp; else false (and an expired entry is dropped). */
static bool recall_token(const struct auth *a, const char *token, size_t len, uint64_t hash,
                         time_t now, struct arena *arena, struct auth_principal *out,
                         enum auth_result *r)
{
    struct cached_token *c = &thread_token_cache()[hash % TOKEN_CACHE_SLOTS];
    if (c->generation != a->generation || c->hash != hash || c->len != len ||
        CRYPTO_memcmp(c->block, token, len) != 0)
        return false;
    if (add_saturated((int64_t)now, -a->leeway) >= c->exp) {
        c->generation = 0;
        *r = AUTH_EXPIRED;
        return true;
    }
    *out = c->p;
    out->sub = arena_strdup(arena, c->p.sub);
    int64_t *merchants = arena_alloc(arena, (c->p.n_merchants + 1) * sizeof(*merchants));
    memcpy(merchants, c->p.merchants, c->p.n_merchants * sizeof(*merchants));
    out->merchants = merchants;
    *r = AUTH_OK;
    return true;
}

static void remember_token(const struct auth *a, const char *token, size_t len, uint64_t hash,
                           const json_t *claims, const struct auth_principal *p)
{
    if (len > TOKEN_CACHE_MAX_BYTES)
        return;
    struct cached_token *c = &thread_token_cache()[hash % TOKEN_CACHE_SLOTS];
    size_t sub_len = strlen(p->sub), merchants_bytes = p->n_merchants * sizeof(int64_t);
    size_t offset = (len + 1 + sub_len + 1 + 7) & ~(size_t)7;
    free(c->block);
    c->block = xmalloc(offset + merchants_bytes + 1);
    memcpy(c->block, token, len);
    c->block[len] = '\0';
    memcpy(c->block + len + 1, p->sub, sub_len + 1);
    if (merchants_bytes)
        memcpy(c->block + offset, p->merchants, merchants_bytes);
    c->p = *p;
    c->p.sub = c->block + len + 1;
    c->p.merchants = (const int64_t *)(void *)(c->block + offset);
    c->generation = a->generation;
    c->hash = hash;
    c->len = len;
    c->exp = json_integer_value(json_object_get(claims, "exp"));
}

enum auth_result auth_verify(const struct auth *auth, const char *token, size_t len, time_t now,
                             struct arena *arena, struct auth_principal *out)
{
    static const struct auth_principal nobody = {.sub = ""};
    *out = nobody;
    if (!token || !len)
        return AUTH_MISSING;
    if (len > auth->max_token_bytes)
        return AUTH_TOO_LARGE;
    uint64_t hash = token_hash(token, len);
    enum auth_result r;
    if (recall_token(auth, token, len, hash, now, arena, out, &r))
        return r;
    struct jws jws = {0};
    struct auth_principal p = nobody;
    r = verify_jws(auth, token, len, now, arena, &jws, &p);
    if (r == AUTH_OK) {
        remember_token(auth, token, len, hash, jws.claims, &p);
        *out = p;
    }
    jws_release(&jws);
    ERR_clear_error(); /* leave no failed-verify noise on this thread's OpenSSL error queue */
    return r;
}

const char *auth_result_text(enum auth_result r)
{
    static const char *const texts[] = {
#define AUTH_RESULT_TEXT(name, text) text,
        AUTH_RESULT_MAP(AUTH_RESULT_TEXT)
#undef AUTH_RESULT_TEXT
    };
    return (size_t)r < sizeof(texts) / sizeof(texts[0]) ? texts[r] : "unknown";
}

/* ---- reloading: the keeper ----
 *
 * A verification takes a reference on the current version under `lock`, which is held just
 * long enough to read the pointer and count the reference (reading the pointer and counting
 * without it would let a reload free the version in between). A reload builds the new
 * verifier outside the lock, swaps the pointer under it and drops the keeper's reference: the
 * old version is freed by whichever verification finishes last with it. */

struct auth_version {
    struct auth *auth;
    atomic_uint refs; /* the keeper's own while current, plus one per running verification */
};

struct auth_keeper {
    pthread_mutex_t lock;        /* guards `current` */
    pthread_mutex_t reload_lock; /* one reload at a time */
    struct auth_version *current;
    struct auth_config cfg;      /* strings point at the copies below */
    char *secret, *public_keys, *jwks_file, *algorithms, *issuer, *audience;
};

static char *copy_setting(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void copy_config(struct auth_keeper *k, const struct auth_config *cfg)
{
    k->cfg = *cfg;
    k->cfg.hs256_secret = k->secret = copy_setting(cfg->hs256_secret);
    k->cfg.public_keys = k->public_keys = copy_setting(cfg->public_keys);
    k->cfg.jwks_file = k->jwks_file = copy_setting(cfg->jwks_file);
    k->cfg.algorithms = k->algorithms = copy_setting(cfg->algorithms);
    k->cfg.issuer = k->issuer = copy_setting(cfg->issuer);
    k->cfg.audience = k->audience = copy_setting(cfg->audience);
}

static struct auth_version *version_new(struct auth *auth)
{
    struct auth_version *v = xmalloc(sizeof(*v));
    v->auth = auth;
    atomic_init(&v->refs, 1);
    return v;
}

static void version_release(struct auth_version *v)
{
    if (atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) == 1) {
        auth_free(v->auth);
        free(v);
    }
}

static struct auth_version *version_acquire(struct auth_keeper *k)
{
    pthread_mutex_lock(&k->lock);
    struct auth_version *v = k->current;
    atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&k->lock);
    return v;
}

struct auth_keeper *auth_keeper_new(const struct auth_config *cfg, char *err, size_t errlen)
{
    struct auth *auth = auth_new(cfg, err, errlen);
    if (!auth)
        return NULL;
    struct auth_keeper *k = xcalloc(1, sizeof(*k));
    pthread_mutex_init(&k->lock, NULL);
    pthread_mutex_init(&k->reload_lock, NULL);
    copy_config(k, cfg);
    k->current = version_new(auth);
    return k;
}

void auth_keeper_free(struct auth_keeper *k)
{
    if (!k)
        return;
    version_release(k->current);
    if (k->secret)
        xfree_secret(k->secret, strlen(k->secret));
    free(k->public_keys);
    free(k->jwks_file);
    free(k->algorithms);
    free(k->issuer);
    free(k->audience);
    pthread_mutex_destroy(&k->lock);
    pthread_mutex_destroy(&k->reload_lock);
    free(k);
}

bool auth_keeper_reload(struct auth_keeper *k, char *msg, size_t msglen)
{
    pthread_mutex_lock(&k->reload_lock);
    struct auth *fresh = auth_new(&k->cfg, msg, msglen);
    if (fresh) {
        snprintf(msg, msglen, "%zu public key(s)", fresh->n_keys);
        struct auth_version *next = version_new(fresh), *old;
        pthread_mutex_lock(&k->lock);
        old = k->current;
        k->current = next;
        pthread_mutex_unlock(&k->lock);
        version_release(old);
    }
    pthread_mutex_unlock(&k->reload_lock);
    return fresh != NULL;
}

enum auth_result auth_keeper_verify(struct auth_keeper *k, const char *token, size_t len,
                                    time_t now, struct arena *arena, struct auth_principal *out)
{
    struct auth_version *v = version_acquire(k);
    enum auth_result r = auth_verify(v->auth, token, len, now, arena, out);
    version_release(v);
    return r;
}

/* ---- scopes and tenancy ---- */

static uint32_t scope_bit(const char *s, size_t len)
{
    static const struct {
        const char *name;
        uint32_t bit;
    } scopes[] = {
#define AUTH_SCOPE_ENTRY(name, str) {str, AUTH_SCOPE_##name},
        AUTH_SCOPE_MAP(AUTH_SCOPE_ENTRY)
#undef AUTH_SCOPE_ENTRY
    };
    for (size_t i = 0; i < sizeof(scopes) / sizeof(scopes[0]); i++) {
        if (strlen(scopes[i].name) == len && memcmp(scopes[i].name, s, len) == 0)
            return scopes[i].bit;
    }
    return 0;
}

uint32_t auth_parse_scopes(const char *s, size_t len)
{
    uint32_t bits = 0;
    size_t i = 0;
    while (s && i < len) {
        while (i < len && s[i] == ' ')
            i++;
        size_t start = i;
        while (i < len && s[i] != ' ')
            i++;
        if (i > start)
            bits |= scope_bit(s + start, i - start);
    }
    return bits;
}

bool auth_has_any_scope(const struct auth_principal *p, uint32_t any)
{
    return any == 0 || (p && (p->scopes & any) != 0);
}

bool auth_may_act_for(const struct auth_principal *p, int64_t merchant_id)
{
    if (!p || merchant_id < 1)
        return false;
    if (p->all_merchants)
        return true;
    size_t lo = 0, hi = p->n_merchants;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->merchants[mid] == merchant_id)
            return true;
        if (p->merchants[mid] < merchant_id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* ---- development tokens ---- */

static bool parse_merchant_id(const char *s, size_t len, json_int_t *id)
{
    json_int_t v = 0;
    if (!len)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9' || v > (LLONG_MAX - (s[i] - '0')) / 10)
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *id = v;
    return v >= 1;
}

/* "*" stays a string; "1,2,3" becomes an array of integers; NULL when malformed. */
static json_t *mint_merchants(const char *list)
{
    if (strcmp(list, "*") == 0)
        return json_string("*");
    json_t *ids = json_array();
    const char *cursor = list, *item;
    size_t len;
    json_int_t id;
    while (next_item(&cursor, &item, &len)) {
        if (!parse_merchant_id(item, len, &id) || json_array_size(ids) >= AUTH_MAX_MERCHANTS) {
            json_decref(ids);
            return NULL;
        }
        json_array_append_new(ids, json_integer(id));
    }
    return ids;
}

/* False when value is not valid UTF-8 (jansson refuses it). */
static bool set_string(json_t *obj, const char *key, const char *value)
{
    return !value || json_object_set_new(obj, key, json_string(value)) == 0;
}

static json_t *mint_claims(const char *sub, const char *scopes, const char *merchants,
                           long ttl_seconds, time_t now)
{
    json_t *claims = json_object();
    /* json_object_set_new consumes its value even when it fails, and refuses NULL. */
    bool ok =
        (!merchants || json_object_set_new(claims, "merchants", mint_merchants(merchants)) == 0) &&
        set_string(claims, "sub", sub) && set_string(claims, "scope", scopes) &&
        json_object_set_new(claims, "iat", json_integer(now)) == 0 &&
        json_object_set_new(claims, "exp", json_integer(now + ttl_seconds)) == 0;
    if (!ok) {
        json_decref(claims);
        return NULL;
    }
    return claims;
}

static char *encode_hs256(const char *secret, const json_t *claims)
{
    char *grants = json_dumps(claims, JSON_COMPACT);
    jwt_t *jwt = NULL;
    char *token = NULL;
    if (grants && jwt_new(&jwt) == 0 && jwt_add_grants_json(jwt, grants) == 0 &&
        jwt_set_alg(jwt, JWT_ALG_HS256, (const unsigned char *)secret, (int)strlen(secret)) == 0)
        token = jwt_encode_str(jwt);
    if (jwt)
        jwt_free(jwt); /* also wipes its copy of the secret */
    free(grants);
    return token;
}

char *auth_mint_hs256(const char *secret, const char *sub, const char *scopes,
                      const char *merchants, long ttl_seconds, time_t now)
{
    if (!secret || strlen(secret) < AUTH_MIN_SECRET_BYTES || strlen(secret) > INT_MAX ||
        ttl_seconds <= 0 || now > (time_t)(LLONG_MAX - ttl_seconds))
        return NULL;
    json_t *claims = mint_claims(sub, scopes, merchants, ttl_seconds, now);
    if (!claims)
        return NULL;
    char *token = encode_hs256(secret, claims);
    json_decref(claims);
    return token;
}
