-- Shared by the wrk scripts (loaded with dofile): done() writes the run's figures as one JSON
-- object to the file named by $WRK_REPORT, for tests/bench/bench.py. Latencies in microseconds;
-- errors.status counts responses with a status above 399.
function done(summary, latency, requests)
    local e = summary.errors
    local f = assert(io.open(os.getenv("WRK_REPORT"), "w"))
    f:write(string.format(
        '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
        '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
        '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency.max, latency.mean))
    f:close()
end
