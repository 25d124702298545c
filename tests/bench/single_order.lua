-- wrk script: POST one new order per request, with order ids unique across threads and runs.
-- Env: MERCHANT (id), TOKEN (bearer), RUN (a prefix unique to this run).
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
    thread:set("tid", #threads + 1)
    table.insert(threads, thread)
end

function init(args)
    thread_id = tid
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
end

function request()
    counter = counter + 1
    local id = string.format("%s-%d-%d", os.getenv("RUN"), thread_id, counter)
    local body = string.format(
        '{"order_id":"%s","store_id":%d,"channel":"online","fulfillment":"delivery",' ..
        '"placed_at":"%s","currency":"EUR","items":[{"sku":"PIZ-MARG-L","name":"Margherita L",' ..
        '"quantity":2,"unit_price_cents":1150},{"sku":"BEV-COLA","name":"Cola","quantity":1,' ..
        '"unit_price_cents":250}],"discount_cents":100,"tax_cents":245}',
        id, 1 + counter % 5, os.date("!%Y-%m-%dT%H:%M:%SZ"))
    return wrk.format(nil, "/v1/merchants/" .. os.getenv("MERCHANT") .. "/orders", nil, body)
end

local statuses = {}
function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
    io.write(string.format("wrk: %d requests, %d errors, p50 %.2f ms, p99 %.2f ms\n",
        summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read +
        summary.errors.write + summary.errors.timeout,
        latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
