#include "metrics.h"

#include "alloc.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const double bucket_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                       0.1,    0.25,  0.5,    1,     2.5,   5,     10};
enum {
    N_BUCKETS = sizeof(bucket_bounds) / sizeof(bucket_bounds[0]),
    MIN_STATUS = 100,
    N_STATUSES = 500, /* 100..599 */
    MAX_COLLECTORS = 16,
};

/* Series of one (route, status) pair, allocated the first time that pair is seen. */
struct cell {
    atomic_uint_fast64_t count;
    atomic_uint_fast64_t sum_us;
    atomic_uint_fast64_t buckets[N_BUCKETS]; /* not cumulative; summed when rendered */
};

struct route_series {
    const char *method, *path;
    _Atomic(struct cell *) cells[N_STATUSES];
};

static struct route_series *series; /* n_series entries; the last is "no route matched" */
static size_t n_series;
static struct {
    metrics_collector_fn fn;
    void *ud;
} collectors[MAX_COLLECTORS];
static size_t n_collectors;

void metrics_init(const struct srv_route *routes, size_t n_routes)
{
    n_series = n_routes + 1;
    series = xcalloc(n_series, sizeof(*series));
    for (size_t i = 0; i < n_routes; i++) {
        series[i].method = router_method_name(routes[i].method);
        series[i].path = routes[i].path;
    }
    series[n_routes].method = "";
    series[n_routes].path = "unmatched";
}

void metrics_shutdown(void)
{
    for (size_t i = 0; i < n_series; i++)
        for (size_t s = 0; s < N_STATUSES; s++)
            free(atomic_load(&series[i].cells[s]));
    free(series);
    series = NULL;
    n_series = 0;
    n_collectors = 0;
}

static struct cell *cell_for(struct route_series *rs, unsigned status)
{
    _Atomic(struct cell *) *slot = &rs->cells[status - MIN_STATUS];
    struct cell *c = atomic_load_explicit(slot, memory_order_acquire);
    if (c)
        return c;
    struct cell *fresh = xcalloc(1, sizeof(*fresh));
    if (atomic_compare_exchange_strong(slot, &c, fresh))
        return fresh;
    free(fresh); /* another thread won the race; c holds its cell */
    return c;
}

void metrics_observe_request(long route_index, unsigned status, double seconds)
{
    if (!series || status < MIN_STATUS || status >= MIN_STATUS + N_STATUSES)
        return;
    size_t i = route_index < 0 || (size_t)route_index >= n_series - 1 ? n_series - 1
                                                                      : (size_t)route_index;
    struct cell *c = cell_for(&series[i], status);
    atomic_fetch_add_explicit(&c->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->sum_us, (uint_fast64_t)(seconds * 1e6), memory_order_relaxed);
    for (size_t b = 0; b < N_BUCKETS; b++) {
        if (seconds <= bucket_bounds[b]) {
            atomic_fetch_add_explicit(&c->buckets[b], 1, memory_order_relaxed);
            break;
        }
    }
}

void metrics_add_collector(metrics_collector_fn fn, void *ud)
{
    if (n_collectors == MAX_COLLECTORS)
        abort(); /* a programming error: raise MAX_COLLECTORS */
    collectors[n_collectors].fn = fn;
    collectors[n_collectors].ud = ud;
    n_collectors++;
}

void metrics_write_header(struct buf *out, const char *name, const char *type, const char *help)
{
    buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_counts(struct buf *out)
{
    metrics_write_header(out, "cangrejo_http_requests_total", "counter",
                         "HTTP requests answered, by route template and status.");
    for (size_t i = 0; i < n_series; i++) {
        for (unsigned s = 0; s < N_STATUSES; s++) {
            struct cell *c = atomic_load(&series[i].cells[s]);
            if (c)
                buf_printf(out,
                           "cangrejo_http_requests_total{method=\"%s\",route=\"%s\",status=\"%u\"} "
                           "%llu\n",
                           series[i].method, series[i].path, s + MIN_STATUS,
                           (unsigned long long)atomic_load(&c->count));
        }
    }
}

static void render_cell_histogram(struct buf *out, const struct route_series *rs, unsigned status,
                                  struct cell *c)
{
    const char *name = "cangrejo_http_request_duration_seconds";
    uint64_t cumulative = 0;
    for (size_t b = 0; b < N_BUCKETS; b++) {
        cumulative += atomic_load(&c->buckets[b]);
        buf_printf(out, "%s_bucket{method=\"%s\",route=\"%s\",status=\"%u\",le=\"%g\"} %llu\n",
                   name, rs->method, rs->path, status, bucket_bounds[b],
                   (unsigned long long)cumulative);
    }
    unsigned long long count = atomic_load(&c->count);
    buf_printf(out, "%s_bucket{method=\"%s\",route=\"%s\",status=\"%u\",le=\"+Inf\"} %llu\n", name,
               rs->method, rs->path, status, count);
    buf_printf(out, "%s_sum{method=\"%s\",route=\"%s\",status=\"%u\"} %.6f\n", name, rs->method,
               rs->path, status, (double)atomic_load(&c->sum_us) / 1e6);
    buf_printf(out, "%s_count{method=\"%s\",route=\"%s\",status=\"%u\"} %llu\n", name, rs->method,
               rs->path, status, count);
}

static void render_histograms(struct buf *out)
{
    metrics_write_header(out, "cangrejo_http_request_duration_seconds", "histogram",
                         "Time from request line to response queued, by route and status.");
    for (size_t i = 0; i < n_series; i++) {
        for (unsigned s = 0; s < N_STATUSES; s++) {
            struct cell *c = atomic_load(&series[i].cells[s]);
            if (c)
                render_cell_histogram(out, &series[i], s + MIN_STATUS, c);
        }
    }
}

void metrics_render(struct buf *out)
{
    if (series) {
        render_counts(out);
        render_histograms(out);
    }
    for (size_t i = 0; i < n_collectors; i++)
        collectors[i].fn(out, collectors[i].ud);
}
