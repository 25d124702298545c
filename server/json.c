#include "json.h"

#include "arena.h"
#include "buf.h"

#include <string.h>

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
void json_out_value(struct buf *b, const json_t *value)
{
    json_dump_callback(value, append_to_buf, b,
                       JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
}

char *json_to_arena(struct arena *a, const json_t *value, size_t *len)
{
    struct buf b = {0};
    json_out_value(&b, value);
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

void json_out_raw(struct buf *b, const char *text)
{
    buf_append(b, text, strlen(text));
}

void json_out_int(struct buf *b, int64_t v)
{
    char digits[24];
    size_t i = sizeof(digits);
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        digits[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        digits[--i] = '-';
    buf_append(b, digits + i, sizeof(digits) - i);
}

/* The letter of a two-character escape (\" \\ \b \f \n \r \t), or 0. */
static char short_escape(unsigned char ch)
{
    switch (ch) {
    case '"':
        return '"';
    case '\\':
        return '\\';
    case '\b':
        return 'b';
    case '\f':
        return 'f';
    case '\n':
        return 'n';
    case '\r':
        return 'r';
    case '\t':
        return 't';
    default:
        return 0;
    }
}

static void out_escape(struct buf *b, unsigned char ch)
{
    static const char hex[] = "0123456789ABCDEF"; /* jansson writes \u001F, not \u001f */
    char letter = short_escape(ch);
    char esc[6] = {'\\', letter, 0, 0, 0, 0};
    if (letter) {
        buf_append(b, esc, 2);
        return;
    }
    memcpy(esc + 1, "u00", 3);
    esc[4] = hex[ch >> 4];
    esc[5] = hex[ch & 15];
    buf_append(b, esc, 6);
}

/* '"', '\\' and the control characters below 0x20 escaped; DEL, '/', U+2028, U+2029 and all
 * other UTF-8 written as they are (multi-byte UTF-8 has no byte below 0x80, so escaping byte
 * by byte is escaping code point by code point). Runs without escapes are copied whole. */
void json_out_string(struct buf *b, const char *s)
{
    if (!s) {
        buf_append(b, "null", 4);
        return;
    }
    buf_append(b, "\"", 1);
    for (;;) {
        const char *run = s;
        while ((unsigned char)*s >= 0x20 && *s != '"' && *s != '\\')
            s++;
        buf_append(b, run, (size_t)(s - run));
        if (!*s)
            break;
        out_escape(b, (unsigned char)*s++);
    }
    buf_append(b, "\"", 1);
}
