#include "allocation.h"

#include "server/alloc.h"

#include <stdlib.h>

/* Exact products of two int64 values need 127 bits. */
__extension__ typedef __int128 wide;

struct remainder {
    int64_t value; /* (net * gross) mod sum(gross): the fractional part, times sum(gross) */
    size_t item;
};

/* Largest remainder first; the earlier item first on a tie. */
static int compare_remainders(const void *pa, const void *pb)
{
    const struct remainder *a = pa, *b = pb;
    if (a->value != b->value)
        return a->value > b->value ? -1 : 1;
    return (a->item > b->item) - (a->item < b->item);
}

static bool gross_sum(const int64_t *gross, size_t n, int64_t *sum)
{
    *sum = 0;
    for (size_t i = 0; i < n; i++)
        if (gross[i] < 0 || __builtin_add_overflow(*sum, gross[i], sum))
            return false;
    return true;
}

static void zero(int64_t *share, size_t n)
{
    for (size_t i = 0; i < n; i++)
        share[i] = 0;
}

bool db_allocate_net(int64_t net, const int64_t *gross, size_t n, int64_t *share)
{
    int64_t total;
    zero(share, n);
    if (net < 0 || !gross_sum(gross, n, &total))
        return false;
    if (total == 0)
        return net == 0;
    struct remainder *rem = xmalloc((n ? n : 1) * sizeof(*rem));
    int64_t left = net;
    for (size_t i = 0; i < n; i++) {
        wide exact = (wide)net * gross[i];   /* < 2^126: no overflow */
        share[i] = (int64_t)(exact / total); /* <= net */
        rem[i] = (struct remainder){(int64_t)(exact % total), i};
        left -= share[i];
    }
    /* The remainders add up to left * total, each below total: left < n items get a cent. */
    qsort(rem, n, sizeof(*rem), compare_remainders);
    for (size_t k = 0; k < n && left > 0; k++, left--)
        share[rem[k].item]++;
    free(rem);
    return true;
}
