/* auth.h - JWT bearer-token verification (RFC 8725), scopes and tenant checks, dev minting. */
#ifndef CANGREJO_AUTH_H
#define CANGREJO_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct arena;

/* Every scope of API.md: enum name, claim spelling. */
#define AUTH_SCOPE_MAP(X)                                                                          \
    X(ORDERS_WRITE, "orders:write")                                                                \
    X(ORDERS_READ, "orders:read")                                                                  \
    X(METRICS_READ, "metrics:read")                                                                \
    X(DELIVERIES_WRITE, "deliveries:write")                                                        \
    X(PII_READ, "pii:read")                                                                        \
    X(CUSTOMERS_ERASE, "customers:erase")                                                          \
    X(MERCHANTS_ADMIN, "merchants:admin")                                                          \
    X(ADMIN, "admin")

enum auth_scope_bit {
#define AUTH_SCOPE_BIT(name, str) AUTH_SCOPE_BIT_##name,
    AUTH_SCOPE_MAP(AUTH_SCOPE_BIT)
#undef AUTH_SCOPE_BIT
};

enum auth_scope {
#define AUTH_SCOPE_FLAG(name, str) AUTH_SCOPE_##name = 1u << AUTH_SCOPE_BIT_##name,
    AUTH_SCOPE_MAP(AUTH_SCOPE_FLAG)
#undef AUTH_SCOPE_FLAG
};

/* Why a token was refused; every one of them is a 401. */
#define AUTH_RESULT_MAP(X)                                                                         \
    X(OK, "ok")                                                                                    \
    X(MISSING, "no bearer token")                                                                  \
    X(TOO_LARGE, "token too large")                                                                \
    X(MALFORMED, "token is malformed")                                                             \
    X(ALGORITHM, "token algorithm not allowed")                                                    \
    X(KEY, "no key for this token")                                                                \
    X(SIGNATURE, "token signature is invalid")                                                     \
    X(EXPIRED, "token expired")                                                                    \
    X(NOT_YET_VALID, "token not yet valid")                                                        \
    X(CLAIMS, "token claims are invalid")                                                          \
    X(ISSUER, "token issuer not accepted")                                                         \
    X(AUDIENCE, "token audience not accepted")

enum auth_result {
#define AUTH_RESULT_ENUM(name, text) AUTH_##name,
    AUTH_RESULT_MAP(AUTH_RESULT_ENUM)
#undef AUTH_RESULT_ENUM
};

/* Verification settings, straight from the environment (see server/config.c). */
struct auth_config {
    const char *hs256_secret; /* JWT_HS256_SECRET: shared secret, at least 32 bytes; or NULL */
    const char *public_keys;  /* JWT_PUBLIC_KEYS: "kid=path.pem,kid2=path2.pem"; or NULL */
    const char *jwks_file;    /* JWT_JWKS_FILE: path of a JWKS document; or NULL */
    const char *algorithms;   /* JWT_ALGORITHMS: "HS256,RS256,ES256" allow-list; NULL = by keys */
    const char *issuer;       /* JWT_ISSUER: required `iss` value; or NULL */
    const char *audience;     /* JWT_AUDIENCE: value that `aud` must hold; or NULL */
    int leeway_seconds;       /* JWT_LEEWAY_SECONDS: slack for exp/nbf/iat */
    size_t max_token_bytes;   /* JWT_MAX_BYTES: longer tokens are refused unread */
};

/* Who is calling, as proven by a verified token. Owned by the arena given to auth_verify. */
struct auth_principal {
    const char *sub;           /* `sub` claim, or "" */
    uint32_t scopes;           /* enum auth_scope bits */
    bool all_merchants;        /* `merchants: "*"` */
    size_t n_merchants;        /* count of `merchants` entries */
    const int64_t *merchants;  /* sorted ascending, no duplicates */
};

/* The loaded keys and rules; immutable once built, safe to share between threads. */
struct auth;

/* Builds a verifier from config; NULL with a message in err when the config is unusable. */
struct auth *auth_new(const struct auth_config *cfg, char *err, size_t errlen);
/* Frees a verifier and wipes its secrets. */
void auth_free(struct auth *auth);
/* Verifies a compact JWS and its claims at time now; fills *out (arena-owned) on AUTH_OK. */
enum auth_result auth_verify(const struct auth *auth, const char *token, size_t len, time_t now,
                             struct arena *arena, struct auth_principal *out);
/* Text of a result, safe to show to the caller. */
const char *auth_result_text(enum auth_result r);
/* Parses a space-separated scope string into bits; unknown scopes are ignored. */
uint32_t auth_parse_scopes(const char *s, size_t len);
/* True when the principal holds any of the scopes in `any` (0 means no scope needed). */
bool auth_has_any_scope(const struct auth_principal *p, uint32_t any);
/* True when the principal may act for merchant_id. */
bool auth_may_act_for(const struct auth_principal *p, int64_t merchant_id);
/* The verifier in use, swapped for a rebuilt one by auth_keeper_reload (SIGHUP) while
 * verifications already running finish with the one they started with. Thread-safe. */
struct auth_keeper;

/* Builds the first verifier from cfg (strings copied); NULL with a message in err. */
struct auth_keeper *auth_keeper_new(const struct auth_config *cfg, char *err, size_t errlen);
/* Frees the keeper and its verifier; no verification may be running. */
void auth_keeper_free(struct auth_keeper *k);
/* Rebuilds the verifier from the same config, re-reading the key files, and swaps it in.
 * True with a summary in msg; false with the reason in msg, the current verifier kept. */
bool auth_keeper_reload(struct auth_keeper *k, char *msg, size_t msglen);
/* auth_verify with the current verifier, which stays alive until this returns. */
enum auth_result auth_keeper_verify(struct auth_keeper *k, const char *token, size_t len,
                                    time_t now, struct arena *arena, struct auth_principal *out);
/* Mints an HS256 development token; merchants is "*" or "1,2,3"; malloc'd, NULL on bad input. */
char *auth_mint_hs256(const char *secret, const char *sub, const char *scopes,
                      const char *merchants, long ttl_seconds, time_t now);

#endif
