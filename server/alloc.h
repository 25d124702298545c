/* alloc.h - allocation wrappers that abort on out-of-memory, and secret wiping. */
#ifndef CANGREJO_ALLOC_H
#define CANGREJO_ALLOC_H

#include <stddef.h>

#define X_ALLOC __attribute__((malloc, returns_nonnull, warn_unused_result))

/* malloc that never returns NULL: out of memory aborts the process. */
void *xmalloc(size_t size) X_ALLOC;
/* calloc that never returns NULL. */
void *xcalloc(size_t count, size_t size) X_ALLOC;
/* realloc that never returns NULL. */
void *xrealloc(void *ptr, size_t size) __attribute__((returns_nonnull, warn_unused_result));
/* strdup that never returns NULL. */
char *xstrdup(const char *s) X_ALLOC;
/* strndup that never returns NULL. */
char *xstrndup(const char *s, size_t n) X_ALLOC;
/* Overwrites a secret so the compiler cannot elide it, then frees it. */
void xfree_secret(void *ptr, size_t size);

#endif
