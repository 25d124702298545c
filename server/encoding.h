/* encoding.h - content negotiation of responses: gzip when the client accepts it (RFC 9110
 * 12.5.3), one ETag per encoding (a gzip body is another representation: its ETag gets a
 * "-gzip" suffix) and If-None-Match that recognises either. Pure functions, plus zlib. */
#ifndef CANGREJO_ENCODING_H
#define CANGREJO_ENCODING_H

#include <stdbool.h>
#include <stddef.h>

struct arena;

enum { ENC_GZIP_MIN_BYTES = 1024 }; /* smaller bodies are sent as they are */

/* True when an Accept-Encoding value accepts gzip (by name or "*", with a q above 0). */
bool enc_accepts_gzip(const char *accept_encoding);
/* True for the text types worth compressing (JSON, NDJSON, problem+json, text, JS, CSS). */
bool enc_compressible(const char *content_type);
/* The ETag of the gzip representation of a body whose ETag is etag ("x" -> "x-gzip"). */
char *enc_gzip_etag(struct arena *a, const char *etag);
/* True when If-None-Match names etag, or its gzip twin, or is "*" (weak comparison). */
bool enc_etag_matches(const char *if_none_match, const char *etag);
/* The body gzip-compressed into the arena; NULL when zlib fails. */
char *enc_gzip(struct arena *a, const char *body, size_t len, size_t *out_len);

#endif
