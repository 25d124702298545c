/* metrics.h - Prometheus counters and histograms for HTTP, plus collectors for other modules. */
#ifndef CANGREJO_METRICS_H
#define CANGREJO_METRICS_H

#include "server/buf.h"
#include "server/router.h"

#include <stddef.h>

/* Renders a module's own series into the exposition. */
typedef void (*metrics_collector_fn)(struct buf *out, void *ud);

/* Sets up per-route series for a route table (call once before serving). */
void metrics_init(const struct srv_route *routes, size_t n_routes);
/* Frees what metrics_init allocated. */
void metrics_shutdown(void);
/* Counts one finished request; route_index < 0 means no route matched. */
void metrics_observe_request(long route_index, unsigned status, double seconds);
/* Adds a collector rendered after the HTTP series (call before serving). */
void metrics_add_collector(metrics_collector_fn fn, void *ud);
/* Writes the whole exposition (text format 0.0.4). */
void metrics_render(struct buf *out);
/* Writes the # HELP and # TYPE lines of a series. */
void metrics_write_header(struct buf *out, const char *name, const char *type, const char *help);

#endif
