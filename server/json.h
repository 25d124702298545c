/* json.h - strict JSON parsing of request bodies and serialization into a request arena. */
#ifndef CANGREJO_JSON_H
#define CANGREJO_JSON_H

#include <jansson.h>
#include <stddef.h>

struct arena;

/* Parses one JSON value, refusing duplicate keys, invalid UTF-8 and out-of-range numbers. */
json_t *json_parse_strict(const char *data, size_t len, json_error_t *err);
/* Serializes compactly into the arena; sets *len. */
char *json_to_arena(struct arena *a, const json_t *value, size_t *len);
/* Hands a reference to the arena, dropped when the arena is freed; returns value. */
json_t *json_arena_own(struct arena *a, json_t *value);

#endif
