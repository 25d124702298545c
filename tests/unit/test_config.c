#include "server/config.h"
#include "tests/unit/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A fake environment: pairs of name, value. */
static const char *const *fake_env;

static const char *fake_getenv(const char *name)
{
    for (const char *const *p = fake_env; p && *p; p += 2)
        if (strcmp(p[0], name) == 0)
            return p[1];
    return NULL;
}

static bool load(const char *const *env, struct config *cfg, char *err)
{
    fake_env = env;
    return config_load(cfg, fake_getenv, err, 256);
}

static void test_defaults(void)
{
    struct config cfg;
    char err[256];
    const char *const env[] = {NULL};
    CHECK(load(env, &cfg, err));
    CHECK_STR(cfg.listen_host, "0.0.0.0");
    CHECK_STR(cfg.listen_port, "8080");
    CHECK_INT(cfg.jwt_leeway, 30);
    CHECK_INT(cfg.max_connections, 10000);
    CHECK_STR(cfg.log_level, "info");
    CHECK(cfg.database_url == NULL);
    CHECK(cfg.jwt_hs256_secret == NULL);
    config_free(&cfg);
}

static void test_values_and_ipv6_listen(void)
{
    struct config cfg;
    char err[256];
    const char *const env[] = {"CANGREJO_LISTEN", "[::1]:9000", "CANGREJO_THREADS", "8",
                               "DATABASE_URL", "postgresql://x@127.0.0.1/db", NULL};
    CHECK(load(env, &cfg, err));
    CHECK_STR(cfg.listen_host, "::1");
    CHECK_STR(cfg.listen_port, "9000");
    CHECK_INT(cfg.threads, 8);
    CHECK_STR(cfg.database_url, "postgresql://x@127.0.0.1/db");
    config_free(&cfg);
}

static void test_bad_values_name_the_variable(void)
{
    struct config cfg;
    char err[256];
    const char *const bad_int[] = {"CANGREJO_THREADS", "eight", NULL};
    CHECK(!load(bad_int, &cfg, err));
    CHECK(strstr(err, "CANGREJO_THREADS") != NULL);
    const char *const out_of_range[] = {"JWT_LEEWAY_SECONDS", "301", NULL};
    CHECK(!load(out_of_range, &cfg, err));
    CHECK(strstr(err, "JWT_LEEWAY_SECONDS") != NULL);
    const char *const trailing[] = {"DB_POOL_SIZE", "12x", NULL};
    CHECK(!load(trailing, &cfg, err));
    const char *const bad_listen[] = {"CANGREJO_LISTEN", "8080", NULL};
    CHECK(!load(bad_listen, &cfg, err));
    CHECK(strstr(err, "CANGREJO_LISTEN") != NULL);
    const char *const bad_port[] = {"CANGREJO_LISTEN", "127.0.0.1:70000", NULL};
    CHECK(!load(bad_port, &cfg, err));
    const char *const bad_level[] = {"LOG_LEVEL", "loud", NULL};
    CHECK(!load(bad_level, &cfg, err));
    CHECK(strstr(err, "LOG_LEVEL") != NULL);
}

static void test_secret_from_file(void)
{
    char path[] = "/tmp/cangrejo-secret-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    const char *secret = "0123456789abcdef0123456789abcdef\n";
    CHECK(write(fd, secret, strlen(secret)) == (ssize_t)strlen(secret));
    close(fd);
    struct config cfg;
    char err[256];
    const char *const env[] = {"JWT_HS256_SECRET_FILE", path, NULL};
    CHECK(load(env, &cfg, err));
    CHECK_STR(cfg.jwt_hs256_secret, "0123456789abcdef0123456789abcdef");
    config_free(&cfg);
    const char *const both[] = {"JWT_HS256_SECRET_FILE", path, "JWT_HS256_SECRET", "x", NULL};
    CHECK(!load(both, &cfg, err));
    unlink(path);
    const char *const missing[] = {"JWT_HS256_SECRET_FILE", "/nonexistent/secret", NULL};
    CHECK(!load(missing, &cfg, err));
    CHECK(strstr(err, "JWT_HS256_SECRET_FILE") != NULL);
}

static void test_serve_requirements(void)
{
    struct config cfg;
    char err[256];
    const char *const no_db[] = {"JWT_HS256_SECRET", "0123456789abcdef0123456789abcdef", NULL};
    CHECK(load(no_db, &cfg, err));
    CHECK(!config_check_serve(&cfg, err, sizeof(err)));
    CHECK(strstr(err, "DATABASE_URL") != NULL);
    config_free(&cfg);
    const char *const no_keys[] = {"DATABASE_URL", "postgresql://localhost/x", NULL};
    CHECK(load(no_keys, &cfg, err));
    CHECK(!config_check_serve(&cfg, err, sizeof(err)));
    CHECK(strstr(err, "JWT_HS256_SECRET") != NULL);
    config_free(&cfg);
    const char *const half_tls[] = {"DATABASE_URL", "postgresql://localhost/x", "JWT_HS256_SECRET",
                                    "0123456789abcdef0123456789abcdef", "TLS_CERT_FILE", "/c.pem",
                                    "PII_MASTER_KEY",
                                    "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=", NULL};
    CHECK(load(half_tls, &cfg, err));
    CHECK(!config_check_serve(&cfg, err, sizeof(err)));
    CHECK(strstr(err, "TLS_KEY_FILE") != NULL);
    config_free(&cfg);
    const char *const ok[] = {"DATABASE_URL", "postgresql://localhost/x", "JWT_HS256_SECRET",
                              "0123456789abcdef0123456789abcdef", "PII_MASTER_KEY",
                              "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=", NULL};
    CHECK(load(ok, &cfg, err));
    CHECK(config_check_serve(&cfg, err, sizeof(err)));
    CHECK_STR(cfg.pii_master_key_id, "k1");
    config_free(&cfg);
}

/* serve needs a PII master key of exactly 32 bytes and a sane key id; the message names the
 * variable and never shows the key. */
static void test_serve_needs_a_pii_master_key(void)
{
    struct config cfg;
    char err[256];
    const char *const none[] = {"DATABASE_URL", "postgresql://localhost/x", "JWT_HS256_SECRET",
                                "0123456789abcdef0123456789abcdef", NULL};
    CHECK(load(none, &cfg, err));
    CHECK(!config_check_serve(&cfg, err, sizeof(err)));
    CHECK(strstr(err, "PII_MASTER_KEY is required") != NULL);
    config_free(&cfg);
    const char *const short_key[] = {"DATABASE_URL", "postgresql://localhost/x",
                                     "JWT_HS256_SECRET", "0123456789abcdef0123456789abcdef",
                                     "PII_MASTER_KEY", "c2hvcnQta2V5LXNlY3JldA==", NULL};
    CHECK(load(short_key, &cfg, err));
    CHECK(!config_check_serve(&cfg, err, sizeof(err)));
    CHECK(strstr(err, "PII_MASTER_KEY must be") != NULL);
    CHECK(strstr(err, "c2hvcnQta2V5") == NULL);
    config_free(&cfg);
    const char *const bad_id[] = {"DATABASE_URL", "postgresql://localhost/x", "JWT_HS256_SECRET",
                                  "0123456789abcdef0123456789abcdef", "PII_MASTER_KEY",
                                  "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=",
                                  "PII_MASTER_KEY_ID", "key one", NULL};
    CHECK(load(bad_id, &cfg, err));
    CHECK(!config_check_serve(&cfg, err, sizeof(err)));
    CHECK(strstr(err, "PII_MASTER_KEY_ID") != NULL);
    config_free(&cfg);
}

static void test_help_lists_every_variable(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    config_print_help(f);
    fclose(f);
    const char *names[] = {"CANGREJO_LISTEN", "DATABASE_URL", "DATABASE_REPLICA_URLS", "REDIS_URL",
                           "JWT_HS256_SECRET", "JWT_PUBLIC_KEYS", "JWT_JWKS_FILE", "JWT_ISSUER",
                           "JWT_AUDIENCE", "TLS_CERT_FILE", "TLS_KEY_FILE", "CANGREJO_THREADS",
                           "LOG_LEVEL", "PII_MASTER_KEY", "PII_MASTER_KEY_ID"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        CHECK(strstr(text, names[i]) != NULL);
    free(text);
}

int main(void)
{
    TEST(test_defaults);
    TEST(test_values_and_ipv6_listen);
    TEST(test_bad_values_name_the_variable);
    TEST(test_secret_from_file);
    TEST(test_serve_requirements);
    TEST(test_serve_needs_a_pii_master_key);
    TEST(test_help_lists_every_variable);
    return check_done();
}
