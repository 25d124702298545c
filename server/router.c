#include "router.h"

#include "alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct segment {
    const char *text; /* literal text, or the parameter name */
    size_t len;
    bool param;
};

struct compiled_route {
    size_t n_segments;
    struct segment segments[ROUTER_MAX_SEGMENTS];
};

struct router {
    const struct srv_route *routes;
    struct compiled_route *compiled;
    size_t n;
};

static const struct {
    enum srv_method method;
    const char *name;
} methods[] = {
    {SRV_GET, "GET"},     {SRV_HEAD, "HEAD"},   {SRV_POST, "POST"},       {SRV_PUT, "PUT"},
    {SRV_DELETE, "DELETE"}, {SRV_PATCH, "PATCH"}, {SRV_OPTIONS, "OPTIONS"},
};

enum srv_method router_parse_method(const char *name)
{
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (strcmp(name, methods[i].name) == 0)
            return methods[i].method;
    return 0;
}

const char *router_method_name(enum srv_method m)
{
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (methods[i].method == m)
            return methods[i].name;
    return "?";
}

void router_format_allow(unsigned set, char *out, size_t size)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (!(set & methods[i].method))
            continue;
        int n = snprintf(out + used, size - used, "%s%s", used ? ", " : "", methods[i].name);
        if (n < 0 || (size_t)n >= size - used)
            return;
        used += (size_t)n;
    }
}

/* Splits "/a/{b}/c" into segments; false when the template is malformed. */
static bool compile_template(const char *path, struct compiled_route *out)
{
    if (path[0] != '/')
        return false;
    out->n_segments = 0;
    const char *p = path + 1;
    while (*p) {
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0 || out->n_segments == ROUTER_MAX_SEGMENTS)
            return false;
        struct segment *s = &out->segments[out->n_segments++];
        s->param = p[0] == '{';
        if (s->param && (len < 3 || p[len - 1] != '}'))
            return false;
        s->text = s->param ? p + 1 : p;
        s->len = s->param ? len - 2 : len;
        p += len + (end ? 1 : 0);
        if (end && !*p)
            return false; /* trailing slash */
    }
    return true;
}

struct router *router_new(const struct srv_route *routes, size_t n, char *err, size_t errlen)
{
    struct router *r = xcalloc(1, sizeof(*r));
    r->routes = routes;
    r->n = n;
    r->compiled = xcalloc(n, sizeof(*r->compiled));
    for (size_t i = 0; i < n; i++) {
        size_t params = 0;
        if (!compile_template(routes[i].path, &r->compiled[i])) {
            snprintf(err, errlen, "malformed route template %s", routes[i].path);
            router_free(r);
            return NULL;
        }
        for (size_t s = 0; s < r->compiled[i].n_segments; s++)
            params += r->compiled[i].segments[s].param;
        if (params > ROUTER_MAX_PARAMS) {
            snprintf(err, errlen, "too many parameters in %s", routes[i].path);
            router_free(r);
            return NULL;
        }
    }
    return r;
}

void router_free(struct router *r)
{
    if (!r)
        return;
    free(r->compiled);
    free(r);
}

/* Matches path against one compiled template, filling params on success. */
static bool match_template(const struct compiled_route *c, const char *path, size_t len,
                           struct router_match *out)
{
    const char *p = path, *end = path + len;
    size_t n_params = 0;
    if (p == end || *p != '/')
        return false;
    p++;
    for (size_t i = 0; i < c->n_segments; i++) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *seg_end = slash ? slash : end;
        size_t seg_len = (size_t)(seg_end - p);
        const struct segment *s = &c->segments[i];
        if (seg_len == 0)
            return false;
        if (s->param) {
            out->params[n_params].name = s->text;
            out->params[n_params].name_len = s->len;
            out->params[n_params].value = p;
            out->params[n_params].len = seg_len;
            n_params++;
        } else if (seg_len != s->len || memcmp(p, s->text, seg_len) != 0) {
            return false;
        }
        bool last = i + 1 == c->n_segments;
        if (last != (seg_end == end))
            return false;
        p = seg_end + 1;
    }
    out->n_params = n_params;
    return true;
}

void router_match(const struct router *r, enum srv_method method, const char *path, size_t len,
                  struct router_match *out)
{
    memset(out, 0, sizeof(*out));
    struct router_match candidate;
    for (size_t i = 0; i < r->n; i++) {
        memset(&candidate, 0, sizeof(candidate));
        if (!match_template(&r->compiled[i], path, len, &candidate))
            continue;
        unsigned route_methods = r->routes[i].method;
        if (route_methods & SRV_GET)
            route_methods |= SRV_HEAD;
        unsigned allowed = out->allowed | route_methods;
        if (!out->route && (route_methods & method)) {
            *out = candidate;
            out->route = &r->routes[i];
            out->route_index = i;
        }
        out->allowed = allowed;
    }
}
