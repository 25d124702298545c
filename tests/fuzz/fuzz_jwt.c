/* fuzz_jwt.c - libFuzzer target for bearer-token verification (server/auth.c): auth_new with an
 * HS256 secret, PEM public keys (RS256, ES256) and a JWKS file (RS256, ES256), then auth_verify
 * on fuzzed tokens.
 *
 * A signature cannot be guessed, so most inputs are a header and a payload (JSON, split at the
 * first newline) that this target signs itself, which takes the fuzzer past the signature into
 * the claims. The first byte picks the mode (low 3 bits) and the configuration (bit 3):
 *   0 the rest is the token as sent     4 RS256 with "rsa1" (PEM)
 *   1 HS256 with the secret             5 RS256 with "rsa2" (JWKS)
 *   2 ES256 with "ec1" (PEM)            6 HS256 with rsa1's PEM as the secret (key confusion)
 *   3 ES256 with "ec2" (JWKS)           7 no signature at all ("h.p." and "h.p")
 * Configuration 0 allows HS256, RS256, ES256 and requires iss and aud; 1 is HS256 alone, no
 * leeway, tokens of at most 512 bytes.
 *
 * Properties besides the sanitizers (RFC 8725): modes 6 and 7 never verify; a verified token
 * was signed with the algorithm its header names, by the key its kid names; its claims hold an
 * integer exp not yet past and the configured iss and aud; the principal's merchants are
 * positive, sorted and unique. Keys are made afresh at start and never written anywhere but a
 * temporary directory that is removed once auth_new has read it. */
#include "server/arena.h"
#include "server/auth.h"

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { MODE_RAW, MODE_HS, MODE_EC1, MODE_EC2, MODE_RSA1, MODE_RSA2, MODE_CONFUSED, MODE_NONE };

static const time_t NOW = 1795264800; /* 2026-11-21T12:40:00Z, fixed: inputs replay alike */
static const char SECRET[] = "fuzz-only-hs256-secret-0123456789abcdef";
static const char ISSUER[] = "https://issuer.cangrejo.test";
static const char AUDIENCE[] = "cangrejo-api";
static const int LEEWAY = 30;

static EVP_PKEY *rsa1, *rsa2, *ec1, *ec2;
static char *rsa1_pem;
static struct auth *full, *hs_only;

static void die(const char *what)
{
    fprintf(stderr, "fuzz_jwt: %s\n", what);
    abort();
}

/* ---- encoding and signing ---- */

static size_t b64url(const unsigned char *in, size_t n, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = abc[(acc >> bits) & 63];
        }
    }
    if (bits)
        out[o++] = abc[(acc << (6 - bits)) & 63];
    out[o] = '\0';
    return o;
}

static char *b64url_alloc(const void *in, size_t n)
{
    char *out = malloc(n * 4 / 3 + 4);
    b64url(in, n, out);
    return out;
}

static size_t hs256(const void *key, size_t key_len, const char *input, unsigned char *sig)
{
    unsigned int len = 0;
    HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)input, strlen(input), sig, &len);
    return len;
}

static size_t pkey_sign(EVP_PKEY *key, const char *input, unsigned char *sig, size_t cap)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t len = cap;
    if (!ctx || EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(ctx, sig, &len, (const unsigned char *)input, strlen(input)) != 1)
        die("signing failed");
    EVP_MD_CTX_free(ctx);
    return len;
}

/* ES256 in a JWS is r||s, 32 bytes each (RFC 7518 3.4), not DER. */
static size_t es256(EVP_PKEY *key, const char *input, unsigned char *sig)
{
    unsigned char der[128];
    size_t der_len = pkey_sign(key, input, der, sizeof(der));
    const unsigned char *p = der;
    ECDSA_SIG *esig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    if (!esig)
        die("bad ECDSA signature");
    BN_bn2binpad(ECDSA_SIG_get0_r(esig), sig, 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(esig), sig + 32, 32);
    ECDSA_SIG_free(esig);
    return 64;
}

/* "b64(header).b64(payload).b64(signature)" as mode signs it; malloc'd. */
static char *make_token(int mode, const char *header, size_t header_len, const char *payload,
                        size_t payload_len)
{
    char *h = b64url_alloc(header, header_len), *p = b64url_alloc(payload, payload_len);
    size_t input_len = strlen(h) + 1 + strlen(p);
    char *token = malloc(input_len + 1 + 1024);
    snprintf(token, input_len + 2, "%s.%s", h, p);
    free(h);
    free(p);
    unsigned char sig[1024];
    size_t sig_len = 0;
    switch (mode) {
    case MODE_HS:
        sig_len = hs256(SECRET, strlen(SECRET), token, sig);
        break;
    case MODE_EC1:
    case MODE_EC2:
        sig_len = es256(mode == MODE_EC1 ? ec1 : ec2, token, sig);
        break;
    case MODE_RSA1:
    case MODE_RSA2:
        sig_len = pkey_sign(mode == MODE_RSA1 ? rsa1 : rsa2, token, sig, sizeof(sig));
        break;
    case MODE_CONFUSED:
        sig_len = hs256(rsa1_pem, strlen(rsa1_pem), token, sig);
        break;
    default: /* MODE_NONE: "h.p." when the payload is even in length, else "h.p" */
        if (payload_len % 2)
            return token;
    }
    strcat(token, ".");
    b64url(sig, sig_len, token + strlen(token));
    return token;
}

/* ---- keys and configuration ---- */

static char *public_pem(EVP_PKEY *key)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *data;
    PEM_write_bio_PUBKEY(bio, key);
    long n = BIO_get_mem_data(bio, &data);
    char *pem = strndup(data, (size_t)n);
    BIO_free(bio);
    return pem;
}

static json_t *bn_param_b64(EVP_PKEY *key, const char *name, int pad)
{
    BIGNUM *bn = NULL;
    unsigned char raw[512];
    if (EVP_PKEY_get_bn_param(key, name, &bn) != 1)
        die("key parameter missing");
    int n = pad ? BN_bn2binpad(bn, raw, pad) : BN_bn2bin(bn, raw);
    BN_free(bn);
    char *text = b64url_alloc(raw, (size_t)n);
    json_t *s = json_string(text);
    free(text);
    return s;
}

static json_t *jwk(EVP_PKEY *key, const char *kid)
{
    if (EVP_PKEY_is_a(key, "RSA"))
        return json_pack("{s:s, s:s, s:s, s:o, s:o}", "kty", "RSA", "kid", kid, "use", "sig", "n",
                         bn_param_b64(key, OSSL_PKEY_PARAM_RSA_N, 0), "e",
                         bn_param_b64(key, OSSL_PKEY_PARAM_RSA_E, 0));
    return json_pack("{s:s, s:s, s:s, s:s, s:o, s:o}", "kty", "EC", "crv", "P-256", "kid", kid,
                     "alg", "ES256", "x", bn_param_b64(key, OSSL_PKEY_PARAM_EC_PUB_X, 32), "y",
                     bn_param_b64(key, OSSL_PKEY_PARAM_EC_PUB_Y, 32));
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0)
        die("cannot write a key file");
}

static struct auth *new_auth(struct auth_config cfg)
{
    char err[512];
    struct auth *a = auth_new(&cfg, err, sizeof(err));
    if (!a)
        die(err);
    return a;
}

static void make_verifiers(void)
{
    char dir[] = "/tmp/cangrejo-fuzz-jwt-XXXXXX", pem1[64], pem2[64], jwks_path[64], keys[160];
    if (!mkdtemp(dir))
        die("mkdtemp failed");
    snprintf(pem1, sizeof(pem1), "%s/rsa1.pem", dir);
    snprintf(pem2, sizeof(pem2), "%s/ec1.pem", dir);
    snprintf(jwks_path, sizeof(jwks_path), "%s/jwks.json", dir);
    snprintf(keys, sizeof(keys), "rsa1=%s, ec1=%s", pem1, pem2);
    char *ec1_pem = public_pem(ec1);
    write_file(pem1, rsa1_pem);
    write_file(pem2, ec1_pem);
    free(ec1_pem);
    /* Keys this server does not verify with are skipped: a symmetric key, an encryption key. */
    json_t *jwks =
        json_pack("{s:[o, o, {s:s, s:s, s:s}, {s:s, s:s, s:s, s:s, s:s}]}", "keys",
                  jwk(rsa2, "rsa2"), jwk(ec2, "ec2"), "kty", "oct", "kid", "hs", "k", "c2VjcmV0",
                  "kty", "RSA", "kid", "enc", "use", "enc", "n", "AQAB", "e", "AQAB");
    char *jwks_text = json_dumps(jwks, JSON_INDENT(2));
    write_file(jwks_path, jwks_text);
    free(jwks_text);
    json_decref(jwks);
    full = new_auth((struct auth_config){.hs256_secret = SECRET,
                                         .public_keys = keys,
                                         .jwks_file = jwks_path,
                                         .algorithms = "HS256,RS256,ES256",
                                         .issuer = ISSUER,
                                         .audience = AUDIENCE,
                                         .leeway_seconds = LEEWAY});
    hs_only = new_auth((struct auth_config){.hs256_secret = SECRET, .max_token_bytes = 512});
    unlink(pem1);
    unlink(pem2);
    unlink(jwks_path);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    rsa1 = EVP_RSA_gen(2048);
    rsa2 = EVP_RSA_gen(2048);
    ec1 = EVP_EC_gen("P-256");
    ec2 = EVP_EC_gen("P-256");
    if (!rsa1 || !rsa2 || !ec1 || !ec2)
        die("key generation failed");
    rsa1_pem = public_pem(rsa1);
    make_verifiers();
    return 0;
}

/* ---- properties of a verified token ---- */

static void require(bool ok, const char *what)
{
    if (!ok)
        die(what);
}

static bool string_is(const json_t *v, const char *want)
{
    return json_is_string(v) && json_string_length(v) == strlen(want) &&
           strcmp(json_string_value(v), want) == 0;
}

static void check_header(int mode, const char *header, size_t len)
{
    static const char *const algs[] = {NULL, "HS256", "ES256", "ES256", "RS256", "RS256"};
    static const char *const kids[] = {NULL, NULL, "ec1", "ec2", "rsa1", "rsa2"};
    json_t *h = json_loadb(header, len, JSON_REJECT_DUPLICATES, NULL);
    require(h != NULL, "a token whose header is not JSON verified");
    require(string_is(json_object_get(h, "alg"), algs[mode]),
            "a token verified under an algorithm other than its header's");
    require(!kids[mode] || string_is(json_object_get(h, "kid"), kids[mode]),
            "a token verified with a key other than its kid's");
    json_decref(h);
}

static bool audience_holds(const json_t *aud)
{
    if (string_is(aud, AUDIENCE))
        return true;
    for (size_t i = 0; i < json_array_size(aud); i++)
        if (string_is(json_array_get(aud, i), AUDIENCE))
            return true;
    return false;
}

static void check_claims(const struct auth *a, const char *payload, size_t len)
{
    int leeway = a == full ? LEEWAY : 0;
    json_t *c = json_loadb(payload, len, JSON_REJECT_DUPLICATES, NULL);
    require(c != NULL, "a token whose payload is not JSON verified");
    const json_t *exp = json_object_get(c, "exp"), *nbf = json_object_get(c, "nbf");
    require(json_is_integer(exp) && json_integer_value(exp) > (json_int_t)NOW - leeway,
            "a token without a valid exp verified");
    require(!nbf || json_integer_value(nbf) <= (json_int_t)NOW + leeway,
            "a token before its nbf verified");
    if (a == full) {
        require(string_is(json_object_get(c, "iss"), ISSUER), "a token of another iss verified");
        require(audience_holds(json_object_get(c, "aud")), "a token for another aud verified");
    }
    json_decref(c);
}

static void check_principal(const struct auth_principal *p)
{
    require(p->sub != NULL, "no sub");
    require(p->n_merchants <= 10000, "too many merchants");
    for (size_t i = 0; i < p->n_merchants; i++)
        require(p->merchants[i] >= 1 && (i == 0 || p->merchants[i - 1] < p->merchants[i]),
                "merchants not positive, sorted and unique");
    require(!p->all_merchants || auth_may_act_for(p, 1), "all merchants but not merchant 1");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    int mode = data[0] & 7;
    const struct auth *a = data[0] & 8 ? hs_only : full;
    const char *rest = (const char *)data + 1;
    size_t rest_len = size - 1;
    const char *nl = memchr(rest, '\n', rest_len);
    size_t header_len = nl ? (size_t)(nl - rest) : rest_len;
    const char *payload = nl ? nl + 1 : rest + rest_len;
    size_t payload_len = rest_len - header_len - (nl != NULL);
    char *token =
        mode == MODE_RAW ? NULL : make_token(mode, rest, header_len, payload, payload_len);
    struct arena *arena = arena_new();
    struct auth_principal p;
    enum auth_result r = token ? auth_verify(a, token, strlen(token), NOW, arena, &p)
                               : auth_verify(a, rest, rest_len, NOW, arena, &p);
    require((unsigned)r <= AUTH_AUDIENCE && auth_result_text(r) != NULL, "unknown result");
    if (r == AUTH_OK) {
        require(mode != MODE_CONFUSED, "HS256 signed with a public key's PEM verified");
        require(mode != MODE_NONE, "a token without a signature verified");
        if (mode != MODE_RAW) {
            check_header(mode, rest, header_len);
            check_claims(a, payload, payload_len);
        }
        check_principal(&p);
    }
    arena_free(arena);
    free(token);
    return 0;
}
