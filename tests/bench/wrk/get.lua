-- wrk: the same GET (the URL given to wrk) on every request, with $TOKEN as bearer token when
-- set. No request() or response() function, so wrk sends a pre-built request: the cheapest
-- client there is, the same for cangrejo and for nginx. $THINK_MS, when set: each connection
-- waits that many milliseconds between an answer and its next request.
local token = os.getenv("TOKEN")
if token and token ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. token
end
local think = tonumber(os.getenv("THINK_MS") or "")
if think then
    function delay()
        return think
    end
end
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")
