/* validate.h - checks of request fields that collect {field, message} errors for a 400. */
#ifndef CANGREJO_VALIDATE_H
#define CANGREJO_VALIDATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct arena;

/* Collected validation errors of one request body. */
struct v_errors {
    struct arena *arena;
    json_t *list; /* array of {field, message}, NULL while empty */
};

/* Records an error for a field path such as "items[2].quantity". */
void v_fail(struct v_errors *v, const char *field, const char *message);
/* True when nothing failed. */
bool v_ok(const struct v_errors *v);
/* Fails every member of obj not named in the NULL-terminated list; prefix is the field path
 * of obj ("" at the top). */
void v_no_unknown_fields(struct v_errors *v, const json_t *obj, const char *prefix,
                         const char *const *known);
/* A required string member of 1..max_chars characters without control characters; NULL (and
 * an error) otherwise. */
const char *v_string(struct v_errors *v, const json_t *obj, const char *prefix, const char *key,
                     size_t max_chars);
/* Parses an RFC 3339 date-time with an explicit offset ("Z" or +hh:mm) into microseconds
 * since the epoch; false for anything else (no offset, bad calendar date, leap second). */
bool v_parse_timestamp(const char *s, int64_t *epoch_us);
/* Parses a calendar date YYYY-MM-DD. */
bool v_parse_date(const char *s, int *year, int *month, int *day);
/* Formats microseconds since the epoch as RFC 3339 in UTC with "Z" (milliseconds or
 * microseconds only when non-zero); out holds at least 32 bytes. */
void v_format_utc(int64_t epoch_us, char *out);
/* True for an IANA time zone name that the system's tz database knows. */
bool v_is_timezone(const char *name);
/* True for an active ISO 4217 currency code. */
bool v_is_currency(const char *code);

#endif
