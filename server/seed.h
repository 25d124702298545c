/* seed.h - `cangrejo seed`: deterministic, realistic demo data written through the same
 * validation and ingest path as the API. */
#ifndef CANGREJO_SEED_H
#define CANGREJO_SEED_H

#include "server/config.h"

/* Runs the seed command with its own options (argv[0] is "seed"); returns the exit status. */
int seed_main(const struct config *cfg, int argc, char **argv);

#endif
