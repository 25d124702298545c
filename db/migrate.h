/* migrate.h - versioned schema migrations, embedded in the binary from db/migrations/. */
#ifndef CANGREJO_DB_MIGRATE_H
#define CANGREJO_DB_MIGRATE_H

#include <stdbool.h>
#include <stddef.h>

struct db_migration {
    int version;
    const char *name;
    const char *sql;
};

/* Generated from db/migrations/NNNN_name.sql, in version order 1..N. */
extern const struct db_migration db_migrations[];
extern const int db_migrations_count;

/* The schema version this binary expects (the newest embedded migration). */
int db_schema_version_expected(void);
/* Applies the pending migrations in order under an advisory lock, each in its own transaction;
 * safe to run from several processes at once. Returns how many it applied, -1 on error. */
int db_migrate(const char *url, char *err, size_t errlen);

#endif
