-- wrk: GETs of the paths listed in $PATHS_FILE (one a line), each thread walking its own share
-- of the list (thread k of n takes lines k, k+n, ...) so that no path is asked twice until a
-- thread has used up its share. $TOKEN is the bearer token.
local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("tid", #threads - 1)
    thread:set("nthreads", tonumber(os.getenv("WRK_THREADS")))
end

local paths, next_path = {}, 1

function init(args)
    local k = 0
    for line in io.lines(os.getenv("PATHS_FILE")) do
        if k % nthreads == tid then
            paths[#paths + 1] = line
        end
        k = k + 1
    end
    assert(#paths > 0, "no paths for this thread")
    wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
end

function request()
    local path = paths[next_path]
    next_path = next_path % #paths + 1
    return wrk.format("GET", path)
end

dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")
