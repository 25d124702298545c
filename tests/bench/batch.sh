#!/usr/bin/env bash
# Batch ingest: one 10,000-order NDJSON upload to cangrejo against `psql \copy` of the same rows
# (idempotency keys, orders, items) into the same tables, in the same run on the same stack.
# Usage: tests/bench/batch.sh [ORDERS] [RUNS]   (defaults 10000 and 3; medians are printed)
orders=${1:-10000}
runs=${2:-3}
source "$(dirname "$0")/lib.sh"

work=$(mktemp -d)
trap 'kill $BENCH_SERVER 2>/dev/null; wait $BENCH_SERVER 2>/dev/null || true; rm -rf "$work"' EXIT
server_rates=() copy_rates=()
for run in $(seq "$runs"); do
    merchant=$((910000000 + RANDOM)) copy_merchant=$((920000000 + RANDOM))
    token=$(bench_merchant "$merchant" "orders:write")
    /usr/bin/python3 tests/bench/batch_gen.py "$orders" "$merchant" "$copy_merchant" "$work"
    start=$(date +%s.%N)
    curl -sf -X POST "localhost:$PORT/v1/merchants/$merchant/order-batches" \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/x-ndjson' \
        --data-binary @"$work/batch.ndjson" -o "$work/result.json"
    end=$(date +%s.%N)
    stored=$(bench_rows "$merchant")
    server_rates+=("$(echo "$stored / ($end - $start)" | bc -l)")

    start=$(date +%s.%N)
    psql "$DATABASE_URL" -q \
        -c "\\copy order_keys (merchant_id, order_id, placed_at, content_hash) FROM '$work/keys.csv' CSV" \
        -c "\\copy orders (merchant_id, placed_at, order_id, store_id, channel, fulfillment, currency, gross_cents, discount_cents, net_cents, tax_cents, total_cents, items_sold) FROM '$work/orders.csv' CSV" \
        -c "\\copy order_items (merchant_id, placed_at, order_id, line_no, sku, name, quantity, unit_price_cents) FROM '$work/items.csv' CSV"
    end=$(date +%s.%N)
    copied=$(bench_rows "$copy_merchant")
    copy_rates+=("$(echo "$copied / ($end - $start)" | bc -l)")
    echo "run $run: cangrejo stored $stored orders ($(head -c 80 "$work/result.json")...), psql copied $copied"
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
server_rate=$(median "${server_rates[@]}")
copy_rate=$(median "${copy_rates[@]}")
printf '%-34s %12s\n' "scenario ($orders orders, median of $runs)" orders/s
printf '%-34s %12.0f\n' "cangrejo POST /order-batches" "$server_rate"
printf '%-34s %12.0f\n' "psql \\copy of the same rows" "$copy_rate"
printf '%-34s %12.2f   (bar: >= 0.50)\n' "ratio" "$(echo "$server_rate / $copy_rate" | bc -l)"
