/* retention.h - dropping raw orders older than the retention (rollups are kept). */
#ifndef CANGREJO_DB_RETENTION_H
#define CANGREJO_DB_RETENTION_H

#include <stddef.h>

/* Drops the monthly order partitions older than keep_months whole months before the current
 * one, and what refers to those orders; one run at a time across every process. Returns the
 * number of partitions dropped, -1 with a message on error. */
int db_apply_retention(const char *url, unsigned keep_months, char *err, size_t errlen);

#endif
