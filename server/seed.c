#include "seed.h"

#include "db/deliveries.h"
#include "db/ingest.h"
#include "db/merchants.h"
#include "db/pool.h"
#include "handlers/order_json.h"
#include "server/alloc.h"
#include "server/arena.h"
#include "server/json.h"
#include "server/log.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    SEED_CHUNK = 1000,
    DELIVERY_HISTORY_S = 2 * 86400, /* delivery orders of the last two days get courier events */
};

struct seed_options {
    unsigned long long seed;
    int days;
    int orders_per_day; /* per store, on an average day */
};

/* splitmix64: small, fast and the same on every machine, so a seed gives the same data. */
static unsigned long long next_random(unsigned long long *state)
{
    unsigned long long z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int random_below(unsigned long long *state, int n)
{
    return (int)(next_random(state) % (unsigned long long)n);
}

struct menu_item {
    const char *sku, *name;
    int price_cents, weight;
};

struct demo_merchant {
    int64_t id;
    const char *name, *timezone, *currency;
    int utc_offset_h; /* standard offset: peaks land at local lunch and dinner time */
    int stores;
    const struct menu_item *menu;
    size_t menu_len;
};

static const struct menu_item pizza_menu[] = {
    {"PIZ-MARG-M", "Margherita M", 950, 30}, {"PIZ-MARG-L", "Margherita L", 1150, 20},
    {"PIZ-DIAV-L", "Diavola L", 1350, 15},  {"PIZ-4FOR-L", "Quattro Formaggi L", 1450, 10},
    {"CAL-RIC", "Calzone ricotta", 1250, 8}, {"BEV-COLA", "Cola 33cl", 250, 35},
    {"BEV-BIRRA", "Birra Moretti", 350, 20}, {"DES-TIRA", "Tiramisu", 550, 12},
};

static const struct menu_item burger_menu[] = {
    {"BUR-CLASSIC", "Classic burger", 899, 30}, {"BUR-CHEESE", "Cheeseburger", 999, 25},
    {"BUR-VEGGIE", "Veggie burger", 949, 12},   {"SID-FRIES", "Fries", 349, 40},
    {"SID-RINGS", "Onion rings", 399, 15},      {"BEV-SHAKE", "Milkshake", 499, 18},
    {"BEV-SODA", "Soda", 199, 35},
};

static const struct menu_item curry_menu[] = {
    {"CUR-BUTTER", "Butter chicken", 32000, 30}, {"CUR-PANEER", "Paneer tikka", 28000, 20},
    {"RIC-BIRY", "Chicken biryani", 30000, 25},  {"BRD-NAAN", "Garlic naan", 6000, 40},
    {"BEV-LASSI", "Mango lassi", 9000, 20},
};

#define MENU(m) m, sizeof(m) / sizeof(m[0])
static const struct demo_merchant merchants[] = {
    {1, "Pizzeria Napoli", "Europe/Madrid", "EUR", 1, 3, MENU(pizza_menu)},
    {2, "Brooklyn Burgers", "America/New_York", "USD", -5, 2, MENU(burger_menu)},
    {3, "Kathmandu Curry House", "Asia/Kathmandu", "NPR", 6, 2, MENU(curry_menu)},
};

/* How busy each local hour is, in relative weight: lunch and dinner peaks. */
static const int hour_weight[24] = {0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 3, 6,
                                    14, 16, 10, 4, 3, 4, 8, 14, 18, 15, 8, 3};

static int pick_weighted(unsigned long long *rng, const int *weights, size_t n, size_t stride)
{
    int total = 0;
    for (size_t i = 0; i < n; i++)
        total += *(const int *)((const char *)weights + i * stride);
    int r = random_below(rng, total);
    for (size_t i = 0; i < n; i++) {
        r -= *(const int *)((const char *)weights + i * stride);
        if (r < 0)
            return (int)i;
    }
    return (int)n - 1;
}

static json_t *demo_items(unsigned long long *rng, const struct demo_merchant *m, int64_t *gross)
{
    json_t *items = json_array();
    int lines = 1 + random_below(rng, 4);
    *gross = 0;
    for (int i = 0; i < lines; i++) {
        const struct menu_item *it =
            &m->menu[pick_weighted(rng, &m->menu[0].weight, m->menu_len, sizeof(*m->menu))];
        int qty = 1 + (random_below(rng, 10) == 0);
        *gross += (int64_t)qty * it->price_cents;
        json_array_append_new(items, json_pack("{s:s, s:s, s:i, s:i}", "sku", it->sku, "name",
                                               it->name, "quantity", qty, "unit_price_cents",
                                               it->price_cents));
    }
    return items;
}

/* One realistic order of merchant m placed at placed_s (UTC seconds). */
static json_t *demo_order(unsigned long long *rng, const struct demo_merchant *m, int store,
                          time_t placed_s, long serial)
{
    static const char *const promos[] = {"2X1TUESDAY", "WELCOME10", "LUNCH5"};
    int64_t gross;
    json_t *items = demo_items(rng, m, &gross);
    bool online = random_below(rng, 100) < 55;
    const char *fulfillment = online ? (random_below(rng, 100) < 70 ? "delivery" : "pickup")
                                     : (random_below(rng, 100) < 60 ? "dine_in" : "pickup");
    bool promo = random_below(rng, 100) < 12;
    int64_t discount = promo ? gross / 10 : 0;
    char placed[32], order_id[64];
    struct tm tm;
    gmtime_r(&placed_s, &tm);
    strftime(placed, sizeof(placed), "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(order_id, sizeof(order_id), "%s-%lld-%06ld", online ? "web" : "pos",
             (long long)m->id, serial);
    json_t *o = json_pack("{s:s, s:i, s:s, s:s, s:s, s:s, s:o, s:I, s:I}", "order_id", order_id,
                          "store_id", 100 * (int)m->id + store, "channel",
                          online ? "online" : "pos", "fulfillment", fulfillment, "placed_at",
                          placed, "currency", m->currency, "items", items, "discount_cents",
                          (json_int_t)discount, "tax_cents", (json_int_t)((gross - discount) / 10));
    if (promo)
        json_object_set_new(o, "promo_code", json_string(promos[random_below(rng, 3)]));
    return o;
}

/* Couriers' events for a recent delivery order: assigned, picked up, then delivered (or, now
 * and then, failed), minutes after it was placed; derived from the order id, so repeatable. */
static bool seed_delivery_events(struct db *db, const struct db_order *o)
{
    unsigned long long rng = 0;
    for (const char *p = o->order_id; *p; p++)
        rng = rng * 131 + (unsigned char)*p;
    static const char *const providers[] = {"glovo", "ubereats", "deliveroo"};
    const char *provider = providers[random_below(&rng, 3)];
    bool fails = random_below(&rng, 100) < 5;
    int64_t minute = 60 * 1000000LL, t = o->placed_at_us;
    const struct {
        enum delivery_status status;
        int64_t after;
    } steps[] = {{DELIVERY_ASSIGNED, 2 + random_below(&rng, 4)},
                 {DELIVERY_PICKED_UP, 12 + random_below(&rng, 10)},
                 {fails ? DELIVERY_FAILED : DELIVERY_DELIVERED, 28 + random_below(&rng, 25)}};
    int64_t now = (int64_t)time(NULL) * 1000000;
    bool ok = true;
    for (size_t k = 0; k < 3 && ok && t + steps[k].after * minute <= now; k++) {
        struct arena *a = arena_new();
        struct db_delivery_event e = {.event_id = arena_sprintf(a, "%s-%zu", o->order_id, k),
                                      .provider = provider,
                                      .order_id = o->order_id,
                                      .status = steps[k].status,
                                      .occurred_at_us = t + steps[k].after * minute,
                                      .courier_ref = arena_sprintf(a, "courier-%d",
                                                                   random_below(&rng, 40))};
        enum db_delivery_outcome outcome;
        struct db_delivery d;
        int64_t version;
        uint64_t lsn;
        ok = db_delivery_record(db, a, o->merchant_id, &e, &outcome, &d, &version, &lsn) == DB_OK;
        arena_free(a);
    }
    return ok;
}

/* Stores the orders gathered so far in one ingest call; false when the database fails. */
static bool flush_orders(struct db *db, struct db_order **orders, size_t *n, long *stored)
{
    if (*n == 0)
        return true;
    enum db_ingest_result *results = xcalloc(*n, sizeof(*results));
    struct db_ingest_commit commit = {0};
    struct db_conn *c = db_acquire_primary(db);
    bool ok = c != NULL;
    if (c) {
        db_ingest(db, c, orders, *n, results, &commit);
        db_release(c);
    }
    int64_t recent = ((int64_t)time(NULL) - DELIVERY_HISTORY_S) * 1000000;
    for (size_t i = 0; i < *n && ok; i++) {
        ok = results[i] == INGEST_INSERTED || results[i] == INGEST_DUPLICATE;
        *stored += results[i] == INGEST_INSERTED;
        if (ok && results[i] == INGEST_INSERTED && orders[i]->placed_at_us >= recent &&
            orders[i]->fulfillment == FULFILLMENT_DELIVERY)
            ok = seed_delivery_events(db, orders[i]);
    }
    db_ingest_commit_free(&commit);
    free(results);
    *n = 0;
    return ok;
}

static bool put_merchant(struct db *db, const struct demo_merchant *dm)
{
    struct arena *a = arena_new();
    struct db_merchant in = {.merchant_id = dm->id, .name = dm->name, .timezone = dm->timezone,
                             .currency = dm->currency},
                       out;
    bool created;
    enum db_status st = db_merchant_put(db, a, &in, &out, &created);
    arena_free(a);
    return st == DB_OK;
}

/* Orders of one merchant for the last opt->days days, ending now. */
static bool seed_merchant(struct db *db, const struct demo_merchant *m,
                          const struct seed_options *opt, long *stored)
{
    unsigned long long rng = opt->seed * 1000003ull + (unsigned long long)m->id;
    time_t now = time(NULL), day0 = now - (time_t)opt->days * 86400;
    day0 -= day0 % 86400;
    struct arena *a = arena_new();
    struct db_order **batch = xmalloc(SEED_CHUNK * sizeof(*batch));
    size_t n = 0;
    long serial = 0;
    bool ok = true;
    for (int d = 0; d < opt->days && ok; d++) {
        int weekend = ((day0 / 86400 + d + 4) % 7) >= 5; /* 1970-01-01 was a Thursday */
        for (int s = 1; s <= m->stores && ok; s++) {
            int count = opt->orders_per_day * (weekend ? 13 : 10) / 10;
            for (int k = 0; k < count && ok; k++) {
                int hour = pick_weighted(&rng, hour_weight, 24, sizeof(int));
                time_t placed = day0 + (time_t)d * 86400 + (hour - m->utc_offset_h) * 3600 +
                                random_below(&rng, 3600);
                if (placed > now)
                    continue;
                json_t *j = demo_order(&rng, m, s, placed, ++serial);
                struct db_order *o = arena_alloc(a, sizeof(*o));
                struct v_errors v = {.arena = a};
                struct order_rules rules =
                    order_rules_for(m->id, m->currency, (int64_t)now * 1000000, 0);
                if (order_from_json(&v, j, "", &rules, o))
                    batch[n++] = o;
                json_decref(v.list);
                json_arena_own(a, j); /* o points into j until the chunk is stored */
                if (n == SEED_CHUNK) {
                    ok = flush_orders(db, batch, &n, stored);
                    arena_free(a);
                    a = arena_new();
                }
            }
        }
    }
    ok = ok && flush_orders(db, batch, &n, stored);
    free(batch);
    arena_free(a);
    return ok;
}

static bool parse_seed_options(int argc, char **argv, struct seed_options *opt)
{
    static const struct option opts[] = {{"seed", required_argument, NULL, 's'},
                                         {"days", required_argument, NULL, 'd'},
                                         {"orders-per-day", required_argument, NULL, 'o'},
                                         {NULL, 0, NULL, 0}};
    *opt = (struct seed_options){.seed = 42, .days = 42, .orders_per_day = 60};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        long v = optarg ? strtol(optarg, NULL, 10) : -1;
        if (c == 's' && v >= 0)
            opt->seed = (unsigned long long)v;
        else if (c == 'd' && v >= 1 && v <= 400)
            opt->days = (int)v;
        else if (c == 'o' && v >= 1 && v <= 100000)
            opt->orders_per_day = (int)v;
        else
            return false;
    }
    return true;
}

int seed_main(const struct config *cfg, int argc, char **argv)
{
    struct seed_options opt;
    if (!parse_seed_options(argc, argv, &opt)) {
        fprintf(stderr, "cangrejo seed: bad option (see cangrejo help)\n");
        return 2;
    }
    char err[256];
    struct db_options dbo = {cfg->database_url, "", 1, 1, 30000, (unsigned)cfg->db_connect_timeout,
                             600000, 0};
    struct db *db = db_open(&dbo, err, sizeof(err));
    if (!db) {
        fprintf(stderr, "cangrejo seed: %s\n", err);
        return 2;
    }
    long stored = 0;
    bool ok = true;
    for (size_t i = 0; i < sizeof(merchants) / sizeof(merchants[0]) && ok; i++)
        ok = put_merchant(db, &merchants[i]) && seed_merchant(db, &merchants[i], &opt, &stored);
    db_close(db);
    if (!ok) {
        fprintf(stderr, "cangrejo seed: the database refused the demo data (see the log)\n");
        return 1;
    }
    log_info("seeded %zu merchants: %ld new orders over %d days (seed %llu)",
             sizeof(merchants) / sizeof(merchants[0]), stored, opt.days, opt.seed);
    return 0;
}
