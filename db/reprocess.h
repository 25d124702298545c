/* reprocess.h - rebuilding every derived figure of a range from the stored orders, merchant by
 * merchant and day by day, each step one transaction, while ingestion goes on; as a job that
 * survives restarts (it resumes where it stopped). */
#ifndef CANGREJO_DB_REPROCESS_H
#define CANGREJO_DB_REPROCESS_H

#include "db/pool.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct arena;

struct db_reprocess_job {
    const char *job_id, *state; /* queued, running, succeeded, failed */
    int64_t merchant_id;        /* 0: every merchant */
    const char *from, *to;      /* RFC 3339 UTC */
    long merchants_done, merchants_total;
    const char *error; /* NULL unless failed */
};

/* Called after each committed step with the merchant's new data version and WAL position. */
typedef void (*db_reprocess_notify_fn)(void *ud, int64_t merchant_id, int64_t version,
                                       uint64_t lsn);

/* Records a queued job for [from_s, to_s) (15-minute aligned UTC seconds); merchant 0 = all. */
enum db_status db_reprocess_create(struct db *db, const char *job_id, int64_t merchant_id,
                                   int64_t from_s, int64_t to_s);
/* Reads a job; DB_NOT_FOUND when unknown. Strings are arena-owned. */
enum db_status db_reprocess_get(struct db *db, struct arena *a, const char *job_id,
                                struct db_reprocess_job *out);
/* Claims a queued (or abandoned) job and runs it to the end (or until *stop, between steps), holding a lock on its own
 * session so that no one else runs it meanwhile and so that it is free again the moment this
 * process dies. A database outage leaves it running, to be resumed; a failed rebuild marks it
 * failed. DB_CONFLICT when another runner has it or it has finished. */
enum db_status db_reprocess_run(struct db *db, const char *job_id, db_reprocess_notify_fn notify,
                                void *ud, const atomic_bool *stop);
/* Ids (33 bytes each) of jobs that may need a runner: queued or running (db_reprocess_run
 * tells the abandoned ones from those another runner holds). */
size_t db_reprocess_pending(struct db *db, char (*ids)[33], size_t max);

#endif
