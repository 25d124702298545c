-- wrk: POST one new order per request to merchant $MERCHANT with bearer $TOKEN; order ids are
-- unique across threads and runs ($RUN is unique to the run). The rows are those that
-- pgbench_order.sql writes for the baseline: 2 items, 2,550 gross, 100 discount, 245 tax,
-- delivery, online, one of five stores.
local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("tid", #threads)
end

local counter = 0
local path, prefix

function init(args)
    path = "/v1/merchants/" .. os.getenv("MERCHANT") .. "/orders"
    prefix = os.getenv("RUN") .. "-" .. tid .. "-"
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
end

function request()
    counter = counter + 1
    local body = string.format(
        '{"order_id":"%s%d","store_id":%d,"channel":"online","fulfillment":"delivery",' ..
        '"placed_at":"%s","currency":"EUR","items":[{"sku":"PIZ-MARG-L","name":"Margherita L",' ..
        '"quantity":2,"unit_price_cents":1150},{"sku":"BEV-COLA","name":"Cola 33cl",' ..
        '"quantity":1,"unit_price_cents":250}],"discount_cents":100,"tax_cents":245}',
        prefix, counter, 101 + counter % 5, os.date("!%Y-%m-%dT%H:%M:%SZ"))
    return wrk.format(nil, path, nil, body)
end

dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")
