#include "validate.h"

#include "server/arena.h"
#include "server/problem.h"

#include <ctype.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
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
    if (chars > 0 && strspn(s, " ") == strlen(s)) {
        v_fail(v, path, "must not be blank");
        return NULL;
    }
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
    /* PostgreSQL reads these as its fixed-offset abbreviations, not as the zone files (which
     * have summer time): the two would disagree half the year. */
    static const char *const ambiguous[] = {"CET", "EET", "MET", "WET", NULL};
    for (const char *const *n = ambiguous; *n; n++)
        if (strcmp(name, *n) == 0)
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

static bool leap_year(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int y, int m)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && leap_year(y) ? 29 : days[m - 1];
}

/* Reads exactly n digits. */
static bool read_digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return false;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return true;
}

static bool read_date(const char **p, int *y, int *m, int *d)
{
    return read_digits(p, 4, y) && *(*p)++ == '-' && read_digits(p, 2, m) && *(*p)++ == '-' &&
           read_digits(p, 2, d) && *m >= 1 && *m <= 12 && *d >= 1 && *d <= days_in_month(*y, *m);
}

bool v_parse_date(const char *s, int *year, int *month, int *day)
{
    return read_date(&s, year, month, day) && *s == '\0';
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (Howard Hinnant's). */
static int64_t days_from_civil(int y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static bool read_fraction(const char **p, int64_t *micros)
{
    *micros = 0;
    if (**p != '.')
        return true;
    (*p)++;
    int digits = 0;
    while (isdigit((unsigned char)**p)) {
        if (digits < 6)
            *micros = *micros * 10 + (**p - '0');
        digits++;
        (*p)++;
    }
    for (int i = digits; i < 6; i++)
        *micros *= 10;
    return digits > 0 && digits <= 9;
}

static bool read_offset(const char **p, int *offset_s)
{
    char c = **p;
    if (c == 'Z' || c == 'z') {
        (*p)++;
        *offset_s = 0;
        return true;
    }
    if (c != '+' && c != '-')
        return false;
    (*p)++;
    int oh, om;
    if (!read_digits(p, 2, &oh) || *(*p)++ != ':' || !read_digits(p, 2, &om) || oh > 23 ||
        om > 59)
        return false;
    *offset_s = (c == '-' ? -1 : 1) * (oh * 3600 + om * 60);
    return true;
}

/* An offset can move 0000-01-01 or 9999-12-31 out of the years that v_format_utc (and RFC 3339)
 * can write in UTC; such instants are refused rather than rendered wrong. */
static bool utc_year_has_four_digits(int64_t seconds)
{
    return seconds >= days_from_civil(0, 1, 1) * 86400 &&
           seconds < days_from_civil(10000, 1, 1) * 86400;
}

bool v_parse_timestamp(const char *s, int64_t *epoch_us)
{
    int y, mo, d, h, mi, sec, offset_s;
    int64_t micros;
    const char *p = s;
    if (!read_date(&p, &y, &mo, &d) || (*p != 'T' && *p != 't'))
        return false;
    p++;
    if (!read_digits(&p, 2, &h) || *p++ != ':' || !read_digits(&p, 2, &mi) || *p++ != ':' ||
        !read_digits(&p, 2, &sec) || h > 23 || mi > 59 || sec > 59)
        return false;
    if (!read_fraction(&p, &micros) || !read_offset(&p, &offset_s) || *p != '\0')
        return false;
    int64_t seconds = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset_s;
    if (!utc_year_has_four_digits(seconds))
        return false;
    *epoch_us = seconds * 1000000 + micros;
    return true;
}

void v_format_utc(int64_t epoch_us, char *out)
{
    int64_t seconds = epoch_us / 1000000, micros = epoch_us % 1000000;
    if (micros < 0) {
        micros += 1000000;
        seconds--;
    }
    time_t t = (time_t)seconds;
    struct tm tm;
    gmtime_r(&t, &tm);
    /* Not strftime's %Y, which writes the year 1 as "1": RFC 3339 wants four digits. */
    int n = snprintf(out, 32, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    if (micros == 0)
        snprintf(out + n, 32 - n, "Z");
    else if (micros % 1000 == 0)
        snprintf(out + n, 32 - n, ".%03dZ", (int)(micros / 1000));
    else
        snprintf(out + n, 32 - n, ".%06dZ", (int)micros);
}
