/* problem.h - the table of API errors and their RFC 9457 problem+json bodies. */
#ifndef CANGREJO_PROBLEM_H
#define CANGREJO_PROBLEM_H

#include <jansson.h>

#define PROBLEM_TYPE_BASE "https://cangrejo.dev/problems/"

/* name, HTTP status, slug (after PROBLEM_TYPE_BASE), title. */
#define PROBLEM_MAP(X)                                                                             \
    X(VALIDATION, 400, "validation-error", "The request is not valid")                             \
    X(MALFORMED_JSON, 400, "malformed-json", "The request body is not valid JSON")                 \
    X(BAD_REQUEST, 400, "bad-request", "The request is malformed")                                 \
    X(UNAUTHORIZED, 401, "unauthorized", "Authentication is required")                             \
    X(FORBIDDEN, 403, "forbidden", "The token does not grant access to this resource")             \
    X(NOT_FOUND, 404, "not-found", "The resource does not exist")                                  \
    X(METHOD_NOT_ALLOWED, 405, "method-not-allowed", "The method is not allowed here")             \
    X(CONFLICT, 409, "conflict", "The request conflicts with the stored state")                    \
    X(IN_PROGRESS, 409, "request-in-progress", "A request with this key is still running")         \
    X(PAYLOAD_TOO_LARGE, 413, "payload-too-large", "The request body is too large")                \
    X(UNSUPPORTED_MEDIA_TYPE, 415, "unsupported-media-type", "The content type is not supported")  \
    X(IDEMPOTENCY_MISMATCH, 422, "idempotency-key-reused",                                         \
      "The idempotency key was used with another request")                                         \
    X(RATE_LIMITED, 429, "rate-limited", "Too many requests")                                      \
    X(HEADERS_TOO_LARGE, 431, "headers-too-large", "The request headers are too large")            \
    X(INTERNAL, 500, "internal-error", "Internal server error")                                    \
    X(UNAVAILABLE, 503, "service-unavailable", "A service this request needs is unavailable")

enum problem {
#define PROBLEM_ENUM(name, status, slug, title) PROBLEM_##name,
    PROBLEM_MAP(PROBLEM_ENUM)
#undef PROBLEM_ENUM
        PROBLEM_COUNT_
};

/* HTTP status of a problem. */
unsigned problem_status(enum problem p);
/* Slug of a problem, the last segment of its "type" URI. */
const char *problem_slug(enum problem p);
/* Title of a problem. */
const char *problem_title(enum problem p);
/* Builds the problem+json object; detail may be NULL, errors (stolen) may be NULL. */
json_t *problem_body(enum problem p, const char *detail, const char *instance, json_t *errors);
/* Appends {"field", "message"} to a validation errors array (created when *errors is NULL). */
void problem_add_field_error(json_t **errors, const char *field, const char *message);

#endif
