#include "reprocess.h"

#include "server/arena.h"
#include "server/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { STEP_S = 86400, MERCHANT_PAGE = 1000 };

/* Where a run stands: the job's range and filter, and the next step to do. */
struct run {
    struct db *db;
    const char *job_id;
    int64_t only_merchant, from_s, to_s;
    int64_t merchant, at_s; /* resume point: merchant, and its range done up to at_s */
    db_reprocess_notify_fn notify;
    void *ud;
    const atomic_bool *stop; /* shutting down: leave the rest to a later runner */
};

static const char *num(char *buf, size_t size, long long v)
{
    snprintf(buf, size, "%lld", v);
    return buf;
}

enum db_status db_reprocess_create(struct db *db, const char *job_id, int64_t merchant_id,
                                   int64_t from_s, int64_t to_s)
{
    char m[24], f[24], t[24];
    const char *params[] = {job_id, merchant_id ? num(m, sizeof(m), merchant_id) : NULL,
                            num(f, sizeof(f), from_s), num(t, sizeof(t), to_s)};
    return db_run_primary(db, DB_REPROCESS_CREATE, params, PGRES_COMMAND_OK, NULL);
}

enum db_status db_reprocess_get(struct db *db, struct arena *a, const char *job_id,
                                struct db_reprocess_job *out)
{
    const char *params[] = {job_id};
    PGresult *r = NULL;
    enum db_status st = db_run_primary(db, DB_REPROCESS_GET, params, PGRES_TUPLES_OK, &r);
    if (st != DB_OK)
        return st;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return DB_NOT_FOUND;
    }
    out->job_id = arena_strdup(a, job_id);
    out->state = arena_strdup(a, PQgetvalue(r, 0, 0));
    out->merchant_id = PQgetisnull(r, 0, 1) ? 0 : strtoll(PQgetvalue(r, 0, 1), NULL, 10);
    out->from = arena_strdup(a, PQgetvalue(r, 0, 2));
    out->to = arena_strdup(a, PQgetvalue(r, 0, 3));
    out->merchants_done = atol(PQgetvalue(r, 0, 4));
    out->merchants_total = atol(PQgetvalue(r, 0, 5));
    out->error = PQgetisnull(r, 0, 6) ? NULL : arena_strdup(a, PQgetvalue(r, 0, 6));
    PQclear(r);
    return DB_OK;
}

/* Runs one statement of a transaction; DB_OK, or why not. */
static enum db_status step(struct db_conn *c, enum db_stmt stmt, const char *const *params,
                           ExecStatusType want, int64_t *first_value)
{
    PGresult *r = params ? db_exec(c, stmt, params) : db_exec_simple(c, "BEGIN");
    enum db_status st = db_ok(r, want) ? DB_OK : db_failure(c, r);
    if (st == DB_OK && first_value)
        *first_value = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return st;
}

/* The rebuild and the job's progress, committed together (so a resume starts exactly after). */
static enum db_status rebuild_and_record(struct db_conn *c, const char *const *rebuild,
                                         const char *const *progress, int64_t *version)
{
    enum db_status st = step(c, 0, NULL, PGRES_COMMAND_OK, NULL);
    if (st == DB_OK)
        st = step(c, DB_REPROCESS_REBUILD, rebuild, PGRES_TUPLES_OK, version);
    if (st == DB_OK)
        st = step(c, DB_REPROCESS_PROGRESS, progress, PGRES_COMMAND_OK, NULL);
    PGresult *r = db_exec_simple(c, st == DB_OK ? "COMMIT" : "ROLLBACK");
    if (st == DB_OK && !db_ok(r, PGRES_COMMAND_OK))
        st = DB_UNAVAILABLE; /* the commit's outcome is unknown: the resume redoes the step */
    PQclear(r);
    return st;
}

/* One step: merchant m's [lo, hi) rebuilt and the job's progress moved, in one transaction. */
static enum db_status rebuild_step(struct run *run, int64_t m, int64_t lo, int64_t hi)
{
    struct db_conn *c = db_acquire_primary(run->db);
    if (!c)
        return DB_UNAVAILABLE;
    char ms[24], los[24], his[24];
    const char *rebuild[] = {num(ms, sizeof(ms), m), num(los, sizeof(los), lo),
                             num(his, sizeof(his), hi)};
    const char *progress[] = {run->job_id, ms, his, hi >= run->to_s ? "1" : "0"};
    int64_t version = 0;
    enum db_status st = rebuild_and_record(c, rebuild, progress, &version);
    uint64_t lsn = 0;
    if (st == DB_OK) {
        PGresult *r = db_exec(c, DB_WAL_LSN, NULL);
        lsn = db_ok(r, PGRES_TUPLES_OK) ? db_parse_lsn(PQgetvalue(r, 0, 0)) : 0;
        PQclear(r);
        db_note_write_lsn(run->db, m, lsn);
    }
    db_release(c);
    if (st == DB_OK && run->notify)
        run->notify(run->ud, m, version, lsn);
    return st;
}

/* Rebuilds merchant m day by day from where the job left it. */
static enum db_status rebuild_merchant(struct run *run, int64_t m)
{
    int64_t lo = m == run->merchant && run->at_s > run->from_s ? run->at_s : run->from_s;
    for (; lo < run->to_s; lo += STEP_S) {
        if (run->stop && atomic_load(run->stop))
            return DB_UNAVAILABLE; /* left running and unlocked: resumed later */
        int64_t hi = lo + STEP_S < run->to_s ? lo + STEP_S : run->to_s;
        enum db_status st = rebuild_step(run, m, lo, hi);
        if (st != DB_OK)
            return st;
    }
    return DB_OK;
}

/* Walks the merchants in id order from the resume point; DB_OK when all are done. */
static enum db_status rebuild_all(struct run *run)
{
    int64_t next = run->merchant ? run->merchant + (run->at_s >= run->to_s) : 1;
    for (;;) {
        char from[24], only[24];
        const char *params[] = {num(from, sizeof(from), next),
                                num(only, sizeof(only), run->only_merchant)};
        PGresult *r = NULL;
        enum db_status st =
            db_run_primary(run->db, DB_REPROCESS_MERCHANTS, params, PGRES_TUPLES_OK, &r);
        if (st != DB_OK)
            return st;
        int rows = PQntuples(r);
        for (int i = 0; i < rows && st == DB_OK; i++) {
            int64_t m = strtoll(PQgetvalue(r, i, 0), NULL, 10);
            st = rebuild_merchant(run, m);
            next = m + 1;
        }
        PQclear(r);
        if (st != DB_OK || rows < MERCHANT_PAGE)
            return st;
    }
}

static void finish(struct db *db, const char *job_id, const char *state, const char *error)
{
    const char *params[] = {job_id, state, error};
    db_run_primary(db, DB_REPROCESS_FINISH, params, PGRES_COMMAND_OK, NULL);
}

/* Takes the job for this process: its advisory lock on a session kept for the whole run (c),
 * then the claim. DB_CONFLICT when another runner has it or it is finished. */
static enum db_status take_job(struct db_conn *c, const char *job_id, PGresult **claim)
{
    const char *params[] = {job_id};
    PGresult *r = db_exec(c, DB_REPROCESS_LOCK, params);
    enum db_status st = db_ok(r, PGRES_TUPLES_OK) ? DB_OK : db_failure(c, r);
    bool locked = st == DB_OK && PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    if (st != DB_OK || !locked)
        return st != DB_OK ? st : DB_CONFLICT;
    *claim = db_exec(c, DB_REPROCESS_CLAIM, params);
    st = db_ok(*claim, PGRES_TUPLES_OK) ? DB_OK : db_failure(c, *claim);
    if (st == DB_OK && PQntuples(*claim) == 1)
        return DB_OK;
    PQclear(*claim);
    PQclear(db_exec(c, DB_REPROCESS_UNLOCK, params));
    return st != DB_OK ? st : DB_CONFLICT;
}

enum db_status db_reprocess_run(struct db *db, const char *job_id, db_reprocess_notify_fn notify,
                                void *ud, const atomic_bool *stop)
{
    struct db_conn *owner = db_acquire_primary(db);
    if (!owner)
        return DB_UNAVAILABLE;
    PGresult *r = NULL;
    enum db_status st = take_job(owner, job_id, &r);
    if (st != DB_OK) {
        db_release(owner);
        return st;
    }
    struct run run = {db,
                      job_id,
                      strtoll(PQgetvalue(r, 0, 0), NULL, 10),
                      strtoll(PQgetvalue(r, 0, 1), NULL, 10),
                      strtoll(PQgetvalue(r, 0, 2), NULL, 10),
                      strtoll(PQgetvalue(r, 0, 3), NULL, 10),
                      strtoll(PQgetvalue(r, 0, 4), NULL, 10),
                      notify,
                      ud,
                      stop};
    PQclear(r);
    log_info("reprocess %s: running", job_id);
    st = rebuild_all(&run);
    if (st == DB_OK)
        finish(db, job_id, "succeeded", NULL);
    else if (st != DB_UNAVAILABLE)
        finish(db, job_id, "failed", "a rebuild failed; see the server log");
    /* unavailable: left running, unlocked; a later runner resumes it */
    const char *params[] = {job_id};
    PQclear(db_exec(owner, DB_REPROCESS_UNLOCK, params));
    db_release(owner);
    log_info("reprocess %s: %s", job_id,
             st == DB_OK            ? "succeeded"
             : st == DB_UNAVAILABLE ? "interrupted"
                                    : "failed");
    return st;
}

size_t db_reprocess_pending(struct db *db, char (*ids)[33], size_t max)
{
    PGresult *r = NULL;
    if (db_run_primary(db, DB_REPROCESS_STALE, NULL, PGRES_TUPLES_OK, &r) != DB_OK)
        return 0;
    size_t n = 0;
    for (int i = 0; i < PQntuples(r) && n < max; i++)
        snprintf(ids[n++], 33, "%s", PQgetvalue(r, i, 0));
    PQclear(r);
    return n;
}
