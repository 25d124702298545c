/* Placeholder: handlers/metrics.c is being written. */
#include "handlers/handlers.h"

void h_metrics_sales(struct srv_req *req)
{
    srv_reply_problem(req, PROBLEM_INTERNAL, "not written yet");
}
