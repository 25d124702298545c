#include "server/problem.h"
#include "tests/unit/check.h"

#include <stdlib.h>

static void test_table_statuses(void)
{
    CHECK_INT(problem_status(PROBLEM_VALIDATION), 400);
    CHECK_INT(problem_status(PROBLEM_UNAUTHORIZED), 401);
    CHECK_INT(problem_status(PROBLEM_FORBIDDEN), 403);
    CHECK_INT(problem_status(PROBLEM_NOT_FOUND), 404);
    CHECK_INT(problem_status(PROBLEM_METHOD_NOT_ALLOWED), 405);
    CHECK_INT(problem_status(PROBLEM_PAYLOAD_TOO_LARGE), 413);
    CHECK_INT(problem_status(PROBLEM_UNSUPPORTED_MEDIA_TYPE), 415);
    CHECK_INT(problem_status(PROBLEM_IDEMPOTENCY_MISMATCH), 422);
    CHECK_INT(problem_status(PROBLEM_HEADERS_TOO_LARGE), 431);
    CHECK_INT(problem_status(PROBLEM_UNAVAILABLE), 503);
    CHECK_STR(problem_slug(PROBLEM_NOT_FOUND), "not-found");
}

static void test_every_problem_is_complete(void)
{
    for (int p = 0; p < PROBLEM_COUNT_; p++) {
        CHECK(problem_status((enum problem)p) >= 400 && problem_status((enum problem)p) < 600);
        CHECK(problem_slug((enum problem)p)[0] != '\0');
        CHECK(problem_title((enum problem)p)[0] != '\0');
    }
}

static void test_body_shape(void)
{
    json_t *errors = NULL;
    problem_add_field_error(&errors, "items[2].quantity", "must be > 0");
    json_t *body = problem_body(PROBLEM_VALIDATION, "1 field is invalid", "req-1", errors);
    CHECK_STR(json_string_value(json_object_get(body, "type")),
              "https://cangrejo.dev/problems/validation-error");
    CHECK_INT(json_integer_value(json_object_get(body, "status")), 400);
    CHECK_STR(json_string_value(json_object_get(body, "instance")), "req-1");
    CHECK_STR(json_string_value(json_object_get(body, "detail")), "1 field is invalid");
    json_t *first = json_array_get(json_object_get(body, "errors"), 0);
    CHECK_STR(json_string_value(json_object_get(first, "field")), "items[2].quantity");
    CHECK_STR(json_string_value(json_object_get(first, "message")), "must be > 0");
    json_decref(body);
}

static void test_body_without_optional_members(void)
{
    json_t *body = problem_body(PROBLEM_NOT_FOUND, NULL, NULL, NULL);
    CHECK(json_object_get(body, "detail") == NULL);
    CHECK(json_object_get(body, "errors") == NULL);
    CHECK(json_object_get(body, "instance") == NULL);
    CHECK_STR(json_string_value(json_object_get(body, "title")), "The resource does not exist");
    json_decref(body);
}

int main(void)
{
    TEST(test_table_statuses);
    TEST(test_every_problem_is_complete);
    TEST(test_body_shape);
    TEST(test_body_without_optional_members);
    return check_done();
}
