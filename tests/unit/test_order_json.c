#include "handlers/order_json.h"
#include "server/arena.h"
#include "tests/unit/check.h"

#include <time.h>

static int64_t utc_us(int y, int m, int d)
{
    struct tm tm = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d};
    return (int64_t)timegm(&tm) * 1000000;
}

static void test_retention_window_starts_on_a_month(void)
{
    int64_t now = utc_us(2026, 11, 21) + 3600LL * 1000000;
    CHECK_INT(order_rules_for(1, "EUR", now, 0).oldest_us, 0);
    CHECK_INT(order_rules_for(1, "EUR", now, 1).oldest_us, utc_us(2026, 10, 1));
    CHECK_INT(order_rules_for(1, "EUR", now, 12).oldest_us, utc_us(2025, 11, 1));
    CHECK_INT(order_rules_for(1, "EUR", now, 11).oldest_us, utc_us(2025, 12, 1));
    CHECK_INT(order_rules_for(1, "EUR", utc_us(2026, 1, 1), 1).oldest_us, utc_us(2025, 12, 1));
}

static bool accepts(const struct order_rules *rules, const char *placed_at)
{
    struct arena *a = arena_new();
    struct v_errors v = {.arena = a};
    json_t *o = json_pack("{s:s, s:i, s:s, s:s, s:s, s:s, s:[{s:s, s:s, s:i, s:i}]}", "order_id",
                          "o-1", "store_id", 1, "channel", "pos", "fulfillment", "pickup",
                          "placed_at", placed_at, "currency", "EUR", "items", "sku", "A", "name",
                          "A", "quantity", 1, "unit_price_cents", 100);
    struct db_order out;
    bool ok = order_from_json(&v, o, "", rules, &out);
    json_decref(v.list);
    json_decref(o);
    arena_free(a);
    return ok;
}

static void test_orders_older_than_the_retention_are_refused(void)
{
    struct order_rules r = order_rules_for(7, "EUR", utc_us(2026, 11, 21), 12);
    CHECK(accepts(&r, "2025-11-01T00:00:00Z"));
    CHECK(!accepts(&r, "2025-10-31T23:59:59Z"));
    CHECK(!accepts(&r, "2025-11-01T00:30:00+01:00")); /* 2025-10-31T23:30Z */
    struct order_rules forever = order_rules_for(7, "EUR", utc_us(2026, 11, 21), 0);
    CHECK(accepts(&forever, "1999-01-01T00:00:00Z"));
    CHECK(!accepts(&forever, "2026-11-21T00:06:00Z")); /* more than 5 minutes ahead */
    CHECK(accepts(&forever, "2026-11-21T00:04:00Z"));
}

int main(void)
{
    TEST(test_retention_window_starts_on_a_month);
    TEST(test_orders_older_than_the_retention_are_refused);
    return check_done();
}
