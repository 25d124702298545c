/* alloc.h - allocation wrappers that abort on out-of-memory, and secret wiping. */
#ifndef CANGREJO_ALLOC_H
#define CANGREJO_ALLOC_H

#include <stddef.h>

/* malloc that never returns NULL: out of memory aborts the process. */
void *xmalloc(size_t size);
/* calloc that never returns NULL. */
void *xcalloc(size_t count, size_t size);
/* realloc that never returns NULL. */
void *xrealloc(void *ptr, size_t size);
/* strdup that never returns NULL. */
char *xstrdup(const char *s);
/* strndup that never returns NULL. */
char *xstrndup(const char *s, size_t n);
/* Overwrites a secret so the compiler cannot elide it, then frees it. */
void xfree_secret(void *ptr, size_t size);

#endif
