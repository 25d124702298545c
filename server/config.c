#include "config.h"

#include "alloc.h"
#include "crypto.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct config_var {
    const char *name, *def, *help;
    enum config_type type;
    size_t offset;
    long min, max;
};

static const struct config_var vars[] = {
#define CONFIG_VAR(f, type, var, def, min, max, help)                                              \
    {var, def, help, CONFIG_##type, offsetof(struct config, f), min, max},
    CONFIG_MAP(CONFIG_VAR)
#undef CONFIG_VAR
};

enum { SECRET_FILE_MAX = 64 * 1024 };

static char **str_field(struct config *cfg, const struct config_var *v)
{
    return (char **)((char *)cfg + v->offset);
}

static long *int_field(struct config *cfg, const struct config_var *v)
{
    return (long *)((char *)cfg + v->offset);
}

static bool parse_long(const char *s, long *out)
{
    if (!*s)
        return false;
    char *end;
    errno = 0;
    long n = strtol(s, &end, 10);
    if (errno || *end || !(isdigit((unsigned char)*s) || *s == '-'))
        return false;
    *out = n;
    return true;
}

static char *read_secret_file(const char *path, char *err, size_t errlen, const char *var)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s_FILE: cannot open %s: %s", var, path, strerror(errno));
        return NULL;
    }
    char *data = xmalloc(SECRET_FILE_MAX + 1);
    size_t n = fread(data, 1, SECRET_FILE_MAX + 1, f);
    fclose(f);
    if (n > SECRET_FILE_MAX) {
        snprintf(err, errlen, "%s_FILE: %s is larger than %d bytes", var, path, SECRET_FILE_MAX);
        xfree_secret(data, SECRET_FILE_MAX + 1);
        return NULL;
    }
    while (n > 0 && (data[n - 1] == '\n' || data[n - 1] == '\r'))
        n--; /* files written by editors and `echo` end with a newline that is not the secret */
    data[n] = '\0';
    char *secret = xstrdup(data);
    xfree_secret(data, SECRET_FILE_MAX + 1);
    return secret;
}

static bool load_secret(struct config *cfg, const struct config_var *v, config_getenv_fn env,
                        char *err, size_t errlen)
{
    const char *value = env(v->name);
    char file_var[128];
    snprintf(file_var, sizeof(file_var), "%s_FILE", v->name);
    const char *path = env(file_var);
    if (value && *value && path && *path) {
        snprintf(err, errlen, "%s and %s are both set: choose one", v->name, file_var);
        return false;
    }
    if (value && *value) {
        *str_field(cfg, v) = xstrdup(value);
        return true;
    }
    if (path && *path) {
        *str_field(cfg, v) = read_secret_file(path, err, errlen, v->name);
        return *str_field(cfg, v) != NULL;
    }
    return true;
}

static bool load_int(struct config *cfg, const struct config_var *v, const char *value, char *err,
                     size_t errlen)
{
    long n;
    if (!parse_long(value, &n) || n < v->min || n > v->max) {
        snprintf(err, errlen, "%s must be an integer from %ld to %ld, got \"%s\"", v->name, v->min,
                 v->max, value);
        return false;
    }
    *int_field(cfg, v) = n;
    return true;
}

static bool load_var(struct config *cfg, const struct config_var *v, config_getenv_fn env,
                     char *err, size_t errlen)
{
    if (v->type == CONFIG_SECRET)
        return load_secret(cfg, v, env, err, errlen);
    const char *value = env(v->name);
    if (!value || (!*value && v->type == CONFIG_INT))
        value = v->def;
    if (v->type == CONFIG_INT)
        return load_int(cfg, v, value, err, errlen);
    *str_field(cfg, v) = value ? xstrdup(value) : NULL;
    return true;
}

/* Splits "host:port", "[v6]:port"; the port must be 1-65535. */
static bool parse_listen(struct config *cfg, char *err, size_t errlen)
{
    const char *s = cfg->listen;
    const char *colon = strrchr(s, ':');
    const char *host = s, *host_end = colon;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            goto bad;
        host = s + 1;
        host_end = close;
        colon = close + 1;
    }
    long port;
    if (!colon || host_end == host || !parse_long(colon + 1, &port) || port < 1 || port > 65535)
        goto bad;
    cfg->listen_host = xstrndup(host, (size_t)(host_end - host));
    cfg->listen_port = xstrdup(colon + 1);
    return true;
bad:
    snprintf(err, errlen, "CANGREJO_LISTEN must be host:port (e.g. 0.0.0.0:8080), got \"%s\"", s);
    return false;
}

static bool check_log_level(const struct config *cfg, char *err, size_t errlen)
{
    static const char *const levels[] = {"debug", "info", "warn", "warning", "error"};
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
        if (strcmp(cfg->log_level, levels[i]) == 0)
            return true;
    snprintf(err, errlen, "LOG_LEVEL must be debug, info, warn or error, got \"%s\"",
             cfg->log_level);
    return false;
}

bool config_load(struct config *cfg, config_getenv_fn env, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        if (!load_var(cfg, &vars[i], env, err, errlen)) {
            config_free(cfg);
            return false;
        }
    }
    if (!parse_listen(cfg, err, errlen) || !check_log_level(cfg, err, errlen)) {
        config_free(cfg);
        return false;
    }
    return true;
}

/* The PII master key: present, base64 of exactly 32 bytes (never echoed), and a sane id. */
static bool check_pii_key(const struct config *cfg, char *err, size_t errlen)
{
    struct crypto_keyring *k =
        crypto_keyring_new(cfg->pii_master_key, cfg->pii_master_key_id, err, errlen);
    crypto_keyring_free(k);
    return k != NULL;
}

bool config_check_serve(const struct config *cfg, char *err, size_t errlen)
{
    if (!cfg->database_url || !*cfg->database_url) {
        snprintf(err, errlen, "DATABASE_URL is required (the PostgreSQL primary)");
        return false;
    }
    if (!cfg->jwt_hs256_secret && !cfg->jwt_public_keys && !cfg->jwt_jwks_file) {
        snprintf(err, errlen,
                 "no token keys: set JWT_HS256_SECRET, JWT_PUBLIC_KEYS or JWT_JWKS_FILE");
        return false;
    }
    if (!check_pii_key(cfg, err, errlen))
        return false;
    if (!cfg->tls_cert_file != !cfg->tls_key_file) {
        snprintf(err, errlen, "TLS_CERT_FILE and TLS_KEY_FILE must be set together");
        return false;
    }
    return true;
}

void config_free(struct config *cfg)
{
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        const struct config_var *v = &vars[i];
        if (v->type == CONFIG_INT)
            continue;
        char **field = str_field(cfg, v);
        if (*field && v->type == CONFIG_SECRET)
            xfree_secret(*field, strlen(*field));
        else
            free(*field);
        *field = NULL;
    }
    free(cfg->listen_host);
    free(cfg->listen_port);
    cfg->listen_host = cfg->listen_port = NULL;
}

void config_print_help(FILE *out)
{
    fprintf(out, "Environment variables (configuration comes only from these):\n");
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        const struct config_var *v = &vars[i];
        fprintf(out, "  %-36s %s", v->name, v->help);
        if (v->def && *v->def)
            fprintf(out, " [default: %s]", v->def);
        fputc('\n', out);
    }
}
