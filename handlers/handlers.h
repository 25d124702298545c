/* handlers.h - the API's handlers, one file per resource, and the context they share. */
#ifndef CANGREJO_HANDLERS_H
#define CANGREJO_HANDLERS_H

#include "server/http.h"

#include <stdatomic.h>
#include <stddef.h>

struct db;
struct cache;
struct db_writer;
struct jobs;

/* What every handler may use; built by main and reached through req->app. */
struct h_app {
    struct db *db;
    struct cache *cache;
    struct db_writer *writer;
    struct jobs *jobs;       /* threads that store batch uploads and rebuild rollups */
    struct jobs *parse_jobs; /* threads that parse batch uploads as they stream in */
    unsigned retention_months; /* raw orders kept this long; 0: forever */
    atomic_bool stopping;      /* shutdown began: long jobs stop between steps */
};

/* The OpenAPI document as JSON, generated at build time from openapi/openapi.yaml. */
extern const char h_openapi_json[];
extern const size_t h_openapi_json_len;

/* GET /openapi.json */
void h_docs_openapi(struct srv_req *req);
/* GET /docs, /dashboard and their assets (embedded from web/; see handlers/web.h) */
void h_web_get(struct srv_req *req);

/* GET /livez */
void h_health_livez(struct srv_req *req);
/* GET /readyz */
void h_health_readyz(struct srv_req *req);
/* GET /metrics */
void h_health_metrics(struct srv_req *req);

/* PUT /v1/merchants/{merchant_id} */
void h_merchants_put(struct srv_req *req);
/* GET /v1/merchants/{merchant_id} */
void h_merchants_get(struct srv_req *req);

/* POST /v1/merchants/{merchant_id}/orders */
void h_orders_post(struct srv_req *req);
/* GET /v1/merchants/{merchant_id}/orders/{order_id} */
void h_orders_get(struct srv_req *req);
/* GET /v1/merchants/{merchant_id}/orders */
void h_orders_list(struct srv_req *req);
/* POST /v1/merchants/{merchant_id}/orders/{order_id}/cancel */
void h_orders_cancel(struct srv_req *req);

/* POST /v1/merchants/{merchant_id}/orders/{order_id}/delivery-events */
void h_deliveries_post(struct srv_req *req);

/* POST /v1/merchants/{merchant_id}/order-batches: the body as it streams in */
bool h_batches_body(struct srv_req *req, const char *data, size_t size);
/* POST /v1/merchants/{merchant_id}/order-batches: once the body is complete */
void h_batches_post(struct srv_req *req);

/* GET /v1/merchants/{merchant_id}/metrics/sales */
void h_metrics_sales(struct srv_req *req);
/* GET /v1/merchants/{merchant_id}/metrics/products */
void h_metrics_products(struct srv_req *req);
/* GET /v1/merchants/{merchant_id}/metrics/promotions */
void h_metrics_promotions(struct srv_req *req);
/* GET /v1/merchants/{merchant_id}/metrics/deliveries */
void h_metrics_deliveries(struct srv_req *req);

/* GET /v1/merchants/{merchant_id}/customers/{customer_ref}/export */
void h_customers_export(struct srv_req *req);
/* DELETE /v1/merchants/{merchant_id}/customers/{customer_ref} */
void h_customers_erase(struct srv_req *req);

/* POST /v1/admin/reprocess */
void h_admin_reprocess(struct srv_req *req);
/* GET /v1/admin/jobs/{job_id} */
void h_admin_job(struct srv_req *req);
/* A new random job id (32 hex characters). */
void h_admin_new_job_id(char out[33]);
/* After a rebuild step: publishes the merchant's new version and WAL position (ud: cache). */
void h_admin_publish_rebuild(void *ud, int64_t merchant_id, int64_t version, uint64_t lsn);
/* Runs (or resumes) a reprocess job on a job thread; false when the queue is full. */
bool h_admin_start_job(struct h_app *app, const char *job_id);

#endif
