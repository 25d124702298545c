#!/usr/bin/env bash
# Insight at scale: seeds a year of demo data (merchant 1 gets about a million orders, unless
# the bench stack has it already), then measures, uncached (the server runs without Redis):
# a year of daily sales, a 90-day top-products query, and `cangrejo reprocess` of 30 days of
# merchant 1 next to one INSERT ... SELECT ... GROUP BY over the same rows, in the same run.
# Usage: tests/bench/insight.sh [ORDERS_PER_DAY_PER_STORE] [DAYS]   (defaults 900 and 365)
per_day=${1:-900}
days=${2:-365}
export BENCH_NO_REDIS=1
source "$(dirname "$0")/lib.sh"

have=$(bench_rows 1)
if [ "$have" -lt 1000 ]; then
    echo "seeding $days days at $per_day orders per store and day (takes minutes)..."
    $BIN seed --days "$days" --orders-per-day "$per_day" >/dev/null
fi
echo "merchant 1: $(bench_rows 1) orders"
token=$($BIN token --merchant 1 --scope "metrics:read")

# Median time of N identical GETs, in ms.
median_get() {
    local url=$1 n=${2:-9} times=()
    for _ in $(seq "$n"); do
        times+=("$(curl -s -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $token" "$url")")
    done
    printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1*1000} END {printf "%.1f", a[int((NR+1)/2)]}'
}

base="http://127.0.0.1:$PORT/v1/merchants/1/metrics"
year_from=$(date -u -d "-364 days" +%F) to=$(date -u -d tomorrow +%F)
d90=$(date -u -d "-90 days" +%F) d30=$(date -u -d "-30 days" +%F)
sales_year=$(median_get "$base/sales?from=$year_from&to=$to&granularity=day")
products_90=$(median_get "$base/products?from=$d90&to=$to&sort=net_sales&limit=10")
sales_30=$(median_get "$base/sales?from=$d30&to=$to&granularity=day")

from_ts="${d30}T00:00:00Z" to_ts="${to}T00:00:00Z"
start=$(date +%s.%N)
$BIN reprocess --from "$from_ts" --to "$to_ts" --merchant 1 >/dev/null
reprocess_s=$(echo "$(date +%s.%N) - $start" | bc -l)
start=$(date +%s.%N)
psql "$DATABASE_URL" -q -c "CREATE TEMP TABLE t AS SELECT merchant_id, date_bin('15 minutes', placed_at, timestamptz 'epoch') AS bucket, store_id, channel, fulfillment, count(*) AS orders, sum(net_cents) AS net FROM orders WHERE merchant_id = 1 AND placed_at >= '$from_ts' AND placed_at < '$to_ts' GROUP BY 1, 2, 3, 4, 5"
group_by_s=$(echo "$(date +%s.%N) - $start" | bc -l)
rows30=$(psql "$DATABASE_URL" -Atc "SELECT count(*) FROM orders WHERE merchant_id = 1 AND placed_at >= '$from_ts' AND placed_at < '$to_ts'")

printf '%-48s %10s\n' "uncached, merchant 1 ($(bench_rows 1) orders)" "p50 ms"
printf '%-48s %10s   (bar: < 50)\n' "sales, 365 daily buckets" "$sales_year"
printf '%-48s %10s   (bar: < 50)\n' "products, top 10 over 90 days" "$products_90"
printf '%-48s %10s\n' "sales, 30 daily buckets" "$sales_30"
printf '%-48s %10.2f s\n' "reprocess 30 days ($rows30 orders, every rollup)" "$reprocess_s"
printf '%-48s %10.2f s\n' "one INSERT ... SELECT ... GROUP BY (sales only)" "$group_by_s"
