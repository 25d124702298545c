/* sql.h - every SQL statement the server runs, as prepared statements with parameters. */
#ifndef CANGREJO_DB_SQL_H
#define CANGREJO_DB_SQL_H

enum db_stmt {
    DB_SCHEMA_VERSION,
    DB_REPLICA_LAG,
    DB_REPLAY_LSN,
    DB_MERCHANT_UPSERT,
    DB_MERCHANT_GET,
    DB_SALES_SERIES,
    DB_TOP_PRODUCTS,
    DB_PROMOTIONS,
    DB_WAL_LSN,
    DB_ENSURE_PARTITIONS,
    DB_INGEST_KEYS,
    DB_INGEST_LOOKUP,
    DB_INGEST_ORDERS,
    DB_INGEST_ITEMS,
    DB_INGEST_ROLLUP,
    DB_INGEST_PRODUCTS,
    DB_INGEST_PROMOS,
    DB_INGEST_PRODUCT_NAMES,
    DB_INGEST_BUMP,
    DB_ORDER_GET,
    DB_ORDER_LIST,
    DB_ORDER_CANCEL,
    DB_ORDER_CANCEL_ITEMS,
    DB_ORDER_EXISTS,
    DB_IDEMPOTENCY_CLAIM,
    DB_IDEMPOTENCY_GET,
    DB_IDEMPOTENCY_FINISH,
    DB_IDEMPOTENCY_RELEASE,
    DB_IDEMPOTENCY_SET_HASH,
    DB_DELIVERY_ORDER,
    DB_DELIVERY_EVENT_INSERT,
    DB_DELIVERY_STATE_UPSERT,
    DB_DELIVERY_GET,
    DB_PII_CUSTOMERS_ENSURE,
    DB_PII_CUSTOMERS_LOCK,
    DB_PII_INSERT,
    DB_ORDER_PII_GET,
    DB_CUSTOMER_EXPORT,
    DB_CUSTOMER_ERASE,
    DB_CUSTOMER_FORGET_PII,
    DB_STMT_COUNT_
};

struct db_stmt_def {
    const char *name;
    const char *sql;
    int n_params;
};

/* The definition of a statement. */
const struct db_stmt_def *db_stmt_def(enum db_stmt stmt);

#endif
