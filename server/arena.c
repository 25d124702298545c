#include "arena.h"

#include "alloc.h"

#include <stdalign.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ARENA_BLOCK_SIZE = 8192 };

struct arena_block {
    struct arena_block *next;
    size_t size, used;
    alignas(max_align_t) unsigned char data[];
};

struct arena_deferred {
    struct arena_deferred *next;
    void (*fn)(void *);
    void *ptr;
};

struct arena {
    struct arena_block *blocks;
    struct arena_deferred *deferred;
    size_t used;
};

struct arena *arena_new(void)
{
    return xcalloc(1, sizeof(struct arena));
}

void arena_free(struct arena *a)
{
    if (!a)
        return;
    for (struct arena_deferred *d = a->deferred; d; d = d->next)
        d->fn(d->ptr);
    struct arena_block *b = a->blocks;
    while (b) {
        struct arena_block *next = b->next;
        free(b);
        b = next;
    }
    free(a);
}

static struct arena_block *arena_grow(struct arena *a, size_t need)
{
    size_t size = need > ARENA_BLOCK_SIZE ? need : ARENA_BLOCK_SIZE;
    struct arena_block *b = xmalloc(sizeof(*b) + size);
    b->size = size;
    b->used = 0;
    if (need > ARENA_BLOCK_SIZE && a->blocks) {
        /* A large allocation gets a block of its own behind the current one, so the
         * current block's free space is not wasted. */
        b->next = a->blocks->next;
        a->blocks->next = b;
    } else {
        b->next = a->blocks;
        a->blocks = b;
    }
    return b;
}

void *arena_alloc(struct arena *a, size_t size)
{
    const size_t align = alignof(max_align_t);
    if (size > SIZE_MAX / 2)
        abort(); /* no request can need half the address space: a size computed from bad input */
    size = (size + align - 1) & ~(align - 1);
    if (size == 0)
        size = align;
    struct arena_block *b = a->blocks;
    if (!b || b->size - b->used < size)
        b = arena_grow(a, size);
    void *p = b->data + b->used;
    b->used += size;
    a->used += size;
    return p;
}

void *arena_zalloc(struct arena *a, size_t size)
{
    void *p = arena_alloc(a, size);
    memset(p, 0, size);
    return p;
}

char *arena_strndup(struct arena *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *arena_strdup(struct arena *a, const char *s)
{
    return arena_strndup(a, s, strlen(s));
}

char *arena_vsprintf(struct arena *a, const char *fmt, va_list ap)
{
    char small[256];
    va_list copy;
    va_copy(copy, ap);
    int n = vsnprintf(small, sizeof(small), fmt, copy);
    va_end(copy);
    if (n < 0)
        n = 0;
    if ((size_t)n < sizeof(small))
        return arena_strndup(a, small, (size_t)n);
    char *p = arena_alloc(a, (size_t)n + 1);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    return p;
}

char *arena_sprintf(struct arena *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *p = arena_vsprintf(a, fmt, ap);
    va_end(ap);
    return p;
}

void *arena_defer(struct arena *a, void (*fn)(void *), void *ptr)
{
    struct arena_deferred *d = arena_alloc(a, sizeof(*d));
    d->fn = fn;
    d->ptr = ptr;
    d->next = a->deferred;
    a->deferred = d;
    return ptr;
}

size_t arena_used(const struct arena *a)
{
    return a->used;
}
