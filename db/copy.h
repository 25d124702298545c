/* copy.h - rows for `COPY ... FROM STDIN (FORMAT binary)`: PostgreSQL's binary copy format,
 * written straight from C values (no text to format here or to parse on the server), for the
 * bulk inserts of ingestion. */
#ifndef CANGREJO_COPY_H
#define CANGREJO_COPY_H

#include "server/buf.h"

#include <stddef.h>
#include <stdint.h>

/* Starts the data: the signature and an empty header. */
void copy_begin(struct buf *b);
/* Starts a row of n fields; each field follows with one of the calls below. */
void copy_row(struct buf *b, int n);
void copy_int8(struct buf *b, int64_t v);
void copy_int2(struct buf *b, int16_t v);
/* text (or bpchar): the UTF-8 bytes; NULL is SQL NULL. */
void copy_text(struct buf *b, const char *s);
/* timestamptz from microseconds since 1970-01-01 UTC. */
void copy_timestamptz(struct buf *b, int64_t unix_us);
void copy_bytea(struct buf *b, const void *bytes, size_t n);
/* Ends the data. */
void copy_end(struct buf *b);

#endif
