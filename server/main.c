/* cangrejo: the binary's commands, the route table, and the serve lifecycle. */
#include "cache/cache.h"
#include "db/migrate.h"
#include "db/merchants.h"
#include "db/pool.h"
#include "db/reprocess.h"
#include "db/retention.h"
#include "db/writer.h"
#include "handlers/handlers.h"
#include "handlers/validate.h"
#include "server/alloc.h"
#include "server/arena.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/cors.h"
#include "server/crypto.h"
#include "server/http.h"
#include "server/jobs.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/ratelimit.h"
#include "server/seed.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CANGREJO_VERSION "0.1.0"

enum {
    KIB = 1024,
    ORDER_BODY_MAX = 256 * KIB,
    BATCH_BODY_MAX = 32 * KIB * KIB,
    SMALL_BODY_MAX = 64 * KIB,
    PEM_MAX = 1024 * KIB,
    BATCH_THREADS = 2,
    BATCH_QUEUE = 64,
    PARSE_THREADS = 2, /* parse batch uploads as they stream in */
    PARSE_QUEUE = 8,   /* chunks waiting at most; past that, the HTTP thread parses them */
    JOB_WATCH_S = 5,
};

/* Every route of the API; the server checks token, scope and tenant before the handler. */
static const struct srv_route routes[] = {
    {SRV_GET, "/livez", false, 0, SRV_BODY_NONE, 0, h_health_livez},
    {SRV_GET, "/readyz", false, 0, SRV_BODY_NONE, 0, h_health_readyz},
    {SRV_GET, "/metrics", false, 0, SRV_BODY_NONE, 0, h_health_metrics},
    {SRV_GET, "/openapi.json", false, 0, SRV_BODY_NONE, 0, h_docs_openapi},
    {SRV_GET, "/docs", false, 0, SRV_BODY_NONE, 0, h_web_get},
    {SRV_GET, "/docs/{asset}", false, 0, SRV_BODY_NONE, 0, h_web_get},
    {SRV_GET, "/dashboard", false, 0, SRV_BODY_NONE, 0, h_web_get},
    {SRV_GET, "/dashboard/{asset}", false, 0, SRV_BODY_NONE, 0, h_web_get},
    {SRV_PUT, "/v1/merchants/{merchant_id}", true, AUTH_SCOPE_MERCHANTS_ADMIN, SRV_BODY_JSON,
     SMALL_BODY_MAX, h_merchants_put},
    {SRV_GET, "/v1/merchants/{merchant_id}", true,
     AUTH_SCOPE_MERCHANTS_ADMIN | AUTH_SCOPE_METRICS_READ, SRV_BODY_NONE, 0, h_merchants_get},
    {SRV_POST, "/v1/merchants/{merchant_id}/orders", true, AUTH_SCOPE_ORDERS_WRITE, SRV_BODY_JSON,
     ORDER_BODY_MAX, h_orders_post},
    {SRV_GET, "/v1/merchants/{merchant_id}/orders", true, AUTH_SCOPE_ORDERS_READ, SRV_BODY_NONE,
     0, h_orders_list},
    {SRV_POST, "/v1/merchants/{merchant_id}/order-batches", true, AUTH_SCOPE_ORDERS_WRITE,
     SRV_BODY_JSON | SRV_BODY_NDJSON, BATCH_BODY_MAX, h_batches_post, h_batches_body},
    {SRV_GET, "/v1/merchants/{merchant_id}/orders/{order_id}", true, AUTH_SCOPE_ORDERS_READ,
     SRV_BODY_NONE, 0, h_orders_get},
    {SRV_POST, "/v1/merchants/{merchant_id}/orders/{order_id}/cancel", true,
     AUTH_SCOPE_ORDERS_WRITE, SRV_BODY_JSON, SMALL_BODY_MAX, h_orders_cancel},
    {SRV_POST, "/v1/merchants/{merchant_id}/orders/{order_id}/delivery-events", true,
     AUTH_SCOPE_DELIVERIES_WRITE, SRV_BODY_JSON, SMALL_BODY_MAX, h_deliveries_post},
    {SRV_GET, "/v1/merchants/{merchant_id}/metrics/sales", true, AUTH_SCOPE_METRICS_READ,
     SRV_BODY_NONE, 0, h_metrics_sales},
    {SRV_GET, "/v1/merchants/{merchant_id}/metrics/products", true, AUTH_SCOPE_METRICS_READ,
     SRV_BODY_NONE, 0, h_metrics_products},
    {SRV_GET, "/v1/merchants/{merchant_id}/metrics/promotions", true, AUTH_SCOPE_METRICS_READ,
     SRV_BODY_NONE, 0, h_metrics_promotions},
    {SRV_GET, "/v1/merchants/{merchant_id}/metrics/deliveries", true, AUTH_SCOPE_METRICS_READ,
     SRV_BODY_NONE, 0, h_metrics_deliveries},
    {SRV_POST, "/v1/admin/reprocess", true, AUTH_SCOPE_ADMIN, SRV_BODY_JSON, SMALL_BODY_MAX,
     h_admin_reprocess},
    {SRV_GET, "/v1/admin/jobs/{job_id}", true, AUTH_SCOPE_ADMIN, SRV_BODY_NONE, 0, h_admin_job},
    {SRV_GET, "/v1/merchants/{merchant_id}/customers/{customer_ref}/export", true,
     AUTH_SCOPE_PII_READ, SRV_BODY_NONE, 0, h_customers_export},
    {SRV_DELETE, "/v1/merchants/{merchant_id}/customers/{customer_ref}", true,
     AUTH_SCOPE_CUSTOMERS_ERASE, SRV_BODY_NONE, 0, h_customers_erase},
};

static void print_usage(FILE *out)
{
    fprintf(out,
            "cangrejo " CANGREJO_VERSION
            " - order ingestion and merchant metrics HTTP API\n\n"
            "Usage: cangrejo COMMAND [OPTIONS]\n\n"
            "Commands:\n"
            "  serve      run the HTTP server until SIGTERM or SIGINT\n"
            "  migrate    apply pending database migrations (safe to run concurrently)\n"
            "  token      mint a development HS256 token from JWT_HS256_SECRET:\n"
            "               --merchant ID|*   merchant the token may act for (repeatable,\n"
            "                                 or comma-separated; default *)\n"
            "               --scope \"S ...\"   space-separated scopes\n"
            "                                 (default: every scope but admin and pii ones)\n"
            "               --sub NAME        subject (default: dev)\n"
            "               --ttl SECONDS     lifetime (default: 3600)\n"
            "  seed       write demo merchants (1, 2, 3) and weeks of orders; deterministic:\n"
            "               --seed N          random seed (default 42)\n"
            "               --days N          days of history up to now (default 42)\n"
            "               --orders-per-day N  per store on a weekday (default 60)\n"
            "  reprocess  rebuild every derived figure of a range from the stored orders, while\n"
            "             ingestion goes on; safe to repeat:\n"
            "               --from RFC3339    start (inclusive, on a quarter hour)\n"
            "               --to RFC3339      end (exclusive, on a quarter hour)\n"
            "               --merchant ID     one merchant (default: every merchant)\n"
            "  retention  drop raw orders older than ORDER_RETENTION_MONTHS (rollups are kept);\n"
            "             run it daily (a CronJob); safe to run from several places at once\n"
            "  version    print the version\n"
            "  help       print this help\n\n");
    config_print_help(out);
    fprintf(out, "\nSecrets (JWT_HS256_SECRET, PII_MASTER_KEY) may instead be read from the\n"
                 "file named by the same variable with a _FILE suffix. Logs are JSON lines on\n"
                 "stdout.\n"
                 "\nSIGHUP re-reads the token keys (JWT_PUBLIC_KEYS files, JWT_JWKS_FILE) and\n"
                 "swaps them in without dropping requests; if they cannot be loaded, the\n"
                 "previous keys stay in use and the log says why.\n");
}

static const char *env_lookup(const char *name)
{
    return getenv(name);
}

static bool load_config(struct config *cfg)
{
    char err[512];
    if (!config_load(cfg, env_lookup, err, sizeof(err))) {
        fprintf(stderr, "cangrejo: configuration error: %s\n", err);
        return false;
    }
    enum log_level level = LOG_INFO;
    log_parse_level(cfg->log_level, &level);
    log_set_level(level);
    return true;
}

static int cmd_migrate(void)
{
    struct config cfg;
    if (!load_config(&cfg))
        return 2;
    int rc = 0;
    char err[512];
    if (!cfg.database_url || !*cfg.database_url) {
        fprintf(stderr, "cangrejo: configuration error: DATABASE_URL is required\n");
        rc = 2;
    } else {
        int applied = db_migrate(cfg.database_url, err, sizeof(err));
        if (applied < 0) {
            fprintf(stderr, "cangrejo: migrate failed: %s\n", err);
            rc = 1;
        } else {
            log_info("schema at version %d (%d migration(s) applied)",
                     db_schema_version_expected(), applied);
        }
    }
    config_free(&cfg);
    return rc;
}

/* Runs a reprocess job in this process: the same job table and steps as the API's. */
static int run_reprocess(const struct config *cfg, int64_t merchant, int64_t from_us,
                         int64_t to_us)
{
    char err[512], job_id[33];
    struct db_options dbo = {cfg->database_url, "", 2, 1, 30000, (unsigned)cfg->db_connect_timeout,
                             600000, 0};
    struct db *db = db_open(&dbo, err, sizeof(err));
    struct cache *cache =
        db ? cache_new(cfg->redis_url, (unsigned)cfg->redis_timeout_ms, 0, 0, err, sizeof(err))
           : NULL;
    int rc = 1;
    h_admin_new_job_id(job_id);
    struct arena *a = arena_new();
    struct db_merchant m;
    if (!db || !cache)
        fprintf(stderr, "cangrejo reprocess: %s\n", err);
    else if (merchant && db_merchant_get(db, a, merchant, &m) != DB_OK)
        fprintf(stderr, "cangrejo reprocess: no merchant %lld\n", (long long)merchant);
    else if (db_reprocess_create(db, job_id, merchant, from_us / 1000000, to_us / 1000000) !=
             DB_OK)
        fprintf(stderr, "cangrejo reprocess: cannot record the job\n");
    else if (db_reprocess_run(db, job_id, h_admin_publish_rebuild, cache, NULL) == DB_OK) {
        printf("reprocess %s: succeeded\n", job_id);
        rc = 0;
    } else
        fprintf(stderr, "cangrejo reprocess: job %s did not finish (see the log)\n", job_id);
    arena_free(a);
    cache_free(cache);
    db_close(db);
    return rc;
}

/* A positive merchant id written in plain digits. */
static bool parse_merchant_id(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < 1 || !isdigit((unsigned char)*s))
        return false;
    *out = v;
    return true;
}

/* Reads --from, --to and --merchant with the API's rules; false after printing why not. */
static bool parse_reprocess_options(int argc, char **argv, int64_t *from, int64_t *to,
                                    int64_t *merchant)
{
    static const struct option opts[] = {{"from", required_argument, NULL, 'f'},
                                         {"to", required_argument, NULL, 't'},
                                         {"merchant", required_argument, NULL, 'm'},
                                         {NULL, 0, NULL, 0}};
    const int64_t quarter = 15 * 60 * 1000000LL, max_range = 400LL * 86400 * 1000000;
    *from = *to = -1;
    *merchant = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        bool ok = c == 'f'   ? v_parse_timestamp(optarg, from) && *from % quarter == 0
                  : c == 't' ? v_parse_timestamp(optarg, to) && *to % quarter == 0
                  : c == 'm' ? parse_merchant_id(optarg, merchant)
                             : false;
        if (!ok) {
            fprintf(stderr, "cangrejo reprocess: bad option (timestamps are RFC 3339 with an "
                            "offset, on a quarter hour; --merchant is a positive id)\n");
            return false;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cangrejo reprocess: unexpected argument \"%s\"\n", argv[optind]);
        return false;
    }
    if (*from < 0 || *to <= *from || *to - *from > max_range) {
        fprintf(stderr, "cangrejo reprocess: --from and --to are required, --to after --from, "
                        "at most 400 days apart\n");
        return false;
    }
    return true;
}

static int cmd_reprocess(int argc, char **argv)
{
    int64_t from, to, merchant;
    if (!parse_reprocess_options(argc, argv, &from, &to, &merchant))
        return 2;
    struct config cfg;
    if (!load_config(&cfg))
        return 2;
    int rc = 2;
    if (!cfg.database_url || !*cfg.database_url)
        fprintf(stderr, "cangrejo reprocess: DATABASE_URL is required\n");
    else
        rc = run_reprocess(&cfg, merchant, from, to);
    config_free(&cfg);
    return rc;
}

static int cmd_retention(void)
{
    struct config cfg;
    if (!load_config(&cfg))
        return 2;
    int rc = 2;
    char err[512];
    if (!cfg.database_url || !*cfg.database_url)
        fprintf(stderr, "cangrejo retention: DATABASE_URL is required\n");
    else if (cfg.order_retention_months == 0)
        fprintf(stderr, "cangrejo retention: ORDER_RETENTION_MONTHS is 0 (keep forever)\n");
    else {
        int dropped = db_apply_retention(cfg.database_url, (unsigned)cfg.order_retention_months,
                                         err, sizeof(err));
        rc = dropped < 0 ? 1 : 0;
        if (dropped < 0)
            fprintf(stderr, "cangrejo retention: %s\n", err);
        else
            log_info("retention: kept %ld months of raw orders, dropped %d partitions",
                     cfg.order_retention_months, dropped);
    }
    config_free(&cfg);
    return rc;
}

static int cmd_seed(int argc, char **argv)
{
    struct config cfg;
    if (!load_config(&cfg))
        return 2;
    int rc = 2;
    if (!cfg.database_url || !*cfg.database_url)
        fprintf(stderr, "cangrejo seed: DATABASE_URL is required\n");
    else
        rc = seed_main(&cfg, argc, argv);
    config_free(&cfg);
    return rc;
}

/* Appends one --merchant value to the comma-separated list. */
static void add_merchant(char *list, size_t size, const char *value)
{
    size_t used = strlen(list);
    snprintf(list + used, size - used, "%s%s", used ? "," : "", value);
}

static int cmd_token(int argc, char **argv)
{
    static const struct option opts[] = {{"merchant", required_argument, NULL, 'm'},
                                         {"scope", required_argument, NULL, 's'},
                                         {"sub", required_argument, NULL, 'u'},
                                         {"ttl", required_argument, NULL, 't'},
                                         {NULL, 0, NULL, 0}};
    char merchants[4096] = "";
    const char *scope = "orders:write orders:read metrics:read deliveries:write merchants:admin";
    const char *sub = "dev";
    long ttl = 3600;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'm')
            add_merchant(merchants, sizeof(merchants), optarg);
        else if (c == 's')
            scope = optarg;
        else if (c == 'u')
            sub = optarg;
        else if (c == 't' && (ttl = strtol(optarg, NULL, 10)) > 0)
            continue;
        else {
            fprintf(stderr, "cangrejo token: bad option (see cangrejo help)\n");
            return 2;
        }
    }
    struct config cfg;
    if (!load_config(&cfg))
        return 2;
    int rc = 0;
    if (!cfg.jwt_hs256_secret) {
        fprintf(stderr, "cangrejo token: JWT_HS256_SECRET (or _FILE) is required\n");
        rc = 2;
    } else {
        char *token = auth_mint_hs256(cfg.jwt_hs256_secret, sub, scope,
                                      *merchants ? merchants : "*", ttl, time(NULL));
        if (!token) {
            fprintf(stderr, "cangrejo token: --merchant must be * or positive integers\n");
            rc = 2;
        } else {
            printf("%s\n", token);
            free(token);
        }
    }
    config_free(&cfg);
    return rc;
}

static char *read_pem(const char *path, const char *var)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cangrejo: configuration error: %s: cannot open %s: %s\n", var, path,
                strerror(errno));
        return NULL;
    }
    char *data = xmalloc(PEM_MAX + 1);
    size_t n = fread(data, 1, PEM_MAX, f);
    fclose(f);
    data[n] = '\0';
    return data;
}

/* Everything serve owns, torn down in reverse order. */
struct serve_state {
    struct config cfg;
    struct auth_keeper *auth;
    struct db *db;
    struct cache *cache;
    struct ratelimit *ratelimit; /* NULL when no quota is configured */
    struct cors *cors;           /* NULL when no cross-origin access is allowed */
    struct db_writer *writer;
    struct jobs *jobs;
    struct jobs *parse_jobs;
    struct h_app app;
    pthread_t watcher; /* resumes abandoned reprocess jobs */
    pthread_mutex_t watch_lock;
    pthread_cond_t watch_wake;
    bool watching, watch_stop;
    struct crypto_keyring *pii_keys;
    char *tls_cert, *tls_key;
    struct srv *srv;
};

/* After each group commit: tell every instance (through Redis) the merchants' new data
 * versions and commit position, before any client of the group hears back. */
static void publish_commit(void *ud, const struct db_ingest_commit *commit)
{
    cache_merchant_bump(ud, commit->merchant_ids, commit->versions, commit->n_merchants,
                        commit->lsn);
}

static bool open_dependencies(struct serve_state *st)
{
    char err[512];
    struct config *cfg = &st->cfg;
    struct auth_config ac = {cfg->jwt_hs256_secret, cfg->jwt_public_keys, cfg->jwt_jwks_file,
                             cfg->jwt_algorithms,   cfg->jwt_issuer,      cfg->jwt_audience,
                             (int)cfg->jwt_leeway,  (size_t)cfg->jwt_max_bytes};
    struct db_options dbo = {cfg->database_url,
                             cfg->replica_urls,
                             (unsigned)cfg->db_pool_size,
                             (unsigned)cfg->db_replica_pool_size,
                             (unsigned)cfg->db_pool_wait_ms,
                             (unsigned)cfg->db_connect_timeout,
                             (unsigned)cfg->db_statement_timeout_ms,
                             (unsigned)cfg->db_replica_max_lag_ms};
    if (!config_check_serve(cfg, err, sizeof(err)) ||
        !(st->pii_keys = crypto_keyring_new(cfg->pii_master_key, cfg->pii_master_key_id, err,
                                            sizeof(err))) ||
        !(st->auth = auth_keeper_new(&ac, err, sizeof(err))) ||
        !(st->db = db_open(&dbo, err, sizeof(err))) ||
        !(st->cache = cache_new(cfg->redis_url, (unsigned)cfg->redis_timeout_ms,
                                (unsigned)cfg->cache_local_ms,
                                (size_t)cfg->cache_local_max_mb << 20, err,
                                sizeof(err))) ||
        !ratelimit_new(cfg->rate_limit_subject, cfg->rate_limit_merchant, st->cache,
                       &st->ratelimit, err, sizeof(err)) ||
        !cors_new(cfg->cors_allowed_origins, &st->cors, err, sizeof(err))) {
        fprintf(stderr, "cangrejo: configuration error: %s\n", err);
        return false;
    }
    if (cfg->tls_cert_file && (!(st->tls_cert = read_pem(cfg->tls_cert_file, "TLS_CERT_FILE")) ||
                               !(st->tls_key = read_pem(cfg->tls_key_file, "TLS_KEY_FILE"))))
        return false;
    if (st->ratelimit && !cache_enabled(st->cache))
        log_warn("RATE_LIMIT_* is set but REDIS_URL is not: quotas are not enforced");
    crypto_pii_install(st->pii_keys); /* before any thread that may use it starts */
    struct db_writer_options wo = {(unsigned)cfg->writer_threads, (unsigned)cfg->writer_max_batch,
                                   (unsigned)cfg->writer_max_wait_us, publish_commit, st->cache};
    st->writer = db_writer_start(st->db, &wo);
    st->app.db = st->db;
    st->app.cache = st->cache;
    st->app.writer = st->writer;
    st->jobs = jobs_start(BATCH_THREADS, BATCH_QUEUE);
    st->app.jobs = st->jobs;
    st->parse_jobs = jobs_start(PARSE_THREADS, PARSE_QUEUE);
    st->app.parse_jobs = st->parse_jobs;
    st->app.retention_months = (unsigned)cfg->order_retention_months;
    return true;
}

/* Reprocess jobs left queued, or running by a server that stopped, go on here (a job another
 * runner holds is skipped by the runner itself). */
static void resume_jobs(struct serve_state *st)
{
    char ids[16][33];
    size_t n = db_reprocess_pending(st->db, ids, 16);
    for (size_t i = 0; i < n; i++)
        h_admin_start_job(&st->app, ids[i]);
}

/* Every few seconds, until stopped: looks for jobs to resume, and hands the memory that a
 * burst (thousands of connections, large batches) freed back to the system, which glibc
 * keeps in its per-thread arenas otherwise. */
static void *watch_jobs(void *arg)
{
    struct serve_state *st = arg;
    pthread_mutex_lock(&st->watch_lock);
    while (!st->watch_stop) {
        pthread_mutex_unlock(&st->watch_lock);
        resume_jobs(st);
        malloc_trim(0);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += JOB_WATCH_S;
        pthread_mutex_lock(&st->watch_lock);
        if (!st->watch_stop)
            pthread_cond_timedwait(&st->watch_wake, &st->watch_lock, &until);
    }
    pthread_mutex_unlock(&st->watch_lock);
    return NULL;
}

static void start_job_watch(struct serve_state *st)
{
    pthread_mutex_init(&st->watch_lock, NULL);
    pthread_cond_init(&st->watch_wake, NULL);
    st->watching = pthread_create(&st->watcher, NULL, watch_jobs, st) == 0;
}

static void stop_job_watch(struct serve_state *st)
{
    if (!st->watching)
        return;
    pthread_mutex_lock(&st->watch_lock);
    st->watch_stop = true;
    pthread_cond_signal(&st->watch_wake);
    pthread_mutex_unlock(&st->watch_lock);
    pthread_join(st->watcher, NULL);
    st->watching = false;
}

static bool start_http(struct serve_state *st)
{
    struct config *cfg = &st->cfg;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    struct srv_options so = {
        .host = cfg->listen_host,
        .port = cfg->listen_port,
        .threads = cfg->threads ? (unsigned)cfg->threads : (unsigned)(cpus > 0 ? cpus : 1),
        .max_connections = (unsigned)cfg->max_connections,
        .max_connections_per_ip = (unsigned)cfg->max_connections_per_ip,
        .connection_timeout_s = (unsigned)cfg->connection_timeout,
        .tls_cert_pem = st->tls_cert,
        .tls_key_pem = st->tls_key,
        .auth = st->auth,
        .ratelimit = st->ratelimit,
        .cors = st->cors,
        .app = &st->app,
    };
    size_t n_routes = sizeof(routes) / sizeof(routes[0]);
    metrics_init(routes, n_routes);
    metrics_add_collector(db_render_metrics, st->db);
    metrics_add_collector(cache_render_metrics, st->cache);
    metrics_add_collector(db_writer_render_metrics, st->writer);
    if (st->ratelimit)
        metrics_add_collector(ratelimit_render_metrics, st->ratelimit);
    char err[512];
    st->srv = srv_start(&so, routes, n_routes, err, sizeof(err));
    if (!st->srv) {
        fprintf(stderr, "cangrejo: %s\n", err);
        return false;
    }
    log_info("listening on %s:%s (%s, %u threads)", cfg->listen_host, cfg->listen_port,
             st->tls_cert ? "https" : "http", so.threads);
    start_job_watch(st);
    return true;
}

/* SIGHUP: new token keys, or the old ones kept if the new cannot be loaded. */
static void reload_token_keys(struct auth_keeper *keys)
{
    char msg[512];
    if (auth_keeper_reload(keys, msg, sizeof(msg)))
        log_info("received SIGHUP: token keys reloaded (%s)", msg);
    else
        log_warn("received SIGHUP: token keys not reloaded, the previous ones stay: %s", msg);
}

/* Waits for SIGTERM or SIGINT (blocked in every thread, so only sigwait sees them); reloads
 * the token keys on SIGHUP meanwhile. */
static void wait_for_stop_signal(const sigset_t *set, struct auth_keeper *keys)
{
    for (;;) {
        int sig = 0;
        if (sigwait(set, &sig) != 0)
            continue;
        if (sig == SIGTERM || sig == SIGINT) {
            log_info("received %s: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
            return;
        }
        if (sig == SIGHUP)
            reload_token_keys(keys);
        else
            log_info("received signal %d: ignored", sig);
    }
}

static void drain_and_stop(struct serve_state *st)
{
    srv_begin_shutdown(st->srv);
    if (st->cfg.shutdown_delay_ms > 0)
        usleep((useconds_t)st->cfg.shutdown_delay_ms * 1000);
    bool drained = srv_drain(st->srv, (unsigned)st->cfg.shutdown_grace);
    if (!drained)
        log_warn("grace period over with %u request(s) in flight", srv_in_flight(st->srv));
    srv_stop(st->srv); /* a batch freed here may wait for its chunks: parse_jobs still runs */
    st->srv = NULL;
    jobs_stop(st->parse_jobs);
    st->parse_jobs = NULL;
    stop_job_watch(st);
    atomic_store(&st->app.stopping, true); /* rebuilds stop between steps, to be resumed */
    jobs_stop(st->jobs); /* finishes the batches still being stored */
    st->jobs = NULL;
    db_writer_stop(st->writer); /* commits whatever is still queued */
    st->writer = NULL;
    log_info("stopped");
}

static void close_all(struct serve_state *st)
{
    srv_stop(st->srv);
    jobs_stop(st->parse_jobs);
    stop_job_watch(st);
    jobs_stop(st->jobs);
    db_writer_stop(st->writer);
    metrics_shutdown();
    ratelimit_free(st->ratelimit);
    cors_free(st->cors);
    cache_free(st->cache);
    db_close(st->db);
    auth_keeper_free(st->auth);
    free(st->tls_cert);
    if (st->tls_key)
        xfree_secret(st->tls_key, strlen(st->tls_key));
    crypto_pii_install(NULL); /* every thread has stopped */
    crypto_keyring_free(st->pii_keys);
    config_free(&st->cfg);
}

static int cmd_serve(void)
{
    struct serve_state st = {0};
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (!load_config(&st.cfg)) {
        config_free(&st.cfg);
        return 2;
    }
    int rc = 2;
    if (open_dependencies(&st) && start_http(&st)) {
        wait_for_stop_signal(&set, st.auth);
        drain_and_stop(&st);
        rc = 0;
    }
    close_all(&st);
    return rc;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "help";
    if (strcmp(cmd, "serve") == 0)
        return cmd_serve();
    if (strcmp(cmd, "migrate") == 0)
        return cmd_migrate();
    if (strcmp(cmd, "reprocess") == 0)
        return cmd_reprocess(argc - 1, argv + 1);
    if (strcmp(cmd, "retention") == 0)
        return cmd_retention();
    if (strcmp(cmd, "seed") == 0)
        return cmd_seed(argc - 1, argv + 1);
    if (strcmp(cmd, "token") == 0)
        return cmd_token(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("cangrejo %s\n", CANGREJO_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        print_usage(stdout);
        return 0;
    }
    fprintf(stderr, "cangrejo: unknown command \"%s\"\n\n", cmd);
    print_usage(stderr);
    return 2;
}
