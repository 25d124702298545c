#include "jobs.h"

#include "alloc.h"

#include <pthread.h>
#include <stdlib.h>

struct job {
    job_fn fn;
    void *arg;
};

struct jobs {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    struct job *queue; /* ring of cap entries */
    size_t cap, head, count;
    bool stopping;
    pthread_t *threads;
    unsigned n_threads;
};

static void *worker_main(void *arg)
{
    struct jobs *j = arg;
    pthread_mutex_lock(&j->lock);
    for (;;) {
        while (j->count == 0 && !j->stopping)
            pthread_cond_wait(&j->wake, &j->lock);
        if (j->count == 0)
            break;
        struct job job = j->queue[j->head];
        j->head = (j->head + 1) % j->cap;
        j->count--;
        pthread_mutex_unlock(&j->lock);
        job.fn(job.arg);
        pthread_mutex_lock(&j->lock);
    }
    pthread_mutex_unlock(&j->lock);
    return NULL;
}

struct jobs *jobs_start(unsigned n, size_t max_queued)
{
    struct jobs *j = xcalloc(1, sizeof(*j));
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->wake, NULL);
    j->cap = max_queued ? max_queued : 1;
    j->queue = xcalloc(j->cap, sizeof(*j->queue));
    j->threads = xcalloc(n ? n : 1, sizeof(*j->threads));
    for (unsigned i = 0; i < (n ? n : 1); i++)
        if (pthread_create(&j->threads[j->n_threads], NULL, worker_main, j) == 0)
            j->n_threads++;
    if (j->n_threads == 0)
        abort(); /* no thread at all: nothing queued could ever run */
    return j;
}

bool jobs_submit(struct jobs *j, job_fn fn, void *arg)
{
    pthread_mutex_lock(&j->lock);
    bool accepted = !j->stopping && j->count < j->cap;
    if (accepted) {
        j->queue[(j->head + j->count) % j->cap] = (struct job){fn, arg};
        j->count++;
        pthread_cond_signal(&j->wake);
    }
    pthread_mutex_unlock(&j->lock);
    return accepted;
}

void jobs_stop(struct jobs *j)
{
    if (!j)
        return;
    pthread_mutex_lock(&j->lock);
    j->stopping = true;
    pthread_cond_broadcast(&j->wake);
    pthread_mutex_unlock(&j->lock);
    for (unsigned i = 0; i < j->n_threads; i++)
        pthread_join(j->threads[i], NULL);
    pthread_mutex_destroy(&j->lock);
    pthread_cond_destroy(&j->wake);
    free(j->queue);
    free(j->threads);
    free(j);
}
