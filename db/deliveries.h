/* deliveries.h - delivery events of 3rd-party logistics providers and each order's current
 * delivery state. */
#ifndef CANGREJO_DB_DELIVERIES_H
#define CANGREJO_DB_DELIVERIES_H

#include "db/pool.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct arena;
struct db_delivery_delta;

enum delivery_status {
    DELIVERY_ASSIGNED,
    DELIVERY_PICKED_UP,
    DELIVERY_IN_TRANSIT,
    DELIVERY_DELIVERED, /* terminal from here on */
    DELIVERY_FAILED,
    DELIVERY_CANCELLED,
    DELIVERY_STATUS_COUNT_
};

struct db_delivery_event {
    const char *event_id, *provider, *order_id;
    enum delivery_status status;
    int64_t occurred_at_us;
    bool has_eta;
    int64_t eta_us;
    const char *courier_ref; /* NULL when none */
};

/* An order's delivery: the current state and every event, oldest occurred_at first. */
struct db_delivery {
    struct db_delivery_event current;
    struct db_delivery_event *events;
    size_t n_events;
};

/* What recording an event came to. */
enum db_delivery_outcome {
    DELIVERY_RECORDED,     /* new event (the state may or may not have moved) */
    DELIVERY_REPLAYED,     /* this provider's event_id was already recorded: nothing changed */
    DELIVERY_NO_ORDER,     /* no such order */
    DELIVERY_NOT_DELIVERY, /* the order's fulfillment is not delivery */
};

/* Records an event for merchant_id on the primary and reads the order's delivery back into
 * *out (arena-owned). On DELIVERY_RECORDED, *version is the merchant's new data version and
 * *lsn the primary's WAL position after the commit. */
enum db_status db_delivery_record(struct db *db, struct arena *a, int64_t merchant_id,
                                  const struct db_delivery_event *e,
                                  enum db_delivery_outcome *outcome, struct db_delivery *out,
                                  int64_t *version, uint64_t *lsn);
/* Reads an order's current delivery state on c inside the caller's transaction, with the
 * order locked (DB_DELIVERY_ORDER, or a cancellation's update): *has is false when it has no
 * event yet. */
enum db_status db_delivery_state_current(struct db_conn *c, const char *merchant_id,
                                         const char *order_id, bool *has,
                                         enum delivery_status *status, int64_t *occurred_at_us);
/* Adds sign times what an order in this current state counts in a delivery rollup delta:
 * delivered (and occurred_at_us - placed_at_us in delivered_us) or failed; nothing otherwise. */
void db_delivery_count_state(struct db_delivery_delta *d, enum delivery_status status,
                             int64_t occurred_at_us, int64_t placed_at_us, int sign);
/* Reads the deliveries of n orders in one query: out[i] is order_ids[i]'s, or NULL when it
 * has no event yet (arena-owned). */
enum db_status db_deliveries_get(struct db *db, struct arena *a, int64_t merchant_id,
                                 const char *const *order_ids, size_t n, uint64_t min_lsn,
                                 struct db_delivery **out, const char **role);

#endif
