#include "server/arena.h"
#include "tests/unit/check.h"

#include <stdint.h>
#include <string.h>

static int destructor_calls;
static int destructor_order[3];

static void count_destructor(void *p)
{
    destructor_order[destructor_calls++] = *(int *)p;
}

static void test_alloc_is_aligned_and_writable(void)
{
    struct arena *a = arena_new();
    for (int i = 0; i < 1000; i++) {
        char *p = arena_alloc(a, (size_t)(i % 37) + 1);
        CHECK(((uintptr_t)p % _Alignof(max_align_t)) == 0);
        memset(p, 0xab, (size_t)(i % 37) + 1);
    }
    arena_free(a);
}

static void test_large_allocation_gets_its_own_block(void)
{
    struct arena *a = arena_new();
    char *small = arena_alloc(a, 16);
    char *big = arena_alloc(a, 1 << 20);
    memset(big, 1, 1 << 20);
    char *after = arena_alloc(a, 16);
    CHECK(after == small + 16); /* the current block keeps serving small allocations */
    arena_free(a);
}

static void test_strings(void)
{
    struct arena *a = arena_new();
    CHECK_STR(arena_strdup(a, "hola"), "hola");
    CHECK_STR(arena_strndup(a, "cangrejo", 4), "cang");
    CHECK_STR(arena_sprintf(a, "%d-%s", 42, "x"), "42-x");
    char long_text[1000];
    memset(long_text, 'z', sizeof(long_text) - 1);
    long_text[sizeof(long_text) - 1] = '\0';
    CHECK_STR(arena_sprintf(a, "%s", long_text), long_text);
    char *z = arena_zalloc(a, 64);
    for (int i = 0; i < 64; i++)
        CHECK(z[i] == 0);
    arena_free(a);
}

static void test_destructors_run_last_first(void)
{
    struct arena *a = arena_new();
    destructor_calls = 0;
    int *one = arena_alloc(a, sizeof(int)), *two = arena_alloc(a, sizeof(int));
    *one = 1;
    *two = 2;
    arena_defer(a, count_destructor, one);
    arena_defer(a, count_destructor, two);
    arena_free(a);
    CHECK_INT(destructor_calls, 2);
    CHECK_INT(destructor_order[0], 2);
    CHECK_INT(destructor_order[1], 1);
}

int main(void)
{
    TEST(test_alloc_is_aligned_and_writable);
    TEST(test_large_allocation_gets_its_own_block);
    TEST(test_strings);
    TEST(test_destructors_run_last_first);
    return check_done();
}
