#!/usr/bin/env bash
# Single-order ingest: cangrejo (wrk, 64 connections, unique orders) against pgbench doing one
# INSERT transaction per order of the same rows (64 clients), in the same run on the same stack.
# Usage: tests/bench/single_order.sh [SECONDS]   (default 10; bounded, loopback only)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
secs=${1:-10}
conns=64

bash deploy/local/deps.sh --test
[ -d build-bench ] || meson setup build-bench --buildtype=release >/dev/null
ninja -C build-bench >/dev/null

export STACK_DIR="$root/.local/bench-stack"
bash deploy/local/stack.sh start >/dev/null
eval "$(bash deploy/local/stack.sh env)"
export DATABASE_URL DATABASE_REPLICA_URLS REDIS_URL
export JWT_HS256_SECRET=bench-secret-0123456789abcdef0123456789abcdef
export PII_MASTER_KEY=$(head -c 32 /dev/urandom | base64)
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export CANGREJO_LISTEN=127.0.0.1:$port LOG_LEVEL=warn
bin=build-bench/cangrejo
$bin migrate >/dev/null
$bin serve >"$STACK_DIR/bench-server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "localhost:$port/readyz" >/dev/null && break; sleep 0.1; done

merchant=$((900000000 + RANDOM))
token=$($bin token --merchant "$merchant" --scope "merchants:admin orders:write")
curl -sf -X PUT "localhost:$port/v1/merchants/$merchant" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' \
    -d '{"name":"bench","timezone":"Europe/Madrid","currency":"EUR"}' >/dev/null

rows() { psql "$DATABASE_URL" -Atc "SELECT count(*) FROM orders WHERE merchant_id = $merchant"; }

before=$(rows)
start=$(date +%s.%N)
TOKEN=$token MERCHANT=$merchant RUN="r$(date +%s%N)" \
    wrk -t4 -c$conns -d${secs}s -s tests/bench/single_order.lua "http://127.0.0.1:$port" \
    | grep -E '^wrk:|Requests/sec'
end=$(date +%s.%N)
after=$(rows)
server_rate=$(echo "($after - $before) / ($end - $start)" | bc -l)

pg_merchant=$((merchant + 1))
pgb_before=$(psql "$DATABASE_URL" -Atc "SELECT count(*) FROM orders WHERE merchant_id = $pg_merchant")
pgbench -n -c $conns -j 4 -T "$secs" -D merchant=$pg_merchant -f tests/bench/single_order.sql \
    "$DATABASE_URL" 2>/dev/null | grep -E '^tps'
pgb_after=$(psql "$DATABASE_URL" -Atc "SELECT count(*) FROM orders WHERE merchant_id = $pg_merchant")
pg_rate=$(echo "($pgb_after - $pgb_before) / $secs" | bc -l)

printf '%-28s %12s\n' scenario orders/s
printf '%-28s %12.0f\n' "cangrejo POST /orders" "$server_rate"
printf '%-28s %12.0f\n' "pgbench 1 txn per order" "$pg_rate"
printf '%-28s %12.2f   (bar: >= 2.00)\n' "ratio" "$(echo "$server_rate / $pg_rate" | bc -l)"
