/* router.h - the route table (method, path template, scope, handler) and path matching. */
#ifndef CANGREJO_ROUTER_H
#define CANGREJO_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct srv_req;
typedef void (*srv_handler_fn)(struct srv_req *req);

enum srv_method {
    SRV_GET = 1 << 0,
    SRV_HEAD = 1 << 1,
    SRV_POST = 1 << 2,
    SRV_PUT = 1 << 3,
    SRV_DELETE = 1 << 4,
    SRV_PATCH = 1 << 5,
    SRV_OPTIONS = 1 << 6,
};

/* Body types a route accepts (Content-Type). */
enum srv_body {
    SRV_BODY_NONE = 0,
    SRV_BODY_JSON = 1 << 0,
    SRV_BODY_NDJSON = 1 << 1,
};

/* One route. A template segment "{name}" matches any one non-empty segment; a parameter named
 * merchant_id must be a positive int64 and the token must be allowed to act for it. */
struct srv_route {
    enum srv_method method;
    const char *path;       /* template, e.g. "/v1/merchants/{merchant_id}" */
    bool authenticated;     /* needs a valid bearer token */
    uint32_t scopes;        /* any of these scopes (enum auth_scope bits); 0 = none needed */
    unsigned bodies;        /* enum srv_body bits; SRV_BODY_NONE refuses a body */
    size_t max_body;        /* body limit in bytes when bodies != SRV_BODY_NONE */
    srv_handler_fn handler;
    /* When set, the body is not kept: each piece goes here as it arrives (return false to
     * stop; a reply set meanwhile is sent once the rest has been read), then handler runs. */
    bool (*on_body)(struct srv_req *req, const char *data, size_t size);
};

enum { ROUTER_MAX_PARAMS = 4, ROUTER_MAX_SEGMENTS = 12 };

/* A path parameter, pointing into the matched path (not NUL-terminated). */
struct router_param {
    const char *name; /* points into the template, name_len bytes */
    size_t name_len;
    const char *value;
    size_t len;
};

struct router_match {
    const struct srv_route *route; /* NULL when nothing matched */
    size_t route_index;
    size_t n_params;
    struct router_param params[ROUTER_MAX_PARAMS];
    unsigned allowed; /* methods of the routes whose path matched, for 405's Allow */
};

struct router;

/* Compiles a route table; NULL with a message when a template is malformed. */
struct router *router_new(const struct srv_route *routes, size_t n, char *err, size_t errlen);
/* Frees a router. */
void router_free(struct router *r);
/* Matches method and path. route == NULL with allowed == 0 is 404, with allowed != 0 is 405. */
void router_match(const struct router *r, enum srv_method method, const char *path, size_t len,
                  struct router_match *out);
/* Writes "GET, PUT" for a set of methods into out. */
void router_format_allow(unsigned methods, char *out, size_t size);
/* Parses an HTTP method name; 0 when unknown. */
enum srv_method router_parse_method(const char *name);
/* Name of a single method. */
const char *router_method_name(enum srv_method m);

#endif
