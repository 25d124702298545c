#include "cors.h"

#include "server/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { CORS_MAX_ORIGINS = 32 };

struct cors {
    bool any;
    size_t n;
    char *origins[CORS_MAX_ORIGINS];
};

/* scheme "://" host [":" port], lower-case scheme http or https, no path, query or space. */
static bool origin_well_formed(const char *s, size_t len)
{
    size_t scheme = strncmp(s, "https://", 8) == 0 ? 8 : strncmp(s, "http://", 7) == 0 ? 7 : 0;
    if (!scheme || len <= scheme)
        return false;
    for (size_t i = scheme; i < len; i++)
        if (strchr("/?# \t\"'", s[i]))
            return false;
    return true;
}

bool cors_new(const char *origins, struct cors **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!origins || !*origins)
        return true;
    struct cors *c = xcalloc(1, sizeof(*c));
    for (const char *p = origins; *p;) {
        p += strspn(p, " ,");
        size_t len = strcspn(p, ", ");
        if (len == 1 && *p == '*') {
            c->any = true;
        } else if (len && (c->n == CORS_MAX_ORIGINS || !origin_well_formed(p, len))) {
            snprintf(err, errlen,
                     "CORS_ALLOWED_ORIGINS: expected * or up to %d origins such as "
                     "https://app.example.com (scheme, host, optional port; no path)",
                     CORS_MAX_ORIGINS);
            cors_free(c);
            return false;
        } else if (len) {
            c->origins[c->n++] = xstrndup(p, len);
        }
        p += len;
    }
    *out = c;
    return true;
}

void cors_free(struct cors *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        free(c->origins[i]);
    free(c);
}

bool cors_allows(const struct cors *c, const char *origin)
{
    if (!c || !origin || !*origin)
        return false;
    if (c->any)
        return true;
    for (size_t i = 0; i < c->n; i++)
        if (strcasecmp(c->origins[i], origin) == 0)
            return true;
    return false;
}
