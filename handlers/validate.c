#include "validate.h"

#include "server/arena.h"
#include "server/problem.h"

#include <ctype.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void v_fail(struct v_errors *v, const char *field, const char *message)
{
    problem_add_field_error(&v->list, field, message);
}

bool v_ok(const struct v_errors *v)
{
    return v->list == NULL || json_array_size(v->list) == 0;
}

static const char *field_path(struct v_errors *v, const char *prefix, const char *key)
{
    return *prefix ? arena_sprintf(v->arena, "%s.%s", prefix, key) : key;
}

void v_no_unknown_fields(struct v_errors *v, const json_t *obj, const char *prefix,
                         const char *const *known)
{
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)obj, key, value)
    {
        bool found = false;
        for (const char *const *k = known; *k && !found; k++)
            found = strcmp(key, *k) == 0;
        if (!found)
            v_fail(v, field_path(v, prefix, key), "unknown field");
    }
}

/* Counts UTF-8 code points (jansson has already checked the encoding). */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static bool has_control_chars(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

const char *v_string(struct v_errors *v, const json_t *obj, const char *prefix, const char *key,
                     size_t max_chars)
{
    const char *path = field_path(v, prefix, key);
    json_t *value = json_object_get(obj, key);
    if (!value) {
        v_fail(v, path, "is required");
        return NULL;
    }
    if (!json_is_string(value)) {
        v_fail(v, path, "must be a string");
        return NULL;
    }
    const char *s = json_string_value(value);
    if (strlen(s) != json_string_length(value) || has_control_chars(s)) {
        v_fail(v, path, "must not contain control characters");
        return NULL;
    }
    size_t chars = utf8_chars(s);
    if (chars == 0 || chars > max_chars) {
        v_fail(v, path, arena_sprintf(v->arena, "must be 1 to %zu characters", max_chars));
        return NULL;
    }
    return s;
}

/* Zone names are paths below the tz database; keep them to the characters IANA uses and never
 * let one climb out of the directory. */
static bool timezone_name_well_formed(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > 64 || name[0] == '/' || name[0] == '.' || strstr(name, ".."))
        return false;
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("/_+-", *p))
            return false;
    static const char *const not_zones[] = {"posix/", "right/", "posixrules", "localtime",
                                            "Factory", NULL};
    for (const char *const *n = not_zones; *n; n++)
        if (strncmp(name, *n, strlen(*n)) == 0)
            return false;
    return true;
}

bool v_is_timezone(const char *name)
{
    if (!timezone_name_well_formed(name))
        return false;
    const char *dir = getenv("TZDIR");
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir && *dir ? dir : "/usr/share/zoneinfo", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    struct stat st;
    char magic[4];
    bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
              read(fd, magic, sizeof(magic)) == (ssize_t)sizeof(magic) &&
              memcmp(magic, "TZif", 4) == 0;
    close(fd);
    return ok;
}

/* Active ISO 4217 codes (funds, metals and testing codes excluded), sorted for bsearch. */
static const char currencies[][4] = {
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VED", "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW",
    "ZWG",
};

static int compare_code(const void *a, const void *b)
{
    return strcmp(a, b);
}

bool v_is_currency(const char *code)
{
    if (strlen(code) != 3)
        return false;
    return bsearch(code, currencies, sizeof(currencies) / sizeof(currencies[0]),
                   sizeof(currencies[0]), compare_code) != NULL;
}
