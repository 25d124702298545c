#include "db/allocation.h"
#include "tests/unit/check.h"

#include <stdbool.h>
#include <stdint.h>

enum { MAX_ITEMS = 256 };

__extension__ typedef __int128 wide;

static bool shares_are(int64_t net, const int64_t *gross, size_t n, const int64_t *want)
{
    int64_t got[MAX_ITEMS];
    if (!db_allocate_net(net, gross, n, got))
        return false;
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i]) {
            printf("# item %zu: got %lld, want %lld\n", i, (long long)got[i], (long long)want[i]);
            return false;
        }
    return true;
}

static void test_examples(void)
{
    CHECK(shares_are(1000, (int64_t[]){1, 1, 1}, 3, (int64_t[]){334, 333, 333}));
    CHECK(shares_are(100, (int64_t[]){1, 2}, 2, (int64_t[]){33, 67}));    /* 33.33, 66.67 */
    CHECK(shares_are(2, (int64_t[]){1, 1, 1}, 3, (int64_t[]){1, 1, 0}));  /* ties: earlier first */
    CHECK(shares_are(1, (int64_t[]){5, 5, 10}, 3, (int64_t[]){0, 0, 1})); /* .25 .25 .5 */
    CHECK(shares_are(2, (int64_t[]){5, 5, 10}, 3, (int64_t[]){1, 0, 1})); /* .5 .5 1 */
    CHECK(shares_are(2000, (int64_t[]){2300}, 1, (int64_t[]){2000}));
    CHECK(shares_are(2000, (int64_t[]){2300, 0}, 2, (int64_t[]){2000, 0})); /* a free item */
    CHECK(shares_are(0, (int64_t[]){300, 700}, 2, (int64_t[]){0, 0}));
    CHECK(shares_are(1000, (int64_t[]){300, 700}, 2, (int64_t[]){300, 700})); /* no discount */
    /* API.md's example: 2 x 1150 with 300 off. */
    CHECK(shares_are(2000, (int64_t[]){2300}, 1, (int64_t[]){2000}));
    /* 1150 and 250 with 140 off: 1035 and 225 exactly. */
    CHECK(shares_are(1260, (int64_t[]){1150, 250}, 2, (int64_t[]){1035, 225}));
    /* 999 over 3 x 1/3 and a zero: 333 each, nothing left. */
    CHECK(shares_are(999, (int64_t[]){1, 0, 1, 1}, 4, (int64_t[]){333, 0, 333, 333}));
}

static void test_large_amounts_are_exact(void)
{
    const int64_t e15 = 1000000000000000LL; /* the API's largest amount */
    /* net * gross needs ~100 bits here. */
    CHECK(shares_are(e15 - 1, (int64_t[]){e15 - 1, 1}, 2, (int64_t[]){e15 - 2, 1}));
    CHECK(shares_are(e15, (int64_t[]){e15 / 3, e15 / 3, e15 - 2 * (e15 / 3)}, 3,
                     (int64_t[]){e15 / 3, e15 / 3, e15 - 2 * (e15 / 3)}));
    /* 7 items of 10^15 / 7 (rounded) with 10^15 - 3 net: sums exactly. */
    int64_t gross[7], share[7];
    for (int i = 0; i < 7; i++)
        gross[i] = e15 / 7;
    CHECK(db_allocate_net(e15 / 7 * 7 - 3, gross, 7, share));
    int64_t sum = 0;
    for (int i = 0; i < 7; i++)
        sum += share[i];
    CHECK_INT(sum, e15 / 7 * 7 - 3);
    CHECK_INT(share[0], e15 / 7 - 0); /* floor is e15/7 - 1 for all; 4 leftover cents */
    CHECK_INT(share[3], e15 / 7 - 0);
    CHECK_INT(share[4], e15 / 7 - 1);
    CHECK_INT(share[6], e15 / 7 - 1);
    /* The full int64 range: exact in 128 bits. */
    CHECK(shares_are(INT64_MAX, (int64_t[]){INT64_MAX - 1, 1}, 2, (int64_t[]){INT64_MAX - 1, 1}));
    CHECK(shares_are(INT64_MAX / 2, (int64_t[]){INT64_MAX / 2, INT64_MAX / 2}, 2,
                     (int64_t[]){INT64_MAX / 4 + 1, INT64_MAX / 4}));
}

static void test_refusals(void)
{
    int64_t share[3] = {7, 7, 7};
    CHECK(!db_allocate_net(-1, (int64_t[]){1, 2}, 2, share));
    CHECK(share[0] == 0 && share[1] == 0);
    CHECK(!db_allocate_net(5, (int64_t[]){-1, 2}, 2, share));
    CHECK(!db_allocate_net(5, (int64_t[]){INT64_MAX, 1}, 2, share)); /* the sum overflows */
    CHECK(!db_allocate_net(5, (int64_t[]){0, 0}, 2, share));         /* nothing to spread over */
    CHECK(!db_allocate_net(5, NULL, 0, share));
    CHECK(db_allocate_net(0, (int64_t[]){0, 0}, 2, share));
    CHECK(share[0] == 0 && share[1] == 0);
    CHECK(db_allocate_net(0, NULL, 0, share));
}

/* splitmix64, for reproducible cases. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The rule written another way: item i gets floor(exact) + 1 exactly when fewer than
 * `leftover` items beat it (a larger fraction, or the same fraction and earlier). Fractions
 * a/total and b/total compare as a and b. */
static void reference(int64_t net, const int64_t *gross, size_t n, int64_t *share)
{
    wide total = 0, floors = 0;
    for (size_t i = 0; i < n; i++)
        total += gross[i];
    wide frac[MAX_ITEMS];
    for (size_t i = 0; i < n; i++) {
        wide exact = (wide)net * gross[i];
        share[i] = (int64_t)(exact / total);
        frac[i] = exact - (wide)share[i] * total;
        floors += share[i];
    }
    wide leftover = net - floors;
    for (size_t i = 0; i < n; i++) {
        wide beaten_by = 0;
        for (size_t j = 0; j < n; j++)
            beaten_by += frac[j] > frac[i] || (frac[j] == frac[i] && j < i);
        share[i] += beaten_by < leftover;
    }
}

static void test_random_orders_match_the_reference(void)
{
    uint64_t rng = 20261121;
    for (int round = 0; round < 20000; round++) {
        size_t n = 1 + next_random(&rng) % (round % 10 == 0 ? 200 : 6);
        int64_t gross[MAX_ITEMS], want[MAX_ITEMS], got[MAX_ITEMS], total = 0;
        uint64_t scale = round % 3 == 0 ? 1000000000000ull : round % 3 == 1 ? 5000 : 4;
        for (size_t i = 0; i < n; i++) {
            gross[i] = (int64_t)(next_random(&rng) % scale) * (next_random(&rng) % 4 != 0);
            total += gross[i];
        }
        if (total == 0)
            continue;
        int64_t net = (int64_t)(next_random(&rng) % ((uint64_t)total + 1));
        reference(net, gross, n, want);
        if (!db_allocate_net(net, gross, n, got)) {
            CHECK(false);
            break;
        }
        int64_t sum = 0;
        bool same = true;
        for (size_t i = 0; i < n; i++) {
            sum += got[i];
            same = same && got[i] == want[i] && got[i] >= 0 && got[i] <= gross[i];
        }
        CHECK(same);
        CHECK_INT(sum, net);
        if (!same || sum != net) {
            printf("# round %d differs\n", round);
            break;
        }
    }
}

int main(void)
{
    TEST(test_examples);
    TEST(test_large_amounts_are_exact);
    TEST(test_refusals);
    TEST(test_random_orders_match_the_reference);
    return check_done();
}
