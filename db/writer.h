/* writer.h - group commit: concurrent single-order writes gathered into one transaction by
 * writer threads, each request answered after the commit (DESIGN.md decision 2). */
#ifndef CANGREJO_DB_WRITER_H
#define CANGREJO_DB_WRITER_H

#include "db/ingest.h"
#include "server/buf.h"

#include <stdbool.h>

/* One order waiting to be written; owned by the submitter until done() is called. */
struct db_write {
    struct db_order *order;
    enum db_ingest_result result;
    void (*done)(struct db_write *w); /* called on a writer thread once result is final */
    void *ud;
    struct db_write *next;
    int64_t queued_us; /* set by db_writer_submit (monotonic clock), for the freshness figure */
};

struct db_writer_options {
    unsigned threads;     /* writer threads, each with its own primary connection */
    unsigned max_batch;   /* orders per transaction at most */
    unsigned max_wait_us; /* how long a writer lingers for more orders before committing */
    /* Called after each commit, before any request of the group is answered. */
    void (*on_commit)(void *ud, const struct db_ingest_commit *commit);
    void *on_commit_ud;
};

struct db_writer;

/* Starts the writer threads. */
struct db_writer *db_writer_start(struct db *db, const struct db_writer_options *opt);
/* Queues a write; false when the writer is stopping (nothing queued). */
bool db_writer_submit(struct db_writer *w, struct db_write *write);
/* Commits what is queued, then stops the threads and frees the writer. */
void db_writer_stop(struct db_writer *w);
/* Writes group-size and commit counters in Prometheus text format. */
void db_writer_render_metrics(struct buf *out, void *writer);

#endif
