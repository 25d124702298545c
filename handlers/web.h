/* web.h - the static pages /docs (Swagger UI) and /dashboard (merchant dashboard) and their
 * assets, embedded at build time from web/ by web/embed_web.py. */
#ifndef CANGREJO_WEB_H
#define CANGREJO_WEB_H

#include <stdbool.h>
#include <stddef.h>

/* One embedded file, ready to send. */
struct h_web_file {
    const char *path; /* URL path, e.g. "/docs/swagger-ui.css" */
    const char *content_type;
    bool page; /* an HTML page: revalidated on every load */
    const char *body;
    size_t len;
    const char *etag; /* strong, quotes included: a hash of body */
};

/* Every embedded file, in web/embed_web.py's order. */
extern const struct h_web_file h_web_files[];
extern const size_t h_web_files_count;

/* The embedded file served at a URL path, or NULL. */
const struct h_web_file *h_web_find(const char *path);

#endif
