/* validate.h - checks of request fields that collect {field, message} errors for a 400. */
#ifndef CANGREJO_VALIDATE_H
#define CANGREJO_VALIDATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

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
/* True for an IANA time zone name that the system's tz database knows. */
bool v_is_timezone(const char *name);
/* True for an active ISO 4217 currency code. */
bool v_is_currency(const char *code);

#endif
