#include "encoding.h"

#include "server/arena.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

enum { GZIP_LEVEL = 4, GZIP_WINDOW_BITS = 15 + 16 /* gzip wrapper */, GZIP_MEM_LEVEL = 8 };

static const char GZIP_SUFFIX[] = "-gzip";

/* The q value of one list member's parameters ("; q=0.5"), 1 when absent. */
static double member_q(const char *params, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (params[i] != ';')
            continue;
        size_t j = i + 1;
        while (j < len && (params[j] == ' ' || params[j] == '\t'))
            j++;
        if (j + 1 < len && tolower((unsigned char)params[j]) == 'q' && params[j + 1] == '=')
            return strtod(params + j + 2, NULL);
    }
    return 1;
}

bool enc_accepts_gzip(const char *accept_encoding)
{
    bool gzip = false, star = false, gzip_named = false;
    for (const char *p = accept_encoding; p && *p;) {
        p += strspn(p, " \t,");
        size_t len = strcspn(p, ",");
        size_t name_len = strcspn(p, ";, \t");
        bool accepted = member_q(p + name_len, len - name_len) > 0;
        if (name_len == 4 && strncasecmp(p, "gzip", 4) == 0) {
            gzip_named = true;
            gzip = accepted;
        } else if (name_len == 1 && *p == '*') {
            star = accepted;
        }
        p += len;
    }
    return gzip_named ? gzip : star;
}

bool enc_compressible(const char *content_type)
{
    static const char *const types[] = {"application/json", "application/problem+json",
                                        "application/x-ndjson", "text/", "application/javascript"};
    if (!content_type)
        return false;
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (strncasecmp(content_type, types[i], strlen(types[i])) == 0)
            return true;
    return false;
}

char *enc_gzip_etag(struct arena *a, const char *etag)
{
    size_t len = strlen(etag);
    if (len < 2 || etag[len - 1] != '"')
        return arena_strdup(a, etag);
    return arena_sprintf(a, "%.*s%s\"", (int)(len - 1), etag, GZIP_SUFFIX);
}

/* Compares one quoted tag (start..end inclusive of quotes) with etag or its gzip twin. */
static bool same_tag(const char *tag, size_t len, const char *etag, size_t etag_len)
{
    size_t suffix = sizeof(GZIP_SUFFIX) - 1;
    if (len == etag_len && memcmp(tag, etag, len) == 0)
        return true;
    return len == etag_len + suffix && memcmp(tag, etag, etag_len - 1) == 0 &&
           memcmp(tag + etag_len - 1, GZIP_SUFFIX, suffix) == 0 && tag[len - 1] == '"';
}

bool enc_etag_matches(const char *if_none_match, const char *etag)
{
    if (!if_none_match || !etag)
        return false;
    size_t etag_len = strlen(etag);
    const char *p = if_none_match;
    for (;;) {
        p += strspn(p, " \t,");
        if (*p == '*')
            return true;
        if (strncmp(p, "W/", 2) == 0)
            p += 2; /* If-None-Match compares weakly */
        const char *end = *p == '"' ? strchr(p + 1, '"') : NULL;
        if (!end)
            return false;
        if (same_tag(p, (size_t)(end + 1 - p), etag, etag_len))
            return true;
        p = end + 1;
    }
}

char *enc_gzip(struct arena *a, const char *body, size_t len, size_t *out_len)
{
    z_stream z = {0};
    if (deflateInit2(&z, GZIP_LEVEL, Z_DEFLATED, GZIP_WINDOW_BITS, GZIP_MEM_LEVEL,
                     Z_DEFAULT_STRATEGY) != Z_OK)
        return NULL;
    size_t cap = deflateBound(&z, (uLong)len);
    char *out = arena_alloc(a, cap);
    z.next_in = (Bytef *)body;
    z.avail_in = (uInt)len;
    z.next_out = (Bytef *)out;
    z.avail_out = (uInt)cap;
    int rc = deflate(&z, Z_FINISH);
    *out_len = z.total_out;
    deflateEnd(&z);
    return rc == Z_STREAM_END ? out : NULL;
}
