/* test_auth.c - JWT verification (RFC 8725 checks), claims, scopes, tenancy and minting. */
#include "server/alloc.h"
#include "server/arena.h"
#include "server/auth.h"
#include "server/buf.h"
#include "tests/unit/check.h"

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define NOW ((time_t)1700000000)
#define SECRET "0123456789abcdef0123456789abcdef"
#define ISSUER "https://issuer.test"
#define AUDIENCE "cangrejo"
#define HS_HEADER "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
#define RS_HEADER "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"rsa1\"}"
#define ES_HEADER "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"ec1\"}"

/* Keys made once per run; the verifier `std` accepts HS256 (SECRET), rsa1 and ec1. */
static char tmpdir[] = "/tmp/test_auth.XXXXXX";
static EVP_PKEY *rsa1, *ec1;
static char rsa1_pem[256], ec1_pem[256], key_list[600];
static struct auth *std;

/* ---- token building ---- */

static char *b64url(const void *data, size_t len)
{
    char *out = xmalloc(4 * ((len + 2) / 3) + 1);
    int n = EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
    for (char *p = out; *p; p++)
        *p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
    return out;
}

static char *signing_input(const char *header, const char *payload)
{
    char *h = b64url(header, strlen(header)), *p = b64url(payload, strlen(payload));
    size_t n = strlen(h) + strlen(p) + 2;
    char *out = xmalloc(n);
    snprintf(out, n, "%s.%s", h, p);
    free(h);
    free(p);
    return out;
}

static char *join_signature(char *input, const unsigned char *sig, size_t sig_len)
{
    char *s = b64url(sig, sig_len);
    size_t n = strlen(input) + strlen(s) + 2;
    char *out = xmalloc(n);
    snprintf(out, n, "%s.%s", input, s);
    free(s);
    free(input);
    return out;
}

static char *hmac_token(const EVP_MD *md, const char *header, const char *payload, const void *key,
                        size_t key_len)
{
    char *input = signing_input(header, payload);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    HMAC(md, key, (int)key_len, (unsigned char *)input, strlen(input), mac, &mac_len);
    return join_signature(input, mac, mac_len);
}

static char *hs_token(const char *payload)
{
    return hmac_token(EVP_sha256(), HS_HEADER, payload, SECRET, strlen(SECRET));
}

static size_t der_to_raw_ecdsa(const unsigned char *der, size_t der_len, unsigned char *raw)
{
    ECDSA_SIG *esig = d2i_ECDSA_SIG(NULL, &der, (long)der_len);
    const BIGNUM *r, *s;
    ECDSA_SIG_get0(esig, &r, &s);
    BN_bn2binpad(r, raw, 32);
    BN_bn2binpad(s, raw + 32, 32);
    ECDSA_SIG_free(esig);
    return 64;
}

/* Signs with SHA-256; ECDSA signatures become JWS raw r||s unless keep_der. */
static char *pkey_token_der(EVP_PKEY *key, const char *header, const char *payload, bool keep_der)
{
    char *input = signing_input(header, payload);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char sig[1024], raw[64];
    size_t sig_len = sizeof sig;
    EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key);
    EVP_DigestSign(ctx, sig, &sig_len, (unsigned char *)input, strlen(input));
    EVP_MD_CTX_free(ctx);
    if (EVP_PKEY_is_a(key, "EC") && !keep_der)
        return join_signature(input, raw, der_to_raw_ecdsa(sig, sig_len, raw));
    return join_signature(input, sig, sig_len);
}

static char *pkey_token(EVP_PKEY *key, const char *header, const char *payload)
{
    return pkey_token_der(key, header, payload, false);
}

static char *unsigned_token(const char *header, const char *payload, const char *tail)
{
    char *input = signing_input(header, payload);
    size_t n = strlen(input) + strlen(tail) + 1;
    char *out = xmalloc(n);
    snprintf(out, n, "%s%s", input, tail);
    free(input);
    return out;
}

static char *claims_buf;
static struct arena *verify_arena;

/* A payload with valid iss/aud/exp around NOW plus any extra members; valid until next call. */
static char *claims(const char *extra)
{
    size_t cap = strlen(extra) + 256;
    claims_buf = xrealloc(claims_buf, cap);
    snprintf(claims_buf, cap, "{\"iss\":\"%s\",\"aud\":\"%s\",\"exp\":%lld%s%s}", ISSUER, AUDIENCE,
             (long long)NOW + 600, *extra ? "," : "", extra);
    return claims_buf;
}

/* Verifies and frees token; *p stays valid until the next call. */
static enum auth_result verify_with(const struct auth *a, char *token, struct auth_principal *p)
{
    struct auth_principal scratch;
    arena_free(verify_arena);
    verify_arena = arena_new();
    enum auth_result r = auth_verify(a, token, strlen(token), NOW, verify_arena, p ? p : &scratch);
    free(token);
    return r;
}

static enum auth_result verify(char *token)
{
    return verify_with(std, token, NULL);
}

static enum auth_result verify_hs(const char *extra)
{
    return verify(hs_token(claims(extra)));
}

/* ---- fixtures ---- */

static struct auth_config std_config(void)
{
    return (struct auth_config){.hs256_secret = SECRET,
                                .public_keys = key_list,
                                .issuer = ISSUER,
                                .audience = AUDIENCE,
                                .leeway_seconds = 30,
                                .max_token_bytes = 8192};
}

static void write_public_pem(EVP_PKEY *key, char *path, size_t size, const char *name)
{
    snprintf(path, size, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    PEM_write_PUBKEY(f, key);
    fclose(f);
}

static bool setup(void)
{
    if (!mkdtemp(tmpdir))
        return false;
    rsa1 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    ec1 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!rsa1 || !ec1)
        return false;
    write_public_pem(rsa1, rsa1_pem, sizeof rsa1_pem, "rsa1.pem");
    write_public_pem(ec1, ec1_pem, sizeof ec1_pem, "ec1.pem");
    snprintf(key_list, sizeof key_list, "rsa1=%s, ec1 = %s", rsa1_pem, ec1_pem);
    char err[256] = "";
    struct auth_config cfg = std_config();
    std = auth_new(&cfg, err, sizeof err);
    if (!std)
        printf("# setup: %s\n", err);
    return std != NULL;
}

static void remove_tmpdir(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        printf("# could not remove %s\n", tmpdir);
}

static char *read_text_file(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf = xcalloc(1, 8192);
    if (f) {
        size_t n = fread(buf, 1, 8191, f);
        buf[n] = '\0';
        fclose(f);
    }
    return buf;
}

/* auth_new for a config, with the error text copied to err_out when it fails. */
static struct auth *try_new(struct auth_config cfg, char *err_out, size_t errlen)
{
    err_out[0] = '\0';
    return auth_new(&cfg, err_out, errlen);
}

/* ---- tests: signature and header ---- */

static void test_hs256_valid_with_every_claim(void)
{
    struct auth_principal p;
    char extra[512];
    snprintf(extra, sizeof extra,
             "\"sub\":\"svc-pos\",\"scope\":\"orders:read metrics:read bogus:scope\","
             "\"merchants\":[42,7,42,1000000000000],\"nbf\":%lld,\"iat\":%lld,\"jti\":\"x\"",
             (long long)NOW - 10, (long long)NOW - 10);
    CHECK_INT(verify_with(std, hs_token(claims(extra)), &p), AUTH_OK);
    CHECK_STR(p.sub, "svc-pos");
    CHECK_INT(p.scopes, AUTH_SCOPE_ORDERS_READ | AUTH_SCOPE_METRICS_READ);
    CHECK(!p.all_merchants);
    CHECK_INT(p.n_merchants, 3);
    if (p.n_merchants == 3) {
        CHECK_INT(p.merchants[0], 7);
        CHECK_INT(p.merchants[1], 42);
        CHECK_INT(p.merchants[2], 1000000000000LL);
    }
}

static void test_minimal_claims(void)
{
    struct auth_principal p;
    CHECK_INT(verify_with(std, hs_token(claims("")), &p), AUTH_OK);
    CHECK_STR(p.sub, "");
    CHECK_INT(p.scopes, 0);
    CHECK(!p.all_merchants);
    CHECK_INT(p.n_merchants, 0);
    CHECK(!auth_may_act_for(&p, 1));
}

static void test_bad_signature(void)
{
    const char *other = "another-secret-of-at-least-32-bytes!!";
    CHECK_INT(verify(hmac_token(EVP_sha256(), HS_HEADER, claims(""), other, strlen(other))),
              AUTH_SIGNATURE);
    char *token = hs_token(claims(""));
    char *last = token + strlen(token) - 2; /* not the final char: its low bits may be unused */
    *last = *last == 'A' ? 'B' : 'A';
    CHECK_INT(verify(token), AUTH_SIGNATURE);
    /* A changed payload under the original signature. */
    char *good = hs_token(claims("\"sub\":\"alice\""));
    char *forged = hs_token(claims("\"sub\":\"admin\""));
    char *sig = strrchr(good, '.');
    memcpy(strrchr(forged, '.'), sig, strlen(sig) + 1);
    CHECK_INT(verify(forged), AUTH_SIGNATURE);
    free(good);
    /* The right MAC with bytes appended. */
    char *input = signing_input(HS_HEADER, claims(""));
    unsigned char mac[64] = {0};
    unsigned int mac_len = 0;
    HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (unsigned char *)input, strlen(input), mac,
         &mac_len);
    CHECK_INT(verify(join_signature(xstrdup(input), mac, 32)), AUTH_OK);
    CHECK_INT(verify(join_signature(input, mac, 33)), AUTH_SIGNATURE);
    /* Truncated signature. */
    token = hs_token(claims(""));
    token[strlen(token) - 4] = '\0';
    CHECK_INT(verify(token), AUTH_SIGNATURE);
}

static void test_alg_none(void)
{
    CHECK_INT(verify(unsigned_token("{\"alg\":\"none\"}", claims(""), ".")), AUTH_ALGORITHM);
    CHECK_INT(verify(unsigned_token("{\"alg\":\"none\"}", claims(""), "")), AUTH_MALFORMED);
    CHECK_INT(verify(unsigned_token("{\"alg\":\"None\",\"typ\":\"JWT\"}", claims(""), ".")),
              AUTH_ALGORITHM);
    /* A none token carrying the HS256 signature of the same input is still refused. */
    char *hs = hmac_token(EVP_sha256(), "{\"alg\":\"none\"}", claims(""), SECRET, strlen(SECRET));
    CHECK_INT(verify(hs), AUTH_ALGORITHM);
}

static void test_alg_not_allowed(void)
{
    CHECK_INT(
        verify(hmac_token(EVP_sha512(), "{\"alg\":\"HS512\"}", claims(""), SECRET, strlen(SECRET))),
        AUTH_ALGORITHM);
    CHECK_INT(
        verify(hmac_token(EVP_sha256(), "{\"alg\":\"hs256\"}", claims(""), SECRET, strlen(SECRET))),
        AUTH_ALGORITHM);
    CHECK_INT(
        verify(hmac_token(EVP_sha256(), "{\"alg\":\"PS256\"}", claims(""), SECRET, strlen(SECRET))),
        AUTH_ALGORITHM);
    CHECK_INT(
        verify(hmac_token(EVP_sha256(), "{\"typ\":\"JWT\"}", claims(""), SECRET, strlen(SECRET))),
        AUTH_MALFORMED);
    CHECK_INT(verify(hmac_token(EVP_sha256(), "{\"alg\":256}", claims(""), SECRET, strlen(SECRET))),
              AUTH_MALFORMED);
}

static void test_allow_list_restricts(void)
{
    char err[256];
    struct auth_config cfg = std_config();
    cfg.algorithms = " ES256 ";
    struct auth *a = try_new(cfg, err, sizeof err);
    CHECK(a != NULL);
    CHECK_INT(verify_with(a, hs_token(claims("")), NULL), AUTH_ALGORITHM);
    CHECK_INT(verify_with(a, pkey_token(rsa1, RS_HEADER, claims("")), NULL), AUTH_ALGORITHM);
    CHECK_INT(verify_with(a, pkey_token(ec1, ES_HEADER, claims("")), NULL), AUTH_OK);
    auth_free(a);
}

static void test_hs256_with_public_key_as_secret(void)
{
    char err[256];
    char *pem = read_text_file(rsa1_pem);
    CHECK(strlen(pem) > 100);
    const char *header = "{\"alg\":\"HS256\",\"kid\":\"rsa1\"}";

    /* Only RS256 keys configured: HS256 is not even on the list. */
    char list[300];
    snprintf(list, sizeof list, "rsa1=%s", rsa1_pem);
    struct auth *rs_only =
        try_new((struct auth_config){.public_keys = list, .leeway_seconds = 30}, err, sizeof err);
    CHECK(rs_only != NULL);
    CHECK_INT(
        verify_with(rs_only, hmac_token(EVP_sha256(), header, claims(""), pem, strlen(pem)), NULL),
        AUTH_ALGORITHM);
    auth_free(rs_only);

    /* HS256 allowed as well: such a token is checked against the secret only, never the PEM. */
    CHECK_INT(verify(hmac_token(EVP_sha256(), header, claims(""), pem, strlen(pem))),
              AUTH_SIGNATURE);
    struct auth_config cfg = std_config();
    cfg.algorithms = "HS256,RS256";
    struct auth *both = try_new(cfg, err, sizeof err);
    CHECK(both != NULL);
    CHECK_INT(
        verify_with(both, hmac_token(EVP_sha256(), header, claims(""), pem, strlen(pem)), NULL),
        AUTH_SIGNATURE);
    auth_free(both);
    free(pem);
}

static void test_rs256_valid(void)
{
    struct auth_principal p;
    CHECK_INT(verify_with(std, pkey_token(rsa1, RS_HEADER, claims("\"sub\":\"rs\"")), &p), AUTH_OK);
    CHECK_STR(p.sub, "rs");
    /* Tampered payload. */
    char *good = pkey_token(rsa1, RS_HEADER, claims("\"sub\":\"a\""));
    char *bad = pkey_token(rsa1, RS_HEADER, claims("\"sub\":\"b\""));
    char *sig = strrchr(good, '.');
    memcpy(strrchr(bad, '.'), sig, strlen(sig) + 1);
    CHECK_INT(verify(bad), AUTH_SIGNATURE);
    free(good);
}

static void test_rs256_unknown_or_missing_kid(void)
{
    CHECK_INT(verify(pkey_token(rsa1, "{\"alg\":\"RS256\",\"kid\":\"nope\"}", claims(""))),
              AUTH_KEY);
    CHECK_INT(verify(pkey_token(rsa1, "{\"alg\":\"RS256\"}", claims(""))), AUTH_KEY);
    CHECK_INT(verify(pkey_token(rsa1, "{\"alg\":\"RS256\",\"kid\":7}", claims(""))),
              AUTH_MALFORMED);
    /* A kid is a name, never a path. */
    char header[400];
    snprintf(header, sizeof header, "{\"alg\":\"RS256\",\"kid\":\"%s\"}", rsa1_pem);
    CHECK_INT(verify(pkey_token(rsa1, header, claims(""))), AUTH_KEY);
}

static void test_key_type_must_match_alg(void)
{
    /* RS256 naming the EC key, ES256 naming the RSA key. */
    CHECK_INT(verify(pkey_token(rsa1, "{\"alg\":\"RS256\",\"kid\":\"ec1\"}", claims(""))),
              AUTH_KEY);
    CHECK_INT(verify(pkey_token(ec1, "{\"alg\":\"ES256\",\"kid\":\"rsa1\"}", claims(""))),
              AUTH_KEY);
}

static void test_es256_valid(void)
{
    struct auth_principal p;
    CHECK_INT(verify_with(std, pkey_token(ec1, ES_HEADER, claims("\"sub\":\"es\"")), &p), AUTH_OK);
    CHECK_STR(p.sub, "es");
    /* DER-encoded signatures are not JWS. */
    CHECK_INT(verify(pkey_token_der(ec1, ES_HEADER, claims(""), true)), AUTH_SIGNATURE);
    /* A good r||s with bytes appended, or cut short. */
    char *input = signing_input(ES_HEADER, claims(""));
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char der[128], raw[96] = {0};
    size_t der_len = sizeof der;
    EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, ec1);
    EVP_DigestSign(ctx, der, &der_len, (unsigned char *)input, strlen(input));
    EVP_MD_CTX_free(ctx);
    der_to_raw_ecdsa(der, der_len, raw);
    CHECK_INT(verify(join_signature(xstrdup(input), raw, 64)), AUTH_OK);
    CHECK_INT(verify(join_signature(xstrdup(input), raw, 96)), AUTH_SIGNATURE);
    CHECK_INT(verify(join_signature(input, raw, 63)), AUTH_SIGNATURE);
    /* r = s = 0 must not verify. */
    unsigned char zeros[64] = {0};
    CHECK_INT(verify(join_signature(signing_input(ES_HEADER, claims("")), zeros, sizeof zeros)),
              AUTH_SIGNATURE);
    /* Signed by another P-256 key. */
    EVP_PKEY *other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    CHECK_INT(verify(pkey_token(other, ES_HEADER, claims(""))), AUTH_SIGNATURE);
    EVP_PKEY_free(other);
}

/* ---- tests: time claims ---- */

static char *with_int(const char *name, long long value)
{
    static char buf[128];
    snprintf(buf, sizeof buf, "\"%s\":%lld", name, value);
    return buf;
}

static void test_expired(void)
{
    char payload[256];
    const char *base = "{\"iss\":\"" ISSUER "\",\"aud\":\"" AUDIENCE "\",";
    snprintf(payload, sizeof payload, "%s%s}", base, with_int("exp", NOW - 31));
    CHECK_INT(verify(hs_token(payload)), AUTH_EXPIRED);
    snprintf(payload, sizeof payload, "%s%s}", base, with_int("exp", NOW - 30));
    CHECK_INT(verify(hs_token(payload)), AUTH_EXPIRED);
    snprintf(payload, sizeof payload, "%s%s}", base, with_int("exp", NOW - 29));
    CHECK_INT(verify(hs_token(payload)), AUTH_OK);
    snprintf(payload, sizeof payload, "%s\"exp\":-9223372036854775807}", base);
    CHECK_INT(verify(hs_token(payload)), AUTH_EXPIRED);
    snprintf(payload, sizeof payload, "%s\"exp\":9223372036854775807}", base);
    CHECK_INT(verify(hs_token(payload)), AUTH_OK);
}

/* A verified token is remembered per thread: the same answer again, the clock re-checked on
 * every use, the principal copied into each request's arena, and a new verifier (a reload)
 * remembering nothing of the old one's. */
static void test_remembered_tokens(void)
{
    char extra[160];
    snprintf(extra, sizeof extra, "\"sub\":\"cache\",\"merchants\":[3,1,2],\"scope\":\"orders:read\"");
    char *token = hs_token(claims(extra)); /* exp NOW + 600, leeway 30 */
    struct auth_principal p;
    for (int i = 0; i < 3; i++) {
        struct arena *a = arena_new();
        CHECK_INT(auth_verify(std, token, strlen(token), NOW, a, &p), AUTH_OK);
        CHECK_STR(p.sub, "cache");
        CHECK_INT(p.n_merchants, 3);
        CHECK(p.n_merchants == 3 && p.merchants[0] == 1 && p.merchants[2] == 3);
        CHECK_INT(p.scopes, AUTH_SCOPE_ORDERS_READ);
        arena_free(a); /* the next answer must not point into this arena */
    }
    struct arena *a = arena_new();
    CHECK_INT(auth_verify(std, token, strlen(token), NOW + 629, a, &p), AUTH_OK);
    CHECK_INT(auth_verify(std, token, strlen(token), NOW + 630, a, &p), AUTH_EXPIRED);
    CHECK_INT(auth_verify(std, token, strlen(token), NOW, a, &p), AUTH_OK);
    char *tampered = xstrdup(token);
    tampered[strlen(tampered) - 2] ^= 1; /* same length, other signature: never the cached one */
    CHECK(auth_verify(std, tampered, strlen(tampered), NOW, a, &p) != AUTH_OK);
    struct auth_config cfg = std_config();
    cfg.hs256_secret = "another-secret-of-at-least-32-bytes!!";
    char err[256];
    struct auth *rotated = auth_new(&cfg, err, sizeof err);
    CHECK(rotated != NULL);
    if (rotated)
        CHECK_INT(auth_verify(rotated, token, strlen(token), NOW, a, &p), AUTH_SIGNATURE);
    auth_free(rotated);
    arena_free(a);
    free(tampered);
    free(token);
}

static void test_exp_missing_or_mistyped(void)
{
    const char *base = "{\"iss\":\"" ISSUER "\",\"aud\":\"" AUDIENCE "\"";
    char payload[256];
    snprintf(payload, sizeof payload, "%s}", base);
    CHECK_INT(verify(hs_token(payload)), AUTH_CLAIMS);
    snprintf(payload, sizeof payload, "%s,\"exp\":\"%lld\"}", base, (long long)NOW + 600);
    CHECK_INT(verify(hs_token(payload)), AUTH_CLAIMS);
    snprintf(payload, sizeof payload, "%s,\"exp\":%lld.0}", base, (long long)NOW + 600);
    CHECK_INT(verify(hs_token(payload)), AUTH_CLAIMS);
    snprintf(payload, sizeof payload, "%s,\"exp\":1.7e12}", base);
    CHECK_INT(verify(hs_token(payload)), AUTH_CLAIMS);
    snprintf(payload, sizeof payload, "%s,\"exp\":null}", base);
    CHECK_INT(verify(hs_token(payload)), AUTH_CLAIMS);
    snprintf(payload, sizeof payload, "%s,\"exp\":true}", base);
    CHECK_INT(verify(hs_token(payload)), AUTH_CLAIMS);
}

static void test_nbf(void)
{
    CHECK_INT(verify_hs(with_int("nbf", NOW + 31)), AUTH_NOT_YET_VALID);
    CHECK_INT(verify_hs(with_int("nbf", NOW + 30)), AUTH_OK);
    CHECK_INT(verify_hs(with_int("nbf", NOW)), AUTH_OK);
    CHECK_INT(verify_hs("\"nbf\":\"0\""), AUTH_CLAIMS);
    CHECK_INT(verify_hs("\"nbf\":1.5"), AUTH_CLAIMS);
}

static void test_iat(void)
{
    CHECK_INT(verify_hs(with_int("iat", NOW + 31)), AUTH_NOT_YET_VALID);
    CHECK_INT(verify_hs(with_int("iat", NOW + 30)), AUTH_OK);
    CHECK_INT(verify_hs(with_int("iat", NOW - 86400)), AUTH_OK);
    CHECK_INT(verify_hs("\"iat\":\"now\""), AUTH_CLAIMS);
}

/* ---- tests: iss and aud ---- */

static void test_issuer(void)
{
    char payload[256];
    snprintf(payload, sizeof payload, "{\"iss\":\"https://evil.test\",\"aud\":\"%s\",%s}", AUDIENCE,
             with_int("exp", NOW + 600));
    CHECK_INT(verify(hs_token(payload)), AUTH_ISSUER);
    snprintf(payload, sizeof payload, "{\"aud\":\"%s\",%s}", AUDIENCE, with_int("exp", NOW + 600));
    CHECK_INT(verify(hs_token(payload)), AUTH_ISSUER);
    snprintf(payload, sizeof payload, "{\"iss\":[\"%s\"],\"aud\":\"%s\",%s}", ISSUER, AUDIENCE,
             with_int("exp", NOW + 600));
    CHECK_INT(verify(hs_token(payload)), AUTH_CLAIMS);
}

static char *aud_payload(const char *aud_json)
{
    static char buf[256];
    snprintf(buf, sizeof buf, "{\"iss\":\"%s\"%s%s,%s}", ISSUER, aud_json ? ",\"aud\":" : "",
             aud_json ? aud_json : "", with_int("exp", NOW + 600));
    return buf;
}

static void test_audience(void)
{
    CHECK_INT(verify(hs_token(aud_payload("\"someone-else\""))), AUTH_AUDIENCE);
    CHECK_INT(verify(hs_token(aud_payload(NULL))), AUTH_AUDIENCE);
    CHECK_INT(verify(hs_token(aud_payload("[]"))), AUTH_AUDIENCE);
    CHECK_INT(verify(hs_token(aud_payload("[\"a\",\"b\"]"))), AUTH_AUDIENCE);
    CHECK_INT(verify(hs_token(aud_payload("\"cangrejo2\""))), AUTH_AUDIENCE);
    CHECK_INT(verify(hs_token(aud_payload("42"))), AUTH_CLAIMS);
    CHECK_INT(verify(hs_token(aud_payload("[\"cangrejo\",1]"))), AUTH_CLAIMS);
}

static void test_audience_array(void)
{
    CHECK_INT(verify(hs_token(aud_payload("[\"other\",\"cangrejo\"]"))), AUTH_OK);
    CHECK_INT(verify(hs_token(aud_payload("[\"cangrejo\"]"))), AUTH_OK);
    CHECK_INT(verify(hs_token(aud_payload("[\"cangrejo\",\"other\"]"))), AUTH_OK);
}

static void test_no_iss_aud_configured(void)
{
    char err[256];
    struct auth *a =
        try_new((struct auth_config){.hs256_secret = SECRET, .leeway_seconds = 0}, err, sizeof err);
    CHECK(a != NULL);
    CHECK_INT(verify_with(a, hs_token("{\"exp\":1700000001}"), NULL), AUTH_OK);
    CHECK_INT(verify_with(a, hs_token("{\"exp\":1700000000}"), NULL), AUTH_EXPIRED);
    CHECK_INT(verify_with(a, hs_token("{\"exp\":1700000001,\"aud\":[\"x\"],\"iss\":\"y\"}"), NULL),
              AUTH_OK);
    CHECK_INT(verify_with(a, hs_token("{\"exp\":1700000001,\"aud\":{}}"), NULL), AUTH_CLAIMS);
    auth_free(a);
}

/* ---- tests: structure ---- */

static void test_duplicate_keys(void)
{
    char payload[256];
    snprintf(payload, sizeof payload,
             "{\"sub\":\"a\",\"sub\":\"admin\",\"aud\":\"%s\","
             "\"iss\":\"%s\",%s}",
             AUDIENCE, ISSUER, with_int("exp", NOW + 600));
    CHECK_INT(verify(hs_token(payload)), AUTH_MALFORMED);
    CHECK_INT(verify_hs("\"exp\":1"), AUTH_MALFORMED); /* second exp */
    CHECK_INT(verify_hs("\"merchants\":[1],\"merchants\":\"*\""), AUTH_MALFORMED);
    CHECK_INT(verify(hmac_token(EVP_sha256(), "{\"alg\":\"HS256\",\"alg\":\"HS256\"}", claims(""),
                                SECRET, strlen(SECRET))),
              AUTH_MALFORMED);
    CHECK_INT(verify(hmac_token(EVP_sha256(), "{\"alg\":\"none\",\"alg\":\"HS256\"}", claims(""),
                                SECRET, strlen(SECRET))),
              AUTH_MALFORMED);
}

static void test_crit_header(void)
{
    CHECK_INT(verify(hmac_token(EVP_sha256(), "{\"alg\":\"HS256\",\"crit\":[\"exp\"],\"exp\":1}",
                                claims(""), SECRET, strlen(SECRET))),
              AUTH_MALFORMED);
    CHECK_INT(verify(hmac_token(EVP_sha256(), "{\"alg\":\"HS256\",\"crit\":[]}", claims(""), SECRET,
                                strlen(SECRET))),
              AUTH_MALFORMED);
}

static void test_oversized_token(void)
{
    struct arena *arena = arena_new();
    struct auth_principal p;
    char *big = xmalloc(8194);
    memset(big, 'A', 8193);
    big[8193] = '\0';
    CHECK_INT(auth_verify(std, big, 8193, NOW, arena, &p), AUTH_TOO_LARGE);
    free(big);
    /* A real, validly signed token over the limit is refused too. */
    char filler[9000];
    memset(filler, 'x', sizeof filler - 1);
    filler[sizeof filler - 1] = '\0';
    char *extra = xmalloc(sizeof filler + 16);
    snprintf(extra, sizeof filler + 16, "\"pad\":\"%s\"", filler);
    char *token = hs_token(claims(extra));
    CHECK_INT(auth_verify(std, token, strlen(token), NOW, arena, &p), AUTH_TOO_LARGE);
    free(token);
    free(extra);
    CHECK_INT(auth_verify(std, "", 0, NOW, arena, &p), AUTH_MISSING);
    CHECK_INT(auth_verify(std, NULL, 0, NOW, arena, &p), AUTH_MISSING);
    arena_free(arena);
}

static char *replace_segment(char *token, int index, const char *text)
{
    char *parts[3], *save = NULL;
    char *copy = xstrdup(token);
    parts[0] = strtok_r(copy, ".", &save);
    parts[1] = strtok_r(NULL, ".", &save);
    parts[2] = strtok_r(NULL, ".", &save);
    parts[index] = (char *)text;
    size_t n = strlen(token) + strlen(text) + 4;
    char *out = xmalloc(n);
    snprintf(out, n, "%s.%s.%s", parts[0], parts[1], parts[2]);
    free(copy);
    free(token);
    return out;
}

/* Signs a hand-made "header.payload" text with SECRET; takes ownership of input. */
static char *hs_sign_input(char *input)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (unsigned char *)input, strlen(input), mac,
         &mac_len);
    return join_signature(input, mac, mac_len);
}

/* Correctly signed, but the header's last base64 character carries a stray unused bit. */
static char *non_canonical_header_token(void)
{
    char *input = signing_input("{\"alg\":\"HS256\" }", claims(""));
    char *dot = strchr(input, '.');
    CHECK(dot - input == 22); /* 16 bytes: 4 unused bits in the last character */
    dot[-1] = dot[-1] == 'A' ? 'B' : dot[-1] == 'Q' ? 'R' : dot[-1] == 'g' ? 'h' : 'x';
    return hs_sign_input(input);
}

/* Correctly signed, but the header segment is 4n+1 characters long (an extra zero 'A'). */
static char *header_4n1_token(void)
{
    char *input = signing_input("{\"alg\":\"HS256\"}", claims(""));
    char *dot = strchr(input, '.');
    CHECK(dot - input == 20);
    size_t n = strlen(input) + 2;
    char *longer = xmalloc(n);
    snprintf(longer, n, "%.20sA%s", input, dot);
    free(input);
    return hs_sign_input(longer);
}

static void test_malformed(void)
{
    CHECK_INT(verify(xstrdup("abc")), AUTH_MALFORMED);
    CHECK_INT(verify(xstrdup("a.b")), AUTH_MALFORMED);
    CHECK_INT(verify(xstrdup("..")), AUTH_MALFORMED);
    CHECK_INT(verify(xstrdup("a.b.c.d")), AUTH_MALFORMED);
    char *t = hs_token(claims(""));
    size_t n = strlen(t);
    char *four = xmalloc(n + 3);
    snprintf(four, n + 3, "%s.x", t);
    CHECK_INT(verify(four), AUTH_MALFORMED);
    /* Padding, the standard alphabet, whitespace and NUL are all refused. */
    char *padded = xmalloc(n + 3);
    snprintf(padded, n + 3, "%s==", t);
    CHECK_INT(verify(padded), AUTH_MALFORMED);
    char *plus = xstrdup(t);
    plus[3] = '+';
    CHECK_INT(verify(plus), AUTH_MALFORMED);
    char *space = xstrdup(t);
    space[n - 3] = ' ';
    CHECK_INT(verify(space), AUTH_MALFORMED);
    struct arena *arena = arena_new();
    struct auth_principal p;
    char *nul = xstrdup(t);
    nul[5] = '\0';
    CHECK_INT(auth_verify(std, nul, n, NOW, arena, &p), AUTH_MALFORMED);
    free(nul);
    arena_free(arena);
    /* A header segment of 4n+1 characters. */
    CHECK_INT(verify(replace_segment(xstrdup(t), 0, "eyJhbGciOiJIUzI1NiJ9a")), AUTH_MALFORMED);
    free(t);
    CHECK_INT(verify(non_canonical_header_token()), AUTH_MALFORMED);
    CHECK_INT(verify(header_4n1_token()), AUTH_MALFORMED);
    /* Header or payload that is not a JSON object. */
    CHECK_INT(verify(hs_token("[1,2]")), AUTH_MALFORMED);
    CHECK_INT(verify(hs_token("\"exp\"")), AUTH_MALFORMED);
    CHECK_INT(verify(hs_token("{\"exp\":1}x")), AUTH_MALFORMED);
    CHECK_INT(verify(hs_token("{\"exp\":99999999999999999999999}")), AUTH_MALFORMED);
    CHECK_INT(verify(hs_token("")), AUTH_MALFORMED);
    CHECK_INT(verify(hmac_token(EVP_sha256(), "[\"HS256\"]", claims(""), SECRET, strlen(SECRET))),
              AUTH_MALFORMED);
    CHECK_INT(
        verify(hmac_token(EVP_sha256(), "{\"alg\":\"HS256\"", claims(""), SECRET, strlen(SECRET))),
        AUTH_MALFORMED);
}

/* ---- tests: principal ---- */

static void test_merchants(void)
{
    struct auth_principal p;
    CHECK_INT(verify_with(std, hs_token(claims("\"merchants\":\"*\"")), &p), AUTH_OK);
    CHECK(p.all_merchants);
    CHECK(auth_may_act_for(&p, 123456789));

    CHECK_INT(verify_with(std, hs_token(claims("\"merchants\":[3,1,2,3,1]")), &p), AUTH_OK);
    CHECK(!p.all_merchants);
    CHECK_INT(p.n_merchants, 3);
    if (p.n_merchants == 3) {
        CHECK_INT(p.merchants[0], 1);
        CHECK_INT(p.merchants[1], 2);
        CHECK_INT(p.merchants[2], 3);
    }
    CHECK_INT(verify_with(std, hs_token(claims("\"merchants\":[]")), &p), AUTH_OK);
    CHECK_INT(p.n_merchants, 0);

    const char *bad[] = {"[0]",    "[-1]",   "[\"5\"]", "[1.5]", "[1,2.0]",
                         "[true]", "[null]", "[[1]]",   "\"5\"", "\"\"",
                         "\"**\"", "5",      "null",    "{}",    "true"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char extra[64];
        snprintf(extra, sizeof extra, "\"merchants\":%s", bad[i]);
        enum auth_result r = verify_hs(extra);
        if (r != AUTH_CLAIMS)
            printf("# merchants %s gave %d\n", bad[i], r);
        CHECK_INT(r, AUTH_CLAIMS);
    }
}

static char *merchant_range(size_t count)
{
    struct buf b = {0};
    buf_puts(&b, "\"merchants\":[");
    for (size_t i = 1; i <= count; i++)
        buf_printf(&b, "%zu%s", i, i < count ? "," : "]");
    return b.data;
}

static void test_merchant_limit(void)
{
    char err[256];
    struct auth_config cfg = std_config();
    cfg.max_token_bytes = 1 << 20;
    struct auth *a = try_new(cfg, err, sizeof err);
    struct auth_principal p;
    char *at_limit = merchant_range(10000), *over = merchant_range(10001);
    CHECK_INT(verify_with(a, hs_token(claims(at_limit)), &p), AUTH_OK);
    CHECK_INT(p.n_merchants, 10000);
    CHECK(auth_may_act_for(&p, 10000));
    CHECK(!auth_may_act_for(&p, 10001));
    CHECK_INT(verify_with(a, hs_token(claims(over)), NULL), AUTH_CLAIMS);
    free(at_limit);
    free(over);
    auth_free(a);
}

static void test_sub_and_scope_types(void)
{
    CHECK_INT(verify_hs("\"sub\":42"), AUTH_CLAIMS);
    CHECK_INT(verify_hs("\"sub\":null"), AUTH_CLAIMS);
    CHECK_INT(verify_hs("\"scope\":[\"admin\"]"), AUTH_CLAIMS);
    CHECK_INT(verify_hs("\"scope\":1"), AUTH_CLAIMS);
    struct auth_principal p;
    CHECK_INT(verify_with(std, hs_token(claims("\"scope\":\"admin  pii:read\"")), &p), AUTH_OK);
    CHECK_INT(p.scopes, AUTH_SCOPE_ADMIN | AUTH_SCOPE_PII_READ);
}

static void test_scope_parsing(void)
{
    const char *all = "orders:write orders:read metrics:read deliveries:write pii:read "
                      "customers:erase merchants:admin admin";
    CHECK_INT(auth_parse_scopes(all, strlen(all)),
              AUTH_SCOPE_ORDERS_WRITE | AUTH_SCOPE_ORDERS_READ | AUTH_SCOPE_METRICS_READ |
                  AUTH_SCOPE_DELIVERIES_WRITE | AUTH_SCOPE_PII_READ | AUTH_SCOPE_CUSTOMERS_ERASE |
                  AUTH_SCOPE_MERCHANTS_ADMIN | AUTH_SCOPE_ADMIN);
    CHECK_INT(auth_parse_scopes("", 0), 0);
    CHECK_INT(auth_parse_scopes(NULL, 0), 0);
    CHECK_INT(auth_parse_scopes("   ", 3), 0);
    CHECK_INT(auth_parse_scopes(" orders:read  ", 14), AUTH_SCOPE_ORDERS_READ);
    CHECK_INT(auth_parse_scopes("ORDERS:READ orders:reads orders:rea admin:", 42), 0);
    CHECK_INT(auth_parse_scopes("orders:readx", 11), AUTH_SCOPE_ORDERS_READ); /* len bounds it */
    CHECK_INT(auth_parse_scopes("orders:read,admin", 17), 0);
    CHECK_INT(auth_parse_scopes("unknown admin", 13), AUTH_SCOPE_ADMIN);

    struct auth_principal p = {.sub = "", .scopes = AUTH_SCOPE_ORDERS_READ};
    CHECK(auth_has_any_scope(&p, 0));
    CHECK(auth_has_any_scope(&p, AUTH_SCOPE_ORDERS_READ));
    CHECK(auth_has_any_scope(&p, AUTH_SCOPE_ORDERS_READ | AUTH_SCOPE_ADMIN));
    CHECK(!auth_has_any_scope(&p, AUTH_SCOPE_ORDERS_WRITE));
    struct auth_principal none = {.sub = ""};
    CHECK(auth_has_any_scope(&none, 0));
    CHECK(!auth_has_any_scope(&none, AUTH_SCOPE_ADMIN));
}

static void test_may_act_for(void)
{
    const int64_t ids[] = {2, 5, 9, 100, INT64_MAX};
    struct auth_principal p = {.sub = "", .n_merchants = 5, .merchants = ids};
    for (size_t i = 0; i < 5; i++)
        CHECK(auth_may_act_for(&p, ids[i]));
    const int64_t absent[] = {1, 3, 6, 10, 99, 101, INT64_MAX - 1, 0, -2};
    for (size_t i = 0; i < sizeof absent / sizeof absent[0]; i++)
        CHECK(!auth_may_act_for(&p, absent[i]));
    struct auth_principal one = {.sub = "", .n_merchants = 1, .merchants = ids + 1};
    CHECK(auth_may_act_for(&one, 5));
    CHECK(!auth_may_act_for(&one, 2));
    struct auth_principal empty = {.sub = ""};
    CHECK(!auth_may_act_for(&empty, 1));
    struct auth_principal all = {.sub = "", .all_merchants = true};
    CHECK(auth_may_act_for(&all, 1));
    CHECK(!auth_may_act_for(&all, 0));
    CHECK(!auth_may_act_for(NULL, 1));
}

/* ---- tests: minting ---- */

static json_t *decode_segment(const char *token, int index)
{
    const char *start = token;
    for (int i = 0; i < index; i++)
        start = strchr(start, '.') + 1;
    const char *end = strchr(start, '.');
    size_t len = end ? (size_t)(end - start) : strlen(start);
    char *b64 = xmalloc(len + 4);
    for (size_t i = 0; i < len; i++)
        b64[i] = start[i] == '-' ? '+' : start[i] == '_' ? '/' : start[i];
    while (len % 4)
        b64[len++] = '=';
    b64[len] = '\0';
    unsigned char raw[4096];
    int n = EVP_DecodeBlock(raw, (unsigned char *)b64, (int)len);
    free(b64);
    while (n > 0 && raw[n - 1] == '\0')
        n--;
    return json_loadb((const char *)raw, (size_t)n, 0, NULL);
}

static void test_mint_round_trip(void)
{
    char err[256];
    struct auth *a = try_new((struct auth_config){.hs256_secret = SECRET, .leeway_seconds = 30},
                             err, sizeof err);
    struct auth_principal p;
    char *token = auth_mint_hs256(SECRET, "dev", "orders:read admin", "3,1, 2", 3600, NOW);
    CHECK(token != NULL);
    if (!token) {
        auth_free(a);
        return;
    }
    json_t *header = decode_segment(token, 0), *body = decode_segment(token, 1);
    CHECK_STR(json_string_value(json_object_get(header, "alg")), "HS256");
    CHECK_STR(json_string_value(json_object_get(header, "typ")), "JWT");
    CHECK_STR(json_string_value(json_object_get(body, "scope")), "orders:read admin");
    CHECK_INT(json_integer_value(json_object_get(body, "iat")), NOW);
    CHECK_INT(json_integer_value(json_object_get(body, "exp")), NOW + 3600);
    CHECK(json_is_integer(json_array_get(json_object_get(body, "merchants"), 0)));
    json_decref(header);
    json_decref(body);

    CHECK_INT(verify_with(a, token, &p), AUTH_OK);
    CHECK_STR(p.sub, "dev");
    CHECK_INT(p.scopes, AUTH_SCOPE_ORDERS_READ | AUTH_SCOPE_ADMIN);
    CHECK_INT(p.n_merchants, 3);
    CHECK(auth_may_act_for(&p, 2));
    CHECK(!auth_may_act_for(&p, 4));

    token = auth_mint_hs256(SECRET, "pos-sync", "orders:write", "*", 60, NOW);
    CHECK_INT(verify_with(a, token, &p), AUTH_OK);
    CHECK(p.all_merchants);
    token = auth_mint_hs256(SECRET, NULL, NULL, NULL, 60, NOW);
    CHECK_INT(verify_with(a, token, &p), AUTH_OK);
    CHECK_STR(p.sub, "");
    CHECK(!p.all_merchants && p.n_merchants == 0);
    /* Expiry is honoured. */
    token = auth_mint_hs256(SECRET, "dev", "", "1", 60, NOW - 91);
    CHECK_INT(verify_with(a, token, NULL), AUTH_EXPIRED);
    /* Another secret does not verify. */
    token = auth_mint_hs256(SECRET "x", "dev", "", "1", 60, NOW);
    CHECK_INT(verify_with(a, token, NULL), AUTH_SIGNATURE);
    auth_free(a);
}

static void test_mint_rejects_bad_input(void)
{
    const char *bad[] = {"",   ",",  "1,,2", "1,2,", "a",
                         "0",  "-1", "+1",   "1.5",  "1 2",
                         "**", " *", "1,*",  "0x10", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *t = auth_mint_hs256(SECRET, "dev", "admin", bad[i], 60, NOW);
        if (t)
            printf("# merchants \"%s\" was accepted\n", bad[i]);
        CHECK(t == NULL);
        free(t);
    }
    CHECK(auth_mint_hs256("short", "dev", "admin", "1", 60, NOW) == NULL);
    CHECK(auth_mint_hs256(NULL, "dev", "admin", "1", 60, NOW) == NULL);
    CHECK(auth_mint_hs256(SECRET, "dev", "admin", "1", 0, NOW) == NULL);
    CHECK(auth_mint_hs256(SECRET, "dev", "admin", "1", -5, NOW) == NULL);
    CHECK(auth_mint_hs256(SECRET, "\xff", "admin", "1", 60, NOW) == NULL);
    char *ok = auth_mint_hs256(SECRET, "dev", "admin", "9223372036854775807", 60, NOW);
    CHECK(ok != NULL);
    free(ok);
}

/* ---- tests: configuration ---- */

static void check_new_fails(struct auth_config cfg, const char *needle)
{
    char err[256];
    struct auth *a = try_new(cfg, err, sizeof err);
    CHECK(a == NULL);
    if (!strstr(err, needle))
        printf("# error \"%s\" lacks \"%s\"\n", err, needle);
    CHECK(strstr(err, needle) != NULL);
    auth_free(a);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void test_auth_new_failures(void)
{
    struct auth_config cfg = {.hs256_secret = "too-short-secret", .leeway_seconds = 30};
    check_new_fails(cfg, "at least 32 bytes");
    cfg = std_config();
    cfg.algorithms = "HS256,none";
    check_new_fails(cfg, "\"none\" is never allowed");
    cfg.algorithms = "HS256,HS512";
    check_new_fails(cfg, "unknown algorithm \"HS512\"");
    cfg.algorithms = "hs256";
    check_new_fails(cfg, "unknown algorithm \"hs256\"");
    cfg.algorithms = ",";
    check_new_fails(cfg, "no JWT algorithm");
    cfg = std_config();
    cfg.public_keys = "rsa1=/nonexistent/key.pem";
    check_new_fails(cfg, "cannot read a PEM public key from /nonexistent/key.pem");
    cfg.public_keys = "just-a-path.pem";
    check_new_fails(cfg, "is not kid=path.pem");
    cfg.public_keys = "=x.pem";
    check_new_fails(cfg, "is not kid=path.pem");
    char dup[600];
    snprintf(dup, sizeof dup, "k=%s,k=%s", rsa1_pem, ec1_pem);
    cfg.public_keys = dup;
    check_new_fails(cfg, "used twice");
    check_new_fails((struct auth_config){.leeway_seconds = 30}, "no JWT algorithm");
    check_new_fails((struct auth_config){.hs256_secret = SECRET, .algorithms = "RS256"},
                    "no RSA key");
    check_new_fails((struct auth_config){.hs256_secret = SECRET, .leeway_seconds = -1}, "negative");
    char list[300];
    snprintf(list, sizeof list, "rsa1=%s", rsa1_pem);
    check_new_fails((struct auth_config){.public_keys = list, .algorithms = "RS256,HS256"},
                    "no JWT_HS256_SECRET");
}

static void test_auth_new_rejects_weak_keys(void)
{
    char path[300], list[320];
    EVP_PKEY *weak = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    write_public_pem(weak, path, sizeof path, "weak.pem");
    snprintf(list, sizeof list, "weak=%s", path);
    check_new_fails((struct auth_config){.public_keys = list}, "shorter than 2048");
    EVP_PKEY_free(weak);

    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    write_public_pem(p384, path, sizeof path, "p384.pem");
    snprintf(list, sizeof list, "p384=%s", path);
    check_new_fails((struct auth_config){.public_keys = list}, "not on curve P-256");
    EVP_PKEY_free(p384);

    /* A file with no PEM public key in it (here: a private key). */
    FILE *f = fopen(path, "w");
    PEM_write_PrivateKey(f, ec1, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    check_new_fails((struct auth_config){.public_keys = list}, "cannot read a PEM public key");
}

/* ---- tests: JWKS ---- */

static char *bn_b64url(EVP_PKEY *key, const char *param)
{
    BIGNUM *bn = NULL;
    EVP_PKEY_get_bn_param(key, param, &bn);
    unsigned char buf[1024];
    int n = BN_bn2bin(bn, buf);
    BN_free(bn);
    return b64url(buf, (size_t)n);
}

static char *ec_coord_b64url(EVP_PKEY *key, const char *param)
{
    BIGNUM *bn = NULL;
    EVP_PKEY_get_bn_param(key, param, &bn);
    unsigned char buf[32];
    BN_bn2binpad(bn, buf, 32);
    BN_free(bn);
    return b64url(buf, 32);
}

static void write_jwks(const char *path, const char *extra_key)
{
    char *n = bn_b64url(rsa1, OSSL_PKEY_PARAM_RSA_N), *e = bn_b64url(rsa1, OSSL_PKEY_PARAM_RSA_E);
    char *x = ec_coord_b64url(ec1, OSSL_PKEY_PARAM_EC_PUB_X);
    char *y = ec_coord_b64url(ec1, OSSL_PKEY_PARAM_EC_PUB_Y);
    size_t cap = strlen(n) + 1024;
    char *doc = xmalloc(cap);
    snprintf(doc, cap,
             "{\"keys\":[{\"kty\":\"RSA\",\"use\":\"sig\",\"alg\":\"RS256\",\"kid\":\"j-rsa\","
             "\"n\":\"%s\",\"e\":\"%s\"},"
             "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"j-ec\",\"x\":\"%s\",\"y\":\"%s\"},"
             "{\"kty\":\"RSA\",\"use\":\"enc\",\"kid\":\"j-enc\",\"n\":\"%s\",\"e\":\"%s\"},"
             "{\"kty\":\"oct\",\"kid\":\"j-oct\",\"k\":\"c2VjcmV0\"}%s%s]}",
             n, e, x, y, n, e, *extra_key ? "," : "", extra_key);
    write_file(path, doc);
    free(doc);
    free(n);
    free(e);
    free(x);
    free(y);
}

static void test_jwks(void)
{
    char path[300], err[256];
    snprintf(path, sizeof path, "%s/jwks.json", tmpdir);
    write_jwks(path, "");
    struct auth *a =
        try_new((struct auth_config){.jwks_file = path, .leeway_seconds = 30}, err, sizeof err);
    CHECK(a != NULL);
    if (!a) {
        printf("# %s\n", err);
        return;
    }
    CHECK_INT(
        verify_with(a, pkey_token(rsa1, "{\"alg\":\"RS256\",\"kid\":\"j-rsa\"}", claims("")), NULL),
        AUTH_OK);
    CHECK_INT(
        verify_with(a, pkey_token(ec1, "{\"alg\":\"ES256\",\"kid\":\"j-ec\"}", claims("")), NULL),
        AUTH_OK);
    /* Encryption and symmetric keys in the set are never used. */
    CHECK_INT(
        verify_with(a, pkey_token(rsa1, "{\"alg\":\"RS256\",\"kid\":\"j-enc\"}", claims("")), NULL),
        AUTH_KEY);
    CHECK_INT(verify_with(a,
                          hmac_token(EVP_sha256(), "{\"alg\":\"HS256\",\"kid\":\"j-oct\"}",
                                     claims(""), "secret", 6),
                          NULL),
              AUTH_ALGORITHM);
    CHECK_INT(
        verify_with(a, pkey_token(ec1, "{\"alg\":\"ES256\",\"kid\":\"j-rsa\"}", claims("")), NULL),
        AUTH_KEY);
    auth_free(a);

    /* JWKS and PEM keys together. */
    struct auth_config cfg = std_config();
    cfg.jwks_file = path;
    a = try_new(cfg, err, sizeof err);
    CHECK(a != NULL);
    CHECK_INT(verify_with(a, pkey_token(rsa1, RS_HEADER, claims("")), NULL), AUTH_OK);
    CHECK_INT(
        verify_with(a, pkey_token(ec1, "{\"alg\":\"ES256\",\"kid\":\"j-ec\"}", claims("")), NULL),
        AUTH_OK);
    auth_free(a);
}

static void test_jwks_failures(void)
{
    char path[300];
    snprintf(path, sizeof path, "%s/bad-jwks.json", tmpdir);
    struct auth_config cfg = {.jwks_file = path, .leeway_seconds = 30};
    check_new_fails((struct auth_config){.jwks_file = "/nonexistent/jwks.json"},
                    "cannot load /nonexistent/jwks.json");
    write_file(path, "{\"keys\":{}}");
    check_new_fails(cfg, "no \"keys\" array");
    write_file(path, "{\"keys\":[],\"keys\":[]}");
    check_new_fails(cfg, "cannot load");
    write_file(path, "{\"keys\":[{\"kty\":\"oct\",\"kid\":\"a\",\"k\":\"c2VjcmV0\"}]}");
    check_new_fails(cfg, "holds no RSA or EC P-256 signing key");
    write_file(path, "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"p\","
                     "\"x\":\"AAAA\",\"y\":\"AAAA\"}]}");
    check_new_fails(cfg, "invalid x/y");
    /* A point not on the curve. */
    write_file(path, "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"p\","
                     "\"x\":\"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\","
                     "\"y\":\"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}");
    check_new_fails(cfg, "invalid x/y");
    write_file(path, "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"r\",\"n\":\"AQAB\",\"e\":\"\"}]}");
    check_new_fails(cfg, "invalid n/e");
    write_file(path, "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"r\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}");
    check_new_fails(cfg, "shorter than 2048");
    write_file(path, "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}");
    check_new_fails(cfg, "has no kid");
    write_jwks(path, "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"j-rsa\",\"x\":\"A\"}");
    check_new_fails(cfg, "invalid x/y");
}

/* ---- tests: the keeper (reloading keys) ---- */

static enum auth_result keeper_verify(struct auth_keeper *k, char *token)
{
    struct auth_principal p;
    struct arena *a = arena_new();
    enum auth_result r = auth_keeper_verify(k, token, strlen(token), NOW, a, &p);
    arena_free(a);
    free(token);
    return r;
}

static void write_pem_as(EVP_PKEY *key, const char *path)
{
    FILE *f = fopen(path, "w");
    PEM_write_PUBKEY(f, key);
    fclose(f);
}

static void test_keeper_reload_swaps_keys(void)
{
    char path[300], list[320], msg[256];
    snprintf(path, sizeof path, "%s/rotating.pem", tmpdir);
    snprintf(list, sizeof list, "rot=%s", path);
    write_pem_as(rsa1, path);
    struct auth_config cfg = {.public_keys = list, .leeway_seconds = 30};
    struct auth_keeper *k = auth_keeper_new(&cfg, msg, sizeof msg);
    CHECK(k != NULL);
    if (!k)
        return;
    const char *header = "{\"alg\":\"RS256\",\"kid\":\"rot\"}";
    CHECK_INT(keeper_verify(k, pkey_token(rsa1, header, claims(""))), AUTH_OK);
    /* The file now holds another key: nothing changes until the reload. */
    EVP_PKEY *next = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    write_pem_as(next, path);
    CHECK_INT(keeper_verify(k, pkey_token(rsa1, header, claims(""))), AUTH_OK);
    CHECK(auth_keeper_reload(k, msg, sizeof msg));
    CHECK_STR(msg, "1 public key(s)");
    CHECK_INT(keeper_verify(k, pkey_token(rsa1, header, claims(""))), AUTH_SIGNATURE);
    CHECK_INT(keeper_verify(k, pkey_token(next, header, claims(""))), AUTH_OK);
    EVP_PKEY_free(next);
    auth_keeper_free(k);
}

static void test_keeper_failed_reload_keeps_keys(void)
{
    char path[300], list[320], msg[256];
    snprintf(path, sizeof path, "%s/breaking.pem", tmpdir);
    snprintf(list, sizeof list, "brk=%s", path);
    write_pem_as(ec1, path);
    struct auth_config cfg = {.public_keys = list, .leeway_seconds = 30};
    struct auth_keeper *k = auth_keeper_new(&cfg, msg, sizeof msg);
    CHECK(k != NULL);
    if (!k)
        return;
    const char *header = "{\"alg\":\"ES256\",\"kid\":\"brk\"}";
    write_file(path, "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n");
    CHECK(!auth_keeper_reload(k, msg, sizeof msg));
    CHECK(strstr(msg, "JWT_PUBLIC_KEYS") != NULL);
    CHECK_INT(keeper_verify(k, pkey_token(ec1, header, claims(""))), AUTH_OK);
    remove(path);
    CHECK(!auth_keeper_reload(k, msg, sizeof msg));
    CHECK_INT(keeper_verify(k, pkey_token(ec1, header, claims(""))), AUTH_OK);
    auth_keeper_free(k);
}

static void test_keeper_copies_its_config(void)
{
    char secret[] = SECRET, msg[256];
    struct auth_config cfg = {.hs256_secret = secret, .leeway_seconds = 30};
    struct auth_keeper *k = auth_keeper_new(&cfg, msg, sizeof msg);
    memset(secret, 'x', sizeof secret - 1); /* the caller's copy may go away */
    CHECK(auth_keeper_reload(k, msg, sizeof msg));
    CHECK_INT(keeper_verify(k, hs_token(claims(""))), AUTH_OK);
    auth_keeper_free(k);
}

static void test_jwks_error_quotes_no_file_content(void)
{
    char path[300], msg[256];
    snprintf(path, sizeof path, "%s/broken-jwks.json", tmpdir);
    write_file(path, "{\"keys\":[{\"kty\":\"RSA\",\"d\":\"c2VjcmV0LXByaXZhdGU\" oops");
    struct auth *a = try_new((struct auth_config){.jwks_file = path}, msg, sizeof msg);
    CHECK(a == NULL);
    CHECK(strstr(msg, "JWT_JWKS_FILE") != NULL);
    CHECK(strstr(msg, "c2VjcmV0") == NULL);
    CHECK(strstr(msg, "oops") == NULL);
}

struct keeper_load {
    struct auth_keeper *keeper;
    char *tokens[2]; /* signed by keys present in every version */
    atomic_bool stop;
    atomic_long failures, done;
};

static void *verify_until_stopped(void *arg)
{
    struct keeper_load *load = arg;
    struct arena *a = arena_new();
    for (long i = 0; !atomic_load(&load->stop); i++) {
        const char *t = load->tokens[i & 1];
        struct auth_principal p;
        if (auth_keeper_verify(load->keeper, t, strlen(t), NOW, a, &p) != AUTH_OK)
            atomic_fetch_add(&load->failures, 1);
        atomic_fetch_add(&load->done, 1);
    }
    arena_free(a);
    return NULL;
}

/* Verifications on four threads while the keys are reloaded again and again: none fails and
 * no version is freed under a running one (ASan would say so). */
static void test_keeper_reload_under_load(void)
{
    char jwks[300], msg[256];
    snprintf(jwks, sizeof jwks, "%s/load-jwks.json", tmpdir);
    write_jwks(jwks, "");
    struct auth_config cfg = std_config();
    cfg.jwks_file = jwks;
    struct keeper_load load = {.keeper = auth_keeper_new(&cfg, msg, sizeof msg)};
    CHECK(load.keeper != NULL);
    if (!load.keeper)
        return;
    load.tokens[0] = pkey_token(ec1, "{\"alg\":\"ES256\",\"kid\":\"j-ec\"}", claims(""));
    load.tokens[1] = hs_token(claims(""));
    pthread_t threads[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&threads[i], NULL, verify_until_stopped, &load);
    int reloads = 0;
    for (; reloads < 200 || atomic_load(&load.done) < 2000; reloads++)
        CHECK(auth_keeper_reload(load.keeper, msg, sizeof msg));
    atomic_store(&load.stop, true);
    for (int i = 0; i < 4; i++)
        pthread_join(threads[i], NULL);
    CHECK_INT(atomic_load(&load.failures), 0);
    printf("# %d reloads during %ld verifications\n", reloads, atomic_load(&load.done));
    free(load.tokens[0]);
    free(load.tokens[1]);
    auth_keeper_free(load.keeper);
}

static void test_result_text(void)
{
    CHECK_STR(auth_result_text(AUTH_OK), "ok");
    CHECK_STR(auth_result_text(AUTH_EXPIRED), "token expired");
    CHECK_STR(auth_result_text(AUTH_AUDIENCE), "token audience not accepted");
    CHECK_STR(auth_result_text((enum auth_result)99), "unknown");
}

int main(void)
{
    if (!setup()) {
        printf("Bail out! could not build test keys\n");
        remove_tmpdir();
        return 1;
    }
    TEST(test_hs256_valid_with_every_claim);
    TEST(test_minimal_claims);
    TEST(test_bad_signature);
    TEST(test_alg_none);
    TEST(test_alg_not_allowed);
    TEST(test_allow_list_restricts);
    TEST(test_hs256_with_public_key_as_secret);
    TEST(test_rs256_valid);
    TEST(test_rs256_unknown_or_missing_kid);
    TEST(test_key_type_must_match_alg);
    TEST(test_es256_valid);
    TEST(test_expired);
    TEST(test_remembered_tokens);
    TEST(test_exp_missing_or_mistyped);
    TEST(test_nbf);
    TEST(test_iat);
    TEST(test_issuer);
    TEST(test_audience);
    TEST(test_audience_array);
    TEST(test_no_iss_aud_configured);
    TEST(test_duplicate_keys);
    TEST(test_crit_header);
    TEST(test_oversized_token);
    TEST(test_malformed);
    TEST(test_merchants);
    TEST(test_merchant_limit);
    TEST(test_sub_and_scope_types);
    TEST(test_scope_parsing);
    TEST(test_may_act_for);
    TEST(test_mint_round_trip);
    TEST(test_mint_rejects_bad_input);
    TEST(test_auth_new_failures);
    TEST(test_auth_new_rejects_weak_keys);
    TEST(test_jwks);
    TEST(test_jwks_failures);
    TEST(test_keeper_reload_swaps_keys);
    TEST(test_keeper_failed_reload_keeps_keys);
    TEST(test_keeper_copies_its_config);
    TEST(test_jwks_error_quotes_no_file_content);
    TEST(test_keeper_reload_under_load);
    TEST(test_result_text);
    arena_free(verify_arena);
    free(claims_buf);
    auth_free(std);
    EVP_PKEY_free(rsa1);
    EVP_PKEY_free(ec1);
    remove_tmpdir();
    return check_done();
}
