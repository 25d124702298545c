#include "http.h"

#include "alloc.h"
#include "arena.h"
#include "buf.h"
#include "json.h"
#include "log.h"
#include "cors.h"
#include "encoding.h"
#include "metrics.h"
#include "ratelimit.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

/* GnuTLS priorities: TLS 1.2 and 1.3 only, AEAD ciphers with forward secrecy. */
#define SRV_TLS_PRIORITIES                                                                         \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:"            \
    "+CHACHA20-POLY1305:-MAC-ALL:+AEAD:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:%SERVER_PRECEDENCE"

/* Per connection: holds a 16 KiB request head with room to spare (a fuller head gets our 431,
 * not libmicrohttpd's), and is touched in full on every keep-alive reset, so it sets the RSS
 * of idle connections: 1,000 of them take ~36 MiB. */
enum { CONNECTION_MEMORY_LIMIT = 36 * 1024, RETRY_AFTER_SECONDS = 1 };

struct srv {
    struct MHD_Daemon *daemon;
    struct router *router;
    const struct srv_route *routes;
    struct auth_keeper *auth;
    struct ratelimit *ratelimit;
    const struct cors *cors;
    void *app;
    atomic_bool draining;
    atomic_uint in_flight;
};

struct query_arg {
    const char *name, *value;
};

/* Query arguments, parsed on first use. */
struct query_args {
    size_t n;
    struct query_arg *args;
};

static double seconds_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

/* ---- percent-decoding and parameters ---- */

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)tolower((unsigned char)c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Decodes %XX escapes; a malformed escape or %00 is kept as written, so validation sees it. */
static char *percent_decode(struct arena *a, const char *s, size_t len)
{
    char *out = arena_alloc(a, len + 1), *o = out;
    for (size_t i = 0; i < len; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < len && (hi = hex_value(s[i + 1])) >= 0 &&
            (lo = hex_value(s[i + 2])) >= 0 && (hi | lo)) {
            *o++ = (char)(hi * 16 + lo);
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

const char *srv_param(struct srv_req *req, const char *name)
{
    for (size_t i = 0; i < req->match.n_params; i++) {
        const struct router_param *p = &req->match.params[i];
        if (p->name_len == strlen(name) && memcmp(p->name, name, p->name_len) == 0)
            return percent_decode(req->arena, p->value, p->len);
    }
    return NULL;
}

static struct query_args *parse_query(struct srv_req *req)
{
    if (req->query_args)
        return req->query_args;
    struct query_args *q = arena_zalloc(req->arena, sizeof(*q));
    const char *s = req->query ? req->query : "";
    size_t count = *s ? 1 : 0;
    for (const char *p = s; *p; p++)
        count += *p == '&';
    q->args = arena_zalloc(req->arena, (count ? count : 1) * sizeof(*q->args));
    while (*s) {
        size_t len = strcspn(s, "&");
        const char *eq = memchr(s, '=', len);
        size_t name_len = eq ? (size_t)(eq - s) : len;
        if (len > 0) {
            q->args[q->n].name = percent_decode(req->arena, s, name_len);
            q->args[q->n].value = eq ? percent_decode(req->arena, eq + 1, len - name_len - 1) : "";
            q->n++;
        }
        s += len + (s[len] == '&');
    }
    req->query_args = q;
    return q;
}

const char *srv_query(struct srv_req *req, const char *name, bool *repeated)
{
    struct query_args *q = parse_query(req);
    const char *found = NULL;
    if (repeated)
        *repeated = false;
    for (size_t i = 0; i < q->n; i++) {
        if (strcmp(q->args[i].name, name) != 0)
            continue;
        if (found) {
            if (repeated)
                *repeated = true;
            return NULL;
        }
        found = q->args[i].value;
    }
    return found;
}

const char *srv_unknown_query(struct srv_req *req, const char *const *known)
{
    struct query_args *q = parse_query(req);
    for (size_t i = 0; i < q->n; i++) {
        bool ok = false;
        for (const char *const *k = known; *k && !ok; k++)
            ok = strcmp(q->args[i].name, *k) == 0;
        if (!ok)
            return q->args[i].name;
    }
    return NULL;
}

const char *srv_header(struct srv_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

/* ---- replies ---- */

void srv_add_header(struct srv_req *req, const char *name, const char *value)
{
    if (req->n_headers == SRV_MAX_RESPONSE_HEADERS) {
        log_error("too many response headers; dropped %s", name);
        return;
    }
    req->headers[req->n_headers].name = arena_strdup(req->arena, name);
    req->headers[req->n_headers].value = arena_strdup(req->arena, value);
    req->n_headers++;
}

void srv_reply_bytes(struct srv_req *req, unsigned status, const char *content_type,
                     const char *body, size_t len)
{
    if (req->responded) {
        log_error("a second reply to one request was ignored (status %u)", status);
        return;
    }
    req->responded = true;
    req->status = status;
    req->content_type = content_type;
    req->resp_body = body;
    req->resp_len = len;
}

void srv_reply_json(struct srv_req *req, unsigned status, json_t *body)
{
    size_t len;
    char *text = json_to_arena(req->arena, body, &len);
    json_decref(body);
    srv_reply_bytes(req, status, "application/json; charset=utf-8", text, len);
}

void srv_reply_empty(struct srv_req *req, unsigned status)
{
    srv_reply_bytes(req, status, NULL, "", 0);
}

static bool reply_has_header(const struct srv_req *req, const char *name)
{
    for (size_t i = 0; i < req->n_headers; i++)
        if (strcasecmp(req->headers[i].name, name) == 0)
            return true;
    return false;
}

static void reply_problem_with(struct srv_req *req, enum problem p, const char *detail,
                               json_t *errors)
{
    unsigned status = problem_status(p);
    if ((status == 503 || status == 429) && !reply_has_header(req, "Retry-After")) {
        char seconds[16];
        snprintf(seconds, sizeof(seconds), "%d", RETRY_AFTER_SECONDS);
        srv_add_header(req, "Retry-After", seconds);
    }
    if (status == 401)
        srv_add_header(req, "WWW-Authenticate",
                       "Bearer realm=\"cangrejo\", error=\"invalid_token\"");
    json_t *body = problem_body(p, detail, req->request_id, errors);
    size_t len;
    char *text = json_to_arena(req->arena, body, &len);
    json_decref(body);
    srv_reply_bytes(req, status, "application/problem+json", text, len);
}

void srv_reply_problem(struct srv_req *req, enum problem p, const char *detail)
{
    reply_problem_with(req, p, detail, NULL);
}

void srv_reply_validation(struct srv_req *req, json_t *errors)
{
    size_t n = json_array_size(errors);
    const char *detail =
        n == 1 ? arena_sprintf(
                     req->arena, "%s: %s",
                     json_string_value(json_object_get(json_array_get(errors, 0), "field")),
                     json_string_value(json_object_get(json_array_get(errors, 0), "message")))
               : arena_sprintf(req->arena, "%zu fields are invalid", n);
    reply_problem_with(req, PROBLEM_VALIDATION, detail, errors);
}

json_t *srv_body_json_object(struct srv_req *req)
{
    if (!req->body || req->body_len == 0) {
        json_t *errors = NULL;
        problem_add_field_error(&errors, "", "a JSON object body is required");
        srv_reply_validation(req, errors);
        return NULL;
    }
    json_error_t err;
    json_t *root = json_parse_strict(req->body, req->body_len, &err);
    if (!root) {
        char *near = strstr(err.text, " near '");
        if (near)
            *near = '\0'; /* jansson quotes the input there, which may be personal data */
        srv_reply_problem(
            req, PROBLEM_MALFORMED_JSON,
            arena_sprintf(req->arena, "line %d, column %d: %s", err.line, err.column, err.text));
        return NULL;
    }
    json_arena_own(req->arena, root);
    if (!json_is_object(root)) {
        json_t *errors = NULL;
        problem_add_field_error(&errors, "", "must be a JSON object");
        srv_reply_validation(req, errors);
        return NULL;
    }
    return root;
}

void srv_suspend(struct srv_req *req, srv_handler_fn then)
{
    req->resume_with = then;
    MHD_suspend_connection(req->conn);
}

void srv_resume(struct srv_req *req)
{
    MHD_resume_connection(req->conn);
}

/* ---- request setup and checks, before any handler runs ---- */

/* 64 random bits for request ids: a per-thread xorshift64* seeded from getrandom, so an id
 * costs no system call (ids must be unique, not secret). */
static uint64_t request_id_bits(void)
{
    static _Thread_local uint64_t state;
    while (state == 0)
        if (getrandom(&state, sizeof(state), 0) != (ssize_t)sizeof(state))
            state = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&state;
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 2685821657736338717ull;
}

static void make_request_id(struct srv_req *req)
{
    const char *given = srv_header(req, "X-Request-Id");
    if (given) {
        size_t len = strlen(given);
        bool sane = len >= 1 && len <= 128;
        for (size_t i = 0; sane && i < len; i++)
            sane = isalnum((unsigned char)given[i]) || strchr("-_.:", given[i]);
        if (sane) {
            req->request_id = arena_strdup(req->arena, given);
            return;
        }
    }
    uint64_t bits[2] = {request_id_bits(), request_id_bits()};
    char *id = arena_alloc(req->arena, 2 * sizeof(bits) + 1);
    hex_encode(id, bits, sizeof(bits));
    req->request_id = id;
}

/* Keeps a traceparent only when it is well-formed (version-traceid-parentid-flags). */
static void take_traceparent(struct srv_req *req)
{
    const char *tp = srv_header(req, "traceparent");
    if (!tp || strlen(tp) != 55)
        return;
    for (size_t i = 0; i < 55; i++) {
        bool dash = i == 2 || i == 35 || i == 52;
        if (dash ? tp[i] != '-'
                 : !(isdigit((unsigned char)tp[i]) || (tp[i] >= 'a' && tp[i] <= 'f')))
            return;
    }
    req->traceparent = arena_strdup(req->arena, tp);
}

static enum MHD_Result sum_header_bytes(void *cls, enum MHD_ValueKind kind, const char *key,
                                        const char *value)
{
    size_t *total = cls;
    *total += strlen(key) + (value ? strlen(value) : 0) + 4;
    return MHD_YES;
}

struct framing {
    unsigned content_lengths, transfer_encodings;
    bool bad_name, bad_length;
};

/* RFC 9110 5.6.2: a field name is a token. libmicrohttpd keeps what precedes the colon, so
 * "Content-Length : 5" arrives as a name with a space that must not pass for another field. */
static bool is_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
            return false;
    return true;
}

static bool is_digits(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return false;
    return true;
}

static enum MHD_Result count_framing_headers(void *cls, enum MHD_ValueKind kind, const char *key,
                                             const char *value)
{
    struct framing *f = cls;
    bool is_length = strcasecmp(key, "Content-Length") == 0;
    f->content_lengths += is_length;
    f->transfer_encodings += strcasecmp(key, "Transfer-Encoding") == 0;
    f->bad_name |= !is_token(key);
    f->bad_length |= is_length && !is_digits(value ? value : "");
    return MHD_YES;
}

/* RFC 9112 6.3: a body whose length two parties could read differently is refused before a
 * byte of it is read, and the connection is closed, so nothing behind it can pass for a
 * second request. */
static bool framing_unambiguous(struct srv_req *req)
{
    struct framing f = {0};
    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, count_framing_headers, &f);
    const char *te = srv_header(req, "Transfer-Encoding");
    const char *why = NULL;
    if (f.bad_name)
        why = "a header name that is not a token (whitespace before the colon?)";
    else if (f.bad_length)
        why = "a Content-Length that is not a decimal number";
    else if (f.content_lengths > 1)
        why = "more than one Content-Length";
    else if (f.transfer_encodings > 1)
        why = "more than one Transfer-Encoding";
    else if (te && f.content_lengths)
        why = "both Content-Length and Transfer-Encoding";
    else if (te && strcasecmp(te, "chunked") != 0)
        why = "a transfer coding other than chunked";
    if (!why)
        return true;
    req->close_connection = true;
    srv_reply_problem(req, PROBLEM_BAD_REQUEST,
                      arena_sprintf(req->arena, "ambiguous framing: %s", why));
    return false;
}

static bool headers_too_large(struct srv_req *req)
{
    size_t total = 0;
    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, sum_header_bytes, &total);
    return total > SRV_MAX_HEADER_BYTES;
}

static bool route_to_handler(struct srv_req *req, const char *method)
{
    enum srv_method m = router_parse_method(method);
    router_match(req->srv->router, m, req->path, strlen(req->path), &req->match);
    req->route = req->match.route;
    req->route_index = req->route ? (long)req->match.route_index : -1;
    if (req->route)
        return true;
    if (!req->match.allowed) {
        srv_reply_problem(req, PROBLEM_NOT_FOUND, "no such route");
        return false;
    }
    char allow[96];
    router_format_allow(req->match.allowed, allow, sizeof(allow));
    srv_add_header(req, "Allow", allow);
    srv_reply_problem(req, PROBLEM_METHOD_NOT_ALLOWED,
                      arena_sprintf(req->arena, "allowed: %s", allow));
    return false;
}

/* True for application/json or application/x-ndjson (as the route allows), charset utf-8. */
static bool content_type_accepted(const char *ct, unsigned bodies)
{
    if (!ct)
        return false;
    size_t type_len = strcspn(ct, ";");
    while (type_len > 0 && isspace((unsigned char)ct[type_len - 1]))
        type_len--;
    bool json = type_len == 16 && strncasecmp(ct, "application/json", 16) == 0;
    bool ndjson = type_len == 20 && strncasecmp(ct, "application/x-ndjson", 20) == 0;
    if (!((json && (bodies & SRV_BODY_JSON)) || (ndjson && (bodies & SRV_BODY_NDJSON))))
        return false;
    for (const char *p = strchr(ct, ';'); p; p = strchr(p + 1, ';')) {
        while (*++p == ' ')
            ;
        if (strncasecmp(p, "charset=", 8) != 0)
            return false;
        const char *cs = p + 8;
        size_t cs_len = strcspn(cs, "; ");
        if (!((cs_len == 5 && strncasecmp(cs, "utf-8", 5) == 0) ||
              (cs_len == 7 && strncasecmp(cs, "\"utf-8\"", 7) == 0)))
            return false;
        p = cs;
    }
    return true;
}

/* Checks the body's declared size and type against the route before a byte of it is read. */
static bool body_acceptable(struct srv_req *req)
{
    const char *cl = srv_header(req, "Content-Length");
    const char *te = srv_header(req, "Transfer-Encoding");
    unsigned long long declared = 0;
    if (cl) {
        char *end;
        errno = 0;
        declared = strtoull(cl, &end, 10);
        if (errno || *end || !isdigit((unsigned char)*cl)) {
            srv_reply_problem(req, PROBLEM_BAD_REQUEST, "malformed Content-Length");
            return false;
        }
    }
    bool has_body = declared > 0 || te;
    if (!has_body)
        return true;
    if (req->route->bodies == SRV_BODY_NONE) {
        srv_reply_problem(req, PROBLEM_BAD_REQUEST, "this route takes no request body");
        return false;
    }
    if (declared > req->route->max_body) {
        srv_reply_problem(req, PROBLEM_PAYLOAD_TOO_LARGE,
                          arena_sprintf(req->arena, "the body limit of this route is %zu bytes",
                                        req->route->max_body));
        return false;
    }
    if (!content_type_accepted(srv_header(req, "Content-Type"), req->route->bodies)) {
        srv_reply_problem(req, PROBLEM_UNSUPPORTED_MEDIA_TYPE,
                          req->route->bodies & SRV_BODY_NDJSON
                              ? "send application/json or application/x-ndjson"
                              : "send application/json");
        return false;
    }
    req->body_cap = declared ? (size_t)declared : 0;
    return true;
}

static const char *bearer_token(struct srv_req *req, size_t *len)
{
    const char *h = srv_header(req, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return NULL;
    h += 7;
    while (*h == ' ')
        h++;
    *len = strlen(h);
    while (*len > 0 && h[*len - 1] == ' ')
        (*len)--;
    return *len ? h : NULL;
}

static bool authenticate(struct srv_req *req)
{
    size_t len = 0;
    const char *token = bearer_token(req, &len);
    enum auth_result r =
        token ? auth_keeper_verify(req->srv->auth, token, len, time(NULL), req->arena,
                                     &req->principal)
              : AUTH_MISSING;
    if (r != AUTH_OK) {
        srv_reply_problem(req, PROBLEM_UNAUTHORIZED, auth_result_text(r));
        return false;
    }
    return true;
}

/* Parses a positive int64 written in canonical decimal (no sign, no leading zero). */
static bool parse_id(const char *s, int64_t *out)
{
    if (!s || !*s || *s == '0' || strlen(s) > 19)
        return false;
    for (const char *p = s; *p; p++)
        if (!isdigit((unsigned char)*p))
            return false;
    errno = 0;
    long long v = strtoll(s, NULL, 10);
    if (errno || v <= 0)
        return false;
    *out = v;
    return true;
}

static bool authorize(struct srv_req *req)
{
    const char *mid = srv_param(req, "merchant_id");
    if (mid && !parse_id(mid, &req->merchant_id)) {
        srv_reply_problem(req, PROBLEM_NOT_FOUND, "merchant_id must be a positive integer");
        return false;
    }
    if (!auth_has_any_scope(&req->principal, req->route->scopes)) {
        srv_reply_problem(req, PROBLEM_FORBIDDEN, "the token lacks the scope this route needs");
        return false;
    }
    if (mid && !auth_may_act_for(&req->principal, req->merchant_id)) {
        srv_reply_problem(req, PROBLEM_FORBIDDEN, "the token is not valid for this merchant");
        return false;
    }
    return true;
}

/* Quotas (server/ratelimit.c): their headers on every answer, 429 once one is used up. */
static bool within_quota(struct srv_req *req)
{
    if (!req->srv->ratelimit)
        return true;
    struct ratelimit_subject who = {req->route->scopes, &req->principal, req->merchant_id};
    struct ratelimit_verdict v;
    ratelimit_check(req->srv->ratelimit, &who, &v);
    if (v.policy[0])
        srv_add_header(req, "RateLimit-Policy", v.policy);
    if (v.state[0])
        srv_add_header(req, "RateLimit", v.state);
    if (!v.limited)
        return true;
    srv_add_header(req, "Retry-After", arena_sprintf(req->arena, "%u", v.retry_after));
    srv_reply_problem(req, PROBLEM_RATE_LIMITED,
                      arena_sprintf(req->arena, "quota used up; retry in %u s", v.retry_after));
    return false;
}

/* A CORS preflight: OPTIONS asking whether a cross-origin request may be sent. */
static bool is_preflight(struct srv_req *req, const char *method)
{
    return req->srv->cors && strcmp(method, "OPTIONS") == 0 && srv_header(req, "Origin") &&
           srv_header(req, "Access-Control-Request-Method");
}

/* Answered before routing and authentication (a preflight carries no token): 204 with what
 * the path allows, 403 for an origin not in CORS_ALLOWED_ORIGINS, 404 for an unknown path. */
static void answer_preflight(struct srv_req *req)
{
    enum srv_method m = router_parse_method(srv_header(req, "Access-Control-Request-Method"));
    router_match(req->srv->router, m, req->path, strlen(req->path), &req->match);
    if (!cors_allows(req->srv->cors, srv_header(req, "Origin"))) {
        srv_reply_problem(req, PROBLEM_FORBIDDEN, "this origin may not call the API");
        return;
    }
    if (!req->match.allowed) {
        srv_reply_problem(req, PROBLEM_NOT_FOUND, "no such route");
        return;
    }
    char allow[96];
    router_format_allow(req->match.allowed, allow, sizeof(allow));
    srv_add_header(req, "Access-Control-Allow-Methods", allow);
    srv_add_header(req, "Access-Control-Allow-Headers", CORS_ALLOW_HEADERS);
    srv_add_header(req, "Access-Control-Max-Age", CORS_MAX_AGE);
    srv_reply_empty(req, 204);
}

/* First call for a request: everything that can be decided from the headers alone. */
static void begin_request(struct srv_req *req, const char *method)
{
    req->method_name = arena_strdup(req->arena, method);
    req->expects_body =
        srv_header(req, "Transfer-Encoding") ||
        (srv_header(req, "Content-Length") && strcmp(srv_header(req, "Content-Length"), "0") != 0);
    make_request_id(req);
    take_traceparent(req);
    log_set_request_id(req->request_id);
    if (!framing_unambiguous(req))
        return;
    if (headers_too_large(req)) {
        srv_reply_problem(req, PROBLEM_HEADERS_TOO_LARGE, "request headers exceed 16 KiB");
        return;
    }
    if (is_preflight(req, method)) {
        answer_preflight(req);
        return;
    }
    if (!route_to_handler(req, method) || !body_acceptable(req))
        return;
    if (req->route->authenticated && !(authenticate(req) && authorize(req) && within_quota(req)))
        return;
}

/* A streamed body: counted against the limit and handed on, never kept. */
static void stream_body_chunk(struct srv_req *req, const char *data, size_t size)
{
    req->streamed += size;
    if (req->streamed > req->route->max_body)
        req->body_too_large = true;
    else if (!req->responded && !req->stream_stopped)
        req->stream_stopped = !req->route->on_body(req, data, size);
}

static void take_body_chunk(struct srv_req *req, const char *data, size_t size)
{
    if (req->route->on_body) {
        stream_body_chunk(req, data, size);
        return;
    }
    if (req->body_too_large)
        return;
    if (req->body_len + size > req->route->max_body) {
        req->body_too_large = true;
        return;
    }
    if (req->body_len + size + 1 > req->body_cap || !req->body) {
        size_t cap = req->body_cap > req->body_len + size ? req->body_cap : req->body_len + size;
        cap = cap < 4096 ? 4096 : cap;
        char *grown = arena_alloc(req->arena, cap + 1);
        if (req->body_len)
            memcpy(grown, req->body, req->body_len);
        req->body = grown;
        req->body_cap = cap;
    }
    memcpy((char *)req->body + req->body_len, data, size);
    req->body_len += size;
    ((char *)req->body)[req->body_len] = '\0';
}

/* Runs a handler or a continuation; it must reply or suspend. */
static void run_handler(struct srv_req *req, srv_handler_fn fn)
{
    req->resume_with = NULL;
    fn(req);
    if (!req->responded && !req->resume_with) {
        log_error("handler for %s returned without a reply", req->route->path);
        srv_reply_problem(req, PROBLEM_INTERNAL, NULL);
    }
}

static void dispatch(struct srv_req *req)
{
    req->dispatched = true;
    if (req->body_too_large) {
        req->responded = false; /* the body limit overrides whatever a stream decided */
        req->n_headers = 0;
        srv_reply_problem(req, PROBLEM_PAYLOAD_TOO_LARGE,
                          arena_sprintf(req->arena, "the body limit of this route is %zu bytes",
                                        req->route->max_body));
        return;
    }
    run_handler(req, req->route->handler);
}

/* gzip for clients that accept it, for text of 1 KiB or more, and always for a tagged
 * resource (so that its representation, and ETag, do not depend on its size). The ETag then
 * names the gzip representation; a 304 names the one the client holds ("*": gzip). */
static void negotiate_encoding(struct srv_req *req)
{
    const char *etag = NULL;
    for (size_t i = 0; i < req->n_headers && !etag; i++)
        if (strcasecmp(req->headers[i].name, "ETag") == 0)
            etag = req->headers[i].value;
    bool compress = req->status != 304 && enc_compressible(req->content_type) &&
                    (etag || req->resp_len >= ENC_GZIP_MIN_BYTES);
    if (compress || (etag && req->status == 304))
        srv_add_header(req, "Vary", "Accept-Encoding");
    if (!enc_accepts_gzip(srv_header(req, "Accept-Encoding")) || (!compress && !etag))
        return;
    if (compress) {
        size_t len;
        char *gz = enc_gzip(req->arena, req->resp_body, req->resp_len, &len);
        if (!gz)
            return;
        req->resp_body = gz;
        req->resp_len = len;
        srv_add_header(req, "Content-Encoding", "gzip");
    }
    const char *inm = srv_header(req, "If-None-Match");
    const char *twin = etag ? enc_gzip_etag(req->arena, etag) : NULL;
    bool holds_identity = req->status == 304 && inm && strstr(inm, etag) && !strstr(inm, twin);
    for (size_t i = 0; twin && !holds_identity && i < req->n_headers; i++)
        if (strcasecmp(req->headers[i].name, "ETag") == 0)
            req->headers[i].value = twin;
}

/* CORS: a page of an allowed origin may read the answer and the headers it needs. */
static void allow_origin(struct srv_req *req)
{
    if (!req->srv->cors)
        return;
    srv_add_header(req, "Vary", "Origin");
    const char *origin = srv_header(req, "Origin");
    if (!cors_allows(req->srv->cors, origin))
        return;
    srv_add_header(req, "Access-Control-Allow-Origin", origin);
    srv_add_header(req, "Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS);
}

static enum MHD_Result queue_reply(struct srv_req *req)
{
    negotiate_encoding(req);
    allow_origin(req);
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        req->resp_len, (void *)req->resp_body, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    if (req->content_type)
        MHD_add_response_header(resp, "Content-Type", req->content_type);
    MHD_add_response_header(resp, "X-Request-Id", req->request_id);
    for (size_t i = 0; i < req->n_headers; i++)
        MHD_add_response_header(resp, req->headers[i].name, req->headers[i].value);
    if (atomic_load(&req->srv->draining) || req->body_too_large || req->close_connection)
        MHD_add_response_header(resp, "Connection", "close");
    enum MHD_Result r = MHD_queue_response(req->conn, req->status, resp);
    MHD_destroy_response(resp);
    req->queued = r == MHD_YES;
    return r;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **req_cls)
{
    struct srv_req *req = *req_cls;
    if (!req)
        return MHD_NO; /* no request line callback happened: cannot serve */
    log_set_request_id(req->request_id);
    if (!req->conn) {
        req->conn = conn;
        begin_request(req, method);
        if (req->responded && req->expects_body)
            return queue_reply(req); /* early answer: libmicrohttpd will not read the body */
        return MHD_YES;
    }
    if (*upload_data_size) {
        take_body_chunk(req, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (!req->dispatched && (!req->responded || req->body_too_large))
        dispatch(req);
    else if (req->resume_with)
        run_handler(req, req->resume_with); /* resumed after srv_suspend */
    if (req->responded && !req->queued)
        return queue_reply(req);
    return MHD_YES; /* suspended: srv_resume brings us back here */
}

/* Called with the request line: creates the request context with the raw path and query. */
static void *on_request_line(void *cls, const char *uri, struct MHD_Connection *conn)
{
    struct srv *s = cls;
    struct arena *a = arena_new();
    struct srv_req *req = arena_zalloc(a, sizeof(*req));
    req->arena = a;
    req->srv = s;
    req->app = s->app;
    req->route_index = -1;
    clock_gettime(CLOCK_MONOTONIC, &req->started);
    const char *q = strchr(uri, '?');
    req->path = q ? arena_strndup(a, uri, (size_t)(q - uri)) : arena_strdup(a, uri);
    req->query = q ? arena_strdup(a, q + 1) : NULL;
    req->request_id = "";
    atomic_fetch_add(&s->in_flight, 1);
    return req;
}

static void log_access(struct srv_req *req, unsigned status, double seconds)
{
    const char *route = req->route ? req->route->path : "unmatched";
    json_t *line =
        json_pack("{s:s, s:s, s:s, s:s, s:i, s:f}", "msg", "request", "request_id", req->request_id,
                  "method", req->method_name ? req->method_name : "-", "route", route, "status",
                  (json_int_t)status, "duration_ms", (double)(long long)(seconds * 1e6) / 1e3);
    if (req->merchant_id)
        json_object_set_new(line, "merchant", json_integer(req->merchant_id));
    if (req->principal.sub)
        json_object_set_new(line, "sub", json_string(req->principal.sub));
    if (req->log_cache)
        json_object_set_new(line, "cache", json_string(req->log_cache));
    if (req->log_db)
        json_object_set_new(line, "db", json_string(req->log_db));
    if (req->traceparent)
        json_object_set_new(line, "traceparent", json_string(req->traceparent));
    log_json(status >= 500 ? LOG_ERROR : LOG_INFO, line);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct srv *s = cls;
    struct srv_req *req = *req_cls;
    if (!req)
        return;
    *req_cls = NULL;
    double seconds = seconds_since(&req->started);
    /* 499: the client went away before an answer was sent (nginx's convention). */
    unsigned status = req->queued ? req->status : 499;
    metrics_observe_request(req->route_index, status, seconds);
    log_access(req, status, seconds);
    log_set_request_id(NULL);
    arena_free(req->arena);
    atomic_fetch_sub(&s->in_flight, 1);
}

/* Keeps the URL as sent: the router and srv_param/srv_query decode it themselves, so that an
 * encoded "/" cannot change the route and "+" in a timestamp stays a plus. */
static size_t keep_url_escaped(void *cls, struct MHD_Connection *c, char *s)
{
    return strlen(s);
}

static void on_mhd_error(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    log_warn("libmicrohttpd: %s", msg);
}

static bool resolve_listen(const struct srv_options *opt, struct sockaddr_storage *addr, char *err,
                           size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(opt->host, opt->port, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "cannot resolve listen address %s:%s: %s", opt->host, opt->port,
                 gai_strerror(rc));
        return false;
    }
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return true;
}

struct srv *srv_start(const struct srv_options *opt, const struct srv_route *routes,
                      size_t n_routes, char *err, size_t errlen)
{
    struct sockaddr_storage addr;
    if (!resolve_listen(opt, &addr, err, errlen))
        return NULL;
    struct srv *s = xcalloc(1, sizeof(*s));
    s->routes = routes;
    s->auth = opt->auth;
    s->ratelimit = opt->ratelimit;
    s->cors = opt->cors;
    s->app = opt->app;
    s->router = router_new(routes, n_routes, err, errlen);
    if (!s->router) {
        free(s);
        return NULL;
    }
    unsigned flags =
        MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC;
    if (addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    if (opt->tls_cert_pem)
        flags |= MHD_USE_TLS;
    struct MHD_OptionItem tls_opts[] = {
        {MHD_OPTION_HTTPS_MEM_CERT, 0, (void *)opt->tls_cert_pem},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)opt->tls_key_pem},
        {MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)SRV_TLS_PRIORITIES},
        {MHD_OPTION_END, 0, NULL},
    };
    struct MHD_OptionItem no_opts[] = {{MHD_OPTION_END, 0, NULL}};
    s->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_access, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_error, s,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_THREAD_POOL_SIZE, opt->threads,
        MHD_OPTION_CONNECTION_LIMIT, opt->max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        opt->max_connections_per_ip, MHD_OPTION_CONNECTION_TIMEOUT, opt->connection_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY_LIMIT,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096, MHD_OPTION_STRICT_FOR_CLIENT, 1,
        MHD_OPTION_URI_LOG_CALLBACK, on_request_line, s, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
        s, MHD_OPTION_UNESCAPE_CALLBACK, keep_url_escaped, s, MHD_OPTION_ARRAY,
        opt->tls_cert_pem ? tls_opts : no_opts, MHD_OPTION_END);
    if (!s->daemon) {
        snprintf(err, errlen, "cannot listen on %s:%s (address in use, or bad TLS files?)",
                 opt->host, opt->port);
        router_free(s->router);
        free(s);
        return NULL;
    }
    return s;
}

void srv_begin_shutdown(struct srv *s)
{
    atomic_store(&s->draining, true);
}

bool srv_draining(const struct srv *s)
{
    return atomic_load(&s->draining);
}

unsigned srv_in_flight(const struct srv *s)
{
    return atomic_load(&s->in_flight);
}

bool srv_drain(struct srv *s, unsigned grace_s)
{
    srv_begin_shutdown(s);
    MHD_socket listen_fd = MHD_quiesce_daemon(s->daemon);
    if (listen_fd != MHD_INVALID_SOCKET)
        close(listen_fd);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (atomic_load(&s->in_flight) > 0) {
        if (seconds_since(&start) >= grace_s)
            return false;
        usleep(10 * 1000);
    }
    return true;
}

void srv_stop(struct srv *s)
{
    if (!s)
        return;
    MHD_stop_daemon(s->daemon);
    router_free(s->router);
    free(s);
}
