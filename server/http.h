/* http.h - the request framework: libmicrohttpd wiring, request context, replies, lifecycle.
 * Handlers see struct srv_req; the server checks routing, limits, content type, token, scope
 * and tenant before a handler runs, so no handler can forget them. */
#ifndef CANGREJO_HTTP_H
#define CANGREJO_HTTP_H

#include "server/auth.h"
#include "server/problem.h"
#include "server/router.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

struct arena;
struct MHD_Connection;
struct srv;
struct ratelimit;
struct cors;
struct query_args;

enum {
    SRV_MAX_HEADER_BYTES = 16 * 1024, /* API.md: request headers at most 16 KiB, else 431 */
    SRV_MAX_RESPONSE_HEADERS = 16,
};

struct srv_header {
    const char *name, *value;
};

/* A request from its request line to its completion. Fields are read-only for handlers. */
struct srv_req {
    struct arena *arena; /* freed when the response has been sent */
    struct srv *srv;
    void *app; /* the handlers' context, from srv_options.app */
    struct MHD_Connection *conn;

    enum srv_method method;
    const char *path;  /* raw path */
    const char *query; /* raw query string, NULL when absent */
    const struct srv_route *route;
    long route_index;
    struct router_match match;

    const char *request_id;
    const char *traceparent;     /* validated W3C traceparent, or NULL */
    struct auth_principal principal;
    int64_t merchant_id;         /* the {merchant_id} path parameter, 0 when none */

    const char *body; /* request body (NUL-terminated), NULL when none */
    size_t body_len;

    /* Filled by the handler through srv_reply_* and read by the log line. */
    unsigned status;
    const char *content_type;
    const char *resp_body;
    size_t resp_len;
    struct srv_header headers[SRV_MAX_RESPONSE_HEADERS];
    size_t n_headers;
    const char *log_cache; /* "hit", "miss", "bypass", "error", or NULL */
    const char *log_db;    /* "primary", "replica", or NULL */
    void *handler_state;   /* the handler's own, e.g. across srv_suspend */

    /* Framework state. */
    struct timespec started;
    struct query_args *query_args; /* parsed on first srv_query */
    const char *method_name;
    size_t body_cap;
    size_t streamed; /* bytes of a streamed body so far (routes with on_body) */
    bool stream_stopped;
    srv_handler_fn resume_with;
    bool expects_body, body_too_large, dispatched, responded, queued, close_connection;
};

/* How to listen and which limits to apply. */
struct srv_options {
    const char *host, *port;
    unsigned threads;
    unsigned max_connections, max_connections_per_ip;
    unsigned connection_timeout_s;
    const char *tls_cert_pem, *tls_key_pem; /* file contents, or NULL for plain HTTP */
    struct auth_keeper *auth; /* token verifier, reloaded on SIGHUP */
    struct ratelimit *ratelimit; /* NULL: no quotas */
    const struct cors *cors;     /* NULL: no cross-origin access */
    void *app;
};

/* Starts serving a route table (kept by reference); NULL with a message on failure. */
struct srv *srv_start(const struct srv_options *opt, const struct srv_route *routes,
                      size_t n_routes, char *err, size_t errlen);
/* Marks the server as shutting down: srv_draining turns true, responses close connections. */
void srv_begin_shutdown(struct srv *s);
/* True once shutdown began. */
bool srv_draining(const struct srv *s);
/* Stops accepting and waits up to grace_s for in-flight requests; true when all finished. */
bool srv_drain(struct srv *s, unsigned grace_s);
/* Stops the daemon and frees the server. */
void srv_stop(struct srv *s);
/* Requests being handled right now. */
unsigned srv_in_flight(const struct srv *s);

/* A path parameter, percent-decoded, or NULL. */
const char *srv_param(struct srv_req *req, const char *name);
/* A query parameter, percent-decoded ('+' is a plus), or NULL; a repeated one is NULL and
 * *repeated (when given) is set. */
const char *srv_query(struct srv_req *req, const char *name, bool *repeated);
/* Names every query parameter not in the NULL-terminated list, or NULL when all are known. */
const char *srv_unknown_query(struct srv_req *req, const char *const *known);
/* A request header, or NULL. */
const char *srv_header(struct srv_req *req, const char *name);
/* The body parsed as a JSON object; on failure replies 400 and returns NULL. Arena-owned. */
json_t *srv_body_json_object(struct srv_req *req);

/* Adds a response header (both strings copied). */
void srv_add_header(struct srv_req *req, const char *name, const char *value);
/* Replies with bytes that live as long as the request arena. */
void srv_reply_bytes(struct srv_req *req, unsigned status, const char *content_type,
                     const char *body, size_t len);
/* Replies with a JSON value (reference stolen). */
void srv_reply_json(struct srv_req *req, unsigned status, json_t *body);
/* Replies with an empty body. */
void srv_reply_empty(struct srv_req *req, unsigned status);
/* Replies with a problem+json body; detail may be NULL. Adds Retry-After to 503/429. */
void srv_reply_problem(struct srv_req *req, enum problem p, const char *detail);
/* Replies 400 validation-error with an "errors" array of {field, message} (stolen). */
void srv_reply_validation(struct srv_req *req, json_t *errors);

/* From a handler: stop here without a reply; once another thread calls srv_resume, `then`
 * runs on an HTTP thread and must reply (or suspend again). */
void srv_suspend(struct srv_req *req, srv_handler_fn then);
/* From any thread: wakes a suspended request. */
void srv_resume(struct srv_req *req);

#endif
