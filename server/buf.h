/* buf.h - a growable byte buffer for building responses and exposition text. */
#ifndef CANGREJO_BUF_H
#define CANGREJO_BUF_H

#include <stddef.h>

struct buf {
    char *data; /* NUL-terminated while len < cap */
    size_t len, cap;
};

/* Appends n bytes. */
void buf_append(struct buf *b, const char *s, size_t n);
/* Appends a NUL-terminated string. */
void buf_puts(struct buf *b, const char *s);
/* Appends printf output. */
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Frees the storage and empties the buffer. */
void buf_free(struct buf *b);
/* Writes n bytes as 2n lower-case hex digits and a NUL into out (2n + 1 bytes). */
void hex_encode(char *out, const void *bytes, size_t n);

#endif
