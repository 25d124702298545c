#include "server/router.h"
#include "tests/unit/check.h"

#include <string.h>

static void h_any(struct srv_req *req)
{
}

static const struct srv_route routes[] = {
    {SRV_GET, "/livez", false, 0, SRV_BODY_NONE, 0, h_any},
    {SRV_PUT, "/v1/merchants/{merchant_id}", true, 0, SRV_BODY_JSON, 1024, h_any},
    {SRV_GET, "/v1/merchants/{merchant_id}", true, 0, SRV_BODY_NONE, 0, h_any},
    {SRV_POST, "/v1/merchants/{merchant_id}/orders", true, 0, SRV_BODY_JSON, 1024, h_any},
    {SRV_GET, "/v1/merchants/{merchant_id}/orders/{order_id}", true, 0, SRV_BODY_NONE, 0, h_any},
};

static struct router *make_router(void)
{
    char err[128];
    return router_new(routes, sizeof(routes) / sizeof(routes[0]), err, sizeof(err));
}

static void match(struct router *r, enum srv_method m, const char *path, struct router_match *out)
{
    router_match(r, m, path, strlen(path), out);
}

static void test_literal_route(void)
{
    struct router *r = make_router();
    struct router_match m;
    match(r, SRV_GET, "/livez", &m);
    CHECK(m.route == &routes[0]);
    CHECK_INT(m.n_params, 0);
    router_free(r);
}

static void test_params_are_extracted(void)
{
    struct router *r = make_router();
    struct router_match m;
    match(r, SRV_GET, "/v1/merchants/42/orders/web-1", &m);
    CHECK(m.route == &routes[4]);
    CHECK_INT(m.route_index, 4);
    CHECK_INT(m.n_params, 2);
    CHECK(m.params[0].name_len == 11 && strncmp(m.params[0].name, "merchant_id", 11) == 0);
    CHECK(m.params[0].len == 2 && strncmp(m.params[0].value, "42", 2) == 0);
    CHECK(m.params[1].name_len == 8 && strncmp(m.params[1].name, "order_id", 8) == 0);
    CHECK(m.params[1].len == 5 && strncmp(m.params[1].value, "web-1", 5) == 0);
    router_free(r);
}

static void test_method_selects_route(void)
{
    struct router *r = make_router();
    struct router_match m;
    match(r, SRV_PUT, "/v1/merchants/7", &m);
    CHECK(m.route == &routes[1]);
    match(r, SRV_GET, "/v1/merchants/7", &m);
    CHECK(m.route == &routes[2]);
    match(r, SRV_HEAD, "/v1/merchants/7", &m);
    CHECK(m.route == &routes[2]); /* HEAD is served by the GET route */
    router_free(r);
}

static void test_not_found(void)
{
    struct router *r = make_router();
    struct router_match m;
    const char *paths[] = {"/", "", "/livez/", "/livez/x", "/v1/merchants", "/v1/merchants/",
                           "/v1/merchants//orders", "/v1/merchants/1/orders/", "/LIVEZ",
                           "/v1/merchants/1/orders/2/3"};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        match(r, SRV_GET, paths[i], &m);
        CHECK(m.route == NULL);
        CHECK_INT(m.allowed, 0);
    }
    router_free(r);
}

static void test_method_not_allowed_lists_allow(void)
{
    struct router *r = make_router();
    struct router_match m;
    match(r, SRV_DELETE, "/v1/merchants/9", &m);
    CHECK(m.route == NULL);
    CHECK_INT(m.allowed, SRV_GET | SRV_HEAD | SRV_PUT);
    char allow[64];
    router_format_allow(m.allowed, allow, sizeof(allow));
    CHECK_STR(allow, "GET, HEAD, PUT");
    router_free(r);
}

static void test_bad_templates_are_refused(void)
{
    char err[128];
    const struct srv_route bad[] = {{SRV_GET, "/a/{b", false, 0, 0, 0, h_any}};
    CHECK(router_new(bad, 1, err, sizeof(err)) == NULL);
    const struct srv_route trailing[] = {{SRV_GET, "/a/", false, 0, 0, 0, h_any}};
    CHECK(router_new(trailing, 1, err, sizeof(err)) == NULL);
    const struct srv_route relative[] = {{SRV_GET, "a", false, 0, 0, 0, h_any}};
    CHECK(router_new(relative, 1, err, sizeof(err)) == NULL);
}

static void test_method_names(void)
{
    CHECK_INT(router_parse_method("GET"), SRV_GET);
    CHECK_INT(router_parse_method("DELETE"), SRV_DELETE);
    CHECK_INT(router_parse_method("get"), 0);
    CHECK_INT(router_parse_method("BREW"), 0);
    CHECK_STR(router_method_name(SRV_PATCH), "PATCH");
}

int main(void)
{
    TEST(test_literal_route);
    TEST(test_params_are_extracted);
    TEST(test_method_selects_route);
    TEST(test_not_found);
    TEST(test_method_not_allowed_lists_allow);
    TEST(test_bad_templates_are_refused);
    TEST(test_method_names);
    return check_done();
}
