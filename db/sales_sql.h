/* sales_sql.h - the SQL of the sales series (see db/sales.c). */
#ifndef CANGREJO_DB_SALES_SQL_H
#define CANGREJO_DB_SALES_SQL_H

#define DB_SALES_SERIES_PARAMS 1
#define DB_SALES_SERIES_SQL "SELECT 1 WHERE $1::bigint IS NOT NULL"

#endif
