#include "migrate.h"

#include "db/pool.h"
#include "server/log.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Advisory lock key shared by every cangrejo process: "cangrejo" in ASCII. */
#define MIGRATE_LOCK_KEY "7161132765893404783"

int db_schema_version_expected(void)
{
    return db_migrations_count;
}

static bool exec_ok(PGconn *pg, const char *sql, char *err, size_t errlen, const char *what)
{
    PGresult *r = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(r);
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok) {
        snprintf(err, errlen, "%s: %s", what, PQresultErrorMessage(r));
        err[strcspn(err, "\n")] = '\0';
    }
    PQclear(r);
    return ok;
}

static int applied_version(PGconn *pg, char *err, size_t errlen)
{
    PGresult *r = PQexec(pg, "SELECT coalesce(max(version), 0) FROM schema_migrations");
    int v = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        v = atoi(PQgetvalue(r, 0, 0));
    else
        snprintf(err, errlen, "reading schema_migrations: %s", PQresultErrorMessage(r));
    PQclear(r);
    return v;
}

static bool apply_one(PGconn *pg, const struct db_migration *m, char *err, size_t errlen)
{
    char what[128];
    snprintf(what, sizeof(what), "migration %04d_%s", m->version, m->name);
    if (!exec_ok(pg, "BEGIN", err, errlen, what))
        return false;
    if (!exec_ok(pg, m->sql, err, errlen, what)) {
        PQclear(PQexec(pg, "ROLLBACK"));
        return false;
    }
    char version[16];
    snprintf(version, sizeof(version), "%d", m->version);
    const char *params[] = {version, m->name};
    PGresult *r = PQexecParams(pg, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                               2, NULL, params, NULL, NULL, 0);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        snprintf(err, errlen, "%s: recording version: %s", what, PQresultErrorMessage(r));
    PQclear(r);
    if (!ok || !exec_ok(pg, "COMMIT", err, errlen, what)) {
        PQclear(PQexec(pg, "ROLLBACK"));
        return false;
    }
    log_info("applied migration %04d_%s", m->version, m->name);
    return true;
}

static int migrate_locked(PGconn *pg, char *err, size_t errlen)
{
    if (!exec_ok(pg,
                 "CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, "
                 "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
                 err, errlen, "creating schema_migrations"))
        return -1;
    int current = applied_version(pg, err, errlen);
    if (current < 0)
        return -1;
    if (current > db_migrations_count) {
        snprintf(err, errlen, "the database is at schema version %d, newer than this binary (%d)",
                 current, db_migrations_count);
        return -1;
    }
    int applied = 0;
    for (int i = current; i < db_migrations_count; i++) {
        if (!apply_one(pg, &db_migrations[i], err, errlen))
            return -1;
        applied++;
    }
    return applied;
}

int db_migrate(const char *url, char *err, size_t errlen)
{
    PGconn *pg = db_connect_direct(url, err, errlen);
    if (!pg)
        return -1;
    int applied = -1;
    if (exec_ok(pg, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")", err, errlen,
                "taking the migration lock")) {
        applied = migrate_locked(pg, err, errlen);
        PQclear(PQexec(pg, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")"));
    }
    PQfinish(pg);
    return applied;
}
