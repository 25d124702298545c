/* jobs.h - a few long-lived threads for work too long for an HTTP thread (batch ingestion,
 * reprocessing): bounded queue, so overload is refused instead of piling up. */
#ifndef CANGREJO_JOBS_H
#define CANGREJO_JOBS_H

#include <stdbool.h>
#include <stddef.h>

struct jobs;
typedef void (*job_fn)(void *arg);

/* Starts n worker threads with room for max_queued waiting jobs. */
struct jobs *jobs_start(unsigned n, size_t max_queued);
/* Queues fn(arg); false when the queue is full or stopping (fn will not run). */
bool jobs_submit(struct jobs *j, job_fn fn, void *arg);
/* Runs what is queued, then stops the threads and frees the pool. */
void jobs_stop(struct jobs *j);

#endif
