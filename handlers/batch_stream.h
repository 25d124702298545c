/* batch_stream.h - splits a batch body into its orders as the bytes arrive, without holding
 * more than one order: `{"orders": [ ... ]}` JSON or application/x-ndjson lines. */
#ifndef CANGREJO_BATCH_STREAM_H
#define CANGREJO_BATCH_STREAM_H

#include <stdbool.h>
#include <stddef.h>

enum batch_format { BATCH_JSON, BATCH_NDJSON };

/* Called with each order's bytes (not NUL-terminated); too_large when the order was longer
 * than the limit (data is then NULL). Return false to stop. */
typedef bool (*batch_order_fn)(void *ud, const char *data, size_t len, bool too_large);

struct batch_stream {
    enum batch_format format;
    size_t max_order_bytes;
    batch_order_fn on_order;
    void *ud;
    /* scanner state */
    int state;         /* where in {"orders": [...]} we are (JSON) */
    int depth;         /* nesting inside the current order */
    bool in_string, escaped, overflow, key_seen;
    char *buf;         /* the current order's bytes */
    size_t len, cap;
    const char *error; /* why the body is malformed, or NULL */
};

/* Prepares a stream; buf grows up to max_order_bytes. */
void batch_stream_init(struct batch_stream *s, enum batch_format format, size_t max_order_bytes,
                       batch_order_fn on_order, void *ud);
/* Feeds the next bytes; false once the body is malformed (s->error) or on_order stopped. */
bool batch_stream_feed(struct batch_stream *s, const char *data, size_t len);
/* Ends the body; false when it was incomplete or malformed (s->error says why). */
bool batch_stream_finish(struct batch_stream *s);
/* Frees the buffer. */
void batch_stream_free(struct batch_stream *s);

#endif
