#include "json.h"

#include "arena.h"

static void json_decref_cb(void *p)
{
    json_decref(p);
}

json_t *json_parse_strict(const char *data, size_t len, json_error_t *err)
{
    return json_loadb(data, len, JSON_REJECT_DUPLICATES, err);
}

char *json_to_arena(struct arena *a, const json_t *value, size_t *len)
{
    size_t need = json_dumpb(value, NULL, 0, JSON_COMPACT | JSON_REAL_PRECISION(15));
    char *out = arena_alloc(a, need + 1);
    *len = json_dumpb(value, out, need, JSON_COMPACT | JSON_REAL_PRECISION(15));
    out[*len] = '\0';
    return out;
}

json_t *json_arena_own(struct arena *a, json_t *value)
{
    if (value)
        arena_defer(a, json_decref_cb, value);
    return value;
}
