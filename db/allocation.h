/* allocation.h - an order's net spread over its items pro rata to their gross by the
 * largest-remainder method (API.md, products), in exact integer arithmetic. */
#ifndef CANGREJO_DB_ALLOCATION_H
#define CANGREJO_DB_ALLOCATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Sets share[i] to item i's part of net: the floor of net * gross[i] / sum(gross), plus one
 * cent for each of the (net - sum of floors) items with the largest remainders, the earlier
 * item first on a tie, so that the shares add up to net exactly. With sum(gross) = 0 and
 * net = 0 every share is 0. False (every share 0) when net < 0, a gross is negative, the
 * gross sum exceeds INT64_MAX, or net > 0 with nothing to spread it over. */
bool db_allocate_net(int64_t net, const int64_t *gross, size_t n, int64_t *share);

#endif
