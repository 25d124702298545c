#include "pool.h"

#include "server/alloc.h"
#include "server/log.h"
#include "server/metrics.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    DOWN_BACKOFF_MS = 500,
    MAX_REPLICAS = 16,
    LSN_SLOTS = 1 << 16,
    MONITOR_INTERVAL_MS = 500,
    MONITOR_WAIT_MS = 100,
    ANSWER_MARGIN_MS = 1000, /* past statement_timeout, before a silent server is given up */
};

struct db_conn {
    struct db_pool *pool;
    PGconn *pg;
    struct db_conn *next_idle;
    uint64_t prepared[2]; /* bit i: statement i is prepared on this connection */
    bool broken;
    bool lost; /* the server went away or stopped answering: its other connections are suspect */
    /* Replicas: the newest replay position this connection's server reported. Kept per
     * connection, not per pool: one replica URL may lead to several servers (a load-balanced
     * read-only Service), and another server's position proves nothing about this one. */
    uint64_t replay_lsn;
};

struct db_pool {
    char role[16]; /* "primary" or "replica" */
    char label[24]; /* "primary", "replica0", ... for metrics */
    char *url;
    unsigned size, wait_ms, connect_timeout_s, statement_timeout_ms;
    pthread_mutex_t lock;
    pthread_cond_t freed;
    struct db_conn *idle;
    unsigned open, busy, waiting;
    int64_t down_until_ms;
    atomic_int_fast64_t lag_ms;      /* replay lag from the monitor; -1 while unknown */
    atomic_uint_fast64_t timeouts, connect_failures, dropped;
};

/* The last commit LSN per merchant, in a fixed table: a merchant whose slot was taken over
 * by another gets the highest LSN ever evicted, which is safe (only ever too new). */
struct lsn_slot {
    int64_t merchant_id;
    uint64_t lsn;
};

struct lsn_map {
    pthread_mutex_t lock;
    uint64_t evicted_max;
    struct lsn_slot slots[LSN_SLOTS];
};

struct db {
    struct db_pool *primary;
    struct db_pool *replicas[MAX_REPLICAS];
    size_t n_replicas;
    atomic_uint next_replica;
    atomic_uint_fast64_t reads_replica, reads_primary, reads_replica_behind;
    struct lsn_map lsns;
    unsigned max_lag_ms;
    pthread_t monitor;
    bool monitoring, stopping;
    pthread_mutex_t monitor_lock;
    pthread_cond_t monitor_wake;
};

_Static_assert(DB_STMT_COUNT_ <= 128, "db_conn.prepared holds 128 statements");

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct db_pool *pool_new(const char *role, const char *label, const char *url,
                                unsigned size, const struct db_options *opt)
{
    struct db_pool *p = xcalloc(1, sizeof(*p));
    snprintf(p->role, sizeof(p->role), "%s", role);
    snprintf(p->label, sizeof(p->label), "%s", label);
    p->url = xstrdup(url);
    p->size = size;
    p->wait_ms = opt->wait_ms;
    p->connect_timeout_s = opt->connect_timeout_s;
    p->statement_timeout_ms = opt->statement_timeout_ms;
    atomic_store(&p->lag_ms, -1);
    pthread_mutex_init(&p->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&p->freed, &attr);
    pthread_condattr_destroy(&attr);
    return p;
}

static void pool_free(struct db_pool *p)
{
    if (!p)
        return;
    while (p->idle) {
        struct db_conn *c = p->idle;
        p->idle = c->next_idle;
        PQfinish(c->pg);
        free(c);
    }
    if (p->busy)
        log_error("db pool %s closed with %u connections in use", p->label, p->busy);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->freed);
    free(p->url);
    free(p);
}

/* Opens one connection with our defaults; the URL's own parameters take precedence. */
static PGconn *pool_connect(struct db_pool *p)
{
    char connect_timeout[16], tcp_user_timeout[16], options[96];
    snprintf(connect_timeout, sizeof(connect_timeout), "%u", p->connect_timeout_s);
    snprintf(tcp_user_timeout, sizeof(tcp_user_timeout), "%u", p->statement_timeout_ms);
    snprintf(options, sizeof(options), "-c statement_timeout=%u -c client_min_messages=warning",
             p->statement_timeout_ms);
    const char *keys[] = {"connect_timeout",    "application_name", "keepalives",
                          "keepalives_idle",    "keepalives_interval", "keepalives_count",
                          "tcp_user_timeout",   "options",          "dbname",
                          NULL};
    const char *values[] = {connect_timeout, "cangrejo", "1", "5", "2", "3",
                            tcp_user_timeout, options, p->url, NULL};
    PGconn *pg = PQconnectdbParams(keys, values, 1);
    if (PQstatus(pg) != CONNECTION_OK) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(pg));
        msg[strcspn(msg, "\n")] = '\0';
        log_warn("db %s: cannot connect: %s", p->label, msg);
        PQfinish(pg);
        return NULL;
    }
    /* Sends never block either: a query to a server that stops reading waits in await_answer
     * under its deadline, not in send(). */
    PQsetnonblocking(pg, 1);
    return pg;
}

static struct db_conn *pool_open_slot(struct db_pool *p)
{
    /* Called with the lock held and a slot reserved (open and busy counted). */
    pthread_mutex_unlock(&p->lock);
    PGconn *pg = pool_connect(p);
    pthread_mutex_lock(&p->lock);
    if (!pg) {
        p->open--;
        p->busy--;
        p->down_until_ms = now_ms() + DOWN_BACKOFF_MS;
        atomic_fetch_add(&p->connect_failures, 1);
        pthread_cond_signal(&p->freed);
        return NULL;
    }
    p->down_until_ms = 0;
    struct db_conn *c = xcalloc(1, sizeof(*c));
    c->pool = p;
    c->pg = pg;
    return c;
}

static struct timespec deadline_after(unsigned ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

static struct db_conn *pool_acquire(struct db_pool *p, unsigned wait_ms)
{
    struct timespec deadline = deadline_after(wait_ms);
    struct db_conn *c = NULL;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        if (p->idle) {
            c = p->idle;
            p->idle = c->next_idle;
            p->busy++;
            break;
        }
        if (p->down_until_ms > now_ms())
            break; /* down: fail fast instead of queueing behind connect timeouts */
        if (p->open < p->size) {
            p->open++;
            p->busy++;
            c = pool_open_slot(p);
            break;
        }
        p->waiting++;
        int rc = pthread_cond_timedwait(&p->freed, &p->lock, &deadline);
        p->waiting--;
        if (rc != 0) {
            atomic_fetch_add(&p->timeouts, 1);
            break;
        }
    }
    pthread_mutex_unlock(&p->lock);
    return c;
}

/* Leaves no transaction open; false when the connection cannot be trusted any more. */
static bool conn_reset_state(struct db_conn *c)
{
    if (c->broken || PQstatus(c->pg) != CONNECTION_OK)
        return false;
    PGTransactionStatusType ts = PQtransactionStatus(c->pg);
    if (ts == PQTRANS_IDLE)
        return true;
    if (ts != PQTRANS_INTRANS && ts != PQTRANS_INERROR)
        return false;
    PGresult *r = db_exec_simple(c, "ROLLBACK");
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok && PQtransactionStatus(c->pg) == PQTRANS_IDLE;
}

/* Takes every idle connection out of the pool (they are closed by the caller). */
static struct db_conn *pool_take_idle(struct db_pool *p)
{
    struct db_conn *idle = p->idle;
    for (struct db_conn *c = idle; c; c = c->next_idle)
        p->open--;
    p->idle = NULL;
    return idle;
}

static void close_conns(struct db_pool *p, struct db_conn *list)
{
    while (list) {
        struct db_conn *next = list->next_idle;
        PQfinish(list->pg);
        free(list);
        atomic_fetch_add(&p->dropped, 1);
        list = next;
    }
}

void db_release(struct db_conn *c)
{
    if (!c)
        return;
    struct db_pool *p = c->pool;
    bool keep = conn_reset_state(c);
    bool lost = !keep && (c->lost || PQstatus(c->pg) != CONNECTION_OK);
    if (!keep) {
        c->next_idle = NULL;
        close_conns(p, c);
    }
    struct db_conn *stale = NULL;
    pthread_mutex_lock(&p->lock);
    p->busy--;
    if (keep) {
        c->next_idle = p->idle;
        p->idle = c;
    } else {
        p->open--;
    }
    if (lost) {
        /* The server went away: its other idle connections are dead too. Drop them and
         * let the next acquire reconnect after a short backoff. */
        stale = pool_take_idle(p);
        p->down_until_ms = now_ms() + DOWN_BACKOFF_MS;
    }
    pthread_cond_broadcast(&p->freed);
    pthread_mutex_unlock(&p->lock);
    close_conns(p, stale);
}

static bool pool_is_down(struct db_pool *p)
{
    pthread_mutex_lock(&p->lock);
    bool down = p->down_until_ms > now_ms() && !p->idle;
    pthread_mutex_unlock(&p->lock);
    return down;
}

/* Asks one replica for its replay lag and position. */
static void monitor_replica(struct db_pool *p)
{
    struct db_conn *c = pool_acquire(p, MONITOR_WAIT_MS);
    int64_t lag = -1;
    if (c) {
        PGresult *r = db_exec(c, DB_REPLICA_LAG, NULL);
        if (db_ok(r, PGRES_TUPLES_OK) && PQntuples(r) == 1) {
            lag = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
            uint64_t lsn = db_parse_lsn(PQgetvalue(r, 0, 1));
            c->replay_lsn = lsn > c->replay_lsn ? lsn : c->replay_lsn;
        }
        PQclear(r);
        db_release(c);
    }
    atomic_store(&p->lag_ms, lag);
}

/* Keeps each replica's lag and replay position fresh, so reads can skip laggards. */
static void *monitor_main(void *arg)
{
    struct db *db = arg;
    pthread_mutex_lock(&db->monitor_lock);
    while (!db->stopping) {
        pthread_mutex_unlock(&db->monitor_lock);
        for (size_t i = 0; i < db->n_replicas; i++)
            monitor_replica(db->replicas[i]);
        struct timespec deadline = deadline_after(MONITOR_INTERVAL_MS);
        pthread_mutex_lock(&db->monitor_lock);
        if (!db->stopping)
            pthread_cond_timedwait(&db->monitor_wake, &db->monitor_lock, &deadline);
    }
    pthread_mutex_unlock(&db->monitor_lock);
    return NULL;
}

static void start_monitor(struct db *db)
{
    pthread_mutex_init(&db->monitor_lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&db->monitor_wake, &attr);
    pthread_condattr_destroy(&attr);
    db->monitoring = db->n_replicas > 0 && pthread_create(&db->monitor, NULL, monitor_main, db) == 0;
}

static void stop_monitor(struct db *db)
{
    pthread_mutex_lock(&db->monitor_lock);
    db->stopping = true;
    pthread_cond_signal(&db->monitor_wake);
    pthread_mutex_unlock(&db->monitor_lock);
    if (db->monitoring)
        pthread_join(db->monitor, NULL);
    pthread_mutex_destroy(&db->monitor_lock);
    pthread_cond_destroy(&db->monitor_wake);
}

PGconn *db_connect_direct(const char *url, char *err, size_t errlen)
{
    PGconn *pg = PQconnectdb(url);
    if (PQstatus(pg) == CONNECTION_OK) {
        PQclear(PQexec(pg, "SET client_min_messages = warning"));
        return pg;
    }
    snprintf(err, errlen, "cannot connect to DATABASE_URL: %s", PQerrorMessage(pg));
    err[strcspn(err, "\n")] = '\0';
    PQfinish(pg);
    return NULL;
}

struct db *db_open(const struct db_options *opt, char *err, size_t errlen)
{
    struct db *db = xcalloc(1, sizeof(*db));
    pthread_mutex_init(&db->lsns.lock, NULL);
    db->max_lag_ms = opt->replica_max_lag_ms;
    db->primary = pool_new("primary", "primary", opt->primary_url, opt->primary_pool_size, opt);
    const char *s = opt->replica_urls ? opt->replica_urls : "";
    while (*s) {
        size_t len = strcspn(s, ",");
        if (len > 0) {
            if (db->n_replicas == MAX_REPLICAS) {
                snprintf(err, errlen, "DATABASE_REPLICA_URLS: at most %d replicas", MAX_REPLICAS);
                db_close(db);
                return NULL;
            }
            char *url = xstrndup(s, len), label[24];
            snprintf(label, sizeof(label), "replica%zu", db->n_replicas);
            db->replicas[db->n_replicas++] =
                pool_new("replica", label, url, opt->replica_pool_size, opt);
            free(url);
        }
        s += len + (s[len] == ',');
    }
    start_monitor(db);
    return db;
}

void db_close(struct db *db)
{
    if (!db)
        return;
    stop_monitor(db);
    pool_free(db->primary);
    for (size_t i = 0; i < db->n_replicas; i++)
        pool_free(db->replicas[i]);
    pthread_mutex_destroy(&db->lsns.lock);
    free(db);
}

struct db_conn *db_acquire_primary(struct db *db)
{
    return pool_acquire(db->primary, db->primary->wait_ms);
}

struct db_conn *db_acquire_primary_wait(struct db *db, unsigned wait_ms)
{
    return pool_acquire(db->primary, wait_ms);
}

size_t db_replica_count(const struct db *db)
{
    return db->n_replicas;
}

struct db_conn *db_acquire_replica_n(struct db *db, size_t i, unsigned wait_ms)
{
    return i < db->n_replicas ? pool_acquire(db->replicas[i], wait_ms) : NULL;
}

PGresult *db_read(struct db *db, uint64_t min_lsn, enum db_stmt stmt, const char *const *params,
                  const char **role, enum db_status *st)
{
    struct db_conn *c = db_acquire_read_at(db, min_lsn, role);
    for (int attempt = 0; c; attempt++) {
        PGresult *r = db_exec(c, stmt, params);
        if (db_ok(r, PGRES_TUPLES_OK)) {
            db_release(c);
            *st = DB_OK;
            return r;
        }
        *st = db_failure(c, r);
        bool replica = c->pool != db->primary;
        PQclear(r);
        db_release(c);
        if (*st != DB_UNAVAILABLE || !replica || attempt > 0)
            return NULL;
        *role = "primary";
        c = db_acquire_primary(db);
    }
    *st = DB_UNAVAILABLE;
    return NULL;
}

uint64_t db_parse_lsn(const char *text)
{
    unsigned long hi, lo;
    char tail;
    if (!text || sscanf(text, "%lX/%lX%c", &hi, &lo, &tail) != 2)
        return 0;
    return ((uint64_t)hi << 32) | (uint64_t)(lo & 0xffffffffu);
}

static struct lsn_slot *lsn_slot_for(struct lsn_map *m, int64_t merchant_id)
{
    uint64_t h = (uint64_t)merchant_id * 0x9E3779B97F4A7C15ull;
    return &m->slots[h >> (64 - 16)];
}

void db_note_write_lsn(struct db *db, int64_t merchant_id, uint64_t lsn)
{
    struct lsn_map *m = &db->lsns;
    pthread_mutex_lock(&m->lock);
    struct lsn_slot *s = lsn_slot_for(m, merchant_id);
    if (s->merchant_id != merchant_id && s->lsn > m->evicted_max)
        m->evicted_max = s->lsn;
    if (s->merchant_id != merchant_id || lsn > s->lsn) {
        s->merchant_id = merchant_id;
        s->lsn = lsn;
    }
    pthread_mutex_unlock(&m->lock);
}

uint64_t db_merchant_write_lsn(struct db *db, int64_t merchant_id)
{
    struct lsn_map *m = &db->lsns;
    pthread_mutex_lock(&m->lock);
    struct lsn_slot *s = lsn_slot_for(m, merchant_id);
    uint64_t lsn = s->merchant_id == merchant_id ? s->lsn : m->evicted_max;
    pthread_mutex_unlock(&m->lock);
    return lsn;
}

/* True when the server behind c has replayed min_lsn; asks it only when the last answer
 * this connection got is older. */
static bool replica_has_replayed(struct db_conn *c, uint64_t min_lsn)
{
    if (c->replay_lsn >= min_lsn)
        return true;
    PGresult *r = db_exec(c, DB_REPLAY_LSN, NULL);
    uint64_t lsn = db_ok(r, PGRES_TUPLES_OK) ? db_parse_lsn(PQgetvalue(r, 0, 0)) : 0;
    PQclear(r);
    c->replay_lsn = lsn > c->replay_lsn ? lsn : c->replay_lsn;
    return lsn >= min_lsn;
}

/* A replica whose last measured lag is over the limit serves no reads until it catches up. */
static bool too_far_behind(const struct db *db, struct db_pool *p)
{
    int64_t lag = atomic_load(&p->lag_ms);
    return db->max_lag_ms > 0 && lag > (int64_t)db->max_lag_ms;
}

struct db_conn *db_acquire_read_at(struct db *db, uint64_t min_lsn, const char **role)
{
    size_t n = db->n_replicas;
    unsigned start = n ? atomic_fetch_add(&db->next_replica, 1) : 0;
    for (size_t k = 0; k < n; k++) {
        struct db_pool *p = db->replicas[(start + k) % n];
        if (pool_is_down(p) || too_far_behind(db, p))
            continue;
        struct db_conn *c = pool_acquire(p, p->wait_ms);
        if (!c)
            continue;
        if (min_lsn == 0 || replica_has_replayed(c, min_lsn)) {
            *role = "replica";
            atomic_fetch_add(&db->reads_replica, 1);
            return c;
        }
        atomic_fetch_add(&db->reads_replica_behind, 1);
        db_release(c);
    }
    *role = "primary";
    atomic_fetch_add(&db->reads_primary, 1);
    return db_acquire_primary(db);
}

PGconn *db_pg(struct db_conn *c)
{
    return c->pg;
}

static void note_connection_state(struct db_conn *c)
{
    if (PQstatus(c->pg) != CONNECTION_OK)
        c->broken = true;
}

/* The answer to the query just sent (its last result, or its first error), waiting at most
 * statement_timeout plus a margin. statement_timeout is enforced by the server, so a server
 * that stops answering without closing the connection (packets dropped, a hung host or
 * proxy: TCP keeps acknowledging, keepalives and the TCP user timeout never fire) would
 * otherwise hold the caller, a writer or an HTTP thread, forever. */
static PGresult *await_answer(struct db_conn *c, bool sent)
{
    if (c->lost) /* given up with a query pending: the send failed, and no answer will come */
        return PQmakeEmptyPGresult(c->pg, PGRES_FATAL_ERROR);
    int64_t deadline = now_ms() + c->pool->statement_timeout_ms + ANSWER_MARGIN_MS;
    PGresult *answer = NULL;
    for (;;) {
        int unsent = sent ? PQflush(c->pg) : -1;
        /* Once sending or reading failed, PQgetResult no longer waits: it hands over what was
         * read (the server's own error, if any) and then the connection's error. */
        bool failed = unsent < 0 || !PQconsumeInput(c->pg);
        while (failed || !PQisBusy(c->pg)) {
            PGresult *r = PQgetResult(c->pg);
            if (!r) {
                note_connection_state(c);
                return answer ? answer : PQmakeEmptyPGresult(c->pg, PGRES_FATAL_ERROR);
            }
            if (PQresultStatus(r) == PGRES_COPY_IN) { /* the server waits for the data */
                PQclear(answer);
                return r;
            }
            if (answer && PQresultStatus(answer) == PGRES_FATAL_ERROR) {
                PQclear(r); /* keep the first error, as PQexec does */
            } else {
                PQclear(answer);
                answer = r;
            }
        }
        int64_t left = deadline - now_ms();
        struct pollfd pfd = {PQsocket(c->pg), (short)(POLLIN | (unsent ? POLLOUT : 0)), 0};
        if (left <= 0 || (poll(&pfd, 1, (int)left) < 0 && errno != EINTR)) {
            PQclear(answer);
            log_warn("db %s: no answer within statement_timeout: connection given up",
                     c->pool->label);
            /* Broken: closed on release; lost: its pool drops the idle ones and backs off, as
             * after a crash (they lead to the same silent server). */
            c->broken = true;
            c->lost = true;
            return PQmakeEmptyPGresult(c->pg, PGRES_FATAL_ERROR);
        }
    }
}

static bool ensure_prepared(struct db_conn *c, enum db_stmt stmt)
{
    if (c->prepared[stmt / 64] & (1ull << (stmt % 64)))
        return true;
    const struct db_stmt_def *def = db_stmt_def(stmt);
    PGresult *r =
        await_answer(c, PQsendPrepare(c->pg, def->name, def->sql, def->n_params, NULL) == 1);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
        msg[strcspn(msg, "\n")] = '\0';
        log_error("db %s: cannot prepare %s: %s", c->pool->label, def->name, msg);
        note_connection_state(c);
    }
    PQclear(r);
    if (ok)
        c->prepared[stmt / 64] |= 1ull << (stmt % 64);
    return ok;
}

PGresult *db_exec(struct db_conn *c, enum db_stmt stmt, const char *const *params)
{
    if (!ensure_prepared(c, stmt))
        return PQmakeEmptyPGresult(c->pg, PGRES_FATAL_ERROR);
    const struct db_stmt_def *def = db_stmt_def(stmt);
    PGresult *r = await_answer(
        c, PQsendQueryPrepared(c->pg, def->name, def->n_params, params, NULL, NULL, 0) == 1);
    if (PQresultStatus(r) == PGRES_FATAL_ERROR)
        note_connection_state(c);
    return r;
}

enum db_status db_run_primary(struct db *db, enum db_stmt stmt, const char *const *params,
                              ExecStatusType want, PGresult **out)
{
    struct db_conn *c = db_acquire_primary(db);
    if (!c)
        return DB_UNAVAILABLE;
    PGresult *r = db_exec(c, stmt, params);
    enum db_status st = db_ok(r, want) ? DB_OK : db_failure(c, r);
    db_release(c);
    if (st == DB_OK && out)
        *out = r;
    else
        PQclear(r);
    return st;
}

PGresult *db_exec_simple(struct db_conn *c, const char *sql)
{
    PGresult *r = await_answer(c, PQsendQuery(c->pg, sql) == 1);
    if (PQresultStatus(r) == PGRES_FATAL_ERROR)
        note_connection_state(c);
    return r;
}

/* Sends what libpq holds for the server, waiting at most until deadline (ms); false when the
 * connection failed or the server stopped reading (the connection is then given up). */
static bool flush_until(struct db_conn *c, int64_t deadline)
{
    for (;;) {
        int left = PQflush(c->pg);
        if (left <= 0)
            return left == 0;
        int64_t wait = deadline - now_ms();
        struct pollfd pfd = {PQsocket(c->pg), POLLIN | POLLOUT, 0};
        if (wait <= 0 || (poll(&pfd, 1, (int)wait) < 0 && errno != EINTR)) {
            log_warn("db %s: COPY data not taken within statement_timeout: connection given up",
                     c->pool->label);
            c->broken = true;
            c->lost = true;
            return false;
        }
        if ((pfd.revents & POLLIN) && !PQconsumeInput(c->pg))
            return false; /* an answer (an error) may come early; keep reading it */
    }
}

PGresult *db_copy_in(struct db_conn *c, const char *sql, db_copy_fill_fn fill, void *ud)
{
    PGresult *r = await_answer(c, PQsendQuery(c->pg, sql) == 1);
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        if (PQresultStatus(r) == PGRES_FATAL_ERROR)
            note_connection_state(c);
        return r;
    }
    PQclear(r);
    int64_t deadline = now_ms() + c->pool->statement_timeout_ms + ANSWER_MARGIN_MS;
    struct buf piece = {0};
    bool more = true, ok = true;
    while (more && ok) {
        piece.len = 0;
        more = fill(ud, &piece);
        ok = piece.len <= INT_MAX && PQputCopyData(c->pg, piece.data, (int)piece.len) == 1 &&
             flush_until(c, deadline);
    }
    buf_free(&piece);
    /* On failure the server is told to fail the COPY, and its answer is awaited as usual. */
    r = await_answer(c, PQputCopyEnd(c->pg, ok ? NULL : "the data could not be sent") == 1);
    if (PQresultStatus(r) == PGRES_FATAL_ERROR)
        note_connection_state(c);
    return r;
}

bool db_ok(const PGresult *res, ExecStatusType expected)
{
    return res && PQresultStatus(res) == expected;
}

const char *db_sqlstate(const PGresult *res)
{
    const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return s ? s : "";
}

enum db_status db_failure(struct db_conn *c, const PGresult *res)
{
    const char *state = db_sqlstate(res);
    /* Class 08 is connection trouble, 57P0x is an administrator or crash shutdown, 25006 is a
     * write on a read-only (standby) server, 40001/40P01 serialization or deadlock. */
    if (c->broken || strncmp(state, "08", 2) == 0 || strncmp(state, "57P0", 4) == 0 ||
        strcmp(state, "25006") == 0 || strcmp(state, "57014") == 0)
        return DB_UNAVAILABLE;
    if (strcmp(state, "23505") == 0)
        return DB_CONFLICT;
    char msg[256];
    snprintf(msg, sizeof(msg), "%s", res ? PQresultErrorMessage(res) : "no result");
    msg[strcspn(msg, "\n")] = '\0';
    log_error("db %s: query failed (%s): %s", c->pool->label, state, msg);
    return DB_ERROR;
}

struct pool_snapshot {
    const char *label;
    unsigned long long v[7]; /* indexed like pool_families */
};

static const struct {
    const char *name, *type, *help, *state;
} pool_families[] = {
    {"cangrejo_db_pool_connections", "gauge", "Open database connections by pool and state.",
     "busy"},
    {"cangrejo_db_pool_connections", NULL, NULL, "idle"},
    {"cangrejo_db_pool_size", "gauge", "Connections a pool may open.", NULL},
    {"cangrejo_db_pool_waiting", "gauge", "Requests waiting for a connection.", NULL},
    {"cangrejo_db_pool_wait_timeouts_total", "counter",
     "Requests that found no free connection in time (answered 503).", NULL},
    {"cangrejo_db_connect_failures_total", "counter", "Failed connection attempts.", NULL},
    {"cangrejo_db_connections_dropped_total", "counter",
     "Connections closed because they were broken or left mid-transaction.", NULL},
};

static void snapshot_pool(struct db_pool *p, struct pool_snapshot *s)
{
    pthread_mutex_lock(&p->lock);
    s->label = p->label;
    s->v[0] = p->busy;
    s->v[1] = p->open - p->busy;
    s->v[2] = p->size;
    s->v[3] = p->waiting;
    pthread_mutex_unlock(&p->lock);
    s->v[4] = atomic_load(&p->timeouts);
    s->v[5] = atomic_load(&p->connect_failures);
    s->v[6] = atomic_load(&p->dropped);
}

void db_render_metrics(struct buf *out, void *ud)
{
    struct db *db = ud;
    struct pool_snapshot snaps[MAX_REPLICAS + 1];
    size_t n = 0;
    snapshot_pool(db->primary, &snaps[n++]);
    for (size_t i = 0; i < db->n_replicas; i++)
        snapshot_pool(db->replicas[i], &snaps[n++]);
    metrics_write_header(out, "cangrejo_db_reads_total", "counter",
                         "Reads by the server that answered them.");
    buf_printf(out, "cangrejo_db_reads_total{role=\"replica\"} %llu\n",
               (unsigned long long)atomic_load(&db->reads_replica));
    buf_printf(out, "cangrejo_db_reads_total{role=\"primary\"} %llu\n",
               (unsigned long long)atomic_load(&db->reads_primary));
    metrics_write_header(out, "cangrejo_db_replica_behind_total", "counter",
                         "Reads a replica could not serve because it had not replayed the "
                         "merchant's last write yet.");
    buf_printf(out, "cangrejo_db_replica_behind_total %llu\n",
               (unsigned long long)atomic_load(&db->reads_replica_behind));
    metrics_write_header(out, "cangrejo_db_replica_lag_seconds", "gauge",
                         "Replay lag of each replica as last measured (absent while unknown).");
    for (size_t i = 0; i < db->n_replicas; i++) {
        int64_t lag = atomic_load(&db->replicas[i]->lag_ms);
        if (lag >= 0)
            buf_printf(out, "cangrejo_db_replica_lag_seconds{pool=\"%s\"} %.3f\n",
                       db->replicas[i]->label, (double)lag / 1000);
    }
    for (size_t f = 0; f < sizeof(pool_families) / sizeof(pool_families[0]); f++) {
        if (pool_families[f].type)
            metrics_write_header(out, pool_families[f].name, pool_families[f].type,
                                 pool_families[f].help);
        for (size_t i = 0; i < n; i++) {
            if (pool_families[f].state)
                buf_printf(out, "%s{pool=\"%s\",state=\"%s\"} %llu\n", pool_families[f].name,
                           snaps[i].label, pool_families[f].state, snaps[i].v[f]);
            else
                buf_printf(out, "%s{pool=\"%s\"} %llu\n", pool_families[f].name, snaps[i].label,
                           snaps[i].v[f]);
        }
    }
}
