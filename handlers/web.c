/* web.c - GET /docs, /dashboard and their assets: files embedded from web/ at build time, sent
 * with their ETag (If-None-Match gives 304), a cache policy and a strict Content-Security-Policy
 * (every byte the pages use comes from this server). gzip comes from the HTTP layer. */
#include "handlers/web.h"

#include "handlers/handlers.h"
#include "server/encoding.h"

#include <string.h>

/* Only this origin's scripts, styles, fetches and images (Swagger UI's CSS holds data: icons);
 * no inline script, no plugins, no framing, forms post nowhere else. */
#define WEB_CSP                                                                                    \
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "               \
    "form-action 'self'; frame-ancestors 'none'"
/* Pages are revalidated on every load so a new version shows at once; assets for 5 minutes. */
#define WEB_PAGE_CACHE "no-cache"
#define WEB_ASSET_CACHE "public, max-age=300"

const struct h_web_file *h_web_find(const char *path)
{
    for (size_t i = 0; i < h_web_files_count; i++)
        if (strcmp(h_web_files[i].path, path) == 0)
            return &h_web_files[i];
    return NULL;
}

static void add_web_headers(struct srv_req *req, const struct h_web_file *f)
{
    srv_add_header(req, "ETag", f->etag);
    srv_add_header(req, "Cache-Control", f->page ? WEB_PAGE_CACHE : WEB_ASSET_CACHE);
    srv_add_header(req, "Content-Security-Policy", WEB_CSP);
    srv_add_header(req, "X-Content-Type-Options", "nosniff");
    srv_add_header(req, "Referrer-Policy", "no-referrer");
}

void h_web_get(struct srv_req *req)
{
    const struct h_web_file *f = h_web_find(req->path);
    if (!f) {
        srv_reply_problem(req, PROBLEM_NOT_FOUND, NULL);
        return;
    }
    add_web_headers(req, f);
    if (enc_etag_matches(srv_header(req, "If-None-Match"), f->etag))
        srv_reply_empty(req, 304);
    else
        srv_reply_bytes(req, 200, f->content_type, f->body, f->len);
}
