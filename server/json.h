/* json.h - strict JSON parsing of request bodies, serialization into a request arena, and JSON
 * text written by hand where building a jansson tree costs too much (hot responses, content
 * hashes), byte for byte as jansson 2.14 writes it compactly. */
#ifndef CANGREJO_JSON_H
#define CANGREJO_JSON_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct arena;
struct buf;

/* Parses one JSON value, refusing duplicate keys, invalid UTF-8 and out-of-range numbers. */
json_t *json_parse_strict(const char *data, size_t len, json_error_t *err);
/* Serializes compactly into the arena; sets *len. */
char *json_to_arena(struct arena *a, const json_t *value, size_t *len);
/* Hands a reference to the arena, dropped when the arena is freed; returns value. */
json_t *json_arena_own(struct arena *a, json_t *value);
/* A string (valid UTF-8) as jansson dumps it without JSON_ENSURE_ASCII or JSON_ESCAPE_SLASH;
 * NULL as null. */
void json_out_string(struct buf *b, const char *s);
/* An integer as jansson (printf's "%lld") writes it. */
void json_out_int(struct buf *b, int64_t v);
/* Any value as json_to_arena serializes it. */
void json_out_value(struct buf *b, const json_t *value);
/* A literal piece of JSON text: punctuation, and keys that need no escaping. */
void json_out_raw(struct buf *b, const char *text);

#endif
