#include "retention.h"

#include "db/pool.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int db_apply_retention(const char *url, unsigned keep_months, char *err, size_t errlen)
{
    PGconn *pg = db_connect_direct(url, err, errlen);
    if (!pg)
        return -1;
    char months[16];
    snprintf(months, sizeof(months), "%u", keep_months);
    const char *params[] = {months};
    PGresult *r = PQexecParams(pg, "SELECT cangrejo_apply_retention($1::int)", 1, NULL, params,
                               NULL, NULL, 0);
    int dropped = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        dropped = atoi(PQgetvalue(r, 0, 0));
    else {
        snprintf(err, errlen, "retention failed: %s", PQresultErrorMessage(r));
        err[strcspn(err, "\n")] = '\0';
    }
    PQclear(r);
    PQfinish(pg);
    return dropped;
}
