# Shared by the benchmark scripts: a release build, its own local stack (.local/bench-stack, or
# BENCH_STACK_DIR) and a server on a free loopback port (without Redis when BENCH_NO_REDIS=1).
# Source it; it sets BIN and PORT and exports the stack's URLs; the server stops at exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BENCH_ROOT=$(pwd)

bash deploy/local/deps.sh --test
[ -d build-bench ] || meson setup build-bench --buildtype=release >/dev/null
ninja -C build-bench >/dev/null

export STACK_DIR="${BENCH_STACK_DIR:-$BENCH_ROOT/.local/bench-stack}"
bash deploy/local/stack.sh start >/dev/null
eval "$(bash deploy/local/stack.sh env)"
export DATABASE_URL DATABASE_REPLICA_URLS REDIS_URL
[ "${BENCH_NO_REDIS:-0}" = 1 ] && REDIS_URL="" # measure the database path, every read uncached
export JWT_HS256_SECRET=bench-secret-0123456789abcdef0123456789abcdef
export PII_MASTER_KEY=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= # benchmark-only key
PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export CANGREJO_LISTEN=127.0.0.1:$PORT LOG_LEVEL=warn
BIN=build-bench/cangrejo
$BIN migrate >/dev/null
$BIN serve >"$STACK_DIR/bench-server.log" 2>&1 &
BENCH_SERVER=$!
trap 'kill $BENCH_SERVER 2>/dev/null; wait $BENCH_SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "localhost:$PORT/readyz" >/dev/null && break; sleep 0.1; done

# Creates merchant $1 (EUR) and prints a token for it with scopes $2.
bench_merchant() {
    local token
    token=$($BIN token --merchant "$1" --scope "merchants:admin $2")
    curl -sf -X PUT "localhost:$PORT/v1/merchants/$1" -H "Authorization: Bearer $token" \
        -H 'Content-Type: application/json' \
        -d '{"name":"bench","timezone":"Europe/Madrid","currency":"EUR"}' >/dev/null
    echo "$token"
}

bench_rows() { psql "$DATABASE_URL" -Atc "SELECT count(*) FROM orders WHERE merchant_id = $1"; }
