#include "problem.h"

struct problem_info {
    unsigned status;
    const char *slug, *title, *type;
};

static const struct problem_info problems[] = {
#define PROBLEM_INFO(name, st, sl, ti) {st, sl, ti, PROBLEM_TYPE_BASE sl},
    PROBLEM_MAP(PROBLEM_INFO)
#undef PROBLEM_INFO
};

unsigned problem_status(enum problem p)
{
    return problems[p].status;
}

const char *problem_slug(enum problem p)
{
    return problems[p].slug;
}

const char *problem_title(enum problem p)
{
    return problems[p].title;
}

json_t *problem_body(enum problem p, const char *detail, const char *instance, json_t *errors)
{
    json_t *body = json_object();
    json_object_set_new(body, "type", json_string(problems[p].type));
    json_object_set_new(body, "title", json_string(problems[p].title));
    json_object_set_new(body, "status", json_integer(problems[p].status));
    if (detail)
        json_object_set_new(body, "detail", json_string(detail));
    if (instance)
        json_object_set_new(body, "instance", json_string(instance));
    if (errors)
        json_object_set_new(body, "errors", errors);
    return body;
}

void problem_add_field_error(json_t **errors, const char *field, const char *message)
{
    if (!*errors)
        *errors = json_array();
    json_array_append_new(*errors, json_pack("{s:s, s:s}", "field", field, "message", message));
}
