#!/usr/bin/env bash
# Single-order ingest: cangrejo (wrk, 64 connections, unique orders) against pgbench doing one
# INSERT transaction per order of the same rows (64 clients), in the same run on the same stack.
# Usage: tests/bench/single_order.sh [SECONDS]   (default 10; bounded, loopback only)
secs=${1:-10}
conns=64
source "$(dirname "$0")/lib.sh"

merchant=$((900000000 + RANDOM))
token=$(bench_merchant "$merchant" "orders:write")
before=$(bench_rows "$merchant")
start=$(date +%s.%N)
TOKEN=$token MERCHANT=$merchant RUN="r$(date +%s%N)" \
    wrk -t4 -c$conns -d${secs}s -s tests/bench/single_order.lua "http://127.0.0.1:$PORT" \
    | grep -E '^wrk:|Requests/sec'
end=$(date +%s.%N)
after=$(bench_rows "$merchant")
server_rate=$(echo "($after - $before) / ($end - $start)" | bc -l)

pg_merchant=$((merchant + 1))
pgb_before=$(bench_rows "$pg_merchant")
pgbench -n -c $conns -j 4 -T "$secs" -D merchant=$pg_merchant -f tests/bench/single_order.sql \
    "$DATABASE_URL" 2>/dev/null | grep -E '^tps'
pgb_after=$(bench_rows "$pg_merchant")
pg_rate=$(echo "($pgb_after - $pgb_before) / $secs" | bc -l)

printf '%-28s %12s\n' scenario orders/s
printf '%-28s %12.0f\n' "cangrejo POST /orders" "$server_rate"
printf '%-28s %12.0f\n' "pgbench 1 txn per order" "$pg_rate"
printf '%-28s %12.2f   (bar: >= 2.00)\n' "ratio" "$(echo "$server_rate / $pg_rate" | bc -l)"
