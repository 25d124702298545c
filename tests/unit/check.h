/* check.h - a minimal TAP unit-test harness: CHECK(...) assertions, TEST(fn) runners. */
#ifndef CANGREJO_CHECK_H
#define CANGREJO_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures_in_test;
static int check_tests_run;
static int check_tests_failed;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            printf("# %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);                      \
            check_failures_in_test++;                                                              \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *check_a_ = (a), *check_b_ = (b);                                               \
        if (!check_a_ || !check_b_ || strcmp(check_a_, check_b_) != 0) {                           \
            printf("# %s:%d: \"%s\" != \"%s\"\n", __FILE__, __LINE__, check_a_ ? check_a_ : "NULL", \
                   check_b_ ? check_b_ : "NULL");                                                   \
            check_failures_in_test++;                                                              \
        }                                                                                          \
    } while (0)

#define CHECK_INT(a, b)                                                                            \
    do {                                                                                           \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);                            \
        if (check_a_ != check_b_) {                                                                \
            printf("# %s:%d: %s == %lld, expected %lld\n", __FILE__, __LINE__, #a, check_a_,       \
                   check_b_);                                                                      \
            check_failures_in_test++;                                                              \
        }                                                                                          \
    } while (0)

#define TEST(fn)                                                                                   \
    do {                                                                                           \
        check_failures_in_test = 0;                                                                \
        fn();                                                                                      \
        check_tests_run++;                                                                         \
        if (check_failures_in_test)                                                                \
            check_tests_failed++;                                                                  \
        printf("%s %d - %s\n", check_failures_in_test ? "not ok" : "ok", check_tests_run, #fn);    \
    } while (0)

/* Prints the TAP plan and returns the process exit status. */
static inline int check_done(void)
{
    printf("1..%d\n", check_tests_run);
    return check_tests_failed ? 1 : 0;
}

#endif
