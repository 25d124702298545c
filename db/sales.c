/* Placeholder: db/sales.c is being written. */
#include "db/pool.h"
