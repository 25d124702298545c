/* Operations endpoints: liveness, readiness and Prometheus metrics (no authentication). */
#include "handlers/handlers.h"

#include "cache/cache.h"
#include "db/migrate.h"
#include "db/probe.h"
#include "server/arena.h"
#include "server/metrics.h"

#include <stdlib.h>
#include <string.h>

enum { PROBE_WAIT_MS = 250 };

void h_health_livez(struct srv_req *req)
{
    srv_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

static json_t *latency_json(bool measured, double ms)
{
    return measured ? json_real((double)(long long)(ms * 1000) / 1000) : json_null();
}

static json_t *replicas_json(struct db *db)
{
    json_t *list = json_array();
    for (size_t i = 0; i < db_replica_count(db); i++) {
        struct db_probe p = db_probe_replica(db, i, PROBE_WAIT_MS);
        json_array_append_new(list, json_pack("{s:b, s:o, s:o}", "ok", p.ok, "latency_ms",
                                              latency_json(true, p.latency_ms), "lag_ms",
                                              p.ok ? json_integer(p.value) : json_null()));
    }
    return list;
}

static json_t *redis_json(struct cache *cache)
{
    double ms = 0;
    bool enabled = cache_enabled(cache);
    bool ok = enabled && cache_ping(cache, &ms);
    return json_pack("{s:b, s:o}", "ok", ok, "latency_ms", latency_json(enabled, ms));
}

/* Only the primary and the schema decide readiness; replicas and Redis are reported. */
void h_health_readyz(struct srv_req *req)
{
    struct h_app *app = req->app;
    struct db_probe primary = db_probe_primary(app->db, PROBE_WAIT_MS);
    int expected = db_schema_version_expected();
    bool schema_ok = primary.ok && primary.value == expected;
    bool ready = primary.ok && schema_ok && !srv_draining(req->srv);
    json_t *checks = json_pack(
        "{s:{s:b, s:o}, s:o, s:o, s:{s:b, s:o, s:i}}", "primary", "ok", primary.ok, "latency_ms",
        latency_json(true, primary.latency_ms), "replicas", replicas_json(app->db), "redis",
        redis_json(app->cache), "schema", "ok", schema_ok, "version",
        primary.ok ? json_integer(primary.value) : json_null(), "expected_version",
        (json_int_t)expected);
    srv_add_header(req, "Cache-Control", "no-store");
    srv_reply_json(req, ready ? 200 : 503,
                   json_pack("{s:s, s:o}", "status", ready ? "ready" : "not_ready", "checks",
                             checks));
}

void h_health_metrics(struct srv_req *req)
{
    struct buf out = {0};
    metrics_render(&out);
    char *text = arena_strndup(req->arena, out.data ? out.data : "", out.len);
    size_t len = out.len;
    buf_free(&out);
    srv_add_header(req, "Cache-Control", "no-store");
    srv_reply_bytes(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
}
