/* deliveries.h - the API's delivery object, shared by delivery events and order reads. */
#ifndef CANGREJO_HANDLERS_DELIVERIES_H
#define CANGREJO_HANDLERS_DELIVERIES_H

#include "db/deliveries.h"

#include <jansson.h>

/* {"status", "provider", "occurred_at", "eta", "courier_ref", "events": [...]}, or null. */
json_t *delivery_to_json(const struct db_delivery *d);

#endif
