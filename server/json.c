#include "json.h"

#include "arena.h"
#include "buf.h"

static void json_decref_cb(void *p)
{
    json_decref(p);
}

json_t *json_parse_strict(const char *data, size_t len, json_error_t *err)
{
    return json_loadb(data, len, JSON_REJECT_DUPLICATES, err);
}

static int append_to_buf(const char *data, size_t size, void *ud)
{
    buf_append(ud, data, size);
    return 0;
}

/* Dumped once into a growing buffer, then copied: json_dumpb would have to dump twice, once
 * to learn the size (that was a third of an uncached metrics read's CPU). */
char *json_to_arena(struct arena *a, const json_t *value, size_t *len)
{
    struct buf b = {0};
    json_dump_callback(value, append_to_buf, &b, JSON_COMPACT | JSON_REAL_PRECISION(15));
    *len = b.len;
    char *out = arena_strndup(a, b.data ? b.data : "", b.len);
    buf_free(&b);
    return out;
}

json_t *json_arena_own(struct arena *a, json_t *value)
{
    if (value)
        arena_defer(a, json_decref_cb, value);
    return value;
}
