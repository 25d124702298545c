/* arena.h - a per-request memory arena with destructors, freed in one go (h2o's req->pool). */
#ifndef CANGREJO_ARENA_H
#define CANGREJO_ARENA_H

#include <stdarg.h>
#include <stddef.h>

struct arena;

/* Creates an empty arena. */
struct arena *arena_new(void);
/* Runs the registered destructors (last registered first) and frees every block. */
void arena_free(struct arena *a);
/* Returns size bytes aligned for any type, valid until arena_free. */
void *arena_alloc(struct arena *a, size_t size);
/* Like arena_alloc, zero-filled. */
void *arena_zalloc(struct arena *a, size_t size);
/* Copies n bytes of s into the arena and NUL-terminates the copy. */
char *arena_strndup(struct arena *a, const char *s, size_t n);
/* Copies a NUL-terminated string into the arena. */
char *arena_strdup(struct arena *a, const char *s);
/* printf into a string owned by the arena. */
char *arena_sprintf(struct arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* vprintf into a string owned by the arena. */
char *arena_vsprintf(struct arena *a, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
/* Registers fn(ptr) to run when the arena is freed; returns ptr for chaining. */
void *arena_defer(struct arena *a, void (*fn)(void *), void *ptr);
/* Bytes handed out so far (for limits and tests). */
size_t arena_used(const struct arena *a);

#endif
