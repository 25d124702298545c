/* pool.h - libpq connection pools: the primary and each replica, with bounded waits, lazily
 * prepared statements, and connections checked (rolled back or dropped) before reuse. */
#ifndef CANGREJO_DB_POOL_H
#define CANGREJO_DB_POOL_H

#include "db/sql.h"
#include "server/buf.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What a database call came to; handlers map it to HTTP. */
enum db_status { DB_OK, DB_NOT_FOUND, DB_CONFLICT, DB_UNAVAILABLE, DB_ERROR };

struct db_options {
    const char *primary_url;
    const char *replica_urls; /* comma-separated, may be empty */
    unsigned primary_pool_size, replica_pool_size;
    unsigned wait_ms; /* bounded wait for a free connection */
    unsigned connect_timeout_s;
    unsigned statement_timeout_ms;
    unsigned replica_max_lag_ms; /* replicas lagging more serve no reads; 0 = no limit */
};

struct db;
struct db_conn;

/* One connection outside any pool, for commands (migrate, retention); NULL with a message. */
PGconn *db_connect_direct(const char *url, char *err, size_t errlen);
/* Sets up the pools (connections open lazily); NULL with a message on bad URLs. */
struct db *db_open(const struct db_options *opt, char *err, size_t errlen);
/* Closes every connection and frees the pools. */
void db_close(struct db *db);
/* A primary connection, or NULL when none came free in time or the primary is down. */
struct db_conn *db_acquire_primary(struct db *db);
/* A connection for reads: round robin over healthy replicas (skipping laggards) that have
 * replayed the primary's WAL up to min_lsn (0: any), else the primary; *role tells which
 * ("replica" or "primary"). Read-your-writes after a commit at min_lsn. */
struct db_conn *db_acquire_read_at(struct db *db, uint64_t min_lsn, const char **role);
/* Runs a read-only statement where db_acquire_read_at would, and once more on the primary
 * when the replica fails under it (it may have just gone away). Returns the result (PQclear
 * it) with *st DB_OK, or NULL with *st saying why; *role tells who answered. */
PGresult *db_read(struct db *db, uint64_t min_lsn, enum db_stmt stmt, const char *const *params,
                  const char **role, enum db_status *st);
/* Remembers that merchant_id's data was committed at lsn on the primary (this instance). */
void db_note_write_lsn(struct db *db, int64_t merchant_id, uint64_t lsn);
/* The newest commit LSN this instance knows for merchant_id (0 if none; conservative when
 * the merchant's slot was reused). */
uint64_t db_merchant_write_lsn(struct db *db, int64_t merchant_id);
/* Parses PostgreSQL's "X/Y" LSN text; 0 when malformed. */
uint64_t db_parse_lsn(const char *text);
/* A connection to replica i (for probes), waiting at most wait_ms. */
struct db_conn *db_acquire_replica_n(struct db *db, size_t i, unsigned wait_ms);
/* A primary connection, waiting at most wait_ms (for probes). */
struct db_conn *db_acquire_primary_wait(struct db *db, unsigned wait_ms);
/* Number of replica pools. */
size_t db_replica_count(const struct db *db);
/* Returns a connection to its pool; one left in a transaction is rolled back or dropped. */
void db_release(struct db_conn *c);
/* Runs a prepared statement with text parameters (NULL = SQL NULL). Never NULL: check
 * db_ok(). A connection-level failure marks the connection broken. */
PGresult *db_exec(struct db_conn *c, enum db_stmt stmt, const char *const *params);
/* Runs one statement on a primary connection taken and given back; DB_OK with the result in
 * *out (when out is given; PQclear it), or why not. */
enum db_status db_run_primary(struct db *db, enum db_stmt stmt, const char *const *params,
                              ExecStatusType want, PGresult **out);
/* Appends the next piece of COPY data to piece (empty when called); false after the last. */
typedef bool (*db_copy_fill_fn)(void *ud, struct buf *piece);
/* Runs `COPY ... FROM STDIN` (sql), its data built by fill a piece at a time and sent as it
 * comes, so that a large COPY never sits whole in memory. Never NULL: check
 * db_ok(res, PGRES_COMMAND_OK). */
PGresult *db_copy_in(struct db_conn *c, const char *sql, db_copy_fill_fn fill, void *ud);
/* Runs a plain SQL command without parameters (BEGIN, COMMIT, ROLLBACK). */
PGresult *db_exec_simple(struct db_conn *c, const char *sql);
/* True when res has the expected status. */
bool db_ok(const PGresult *res, ExecStatusType expected);
/* The SQLSTATE of a failed result, or "". */
const char *db_sqlstate(const PGresult *res);
/* Maps a failed result to a status: connection trouble is DB_UNAVAILABLE. */
enum db_status db_failure(struct db_conn *c, const PGresult *res);
/* The raw libpq connection, for calls the helpers above do not cover. */
PGconn *db_pg(struct db_conn *c);
/* Writes pool gauges and counters in Prometheus text format. */
void db_render_metrics(struct buf *out, void *db);

#endif
