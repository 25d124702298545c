/* config.h - every setting, read only from environment variables, documented in one table. */
#ifndef CANGREJO_CONFIG_H
#define CANGREJO_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* X(field, type, VARIABLE, default, min, max, help): the one list that parsing, defaults and
 * `cangrejo --help` share. STR fields are strings (NULL when unset and no default), SECRET
 * fields are strings that may also come from VARIABLE_FILE and are never printed, INT fields
 * are decimal integers within [min, max]. */
#define CONFIG_MAP(X)                                                                              \
    X(listen, STR, "CANGREJO_LISTEN", "0.0.0.0:8080", 0, 0, "address to listen on, host:port")     \
    X(threads, INT, "CANGREJO_THREADS", "0", 0, 256,                                               \
      "HTTP worker threads; 0 means one per CPU")                                                  \
    X(max_connections, INT, "CANGREJO_MAX_CONNECTIONS", "10000", 1, 1000000,                       \
      "open client connections at most")                                                           \
    X(max_connections_per_ip, INT, "CANGREJO_MAX_CONNECTIONS_PER_IP", "2000", 0, 1000000,          \
      "open connections from one client address at most; 0 means no limit")                        \
    X(connection_timeout, INT, "CANGREJO_CONNECTION_TIMEOUT_SECONDS", "30", 1, 3600,               \
      "an idle or stalled client connection is closed after this many seconds")                    \
    X(shutdown_grace, INT, "CANGREJO_SHUTDOWN_GRACE_SECONDS", "25", 1, 3600,                       \
      "on SIGTERM, in-flight requests get this long to finish")                                    \
    X(shutdown_delay_ms, INT, "CANGREJO_SHUTDOWN_DELAY_MS", "0", 0, 600000,                        \
      "on SIGTERM, keep accepting (with /readyz at 503) this long before draining")                \
    X(database_url, STR, "DATABASE_URL", NULL, 0, 0, "PostgreSQL primary, libpq URL (required)")   \
    X(replica_urls, STR, "DATABASE_REPLICA_URLS", "", 0, 0,                                        \
      "comma-separated PostgreSQL streaming replicas; empty means read from the primary")          \
    X(db_pool_size, INT, "DB_POOL_SIZE", "16", 1, 1000, "connections to the primary at most")      \
    X(db_replica_pool_size, INT, "DB_REPLICA_POOL_SIZE", "16", 1, 1000,                            \
      "connections to each replica at most")                                                       \
    X(db_replica_max_lag_ms, INT, "DB_REPLICA_MAX_LAG_MS", "5000", 0, 3600000,                     \
      "a replica lagging more than this serves no reads; 0 means no limit")                        \
    X(db_pool_wait_ms, INT, "DB_POOL_WAIT_MS", "1000", 0, 60000,                                   \
      "a request waits this long for a free connection, then gets 503")                            \
    X(db_connect_timeout, INT, "DB_CONNECT_TIMEOUT_SECONDS", "2", 1, 60,                           \
      "timeout of one connection attempt to PostgreSQL")                                           \
    X(db_statement_timeout_ms, INT, "DB_STATEMENT_TIMEOUT_MS", "5000", 100, 3600000,               \
      "statement_timeout of every query, the TCP user timeout, and (plus 1 s) the longest wait "   \
      "for any answer before the connection is dropped")                                           \
    X(writer_threads, INT, "WRITER_THREADS", "2", 1, 16,                                           \
      "group-commit writer threads, each with one primary connection")                             \
    X(writer_max_batch, INT, "WRITER_MAX_BATCH", "512", 1, 10000,                                  \
      "orders committed in one transaction at most")                                               \
    X(writer_max_wait_us, INT, "WRITER_MAX_WAIT_US", "2000", 0, 100000,                             \
      "while another writer is committing, how long a writer waits for more orders before it "     \
      "commits (bigger groups, less database work per order); 0 takes what is queued")            \
    X(order_retention_months, INT, "ORDER_RETENTION_MONTHS", "0", 0, 1200,                         \
      "raw orders are kept this many whole months before the current one (older ones are "         \
      "refused, and `cangrejo retention` drops them); rollups are kept; 0 means forever")          \
    X(redis_url, STR, "REDIS_URL", "", 0, 0,                                                       \
      "Redis cache, redis://host:port/db; empty means no cache")                                   \
    X(redis_timeout_ms, INT, "REDIS_TIMEOUT_MS", "50", 1, 10000,                                   \
      "timeout of one Redis connect or command; then the database answers")                        \
    X(cache_local_ms, INT, "CACHE_LOCAL_MS", "100", 0, 1000,                                       \
      "cached metrics are served from process memory while the merchant's data version, read "     \
      "from Redis or moved by this instance's commits, is younger than this; 0 = always Redis")    \
    X(cache_local_max_mb, INT, "CACHE_LOCAL_MAX_MB", "8", 1, 4096,                                 \
      "memory for responses kept in process")                                                      \
    X(cors_allowed_origins, STR, "CORS_ALLOWED_ORIGINS", "", 0, 0,                                 \
      "origins whose pages may call the API (CORS), comma-separated like "                         \
      "https://dash.example.com, or *; empty means none")                                          \
    X(rate_limit_subject, STR, "RATE_LIMIT_SUBJECT", "", 0, 0,                                     \
      "quotas per token subject, SCOPE=N/WINDOW,... (e.g. orders:write=1000/1s,*=100/1s); a "      \
      "route counts against the first rule naming one of its scopes, else *; needs REDIS_URL")     \
    X(rate_limit_merchant, STR, "RATE_LIMIT_MERCHANT", "", 0, 0,                                   \
      "quotas per merchant of the path, same syntax as RATE_LIMIT_SUBJECT")                        \
    X(jwt_hs256_secret, SECRET, "JWT_HS256_SECRET", NULL, 0, 0,                                    \
      "HS256 shared secret, at least 32 bytes (or JWT_HS256_SECRET_FILE)")                         \
    X(jwt_public_keys, STR, "JWT_PUBLIC_KEYS", NULL, 0, 0,                                         \
      "RS256/ES256 public keys as comma-separated kid=path.pem")                                   \
    X(jwt_jwks_file, STR, "JWT_JWKS_FILE", NULL, 0, 0, "RS256/ES256 public keys as a JWKS file")   \
    X(jwt_algorithms, STR, "JWT_ALGORITHMS", NULL, 0, 0,                                           \
      "allowed token algorithms, e.g. HS256,RS256,ES256; default: those with keys")                \
    X(jwt_issuer, STR, "JWT_ISSUER", NULL, 0, 0, "required iss claim, when set")                   \
    X(jwt_audience, STR, "JWT_AUDIENCE", NULL, 0, 0, "required aud claim, when set")               \
    X(jwt_leeway, INT, "JWT_LEEWAY_SECONDS", "30", 0, 300, "clock leeway for exp, nbf and iat")    \
    X(jwt_max_bytes, INT, "JWT_MAX_BYTES", "8192", 256, 16384, "longest accepted token")           \
    X(pii_master_key, SECRET, "PII_MASTER_KEY", NULL, 0, 0,                                        \
      "customer PII master key, base64 of 32 random bytes (or PII_MASTER_KEY_FILE); required")     \
    X(pii_master_key_id, STR, "PII_MASTER_KEY_ID", "k1", 0, 0,                                     \
      "id of PII_MASTER_KEY, stored with each customer: 1-32 of A-Z a-z 0-9 _ -")                  \
    X(tls_cert_file, STR, "TLS_CERT_FILE", NULL, 0, 0, "PEM certificate chain; enables HTTPS")     \
    X(tls_key_file, STR, "TLS_KEY_FILE", NULL, 0, 0, "PEM private key for TLS_CERT_FILE")          \
    X(log_level, STR, "LOG_LEVEL", "info", 0, 0, "debug, info, warn or error")

enum config_type { CONFIG_STR, CONFIG_SECRET, CONFIG_INT };

struct config {
#define CONFIG_FIELD_STR(f) char *f;
#define CONFIG_FIELD_SECRET(f) char *f;
#define CONFIG_FIELD_INT(f) long f;
#define CONFIG_FIELD(f, type, var, def, min, max, help) CONFIG_FIELD_##type(f)
    CONFIG_MAP(CONFIG_FIELD)
#undef CONFIG_FIELD
#undef CONFIG_FIELD_STR
#undef CONFIG_FIELD_SECRET
#undef CONFIG_FIELD_INT
    char *listen_host; /* parsed from listen */
    char *listen_port;
};

/* Looks up an environment variable; getenv, or a table in tests. */
typedef const char *(*config_getenv_fn)(const char *name);

/* Fills cfg from the environment; false with a message naming the variable on bad input. */
bool config_load(struct config *cfg, config_getenv_fn getenv_fn, char *err, size_t errlen);
/* Checks what `serve` needs on top of parsing (database, token keys, PII key, TLS pair). */
bool config_check_serve(const struct config *cfg, char *err, size_t errlen);
/* Frees every string and wipes the secrets. */
void config_free(struct config *cfg);
/* Prints the variables, defaults and help text. */
void config_print_help(FILE *out);

#endif
