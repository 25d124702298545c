/* deliveries.h - the API's delivery object, shared by delivery events and order reads. */
#ifndef CANGREJO_HANDLERS_DELIVERIES_H
#define CANGREJO_HANDLERS_DELIVERIES_H

#include "db/deliveries.h"
#include "handlers/validate.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

/* {"status", "provider", "occurred_at", "eta", "courier_ref", "events": [...]}, or null. */
json_t *delivery_to_json(const struct db_delivery *d);
/* Fills *e (order_id aside) from a delivery-event body, recording every problem in v;
 * occurred_at may be at most 5 minutes after now. False when anything failed. */
bool delivery_event_from_json(struct v_errors *v, const json_t *body, int64_t now,
                              struct db_delivery_event *e);

#endif
