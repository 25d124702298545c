#include "sql.h"

#define UTC_TEXT(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

static const struct db_stmt_def stmts[DB_STMT_COUNT_] = {
    [DB_SCHEMA_VERSION] = {"schema_version",
                           "SELECT coalesce(max(version), 0) FROM schema_migrations", 0},
    /* Replay lag: 0 when everything received is replayed, else the age of the last replayed
     * transaction (an idle primary sends no transactions, so age alone would mislead). */
    [DB_REPLICA_LAG] = {"replica_lag",
                        "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() "
                        "THEN 0 ELSE coalesce((extract(epoch FROM now() - "
                        "pg_last_xact_replay_timestamp()) * 1000)::bigint, 0) END",
                        0},
    [DB_REPLAY_LSN] = {"replay_lsn", "SELECT coalesce(pg_last_wal_replay_lsn(), '0/0')::text", 0},
    [DB_MERCHANT_UPSERT] =
        {"merchant_upsert",
         "INSERT INTO merchants AS m (merchant_id, name, timezone, currency) "
         "VALUES ($1, $2, $3, $4) ON CONFLICT (merchant_id) DO UPDATE "
         "SET name = excluded.name, timezone = excluded.timezone, currency = excluded.currency, "
         "updated_at = now(), data_version = m.data_version + 1 "
         /* amounts are stored in the merchant's currency: it is fixed once orders exist */
         "WHERE m.currency = excluded.currency "
         "OR NOT EXISTS (SELECT 1 FROM order_keys k WHERE k.merchant_id = excluded.merchant_id) "
         "RETURNING m.merchant_id, m.name, m.timezone, m.currency, " UTC_TEXT(
             "m.created_at") ", " UTC_TEXT("m.updated_at") ", (m.xmax = 0) AS created",
         4},
    [DB_MERCHANT_GET] = {"merchant_get",
                         "SELECT merchant_id, name, timezone, currency, " UTC_TEXT(
                             "created_at") ", " UTC_TEXT("updated_at") " FROM merchants "
                                                                       "WHERE merchant_id = $1",
                         1},
};

const struct db_stmt_def *db_stmt_def(enum db_stmt stmt)
{
    return &stmts[stmt];
}
