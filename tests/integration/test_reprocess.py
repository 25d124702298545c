"""Reprocessing, black box: POST /v1/admin/reprocess, GET /v1/admin/jobs/{job_id} and
`cangrejo reprocess`.

A merchant (time zone UTC, so a day bucket is a UTC day) gets a few hundred orders through the
API over six days in the past: several items, discounts, promo codes, delivery orders with a
terminal courier event, cancellations. A small independent model here (totals per UTC day and
per hour and channel, top products by the largest-remainder allocation, promotions, deliveries)
says what every metric must show. Then:

- the rollups are corrupted in SQL as a processing bug would (rows changed, deleted, a bogus one
  inserted, a product renamed); a job rebuilds them: every metric equals again what it was and
  what the model says, the rollup tables equal their state before the corruption, and a read
  cached while the figures were corrupt shows the rebuilt ones at once;
- 16 writer threads post orders (singly and in small batches), cancel and send delivery events
  into the same range while the merchant is rebuilt: every writer gets 2xx, and the rollup
  tables equal a recompute from the stored orders, the API the model of every 2xx order;
- a second run changes nothing; the command line does the same and refuses bad arguments;
- kill -9 of the server during a job: after a restart the job is resumed (never stuck);
- validation, 404, 401/403.
"""

import collections
import concurrent.futures
import datetime as dt
import fractions
import pathlib
import random
import threading
import time

import pytest
import requests
import yaml

from helpers import DEFAULT_SCOPE, headers, make_token, wait_until

UTC = dt.timezone.utc
PROBLEM_VALIDATION = "https://cangrejo.dev/problems/validation-error"
SEED = 20261123
ORDERS = 240
DAYS = 6
SKUS = [f"RP-{k}" for k in range(8)]
PROMOS = ["SPRING", "WELCOME10", "B-upper", "a-lower"]
CHANNELS = {"online": 0, "pos": 1}
JOB_KEYS = ["job_id", "state", "merchant_id", "from", "to", "progress", "error"]
RESUME_TIMEOUT = 25
ROOT = pathlib.Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# the independent model


def allocate(net, grosses):
    """Largest remainder: floors of the exact shares, the cents left one each to the largest
    fractional parts, the earlier item first on a tie."""
    total = sum(grosses)
    if total == 0:
        return [0] * len(grosses)
    exact = [fractions.Fraction(net * g, total) for g in grosses]
    shares = [x.numerator // x.denominator for x in exact]
    for i in sorted(range(len(grosses)), key=lambda i: (-(exact[i] - shares[i]), i))[
            : net - sum(shares)]:
        shares[i] += 1
    return shares


def test_the_model_allocation_itself():
    assert allocate(100, [1, 2]) == [33, 67]
    assert allocate(1000, [1, 1, 1]) == [334, 333, 333]
    assert allocate(0, [0, 0]) == [0, 0]


def _counted(orders, t_from, t_to):
    return [o for o in orders if not o["cancelled"] and t_from <= o["at"] < t_to]


def _floor(at, granularity):
    if granularity == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    return at.replace(minute=0, second=0, microsecond=0)


def expected_sales(orders, t_from, t_to, granularity="day", channel=None):
    """{bucket start (UTC): (orders, cancelled, items, gross, discounts, net, tax, total)},
    zero buckets left out."""
    sums = collections.defaultdict(lambda: [0] * 8)
    for o in orders:
        if not t_from <= o["at"] < t_to or (channel and o["channel"] != channel):
            continue
        s = sums[_floor(o["at"], granularity)]
        if o["cancelled"]:
            s[1] += 1
            continue
        for k, v in enumerate((1, 0, o["items_sold"], o["gross"], o["discount"], o["net"],
                               o["tax"], o["net"] + o["tax"])):
            s[k] += v
    return {k: tuple(v) for k, v in sums.items() if any(v)}


def expected_products(orders, t_from, t_to, sort):
    sums = collections.defaultdict(lambda: [0, 0])
    for o in _counted(orders, t_from, t_to):
        for item, share in zip(o["items"], allocate(o["net"], [_gross(i) for i in o["items"]])):
            sums[item["sku"]][0] += item["quantity"]
            sums[item["sku"]][1] += share
    best = {}
    for o in orders:  # the latest name, cancelled orders included
        for line, item in enumerate(o["items"]):
            rank = (o["at"], o["order_id"].encode(), line)
            if item["sku"] not in best or rank > best[item["sku"]][0]:
                best[item["sku"]] = (rank, item["name"])
    rows = [{"sku": sku, "name": best[sku][1], "quantity": q, "net_sales_cents": n}
            for sku, (q, n) in sums.items() if q > 0]
    key = "net_sales_cents" if sort == "net_sales" else "quantity"
    rows.sort(key=lambda r: (-r[key], r["sku"].encode()))
    return rows[:10]


def expected_promotions(orders, t_from, t_to):
    sums = collections.defaultdict(lambda: [0, 0, 0])
    for o in _counted(orders, t_from, t_to):
        if o["promo_code"]:
            s = sums[o["promo_code"]]
            s[0], s[1], s[2] = s[0] + 1, s[1] + o["discount"], s[2] + o["net"]
    rows = [{"promo_code": c, "orders": n, "discounts_cents": d, "net_sales_cents": net}
            for c, (n, d, net) in sums.items()]
    rows.sort(key=lambda r: (-r["net_sales_cents"], r["promo_code"].encode()))
    return rows


def expected_deliveries(orders, t_from, t_to):
    """{day: (deliveries, delivered, failed)}, zero days left out."""
    sums = collections.defaultdict(lambda: [0, 0, 0])
    for o in _counted(orders, t_from, t_to):
        if o["fulfillment"] != "delivery":
            continue
        s = sums[_floor(o["at"], "day")]
        s[0] += 1
        if o["delivery"] == "delivered":
            s[1] += 1
        elif o["delivery"] == "failed":
            s[2] += 1
    return {k: tuple(v) for k, v in sums.items()}


def _gross(item):
    return item["quantity"] * item["unit_price_cents"]


# ---------------------------------------------------------------------------------------------
# data through the API


def _z(at):
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _order(rng, order_id, at):
    items = [{"sku": (sku := rng.choice(SKUS)), "name": f"{sku} v{rng.randrange(4)}",
              "quantity": rng.randint(1, 5), "unit_price_cents": rng.choice([0, 99, 1250, 4999])
              + rng.randint(0, 700)} for _ in range(rng.choice([1, 1, 2, 3, 5]))]
    gross = sum(_gross(i) for i in items)
    discount = rng.choice([0, 0, gross // 3, rng.randint(0, gross), gross])
    tax = (gross - discount) // 10
    promo = rng.choice([None, None] + PROMOS)
    body = {"order_id": order_id, "store_id": rng.choice([21, 22]),
            "channel": rng.choice(list(CHANNELS)),
            "fulfillment": rng.choice(["delivery", "delivery", "pickup", "dine_in"]),
            "placed_at": at.astimezone(dt.timezone(dt.timedelta(hours=rng.choice([-3, 0, 2])))
                                       ).isoformat(),
            "currency": "EUR", "items": items, "discount_cents": discount, "tax_cents": tax}
    if promo:
        body["promo_code"] = promo
    model = {"order_id": order_id, "at": at, "items": items, "channel": body["channel"],
             "fulfillment": body["fulfillment"], "items_sold": sum(i["quantity"] for i in items),
             "gross": gross, "discount": discount, "net": gross - discount, "tax": tax,
             "promo_code": promo, "cancelled": False, "delivery": None}
    return body, model


def _instant(rng, start):
    return start + dt.timedelta(seconds=rng.randrange(DAYS * 86400),
                                microseconds=rng.randrange(10**6))


def _post_one(server, m, body):
    return requests.post(f"{server.url}/v1/merchants/{m['id']}/orders", json=body,
                         headers=headers(m["token"]), timeout=30)


def _post_batch(server, m, bodies):
    return requests.post(f"{server.url}/v1/merchants/{m['id']}/order-batches",
                         json={"orders": bodies}, headers=headers(m["token"]), timeout=60)


def _cancel(server, m, order_id):
    return requests.post(f"{server.url}/v1/merchants/{m['id']}/orders/{order_id}/cancel",
                         json={}, headers=headers(m["token"]), timeout=30)


def _event(server, m, order, status, at):
    body = {"event_id": f"{order['order_id']}-{status}", "provider": "glovo", "status": status,
            "occurred_at": _z(at)}
    return requests.post(
        f"{server.url}/v1/merchants/{m['id']}/orders/{order['order_id']}/delivery-events",
        json=body, headers=headers(m["token"]), timeout=30)


def _deliver(rng, server, m, order):
    status = rng.choice(["delivered", "delivered", "failed"])
    r = _event(server, m, order, status, order["at"] + dt.timedelta(
        minutes=rng.randint(5, 90), seconds=rng.randrange(60)))
    assert r.status_code in (200, 201), r.text
    order["delivery"] = status


@pytest.fixture(scope="module")
def shop(server):
    """A merchant with ORDERS orders over DAYS days (UTC), posted singly and in batches, some
    cancelled, delivery orders with a courier outcome."""
    now = dt.datetime.now(UTC)
    start = dt.datetime.combine(now.date() - dt.timedelta(days=DAYS + 4), dt.time(), UTC)
    rng = random.Random(SEED)
    merchant_id = random.SystemRandom().randint(2 * 10**12, 8 * 10**12)
    r = requests.put(f"{server.url}/v1/merchants/{merchant_id}",
                     headers=headers(make_token(scope="merchants:admin", merchants=[merchant_id])),
                     json={"name": "Reprocess shop", "timezone": "UTC", "currency": "EUR"},
                     timeout=10)
    assert r.status_code == 201, r.text
    m = {"id": merchant_id, "start": start, "end": start + dt.timedelta(days=DAYS),
         "token": make_token(scope=DEFAULT_SCOPE, merchants=[merchant_id]),
         "admin": make_token(scope="admin", merchants=[merchant_id]), "orders": []}
    placed = [_order(rng, f"rp-{n:04d}", _instant(rng, start)) for n in range(ORDERS)]
    half = ORDERS // 2
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for r in pool.map(lambda p: _post_one(server, m, p[0]), placed[:half]):
            assert r.status_code == 201, r.text
    for k in range(half, ORDERS, 40):
        r = _post_batch(server, m, [b for b, _ in placed[k:k + 40]])
        assert r.status_code == 200 and r.json()["accepted"] == len(placed[k:k + 40]), r.text
    m["orders"] = [model for _, model in placed]
    for o in rng.sample(m["orders"], 18):
        assert _cancel(server, m, o["order_id"]).status_code == 200
        o["cancelled"] = True
    for o in m["orders"]:
        if o["fulfillment"] == "delivery" and not o["cancelled"] and rng.random() < 0.7:
            _deliver(rng, server, m, o)
    return m


# ---------------------------------------------------------------------------------------------
# reading the metrics


def _get(server, m, what, params):
    r = requests.get(f"{server.url}/v1/merchants/{m['id']}/metrics/{what}", params=params,
                     headers=headers(m["token"]), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    body.pop("as_of")
    return body, r.headers["X-Request-Id"]


def _queries(m, extra_days=0):
    """The metric reads compared: (name, route, params). extra_days moves `to` (another cache
    key, same figures)."""
    rng = {"from": _z(m["start"]), "to": _z(m["end"] + dt.timedelta(days=extra_days))}
    return [("sales_day", "sales", {**rng, "granularity": "day"}),
            ("sales_hour_channel", "sales", {**rng, "granularity": "hour", "group_by": "channel"}),
            ("products_net", "products", {**rng, "sort": "net_sales"}),
            ("products_qty", "products", {**rng, "sort": "quantity"}),
            ("promotions", "promotions", rng),
            ("deliveries", "deliveries", {**rng, "granularity": "day"})]


def read_all(server, m, extra_days=0):
    """{name: body without as_of} for every query."""
    return {name: _get(server, m, route, params)[0]
            for name, route, params in _queries(m, extra_days)}


def _start(label):
    return dt.datetime.fromisoformat(label).astimezone(UTC)


def _bucket_figures(buckets):
    from_api = {}
    for b in buckets:
        figures = tuple(b[k] for k in ("orders", "cancelled_orders", "items_sold",
                                        "gross_sales_cents", "discounts_cents",
                                        "net_sales_cents", "tax_cents", "total_sales_cents"))
        if any(figures):
            from_api[_start(b["start"])] = figures
    return from_api


def model_mismatches(bodies, orders, t_from, t_to):
    """The names of the reads that differ from the model (empty: all agree)."""
    bad = []
    if _bucket_figures(bodies["sales_day"]["buckets"]) != expected_sales(orders, t_from, t_to):
        bad.append("sales_day")
    groups = {g["key"]: _bucket_figures(g["buckets"])
              for g in bodies["sales_hour_channel"]["groups"]}
    want = {c: expected_sales(orders, t_from, t_to, "hour", c) for c in CHANNELS}
    if {k: v for k, v in groups.items() if v} != {k: v for k, v in want.items() if v}:
        bad.append("sales_hour_channel")
    for name, sort in (("products_net", "net_sales"), ("products_qty", "quantity")):
        if bodies[name]["products"] != expected_products(orders, t_from, t_to, sort):
            bad.append(name)
    if bodies["promotions"]["promotions"] != expected_promotions(orders, t_from, t_to):
        bad.append("promotions")
    got = {_start(b["start"]): (b["deliveries"], b["delivered"], b["failed"])
           for b in bodies["deliveries"]["buckets"] if b["deliveries"]}
    if got != expected_deliveries(orders, t_from, t_to):
        bad.append("deliveries")
    return bad


# ---------------------------------------------------------------------------------------------
# the rollup tables, and a recompute from the stored orders


TABLES = {
    "sales": ("SELECT bucket, store_id, channel, fulfillment, orders, cancelled_orders, "
              "items_sold, gross_cents, discount_cents, net_cents, tax_cents, total_cents "
              "FROM sales_rollup_15m WHERE merchant_id = %s", 4),
    "product": ("SELECT bucket, sku, quantity, net_sales_cents FROM product_rollup_15m "
                "WHERE merchant_id = %s", 2),
    "promo": ("SELECT bucket, promo_code, orders, discounts_cents, net_sales_cents "
              "FROM promo_rollup_15m WHERE merchant_id = %s", 2),
    "delivery": ("SELECT bucket, store_id, channel, deliveries, delivered, failed, delivered_us "
                 "FROM delivery_rollup_15m WHERE merchant_id = %s", 3),
    "names": ("SELECT sku, name FROM product_names WHERE merchant_id = %s", 1),
    "hourly": ("SELECT hour, orders, cancelled_orders, items_sold, gross_cents, discount_cents, "
               "net_cents, tax_cents, total_cents FROM sales_rollup_1h WHERE merchant_id = %s "
               "AND (orders <> 0 OR cancelled_orders <> 0)", 1),
}

RECOMPUTE = {
    "sales": """
        SELECT date_bin('15 minutes', placed_at, timestamptz 'epoch'), store_id, channel,
               fulfillment, count(*) FILTER (WHERE status = 0), count(*) FILTER (WHERE status = 1),
               sum(items_sold) FILTER (WHERE status = 0),
               sum(gross_cents) FILTER (WHERE status = 0),
               sum(discount_cents) FILTER (WHERE status = 0),
               sum(net_cents) FILTER (WHERE status = 0), sum(tax_cents) FILTER (WHERE status = 0),
               sum(total_cents) FILTER (WHERE status = 0)
        FROM orders WHERE merchant_id = %s GROUP BY 1, 2, 3, 4""",
    "promo": """
        SELECT date_bin('15 minutes', placed_at, timestamptz 'epoch'), promo_code, count(*),
               sum(discount_cents), sum(net_cents)
        FROM orders WHERE merchant_id = %s AND status = 0 AND promo_code IS NOT NULL
        GROUP BY 1, 2""",
    "delivery": """
        SELECT date_bin('15 minutes', o.placed_at, timestamptz 'epoch'), o.store_id, o.channel,
               count(*), count(*) FILTER (WHERE d.status = 3), count(*) FILTER (WHERE d.status = 4),
               coalesce(sum((extract(epoch FROM d.occurred_at) - extract(epoch FROM o.placed_at))
                            * 1000000) FILTER (WHERE d.status = 3), 0)::bigint
        FROM orders o LEFT JOIN deliveries d ON d.merchant_id = o.merchant_id
                                            AND d.order_id = o.order_id
        WHERE o.merchant_id = %s AND o.status = 0 AND o.fulfillment = 1 GROUP BY 1, 2, 3""",
}


def _keyed(rows, width):
    return {tuple(r[:width]): tuple(0 if v is None else v for v in r[width:]) for r in rows
            if width == 1 or any(v for v in r[width:])}


def rollups(conn, merchant_id):
    out = {}
    with conn.cursor() as cur:
        for name, (sql, width) in TABLES.items():
            cur.execute(sql, (merchant_id,))
            out[name] = _keyed(cur.fetchall(), width)
    return out


def recompute(conn, merchant_id):
    """Every rollup from the stored orders: SQL sums, products allocated here in Python."""
    out = {}
    with conn.cursor() as cur:
        for name in ("sales", "promo", "delivery"):
            cur.execute(RECOMPUTE[name], (merchant_id,))
            out[name] = _keyed(cur.fetchall(), TABLES[name][1])
        cur.execute("""SELECT o.order_id, o.placed_at, o.status, o.net_cents, i.line_no, i.sku,
                              i.name, i.quantity, i.unit_price_cents
                       FROM orders o JOIN order_items i ON i.merchant_id = o.merchant_id
                            AND i.placed_at = o.placed_at AND i.order_id = o.order_id
                       WHERE o.merchant_id = %s ORDER BY o.order_id, i.line_no""",
                    (merchant_id,))
        by_order = collections.defaultdict(list)
        for row in cur.fetchall():
            by_order[row[0]].append(row)
    products = collections.defaultdict(lambda: [0, 0])
    names = {}
    for order_id, lines in by_order.items():
        placed, status, net = lines[0][1], lines[0][2], lines[0][3]
        for line in lines:
            rank = (placed, order_id.encode(), line[4])
            if line[5] not in names or rank > names[line[5]][0]:
                names[line[5]] = (rank, line[6])
        if status != 0:
            continue
        bucket = placed - dt.timedelta(minutes=placed.minute % 15, seconds=placed.second,
                                       microseconds=placed.microsecond)
        for line, share in zip(lines, allocate(net, [q * p for *_, q, p in lines])):
            s = products[(bucket, line[5])]
            s[0] += line[7]
            s[1] += share
    out["product"] = {k: tuple(v) for k, v in products.items() if any(v)}
    out["names"] = {(sku,): (name,) for sku, (_, name) in names.items()}
    hourly = collections.defaultdict(lambda: [0] * 8)
    for (bucket, *_), figures in out["sales"].items():
        hour = bucket.replace(minute=0)
        hourly[hour] = [a + b for a, b in zip(hourly[hour], figures)]
    out["hourly"] = {(h,): tuple(v) for h, v in hourly.items() if v[0] or v[1]}
    return out


def corrupt(conn, merchant_id, at):
    """What a processing bug could leave: changed, missing and bogus rows, a wrong name."""
    day = dt.datetime.combine(at.date(), dt.time(), UTC)
    with conn.cursor() as cur:
        cur.execute("UPDATE sales_rollup_1h SET orders = orders + 3, net_cents = net_cents + 777, "
                    "items_sold = items_sold + 1 WHERE merchant_id = %s AND hour >= %s "
                    "AND hour < %s", (merchant_id, day, day + dt.timedelta(hours=12)))
        assert cur.rowcount > 0
        cur.execute("UPDATE sales_rollup_15m SET orders = orders + 3, net_cents = net_cents + 777, "
                    "items_sold = items_sold + 1 WHERE merchant_id = %s AND bucket >= %s "
                    "AND bucket < %s", (merchant_id, day, day + dt.timedelta(hours=12)))
        assert cur.rowcount > 0
        cur.execute("DELETE FROM sales_rollup_15m WHERE merchant_id = %s AND bucket >= %s "
                    "AND bucket < %s", (merchant_id, day + dt.timedelta(days=1),
                                        day + dt.timedelta(days=1, hours=8)))
        assert cur.rowcount > 0
        cur.execute("INSERT INTO sales_rollup_15m (merchant_id, bucket, store_id, channel, "
                    "fulfillment, orders, cancelled_orders, items_sold, gross_cents, "
                    "discount_cents, net_cents, tax_cents, total_cents) VALUES "
                    "(%s, %s, 999, 0, 0, 5, 0, 9, 50000, 0, 50000, 5000, 55000)",
                    (merchant_id, day + dt.timedelta(days=2, hours=3, minutes=15)))
        cur.execute("UPDATE product_rollup_15m SET quantity = quantity * 2, "
                    "net_sales_cents = net_sales_cents + 12345 WHERE merchant_id = %s "
                    "AND bucket >= %s AND bucket < %s",
                    (merchant_id, day, day + dt.timedelta(days=1)))
        assert cur.rowcount > 0
        cur.execute("DELETE FROM product_rollup_15m WHERE merchant_id = %s AND bucket >= %s "
                    "AND bucket < %s", (merchant_id, day + dt.timedelta(days=3),
                                        day + dt.timedelta(days=4)))
        assert cur.rowcount > 0
        cur.execute("INSERT INTO product_rollup_15m (merchant_id, bucket, sku, quantity, "
                    "net_sales_cents) VALUES (%s, %s, 'BOGUS', 1000, 99999999)",
                    (merchant_id, day + dt.timedelta(hours=1)))
        cur.execute("UPDATE product_names SET name = 'CORRUPTED' WHERE merchant_id = %s "
                    "AND sku = %s", (merchant_id, SKUS[0]))
        assert cur.rowcount == 1
        cur.execute("UPDATE promo_rollup_15m SET orders = orders + 1, "
                    "discounts_cents = discounts_cents + 10 WHERE merchant_id = %s "
                    "AND bucket >= %s AND bucket < %s",
                    (merchant_id, day, day + dt.timedelta(days=2)))
        assert cur.rowcount > 0
        cur.execute("DELETE FROM promo_rollup_15m WHERE merchant_id = %s AND bucket >= %s "
                    "AND bucket < %s", (merchant_id, day + dt.timedelta(days=4),
                                        day + dt.timedelta(days=5)))
        cur.execute("INSERT INTO promo_rollup_15m (merchant_id, bucket, promo_code, orders, "
                    "discounts_cents, net_sales_cents) VALUES (%s, %s, 'GHOST', 4, 400, 4000)",
                    (merchant_id, day + dt.timedelta(hours=2)))
        cur.execute("UPDATE delivery_rollup_15m SET delivered = delivered + 1, "
                    "deliveries = deliveries + 2 WHERE merchant_id = %s AND bucket >= %s "
                    "AND bucket < %s", (merchant_id, day, day + dt.timedelta(days=1)))
        assert cur.rowcount > 0
        cur.execute("DELETE FROM delivery_rollup_15m WHERE merchant_id = %s AND bucket >= %s "
                    "AND bucket < %s", (merchant_id, day + dt.timedelta(days=2),
                                        day + dt.timedelta(days=3)))
        assert cur.rowcount > 0


# ---------------------------------------------------------------------------------------------
# jobs


def _admin(m):
    return m["admin"]


def post_job(server, token, merchant_id, frm, to, want=202):
    r = requests.post(f"{server.url}/v1/admin/reprocess", headers=headers(token),
                      json={"merchant_id": merchant_id, "from": frm, "to": to}, timeout=30)
    assert r.status_code == want, r.text
    if want != 202:
        return r
    job_id = r.json()["job_id"]
    assert list(r.json()) == ["job_id"] and job_id
    assert r.headers["Location"] == f"/v1/admin/jobs/{job_id}"
    return job_id


def get_job(server, token, job_id):
    r = requests.get(f"{server.url}/v1/admin/jobs/{job_id}", headers=headers(token), timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == JOB_KEYS and set(body["progress"]) == {"merchants_done",
                                                                "merchants_total"}
    schema = yaml.safe_load((ROOT / "openapi" / "openapi.yaml").read_text())[
        "components"]["schemas"]["Job"]
    assert set(schema["required"]) == set(body) == set(schema["properties"])
    assert body["state"] in schema["properties"]["state"]["enum"]
    assert r.headers["Cache-Control"] == "no-store"
    return body


def wait_job(server, token, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        body = get_job(server, token, job_id)
        if body["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def run_job(server, m, frm=None, to=None, timeout=60):
    """Posts a job for m over [frm, to) (default: its data window), waits; the final body."""
    frm, to = frm or m["start"], to or m["end"]
    job_id = post_job(server, _admin(m), m["id"], _z(frm), _z(to))
    body = wait_job(server, _admin(m), job_id, timeout)
    assert body["state"] == "succeeded", body
    assert body["merchant_id"] == m["id"] and body["error"] is None
    assert _start(body["from"].replace("Z", "+00:00")) == frm
    assert _start(body["to"].replace("Z", "+00:00")) == to
    assert body["progress"] == {"merchants_done": 1, "merchants_total": 1}, body
    return body


def _wait_equal(read, want, timeout=5):
    last = {}

    def check():
        last["got"] = read()
        return last["got"] == want
    wait_until(check, timeout=timeout)
    return last["got"]


# ---------------------------------------------------------------------------------------------
# tests


def test_rebuild_repairs_a_corruption_and_the_cache_follows(server, stack, shop):
    m = shop
    before = read_all(server, m)
    assert model_mismatches(before, m["orders"], m["start"], m["end"]) == []
    conn = stack.primary()
    try:
        tables = rollups(conn, m["id"])
        assert tables == recompute(conn, m["id"])
        corrupt(conn, m["id"], m["start"])
        assert rollups(conn, m["id"]) != tables
        # A read cached while the figures are corrupt (another `to`, so another cache key).
        replica = stack.replica()
        try:
            with replica.cursor() as cur:
                def replicated():
                    cur.execute("SELECT count(*) FROM sales_rollup_15m WHERE merchant_id = %s "
                                "AND store_id = 999", (m["id"],))
                    return cur.fetchone()[0] == 1
                assert wait_until(replicated, timeout=10)
        finally:
            replica.close()
        corrupted = read_all(server, m, extra_days=1)
        bad = model_mismatches(corrupted, m["orders"], m["start"], m["end"])
        assert set(bad) == {"sales_day", "sales_hour_channel", "products_net", "products_qty",
                            "promotions", "deliveries"}, bad
        assert read_all(server, m, extra_days=1) == corrupted  # cached (or the same figures)

        run_job(server, m)
        assert rollups(conn, m["id"]) == tables
        # At once: no stale cache entry, neither the corrupt nor the earlier correct one.
        after_new_key = read_all(server, m, extra_days=1)
        assert model_mismatches(after_new_key, m["orders"], m["start"], m["end"]) == []
        assert read_all(server, m) == before
    finally:
        conn.close()


def test_a_second_run_changes_nothing(server, stack, shop):
    m = shop
    conn = stack.primary()
    try:
        tables, figures = rollups(conn, m["id"]), read_all(server, m)
        run_job(server, m)
        assert rollups(conn, m["id"]) == tables
        assert read_all(server, m) == figures
        assert model_mismatches(figures, m["orders"], m["start"], m["end"]) == []
    finally:
        conn.close()


WRITERS = 16


def test_rebuild_while_16_writers_ingest(server, stack, shop):
    m = shop
    log_start = server.log_size()
    stop = threading.Event()
    lock = threading.Lock()
    failures, added = [], []

    def writer(k):
        rng = random.Random(SEED * 100 + k)
        mine, n = [], 0
        while not stop.is_set() or n < 8:
            n += 1
            action = rng.random()
            try:
                if action < 0.45:
                    body, model = _order(rng, f"rw{k:02d}-{n:04d}", _instant(rng, m["start"]))
                    r = _post_one(server, m, body)
                    ok = r.status_code == 201
                    new = [model] if ok else []
                elif action < 0.7:
                    placed = [_order(rng, f"rw{k:02d}-{n:04d}-{j}", _instant(rng, m["start"]))
                              for j in range(rng.randint(2, 5))]
                    r = _post_batch(server, m, [b for b, _ in placed])
                    ok = r.status_code == 200 and r.json()["accepted"] == len(placed)
                    new = [model for _, model in placed] if ok else []
                elif action < 0.85 and mine:
                    o = mine.pop(rng.randrange(len(mine)))
                    r = _cancel(server, m, o["order_id"])
                    ok = r.status_code == 200
                    if ok:
                        o["cancelled"] = True
                    new = []
                else:
                    ready = [o for o in mine if o["fulfillment"] == "delivery"]
                    if not ready:
                        continue
                    o = ready[0]
                    mine.remove(o)  # neither cancelled nor sent twice afterwards
                    status = rng.choice(["delivered", "failed"])
                    r = _event(server, m, o, status, o["at"] + dt.timedelta(minutes=30))
                    ok = r.status_code in (200, 201)
                    if ok:
                        o["delivery"] = status
                    new = []
            except requests.RequestException as e:
                with lock:
                    failures.append(f"writer {k}: {e!r}")
                continue
            if not ok:
                with lock:
                    failures.append(f"writer {k}: {r.status_code} {r.text[:300]}")
                continue
            mine += new
            with lock:
                added.extend(new)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(WRITERS)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        before_jobs = len(added)
        # Back to back while the writers write; a range wider than the data (more steps).
        jobs = [run_job(server, m, m["start"] - dt.timedelta(days=10),
                        m["end"] + dt.timedelta(days=2)) for _ in range(3)]
        during_jobs = len(added) - before_jobs
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:10]
    assert during_jobs > 20 and all(j["state"] == "succeeded" for j in jobs), during_jobs
    print(f"\n{len(added)} orders written by {WRITERS} writers, {during_jobs} during the jobs")
    m["orders"] += added
    log = server.log_since(log_start).lower()
    assert "deadlock" not in log and '"status":5' not in log.replace(" ", "")
    conn = stack.primary()
    try:
        assert rollups(conn, m["id"]) == recompute(conn, m["id"])
    finally:
        conn.close()
    got = _wait_equal(lambda: model_mismatches(read_all(server, m), m["orders"], m["start"],
                                               m["end"]), [], timeout=5)
    assert got == []


def test_thirty_days_of_the_merchant(server, stack, shop, record_property):
    m = shop
    frm = m["start"] - dt.timedelta(days=24)
    started = time.monotonic()
    run_job(server, m, frm, frm + dt.timedelta(days=30), timeout=120)
    took = time.monotonic() - started
    record_property("reprocess_30_days_s", round(took, 2))
    print(f"\n30-day reprocess of merchant {m['id']} ({len(m['orders'])} orders): {took:.2f}s")
    assert model_mismatches(read_all(server, m), m["orders"], m["start"], m["end"]) == []


def _rebuilt(conn, m):
    return rollups(conn, m["id"]) == recompute(conn, m["id"])


def test_the_command_line_rebuilds_too(server, stack, shop):
    m = shop
    conn = stack.primary()
    try:
        tables = rollups(conn, m["id"])
        assert tables == recompute(conn, m["id"])
        corrupt(conn, m["id"], m["start"] + dt.timedelta(days=1))
        code, out = server.run_command("reprocess", "--from", _z(m["start"]), "--to",
                                       _z(m["end"]), "--merchant", str(m["id"]))
        assert code == 0, out
        assert "succeeded" in out
        assert rollups(conn, m["id"]) == tables
        got = _wait_equal(lambda: model_mismatches(read_all(server, m, extra_days=2),
                                                   m["orders"], m["start"], m["end"]), [])
        assert got == []
    finally:
        conn.close()


@pytest.mark.parametrize("args", [
    [],
    ["--from", "2026-01-01T00:00:00Z"],
    ["--to", "2026-01-01T00:00:00Z"],
    ["--from", "2026-01-02T00:00:00Z", "--to", "2026-01-01T00:00:00Z"],
    ["--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T00:00:00Z"],
    ["--from", "2026-01-01T00:07:00Z", "--to", "2026-01-02T00:00:00Z"],
    ["--from", "2026-01-01", "--to", "2026-01-02T00:00:00Z"],
    ["--from", "2026-01-01T00:00:00", "--to", "2026-01-02T00:00:00Z"],
    ["--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z", "--merchant", "0"],
    ["--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z", "--merchant", "x"],
    ["--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z", "--bogus", "1"],
    # Each of these ran a job and exited 0 when this was written:
    pytest.param(["--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z",
                  "--merchant", "12abc"], id="merchant-with-trailing-garbage-runs-merchant-12"),
    pytest.param(["--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z", "extra"],
                 id="stray-argument-ignored-job-over-every-merchant"),
    pytest.param(["--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z",
                  "--merchant", "987654321987"], id="unknown-merchant-succeeds (API: 404)"),
    pytest.param(["--from", "2024-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z",
                  "--merchant", "987654321987"], id="over-400-days-accepted (API: 400)"),
])
def test_the_command_line_refuses_bad_arguments(server, args):
    code, out = server.run_command("reprocess", *args)
    said = [line for line in out.splitlines() if line.startswith("cangrejo reprocess:")]
    assert code != 0, f"exit 0 for {args}:\n{out}"
    assert said, f"no message for {args}:\n{out}"


def test_a_killed_server_resumes_its_job(server, stack, shop):
    """kill -9 during a long job (400 days of the merchant, one step a day); the restarted
    server must resume it and finish (or report it failed) within RESUME_TIMEOUT s."""
    m = shop
    conn = stack.primary()
    try:
        tables = rollups(conn, m["id"])
        corrupt(conn, m["id"], m["start"] + dt.timedelta(days=2))
        corrupted = rollups(conn, m["id"])
        frm = m["end"] - dt.timedelta(days=400)
        job_id = post_job(server, _admin(m), m["id"], _z(frm), _z(m["end"]))
        with conn.cursor() as cur:
            def progressed():
                cur.execute("SELECT state, resume_at FROM reprocess_jobs WHERE job_id = %s",
                            (job_id,))
                state, at = cur.fetchone()
                return state == "running" and at is not None and at > frm + dt.timedelta(days=3)
            assert wait_until(progressed, timeout=20, interval=0.01), "the job never ran"
            server.kill()
            cur.execute("SELECT state, resume_at FROM reprocess_jobs WHERE job_id = %s",
                        (job_id,))
            state, resume_at = cur.fetchone()
        assert state == "running" and resume_at < m["end"], (
            "the job finished before the kill: make it longer")
        # Whatever the kill interrupted: the old figures or the rebuilt ones, never a mix.
        assert rollups(conn, m["id"]) in (tables, corrupted)
        server.start()
        body = wait_job(server, _admin(m), job_id, timeout=RESUME_TIMEOUT)
        if body["state"] not in ("succeeded", "failed"):
            # Stuck: say how, then restart once more (now that its heartbeat is old) to clean up.
            server.restart()
            again = wait_job(server, _admin(m), job_id, timeout=RESUME_TIMEOUT)
            pytest.fail(f"job {job_id} still {body['state']} {RESUME_TIMEOUT}s after the restart "
                        f"that followed kill -9 ({body['progress']}); a second restart "
                        f"left it {again['state']}. A server started within 10 s of the crash "
                        f"finds the job's heartbeat fresh, skips it, and never looks again.")
        assert body["state"] == "succeeded", body
        assert body["progress"] == {"merchants_done": 1, "merchants_total": 1}
        assert rollups(conn, m["id"]) == tables
        got = _wait_equal(lambda: model_mismatches(read_all(server, m, extra_days=3),
                                                   m["orders"], m["start"], m["end"]), [])
        assert got == []
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# validation and access


VALID = {"merchant_id": None, "from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"}


@pytest.mark.parametrize("change,field", [
    ({"from": "yesterday"}, "from"),
    ({"from": "2026-01-01"}, "from"),
    ({"from": "2026-01-01T00:00:00"}, "from"),
    ({"from": 5}, "from"),
    ({"from": None}, "from"),
    ({"to": "2026-13-01T00:00:00Z"}, "to"),
    ({"from": "2026-01-01T00:10:00Z"}, "from"),
    ({"to": "2026-01-01T12:00:30+01:00"}, "to"),
    ({"to": "2025-12-31T00:00:00Z"}, "to"),
    ({"to": "2026-01-01T00:00:00Z"}, "to"),
    ({"to": "2027-02-05T00:15:00Z"}, "to"),      # 400 days and a quarter hour
    ({"surprise": 1}, "surprise"),
    ({"merchant_id": 0}, "merchant_id"),
    ({"merchant_id": -4}, "merchant_id"),
    ({"merchant_id": "7"}, "merchant_id"),
    ({"merchant_id": 1.5}, "merchant_id"),
])
def test_validation_names_the_field(server, change, field):
    body = {**VALID, **change}
    r = requests.post(f"{server.url}/v1/admin/reprocess", json=body, timeout=10,
                      headers=headers(make_token(scope="admin", merchants="*")))
    assert r.status_code == 400, r.text
    problem = r.json()
    assert problem["type"] == PROBLEM_VALIDATION
    assert field in [e["field"] for e in problem["errors"]], problem


def test_missing_fields_and_400_days_exactly(server):
    token = make_token(scope="admin", merchants="*")
    r = requests.post(f"{server.url}/v1/admin/reprocess", json={}, timeout=10,
                      headers=headers(token))
    assert r.status_code == 400
    assert {"from", "to"} <= {e["field"] for e in r.json()["errors"]}
    # Exactly 400 days over a merchant without orders: accepted, and quick.
    merchant_id = random.SystemRandom().randint(2 * 10**12, 8 * 10**12)
    assert requests.put(f"{server.url}/v1/merchants/{merchant_id}", timeout=10,
                        headers=headers(make_token(scope="merchants:admin",
                                                   merchants=[merchant_id])),
                        json={"name": "Empty", "timezone": "Asia/Kathmandu",
                              "currency": "NPR"}).status_code == 201
    job_id = post_job(server, token, merchant_id, "2025-01-01T00:15:00+05:45",
                      "2026-02-05T00:15:00+05:45")
    body = wait_job(server, token, job_id)
    assert body["state"] == "succeeded" and body["merchant_id"] == merchant_id
    assert body["from"].startswith("2024-12-31T18:30:00"), body


def test_access(server, shop):
    m = shop
    url = f"{server.url}/v1/admin/reprocess"
    body = {"merchant_id": m["id"], "from": _z(m["start"]), "to": _z(m["end"])}

    def post(token, payload=body):
        return requests.post(url, json=payload, headers=headers(token) if token else {},
                             timeout=10)
    assert post(None).status_code == 401
    assert post(make_token(scope=DEFAULT_SCOPE, merchants=[m["id"]])).status_code == 403
    assert post(make_token(scope=DEFAULT_SCOPE, merchants="*")).status_code == 403
    assert post(make_token(scope="admin", merchants=[m["id"] + 1])).status_code == 403
    assert post(make_token(scope="admin", merchants=[m["id"]]),
                {**body, "merchant_id": None}).status_code == 403
    unknown = random.SystemRandom().randint(9 * 10**12, 9 * 10**12 + 10**9)
    r = post(make_token(scope="admin", merchants="*"), {**body, "merchant_id": unknown})
    assert r.status_code == 404, r.text
    r = post(make_token(scope="admin", merchants=[unknown]), {**body, "merchant_id": unknown})
    assert r.status_code == 404, r.text

    job_id = post_job(server, _admin(m), m["id"], body["from"], body["to"])
    job_url = f"{server.url}/v1/admin/jobs/{job_id}"
    assert requests.get(job_url, timeout=10).status_code == 401
    for token in (make_token(scope=DEFAULT_SCOPE, merchants=[m["id"]]),
                  make_token(scope="admin", merchants=[m["id"] + 1])):
        assert requests.get(job_url, headers=headers(token), timeout=10).status_code == 403
    assert wait_job(server, make_token(scope="admin", merchants="*"), job_id)["state"] == \
        "succeeded"
    for missing in ("0" * 32, "nope", "x" * 200):
        r = requests.get(f"{server.url}/v1/admin/jobs/{missing}", timeout=10,
                         headers=headers(make_token(scope="admin", merchants="*")))
        assert r.status_code == 404, r.text
    # A token for some merchants cannot tell a missing job from another merchant's.
    other = make_token(scope="admin", merchants=[m["id"] + 1])
    forbidden = requests.get(job_url, headers=headers(other), timeout=10)
    missing = requests.get(f"{server.url}/v1/admin/jobs/{'0' * 32}", headers=headers(other),
                           timeout=10)
    assert missing.status_code == forbidden.status_code == 403
    assert missing.json()["detail"] == forbidden.json()["detail"]


def test_a_job_over_every_merchant_needs_every_merchant(server, shop):
    m = shop
    # A short range: every merchant of the session, one step each.
    frm = m["start"] + dt.timedelta(days=1)
    star = make_token(scope="admin", merchants="*")
    job_id = post_job(server, star, None, _z(frm), _z(frm + dt.timedelta(hours=1)))
    body = wait_job(server, star, job_id, timeout=60)
    assert body["state"] == "succeeded" and body["merchant_id"] is None, body
    total = body["progress"]["merchants_total"]
    assert total >= 2 and body["progress"]["merchants_done"] == total, body
    r = requests.get(f"{server.url}/v1/admin/jobs/{job_id}", timeout=10,
                     headers=headers(_admin(m)))
    assert r.status_code == 403, r.text
