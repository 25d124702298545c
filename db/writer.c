#include "writer.h"

#include "server/alloc.h"
#include "server/log.h"
#include "server/metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { MAX_THREADS = 16 };

static const double group_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
enum { N_GROUP_BOUNDS = sizeof(group_bounds) / sizeof(group_bounds[0]) };

/* Freshness: from an order's arrival at the writer until reads see it (committed, and its
 * merchant's new data version published), in seconds. */
static const double fresh_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
enum { N_FRESH_BOUNDS = sizeof(fresh_bounds) / sizeof(fresh_bounds[0]) };

struct db_writer {
    struct db *db;
    struct db_writer_options opt;
    pthread_t threads[MAX_THREADS];
    unsigned n_threads;
    pthread_mutex_t lock;
    pthread_cond_t queued;
    struct db_write *head, *tail;
    size_t pending;
    unsigned committing; /* writer threads inside a transaction right now (under lock) */
    bool stopping;
    atomic_uint_fast64_t groups, orders, group_buckets[N_GROUP_BOUNDS + 1];
    atomic_uint_fast64_t fresh_count, fresh_sum_us, fresh_buckets[N_FRESH_BOUNDS + 1];
};

static int64_t monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void queue_push(struct db_writer *w, struct db_write *write)
{
    write->next = NULL;
    if (w->tail)
        w->tail->next = write;
    else
        w->head = write;
    w->tail = write;
    w->pending++;
}

static struct db_write *queue_pop(struct db_writer *w)
{
    struct db_write *write = w->head;
    w->head = write->next;
    if (!w->head)
        w->tail = NULL;
    w->pending--;
    return write;
}

/* Waits up to max_wait_us for a fuller group, but only while another writer is committing
 * (PostgreSQL's commit_delay with commit_siblings): under load groups grow and the database
 * does less work per order; a lone order is never held back. */
static void linger(struct db_writer *w)
{
    if (w->opt.max_wait_us == 0 || w->committing == 0 || w->pending >= w->opt.max_batch)
        return;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_nsec += (long)w->opt.max_wait_us * 1000;
    deadline.tv_sec += deadline.tv_nsec / 1000000000;
    deadline.tv_nsec %= 1000000000;
    while (w->pending < w->opt.max_batch && !w->stopping &&
           pthread_cond_timedwait(&w->queued, &w->lock, &deadline) == 0)
        ;
}

/* Takes up to max_batch writes; 0 when stopping with nothing left. */
static size_t take_group(struct db_writer *w, struct db_write **group)
{
    pthread_mutex_lock(&w->lock);
    while (!w->head && !w->stopping)
        pthread_cond_wait(&w->queued, &w->lock);
    linger(w);
    size_t n = 0;
    while (w->head && n < w->opt.max_batch)
        group[n++] = queue_pop(w);
    w->committing += n > 0;
    pthread_mutex_unlock(&w->lock);
    return n;
}

static void group_done(struct db_writer *w)
{
    pthread_mutex_lock(&w->lock);
    w->committing--;
    pthread_mutex_unlock(&w->lock);
}

static void count_group(struct db_writer *w, size_t n)
{
    atomic_fetch_add(&w->groups, 1);
    atomic_fetch_add(&w->orders, n);
    size_t b = 0;
    while (b < N_GROUP_BOUNDS && (double)n > group_bounds[b])
        b++;
    atomic_fetch_add(&w->group_buckets[b], 1);
}

/* Counts the stored orders of a group as visible to reads from now on. */
static void count_freshness(struct db_writer *w, struct db_write **group,
                            const enum db_ingest_result *results, size_t n)
{
    int64_t now = monotonic_us();
    for (size_t i = 0; i < n; i++) {
        if (results[i] != INGEST_INSERTED)
            continue;
        int64_t us = now - group[i]->queued_us;
        size_t b = 0;
        while (b < N_FRESH_BOUNDS && (double)us / 1e6 > fresh_bounds[b])
            b++;
        atomic_fetch_add(&w->fresh_buckets[b], 1);
        atomic_fetch_add(&w->fresh_sum_us, (uint64_t)(us > 0 ? us : 0));
        atomic_fetch_add(&w->fresh_count, 1);
    }
}

static void write_group(struct db_writer *w, struct db_write **group, size_t n,
                        struct db_order **orders, enum db_ingest_result *results)
{
    for (size_t i = 0; i < n; i++) {
        orders[i] = group[i]->order;
        results[i] = INGEST_UNAVAILABLE;
    }
    struct db_ingest_commit commit = {0};
    struct db_conn *c = db_acquire_primary(w->db);
    if (c) {
        db_ingest(w->db, c, orders, n, results, &commit);
        db_release(c);
    }
    if (commit.n_merchants && w->opt.on_commit)
        w->opt.on_commit(w->opt.on_commit_ud, &commit);
    db_ingest_commit_free(&commit);
    count_group(w, n);
    count_freshness(w, group, results, n);
    for (size_t i = 0; i < n; i++) {
        group[i]->result = results[i];
        group[i]->done(group[i]);
    }
}

static void *writer_main(void *arg)
{
    struct db_writer *w = arg;
    struct db_write **group = xmalloc(w->opt.max_batch * sizeof(*group));
    struct db_order **orders = xmalloc(w->opt.max_batch * sizeof(*orders));
    enum db_ingest_result *results = xmalloc(w->opt.max_batch * sizeof(*results));
    size_t n;
    while ((n = take_group(w, group)) > 0) {
        write_group(w, group, n, orders, results);
        group_done(w);
    }
    free(group);
    free(orders);
    free(results);
    return NULL;
}

struct db_writer *db_writer_start(struct db *db, const struct db_writer_options *opt)
{
    struct db_writer *w = xcalloc(1, sizeof(*w));
    w->db = db;
    w->opt = *opt;
    if (w->opt.max_batch == 0)
        w->opt.max_batch = 1;
    pthread_mutex_init(&w->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&w->queued, &attr);
    pthread_condattr_destroy(&attr);
    unsigned threads = opt->threads < 1 ? 1 : opt->threads > MAX_THREADS ? MAX_THREADS : opt->threads;
    for (unsigned i = 0; i < threads; i++)
        if (pthread_create(&w->threads[w->n_threads], NULL, writer_main, w) == 0)
            w->n_threads++;
    if (w->n_threads == 0)
        abort(); /* cannot run at all without a writer thread */
    return w;
}

bool db_writer_submit(struct db_writer *w, struct db_write *write)
{
    write->queued_us = monotonic_us();
    pthread_mutex_lock(&w->lock);
    bool accepted = !w->stopping;
    if (accepted) {
        queue_push(w, write);
        pthread_cond_signal(&w->queued);
    }
    pthread_mutex_unlock(&w->lock);
    return accepted;
}

void db_writer_stop(struct db_writer *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stopping = true;
    pthread_cond_broadcast(&w->queued);
    pthread_mutex_unlock(&w->lock);
    for (unsigned i = 0; i < w->n_threads; i++)
        pthread_join(w->threads[i], NULL);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->queued);
    free(w);
}

/* One Prometheus histogram from its bounds, per-bucket counts (n + 1, the last for +Inf),
 * sum and count. */
static void render_histogram(struct buf *out, const char *name, const char *help,
                             const double *bounds, size_t n, atomic_uint_fast64_t *buckets,
                             double sum, uint64_t count)
{
    metrics_write_header(out, name, "histogram", help);
    unsigned long long cumulative = 0;
    for (size_t b = 0; b < n; b++) {
        cumulative += atomic_load(&buckets[b]);
        buf_printf(out, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[b], cumulative);
    }
    cumulative += atomic_load(&buckets[n]);
    buf_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n", name, cumulative);
    buf_printf(out, "%s_sum %.17g\n", name, sum);
    buf_printf(out, "%s_count %llu\n", name, (unsigned long long)count);
}

void db_writer_render_metrics(struct buf *out, void *ud)
{
    struct db_writer *w = ud;
    render_histogram(out, "cangrejo_ingest_group_size",
                     "Orders committed together by the group-commit writer, per transaction.",
                     group_bounds, N_GROUP_BOUNDS, w->group_buckets,
                     (double)atomic_load(&w->orders), atomic_load(&w->groups));
    render_histogram(out, "cangrejo_freshness_seconds",
                     "From an order's arrival at the writer until reads see it (committed and "
                     "its merchant's data version published).",
                     fresh_bounds, N_FRESH_BOUNDS, w->fresh_buckets,
                     (double)atomic_load(&w->fresh_sum_us) / 1e6, atomic_load(&w->fresh_count));
}
