/* The API's own description: /openapi.json, built from openapi/openapi.yaml. */
#include "handlers/handlers.h"

void h_docs_openapi(struct srv_req *req)
{
    srv_add_header(req, "Cache-Control", "public, max-age=300");
    srv_reply_bytes(req, 200, "application/json; charset=utf-8", h_openapi_json,
                    h_openapi_json_len);
}
