"""Product and promotion metrics, black box: GET /v1/merchants/{id}/metrics/products and
GET /v1/merchants/{id}/metrics/promotions.

Data is created through the API (PUT the merchant, POST orders one by one and in batches,
cancel some). Every expected figure is computed here, independently of the server, from the
orders this module posted: range bounds with zoneinfo, the largest-remainder allocation of each
order's net over its items (with exact fractions), the latest name of each SKU, sums, ranking
and limits. The data set is a few hundred seeded random orders over about twelve days around the
last Sunday of October (Europe/Madrid leaves summer time then), for merchants in Europe/Madrid
and Asia/Kathmandu, with several items per order, discounts (none, some, all of the gross,
amounts near the API's limits), promo codes, SKUs and codes that need escaping or sort
differently by bytes than by locale, replays of orders already stored, and orders cancelled
afterwards.

Also: the response shape against openapi.yaml, validation, 404/403, ETag / If-None-Match, the
cache (a repeated read is a hit, a write makes the next read a miss that includes it), a
cancellation that changes the figures exactly once, the latest name per SKU (ties included),
and the migration that backfills the rollups from orders stored before it.
"""

import collections
import concurrent.futures
import datetime as dt
import fractions
import pathlib
import random
import re
import subprocess
import uuid
from zoneinfo import ZoneInfo

import psycopg2
import pytest
import requests
import yaml

from helpers import DEFAULT_SCOPE, headers, make_token, wait_until

ROOT = pathlib.Path(__file__).resolve().parents[2]
UTC = dt.timezone.utc
PROBLEM_VALIDATION = "https://cangrejo.dev/problems/validation-error"
ZONES = {"Europe/Madrid": "EUR", "Asia/Kathmandu": "NPR"}
ORDERS_PER_MERCHANT = 260
SEED = 20261121
# Byte order differs from a locale's here ("B" < "a" < "x" < "Ä"); some need escaping in
# array literals and JSON.
SKUS = [f"SKU-{k:02d}" for k in range(14)] + [
    "a-lower", "B-upper", "x,{comma}", 'q"uote\\back', "Äpfel", "Ωmega", "zz top"]
PROMOS = ["2X1TUESDAY", "WELCOME10", "a-lower", "B-upper", "Ñ-OFERTA", 'x,"{y}\\']
HEADER_KEYS = ["merchant_id", "from", "to", "timezone", "currency", "as_of"]
UTC_Z_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
MAX_AMOUNT = 10**15


# ---------------------------------------------------------------------------------------------
# the independent model


def allocate(net, grosses):
    """The order's net over its items, pro rata to their gross, by the largest-remainder
    method: floors of the exact shares, then one cent each to the largest fractional parts,
    the earlier item first on a tie. Exact fractions, no integer remainder tricks."""
    total = sum(grosses)
    if total == 0:
        assert net == 0
        return [0] * len(grosses)
    exact = [fractions.Fraction(net * g, total) for g in grosses]
    shares = [x.numerator // x.denominator for x in exact]
    left = net - sum(shares)
    assert 0 <= left < max(1, len(grosses))
    by_fraction = sorted(range(len(grosses)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in by_fraction[:left]:
        shares[i] += 1
    assert sum(shares) == net
    return shares


def test_the_model_allocation_itself():
    assert allocate(100, [1, 2]) == [33, 67]
    assert allocate(2, [1, 1, 1]) == [1, 1, 0]
    assert allocate(1000, [1, 1, 1]) == [334, 333, 333]
    assert allocate(1260, [1150, 250]) == [1035, 225]
    assert allocate(0, [0, 0]) == [0, 0]


def _last_sunday_of_october(year):
    day = dt.date(year, 10, 31)
    return day - dt.timedelta(days=(day.weekday() + 1) % 7)


def _window():
    """[start, end) in UTC: 5 days before the last Sunday of October to 7 days after it, in
    the latest year whose window lies wholly in the past."""
    now = dt.datetime.now(UTC)
    year = now.year
    while True:
        sunday = _last_sunday_of_october(year)
        start = dt.datetime.combine(sunday - dt.timedelta(days=5), dt.time(), UTC)
        end = start + dt.timedelta(days=12)
        if end + dt.timedelta(hours=1) < now:
            return start, end
        year -= 1


def _resolve(bound, zone):
    """A from/to parameter as an aware UTC instant (a date is local midnight in zone)."""
    if len(bound) == 10:
        y, m, d = map(int, bound.split("-"))
        return dt.datetime(y, m, d, tzinfo=ZoneInfo(zone)).astimezone(UTC)
    return dt.datetime.fromisoformat(bound).astimezone(UTC)


def _label(instant, zone):
    return instant.astimezone(ZoneInfo(zone)).isoformat()


def _gross(item):
    return item["quantity"] * item["unit_price_cents"]


def latest_names(orders):
    """SKU -> the name on the order with the latest placed_at (cancelled ones included); ties:
    the greatest order_id by bytes, then the last line of that order with the SKU."""
    best = {}
    for o in orders:
        for line, item in enumerate(o["items"]):
            rank = (o["instant"], o["order_id"].encode(), line)
            if item["sku"] not in best or rank > best[item["sku"]][0]:
                best[item["sku"]] = (rank, item["name"])
    return {sku: name for sku, (_, name) in best.items()}


def _header(merchant, frm, to, tz):
    zone = tz or merchant["zone"]
    t_from, t_to = _resolve(frm, zone), _resolve(to, zone)
    body = {"merchant_id": merchant["id"], "from": _label(t_from, zone), "to": _label(t_to, zone),
            "timezone": zone, "currency": merchant["currency"]}
    return body, t_from, t_to


def _counted(merchant, t_from, t_to):
    return [o for o in merchant["orders"] if not o["cancelled"] and t_from <= o["instant"] < t_to]


def expected_products(merchant, frm, to, tz=None, sort="net_sales", limit=10):
    """The products body (without as_of) the API must give."""
    body, t_from, t_to = _header(merchant, frm, to, tz)
    sums = collections.defaultdict(lambda: [0, 0])
    for o in _counted(merchant, t_from, t_to):
        shares = allocate(o["net"], [_gross(i) for i in o["items"]])
        for item, share in zip(o["items"], shares):
            sums[item["sku"]][0] += item["quantity"]
            sums[item["sku"]][1] += share
    names = latest_names(merchant["orders"])
    rows = [{"sku": sku, "name": names[sku], "quantity": q, "net_sales_cents": n}
            for sku, (q, n) in sums.items() if q > 0]
    key = "net_sales_cents" if sort == "net_sales" else "quantity"
    rows.sort(key=lambda r: (-r[key], r["sku"].encode()))
    body["sort"] = sort
    body["products"] = rows[:limit]
    return body


def expected_promotions(merchant, frm, to, tz=None):
    """The promotions body (without as_of) the API must give."""
    body, t_from, t_to = _header(merchant, frm, to, tz)
    sums = collections.defaultdict(lambda: [0, 0, 0])
    for o in _counted(merchant, t_from, t_to):
        if o["promo_code"] is not None:
            s = sums[o["promo_code"]]
            s[0] += 1
            s[1] += o["discount"]
            s[2] += o["net"]
    rows = [{"promo_code": code, "orders": n, "discounts_cents": d, "net_sales_cents": net}
            for code, (n, d, net) in sums.items() if n > 0]
    rows.sort(key=lambda r: (-r["net_sales_cents"], r["promo_code"].encode()))
    body["promotions"] = rows
    return body


# ---------------------------------------------------------------------------------------------
# orders, created through the API


def _random_items(rng):
    items = []
    for _ in range(rng.choice([1, 1, 2, 3, 4, 5, 8])):
        sku = rng.choice(SKUS)
        price = rng.choice([0, rng.randint(1, 99), rng.randint(100, 4000), rng.randint(100, 4000)])
        items.append({"sku": sku, "name": f"{sku} v{rng.randrange(3)}",
                      "quantity": rng.randint(1, 6), "unit_price_cents": price})
    if rng.random() < 0.03:  # near the API's limits: shares need more than 64 bits
        items = [{"sku": rng.choice(SKUS), "name": "Big", "quantity": rng.randint(1, 3),
                  "unit_price_cents": rng.randint(10**13, 10**14)} for _ in range(3)]
    return items


def _random_discount(rng, gross):
    return rng.choice([0, 0, 0, rng.randint(0, gross), gross // 3, gross // 7 + 1, gross])


def _order(rng, order_id, instant, currency, items=None, discount=None, promo="random"):
    """(request body, model) of one order placed at `instant`."""
    items = items if items is not None else _random_items(rng)
    gross = sum(_gross(i) for i in items)
    if discount is None:
        discount = min(_random_discount(rng, gross), gross) if gross else 0
    if promo == "random":
        promo = rng.choice([None, None, None] + PROMOS)
    written_in = rng.choice([UTC, dt.timezone(dt.timedelta(hours=-3, minutes=-30)),
                             dt.timezone(dt.timedelta(hours=5, minutes=45))])
    body = {"order_id": order_id, "store_id": rng.choice([11, 12]),
            "channel": rng.choice(["online", "pos"]),
            "fulfillment": rng.choice(["pickup", "delivery", "dine_in"]),
            "placed_at": instant.astimezone(written_in).isoformat(), "currency": currency,
            "items": items, "discount_cents": discount, "tax_cents": (gross - discount) // 10}
    if promo is not None:
        body["promo_code"] = promo
    model = {"order_id": order_id, "instant": instant, "items": items, "gross": gross,
             "discount": discount, "net": gross - discount, "promo_code": promo,
             "cancelled": False}
    return body, model


def _put_merchant(server, merchant_id, zone, currency):
    admin = make_token(scope="merchants:admin", merchants=[merchant_id])
    r = requests.put(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(admin),
                     json={"name": f"Products test {zone}", "timezone": zone,
                           "currency": currency}, timeout=10)
    assert r.status_code == 201, r.text
    return make_token(scope=DEFAULT_SCOPE, merchants=[merchant_id])


def _new_merchant(server, merchant_id, zone="Europe/Madrid", currency="EUR"):
    token = _put_merchant(server, merchant_id, zone, currency)
    return {"id": merchant_id, "zone": zone, "currency": currency, "token": token, "orders": []}


def _post_one(server, merchant, body, want=201):
    r = requests.post(f"{server.url}/v1/merchants/{merchant['id']}/orders", json=body,
                      headers=headers(merchant["token"]), timeout=30)
    assert r.status_code == want, f"{body['order_id']}: {r.status_code} {r.text}"
    return r


def _post_singly(server, merchant, bodies, want=201, workers=8):
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda b: _post_one(server, merchant, b, want), bodies))


def _post_batch(server, merchant, bodies):
    r = requests.post(f"{server.url}/v1/merchants/{merchant['id']}/order-batches",
                      json={"orders": bodies}, headers=headers(merchant["token"]), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _add(server, merchant, placed, batch=False):
    """Posts orders (list of (body, model)) and records them in the model."""
    bodies = [b for b, _ in placed]
    if batch:
        result = _post_batch(server, merchant, bodies)
        assert result["accepted"] == len(bodies) and not result["rejected"], result
    else:
        _post_singly(server, merchant, bodies)
    merchant["orders"] += [m for _, m in placed]


def _cancel(server, merchant, order_id):
    r = requests.post(f"{server.url}/v1/merchants/{merchant['id']}/orders/{order_id}/cancel",
                      headers=headers(merchant["token"]), json={}, timeout=10)
    assert r.status_code == 200, r.text
    for o in merchant["orders"]:
        if o["order_id"] == order_id:
            o["cancelled"] = True


def _tie_orders(rng, merchant, start, prefix):
    """Orders placed at the same instant naming one SKU differently (the greatest order_id
    must win), and one order naming a SKU twice (its last line must win)."""
    at = start + dt.timedelta(days=12, minutes=7, seconds=11)  # after every random order
    sku = SKUS[3]
    placed = []
    for order_id, name in ((f"{prefix}-tie-B", "tie name B"), (f"{prefix}-tie-A", "tie name A"),
                           (f"{prefix}-tie-a", "tie name a (greatest id)")):
        items = [{"sku": sku, "name": name, "quantity": 1, "unit_price_cents": 500}]
        placed.append(_order(rng, order_id, at, merchant["currency"], items=items))
    later = at + dt.timedelta(microseconds=1)
    items = [{"sku": SKUS[4], "name": "first line", "quantity": 1, "unit_price_cents": 300},
             {"sku": SKUS[5], "name": "other", "quantity": 2, "unit_price_cents": 301},
             {"sku": SKUS[4], "name": "last line", "quantity": 1, "unit_price_cents": 300}]
    placed.append(_order(rng, f"{prefix}-two-lines", later, merchant["currency"], items=items))
    return placed


@pytest.fixture(scope="module")
def dataset(server):
    """{zone: merchant} with the posted orders (some cancelled), and their window."""
    start, end = _window()
    rng = random.Random(SEED)
    id_base = random.SystemRandom().randint(2 * 10**12, 8 * 10**12)
    merchants = {}
    for k, (zone, currency) in enumerate(ZONES.items()):
        merchant = _new_merchant(server, id_base + k, zone, currency)
        span = int((end - start).total_seconds())
        placed = [_order(rng, f"pp-{n:05d}", start + dt.timedelta(seconds=rng.randrange(span),
                                                                   microseconds=rng.randrange(10**6)),
                         currency)
                  for n in range(ORDERS_PER_MERCHANT)]
        placed += _tie_orders(rng, merchant, start, "pp")
        singly, batched = placed[: len(placed) // 2], placed[len(placed) // 2:]
        _add(server, merchant, singly)
        for i in range(0, len(batched), 50):
            _add(server, merchant, batched[i:i + 50], batch=True)
        # Replays of stored orders are counted once.
        replays = [b for b, _ in rng.sample(placed, 20)]
        _post_singly(server, merchant, replays[:10], want=200)
        result = _post_batch(server, merchant, replays[10:])
        assert result["duplicates"] == 10 and result["accepted"] == 0, result
        for m in rng.sample(merchant["orders"], len(merchant["orders"]) // 7):
            _cancel(server, merchant, m["order_id"])
        merchants[zone] = merchant
    return {"merchants": merchants, "start": start, "end": end}


# ---------------------------------------------------------------------------------------------
# requests and the response shape


def _url(server, merchant_id, what):
    return f"{server.url}/v1/merchants/{merchant_id}/metrics/{what}"


def _get(server, merchant, what, params, extra_headers=None, token=None):
    return requests.get(_url(server, merchant["id"], what), params=params,
                        headers=headers(token or merchant["token"], extra_headers), timeout=30)


_SPEC = None


def _spec_schema(name):
    global _SPEC
    if _SPEC is None:
        _SPEC = yaml.safe_load((ROOT / "openapi" / "openapi.yaml").read_text())
    return _SPEC["components"]["schemas"][name]


def _check_schema(value, schema, path="body"):
    """The subset of JSON Schema that the metrics schemas use."""
    if "$ref" in schema:
        return _check_schema(value, _spec_schema(schema["$ref"].rsplit("/", 1)[1]), path)
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(value, dict), path
        assert set(schema["required"]) <= set(value), (path, sorted(value))
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(schema["properties"]), (path, sorted(value))
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                _check_schema(value[key], sub, f"{path}.{key}")
    elif kind == "array":
        assert isinstance(value, list), path
        assert len(value) <= schema.get("maxItems", len(value)), path
        for i, item in enumerate(value):
            _check_schema(item, schema["items"], f"{path}[{i}]")
    elif kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), path
    elif kind == "string":
        assert isinstance(value, str), path
        if "enum" in schema:
            assert value in schema["enum"], (path, value)
        if schema.get("format") == "date-time":
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)",
                                value), (path, value)


def _metrics(server, merchant, what, params):
    """GET, check 200, headers, key order and the OpenAPI schema; the body without as_of."""
    r = _get(server, merchant, what, params)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers["Cache-Control"] == "private, max-age=1"
    assert re.fullmatch(r'"[0-9a-f]{32}(-gzip)?"', r.headers["ETag"]), r.headers["ETag"]
    body = r.json()
    extra = ["sort", "products"] if what == "products" else ["promotions"]
    assert list(body) == HEADER_KEYS + extra
    _check_schema(body, _spec_schema("ProductMetrics" if what == "products"
                                     else "PromotionMetrics"))
    as_of = body.pop("as_of")
    assert UTC_Z_RE.match(as_of), as_of
    assert dt.datetime.fromisoformat(as_of) <= dt.datetime.now(UTC) + dt.timedelta(seconds=2)
    return body


def _difference(got, expected, key):
    if got == expected:
        return ""
    for k in expected:
        if got.get(k) != expected[k] and k != key:
            return f"{k}: got {got.get(k)!r}, expected {expected[k]!r}"
    g, e = got.get(key, []), expected[key]
    for i, (a, b) in enumerate(zip(g, e)):
        if a != b:
            return f"{key}[{i}]: got {a}, expected {b}"
    return f"{key}: got {len(g)} rows, expected {len(e)}"


def _assert_products(server, merchant, params):
    model = {k: v for k, v in params.items() if k not in ("from", "to")}
    model["limit"] = int(model.get("limit", 10))
    expected = expected_products(merchant, params["from"], params["to"], **model)
    got = _metrics(server, merchant, "products", params)
    assert got == expected, _difference(got, expected, "products")
    return got


def _assert_promotions(server, merchant, params):
    expected = expected_promotions(merchant, params["from"], params["to"], params.get("tz"))
    got = _metrics(server, merchant, "promotions", params)
    assert got == expected, _difference(got, expected, "promotions")
    return got


def _day(instant, days=0):
    return (instant + dt.timedelta(days=days)).date().isoformat()


# ---------------------------------------------------------------------------------------------
# figures against the model


def _ranges(dataset):
    start, end = dataset["start"], dataset["end"]
    return [
        {"from": _day(start, -1), "to": _day(end, 1)},
        {"from": _day(start, 2), "to": _day(start, 6)},  # across Madrid's autumn change
        {"from": (start + dt.timedelta(days=3, hours=5, minutes=45)).isoformat(),
         "to": (start + dt.timedelta(days=4, hours=1, minutes=15)).isoformat()},
        {"from": _day(start, 1), "to": _day(start, 8), "tz": "America/St_Johns"},
        {"from": _day(start, 4), "to": _day(start, 5), "tz": "Asia/Kolkata"},
    ]


@pytest.mark.parametrize("zone", list(ZONES))
def test_products_match_the_model(server, dataset, zone):
    merchant = dataset["merchants"][zone]
    for params in _ranges(dataset):
        for sort in ("net_sales", "quantity"):
            for limit in ("1", "7", "100"):
                _assert_products(server, merchant, {**params, "sort": sort, "limit": limit})
    whole = _assert_products(server, merchant, _ranges(dataset)[0])  # defaults
    assert whole["sort"] == "net_sales" and len(whole["products"]) == 10
    everything = _assert_products(server, merchant, {**_ranges(dataset)[0], "limit": "100"})
    assert len(everything["products"]) == len(SKUS)  # every SKU sold, each listed once


@pytest.mark.parametrize("zone", list(ZONES))
def test_promotions_match_the_model(server, dataset, zone):
    merchant = dataset["merchants"][zone]
    for params in _ranges(dataset):
        _assert_promotions(server, merchant, params)
    whole = _assert_promotions(server, merchant, _ranges(dataset)[0])
    assert sorted(p["promo_code"] for p in whole["promotions"]) == sorted(PROMOS)


def test_products_add_up_to_the_sales_net(server, dataset):
    """The items' shares add up to each order's net, so all products together equal the net
    sales of the same range."""
    merchant = dataset["merchants"]["Europe/Madrid"]
    params = _ranges(dataset)[0]
    products = _metrics(server, merchant, "products", {**params, "limit": "100"})["products"]
    r = _get(server, merchant, "sales", {**params, "granularity": "month"})
    assert r.status_code == 200, r.text
    net = sum(b["net_sales_cents"] for b in r.json()["buckets"])
    assert sum(p["net_sales_cents"] for p in products) == net
    items = sum(b["items_sold"] for b in r.json()["buckets"])
    assert sum(p["quantity"] for p in products) == items


def test_latest_name_per_sku(server, dataset):
    merchant = dataset["merchants"]["Asia/Kathmandu"]
    body = _metrics(server, merchant, "products", {**_ranges(dataset)[0], "limit": "100"})
    names = {p["sku"]: p["name"] for p in body["products"]}
    assert names[SKUS[3]] == "tie name a (greatest id)"
    assert names[SKUS[4]] == "last line"
    assert names == {sku: name for sku, name in latest_names(merchant["orders"]).items()}


def test_empty_range_and_merchant_without_orders(server, dataset, merchant_id):
    merchant = dataset["merchants"]["Europe/Madrid"]
    params = {"from": _day(dataset["start"], -30), "to": _day(dataset["start"], -20)}
    assert _metrics(server, merchant, "products", params)["products"] == []
    assert _metrics(server, merchant, "promotions", params)["promotions"] == []
    empty = _new_merchant(server, merchant_id, "Asia/Kathmandu", "NPR")
    params = {"from": "2026-01-01", "to": "2026-01-02"}
    body = _metrics(server, empty, "products", params)
    assert body == expected_products(empty, params["from"], params["to"])
    assert body["from"] == "2026-01-01T00:00:00+05:45" and body["products"] == []
    assert _metrics(server, empty, "promotions", params) == \
        expected_promotions(empty, params["from"], params["to"])


def test_ranking_ties_and_byte_order(server, merchant_id):
    """Equal figures rank by SKU in byte order ("A" < "B" < "a" < "Ä"); sort=quantity ranks
    by units; a code whose orders are all cancelled, or orders without a code, are not
    listed."""
    merchant = _new_merchant(server, merchant_id)
    rng = random.Random(7)
    at = dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    placed = []
    for n, sku in enumerate(["a", "Ä", "B", "A"]):
        items = [{"sku": sku, "name": sku, "quantity": 2, "unit_price_cents": 500}]
        placed.append(_order(rng, f"tie-{n}", at + dt.timedelta(minutes=n), "EUR", items=items,
                             discount=0, promo=["P-b", "P-a", None, "P-b"][n]))
    items = [{"sku": "many", "name": "many", "quantity": 9, "unit_price_cents": 1}]
    placed.append(_order(rng, "many", at, "EUR", items=items, discount=0, promo="GONE"))
    _add(server, merchant, placed)
    _cancel(server, merchant, "many")
    params = {"from": "2026-03-02", "to": "2026-03-03"}
    body = _metrics(server, merchant, "products", params)
    assert [p["sku"] for p in body["products"]] == ["A", "B", "a", "Ä"]
    assert body == expected_products(merchant, params["from"], params["to"])
    promos = _metrics(server, merchant, "promotions", params)["promotions"]
    assert promos == [{"promo_code": "P-b", "orders": 2, "discounts_cents": 0,
                       "net_sales_cents": 2000},
                      {"promo_code": "P-a", "orders": 1, "discounts_cents": 0,
                       "net_sales_cents": 1000}]
    _add(server, merchant, [_order(rng, "many-2", at, "EUR", items=items, discount=0, promo=None)])
    by_quantity = _metrics(server, merchant, "products", {**params, "sort": "quantity",
                                                          "limit": "2"})
    assert [p["sku"] for p in by_quantity["products"]] == ["many", "A"]
    assert by_quantity == expected_products(merchant, params["from"], params["to"], sort="quantity",
                                              limit=2)


def test_cancellation_takes_the_order_out_exactly_once(server, merchant_id):
    merchant = _new_merchant(server, merchant_id)
    rng = random.Random(11)
    at = dt.datetime(2026, 5, 4, 19, 30, tzinfo=UTC)
    items = [{"sku": "PIZ", "name": "Pizza", "quantity": 1, "unit_price_cents": 1001},
             {"sku": "BEV", "name": "Cola", "quantity": 3, "unit_price_cents": 333},
             {"sku": "DES", "name": "Tiramisu", "quantity": 1, "unit_price_cents": 1}]
    keep = _order(rng, "keep", at, "EUR", items=items, discount=1, promo="SPRING")
    gone = _order(rng, "gone", at + dt.timedelta(minutes=20), "EUR", items=items, discount=7,
                  promo="SPRING")
    _add(server, merchant, [keep, gone])
    params = {"from": "2026-05-04", "to": "2026-05-05"}
    before = _metrics(server, merchant, "products", params)
    assert before == expected_products(merchant, params["from"], params["to"])
    assert {p["sku"]: p["net_sales_cents"] for p in before["products"]} == \
        {"PIZ": 1000 + 997, "BEV": 999 + 996, "DES": 1 + 1}  # nets 2000 and 1994
    promos = _metrics(server, merchant, "promotions", params)["promotions"]
    assert promos == [{"promo_code": "SPRING", "orders": 2, "discounts_cents": 8,
                       "net_sales_cents": 2000 + 1994}]

    for _ in range(3):  # the second and third cancels are no-ops
        _cancel(server, merchant, "gone")
        after = _metrics(server, merchant, "products", params)
        assert {p["sku"]: (p["quantity"], p["net_sales_cents"]) for p in after["products"]} == \
            {"PIZ": (1, 1000), "BEV": (3, 999), "DES": (1, 1)}
        assert after == expected_products(merchant, params["from"], params["to"])
        promos = _metrics(server, merchant, "promotions", params)["promotions"]
        assert promos == [{"promo_code": "SPRING", "orders": 1, "discounts_cents": 1,
                           "net_sales_cents": 2000}]

    _cancel(server, merchant, "keep")
    assert _metrics(server, merchant, "products", params)["products"] == []
    assert _metrics(server, merchant, "promotions", params)["promotions"] == []


def test_concurrent_cancels_count_once(server, merchant_id):
    merchant = _new_merchant(server, merchant_id)
    rng = random.Random(13)
    at = dt.datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
    placed = [_order(rng, f"cc-{n}", at + dt.timedelta(minutes=n), "EUR") for n in range(30)]
    _add(server, merchant, placed)
    victims = [m["order_id"] for _, m in placed[::3]]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda oid: _cancel(server, merchant, oid), victims * 3))
    params = {"from": "2026-06-01", "to": "2026-06-02"}
    _assert_products(server, merchant, {**params, "limit": "100"})
    _assert_promotions(server, merchant, params)


# ---------------------------------------------------------------------------------------------
# validation, errors


VALID = {"from": "2026-10-20", "to": "2026-10-27"}


@pytest.mark.parametrize("what,params,field", [
    ("products", {"to": "2026-10-27"}, "from"),
    ("products", {"from": "2026-10-20"}, "to"),
    ("products", {**VALID, "from": "2026-10-20T00:00:00"}, "from"),      # no offset
    ("products", {**VALID, "to": "2026-10-27T10:07:00+02:00"}, "to"),    # not a quarter hour
    ("products", {"from": "2026-10-27", "to": "2026-10-20"}, "to"),
    ("products", {"from": "2026-10-20", "to": "2026-10-20"}, "to"),
    ("products", {"from": "2025-10-01", "to": "2026-11-06"}, "to"),      # 401 days
    ("products", {"from": "2025-01-01T00:00:00Z", "to": "2026-02-05T00:15:00Z"}, "to"),
    ("products", {**VALID, "tz": "Europe/Atlantis"}, "tz"),
    ("products", {**VALID, "sort": "revenue"}, "sort"),
    ("products", {**VALID, "sort": "Quantity"}, "sort"),
    ("products", {**VALID, "limit": "0"}, "limit"),
    ("products", {**VALID, "limit": "101"}, "limit"),
    ("products", {**VALID, "limit": "-1"}, "limit"),
    ("products", {**VALID, "limit": "1.5"}, "limit"),
    ("products", {**VALID, "limit": "ten"}, "limit"),
    ("products", {**VALID, "limit": ""}, "limit"),
    ("products", {**VALID, "limit": "99999999999999999999"}, "limit"),
    ("products", {**VALID, "store_id": "1"}, "store_id"),               # not for products
    ("products", {**VALID, "channel": "pos"}, "channel"),
    ("products", {**VALID, "fulfillment": "pickup"}, "fulfillment"),
    ("products", {**VALID, "granularity": "day"}, "granularity"),
    ("promotions", {"to": "2026-10-27"}, "from"),
    ("promotions", {**VALID, "from": "2026-10-20T10:15:01Z"}, "from"),
    ("promotions", {"from": "2025-10-01", "to": "2026-11-06"}, "to"),
    ("promotions", {**VALID, "tz": "../../etc/passwd"}, "tz"),
    ("promotions", {**VALID, "sort": "net_sales"}, "sort"),              # not for promotions
    ("promotions", {**VALID, "limit": "10"}, "limit"),
    ("promotions", {**VALID, "group_by": "promo_code"}, "group_by"),
])
def test_validation(server, dataset, what, params, field):
    merchant = dataset["merchants"]["Europe/Madrid"]
    r = _get(server, merchant, what, params)
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["type"] == PROBLEM_VALIDATION and problem["status"] == 400
    assert field in [e["field"] for e in problem["errors"]], problem


@pytest.mark.parametrize("what,query,field", [
    ("products", "from=2026-10-20&to=2026-10-27&sort=quantity&sort=quantity", "sort"),
    ("products", "from=2026-10-20&to=2026-10-27&limit=5&limit=6", "limit"),
    ("promotions", "from=2026-10-20&from=2026-10-21&to=2026-10-27", "from"),
])
def test_repeated_parameter_is_refused(server, dataset, what, query, field):
    merchant = dataset["merchants"]["Europe/Madrid"]
    r = requests.get(f"{_url(server, merchant['id'], what)}?{query}",
                     headers=headers(merchant["token"]), timeout=10)
    assert r.status_code == 400, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]


@pytest.mark.parametrize("what", ["products", "promotions"])
def test_range_limits_themselves_are_allowed(server, dataset, what):
    merchant = dataset["merchants"]["Europe/Madrid"]
    for params in ({"from": "2025-01-01T00:00:00Z", "to": "2026-02-05T00:00:00Z"},
                   {"from": "2025-10-01", "to": "2026-11-05"}):
        if what == "products":
            _assert_products(server, merchant, params)
        else:
            _assert_promotions(server, merchant, params)


@pytest.mark.parametrize("what", ["products", "promotions"])
def test_unknown_merchant_scope_and_tenant(server, merchant_id, what):
    token = make_token(scope="metrics:read", merchants=[merchant_id])
    url = _url(server, merchant_id, what)
    r = requests.get(url, params=VALID, headers=headers(token), timeout=10)
    assert r.status_code == 404, r.text
    assert r.json()["type"].endswith("/not-found")
    assert requests.get(url, params=VALID, timeout=10).status_code == 401
    wrong_scope = make_token(scope="orders:read orders:write", merchants=[merchant_id])
    assert requests.get(url, params=VALID, headers=headers(wrong_scope),
                        timeout=10).status_code == 403
    other = make_token(scope="metrics:read", merchants=[merchant_id + 1])
    assert requests.get(url, params=VALID, headers=headers(other), timeout=10).status_code == 403


# ---------------------------------------------------------------------------------------------
# ETag, cache, freshness


def _log_line(server, request_id):
    def find():
        for line in reversed(server.log_lines_json()):
            if line.get("request_id") == request_id and line.get("msg") == "request":
                return line
        return None
    line = wait_until(find, timeout=5)
    assert line, f"no log line for request {request_id}"
    return line


@pytest.mark.parametrize("what", ["products", "promotions"])
def test_etag_and_if_none_match(server, dataset, what):
    merchant = dataset["merchants"]["Asia/Kathmandu"]
    params = _ranges(dataset)[1]
    r = _get(server, merchant, what, params)
    assert r.status_code == 200
    etag = r.headers["ETag"]
    for value in (etag, f"W/{etag}", "*", f'"nope", {etag}'):
        again = _get(server, merchant, what, params, extra_headers={"If-None-Match": value})
        assert again.status_code == 304, value
        assert again.content == b""
        assert again.headers["ETag"] == etag
        assert again.headers["Cache-Control"] == "private, max-age=1"
    assert _get(server, merchant, what, params,
                extra_headers={"If-None-Match": '"nope"'}).status_code == 200
    other = _get(server, merchant, what, {**params, "tz": "UTC"})
    assert other.status_code == 200 and other.headers["ETag"] != etag


@pytest.mark.parametrize("what", ["products", "promotions"])
def test_second_identical_read_is_a_cache_hit(server, dataset, what):
    merchant = dataset["merchants"]["Europe/Madrid"]
    params = {**_ranges(dataset)[2]}
    if what == "products":
        params["sort"] = "quantity"
    first = _get(server, merchant, what, params)
    second = _get(server, merchant, what, params)
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.headers["ETag"] == first.headers["ETag"]
    line = _log_line(server, second.headers["X-Request-Id"])
    assert line["cache"] == "hit"
    assert "db" not in line
    if what == "products":  # limit is part of the key: another limit is another entry
        third = _get(server, merchant, what, {**params, "limit": "3"})
        assert len(third.json()["products"]) <= 3


def test_a_write_makes_the_next_read_a_miss_that_includes_it(server, merchant_id):
    merchant = _new_merchant(server, merchant_id, "Asia/Kathmandu", "NPR")
    rng = random.Random(17)
    at = dt.datetime(2026, 8, 10, 6, 0, tzinfo=UTC)
    _add(server, merchant, [_order(rng, "w-1", at, "NPR", promo="MONSOON")])
    params = {"from": "2026-08-10", "to": "2026-08-11"}
    for what in ("products", "promotions"):
        _get(server, merchant, what, params)
        second = _get(server, merchant, what, params)
        assert _log_line(server, second.headers["X-Request-Id"])["cache"] == "hit"
    _add(server, merchant, [_order(rng, "w-2", at + dt.timedelta(hours=1), "NPR",
                                   promo="MONSOON")])
    for what, expected in (("products", expected_products(merchant, params["from"], params["to"])),
                           ("promotions", expected_promotions(merchant, params["from"], params["to"]))):
        r = _get(server, merchant, what, params)
        assert r.status_code == 200
        line = _log_line(server, r.headers["X-Request-Id"])
        assert line["cache"] == "miss"
        assert line["db"] in ("replica", "primary")
        body = r.json()
        body.pop("as_of")
        assert body == expected
    assert expected_promotions(merchant, params["from"], params["to"])["promotions"][0]["orders"] == 2


# ---------------------------------------------------------------------------------------------
# the migration backfills orders stored before it


def _db_url(stack, db):
    return stack.primary_url.rsplit("/", 1)[0] + "/" + db


def _admin(stack, sql):
    conn = stack.primary()
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


def _migrate(server, url):
    r = subprocess.run([server.binary, "migrate"], env=dict(server.env, DATABASE_URL=url),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr + r.stdout


def _insert_stored_orders(cur, merchants, rng):
    """Orders written straight into orders/order_items, as an older server stored them (no
    product or promotion rollups); some cancelled. Returns the models."""
    models = []
    at = dt.datetime(2026, 9, 1, tzinfo=UTC)
    for n in range(300):
        merchant_id = rng.choice(merchants)
        instant = at + dt.timedelta(seconds=rng.randrange(20 * 86400),
                                    microseconds=rng.randrange(10**6))
        if n % 25 == 0 and models:  # same instant as another order: name ties
            instant = models[-1]["instant"]
            merchant_id = models[-1]["merchant_id"]
        body, m = _order(rng, f"old-{n:04d}", instant, "EUR")
        m["merchant_id"] = merchant_id
        m["cancelled"] = rng.random() < 0.15
        cur.execute(
            "INSERT INTO orders (merchant_id, placed_at, order_id, store_id, channel, "
            "fulfillment, status, currency, gross_cents, discount_cents, net_cents, tax_cents, "
            "total_cents, items_sold, promo_code) VALUES (%s, %s, %s, 1, 0, 0, %s, 'EUR', %s, "
            "%s, %s, 0, %s, %s, %s)",
            (merchant_id, instant, m["order_id"], 1 if m["cancelled"] else 0, m["gross"],
             m["discount"], m["net"], m["net"], sum(i["quantity"] for i in m["items"]),
             m["promo_code"]))
        for line, item in enumerate(m["items"]):
            cur.execute(
                "INSERT INTO order_items (merchant_id, placed_at, order_id, line_no, sku, name, "
                "quantity, unit_price_cents) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (merchant_id, instant, m["order_id"], line, item["sku"], item["name"],
                 item["quantity"], item["unit_price_cents"]))
        models.append(m)
    return models


def _bucket(instant):
    return instant.replace(minute=instant.minute // 15 * 15, second=0, microsecond=0)


def test_migration_backfills_the_rollups_of_stored_orders(server, stack):
    db = "backfill_" + uuid.uuid4().hex[:8]
    _admin(stack, f"CREATE DATABASE {db}")
    try:
        url = _db_url(stack, db)
        _migrate(server, url)
        rng = random.Random(SEED + 1)
        merchants = [101, 102]
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            for m in merchants:
                cur.execute("INSERT INTO merchants (merchant_id, name, timezone, currency) "
                            "VALUES (%s, 'old', 'Europe/Madrid', 'EUR')", (m,))
            models = _insert_stored_orders(cur, merchants, rng)
            # Back to version 4, as before this migration (and those after it); then migrate
            # again.
            cur.execute("DROP TABLE product_rollup_15m, product_names, promo_rollup_15m, "
                        "delivery_rollup_15m")
            cur.execute("DELETE FROM schema_migrations WHERE version >= 5")
        _migrate(server, url)

        products = collections.defaultdict(lambda: [0, 0])
        promos = collections.defaultdict(lambda: [0, 0, 0])
        for o in models:
            if o["cancelled"]:
                continue
            bucket = _bucket(o["instant"])
            shares = allocate(o["net"], [_gross(i) for i in o["items"]])
            for item, share in zip(o["items"], shares):
                products[(o["merchant_id"], bucket, item["sku"])][0] += item["quantity"]
                products[(o["merchant_id"], bucket, item["sku"])][1] += share
            if o["promo_code"] is not None:
                p = promos[(o["merchant_id"], bucket, o["promo_code"])]
                p[0] += 1
                p[1] += o["discount"]
                p[2] += o["net"]
        names = {}
        for m in merchants:
            mine = [o for o in models if o["merchant_id"] == m]
            names.update({(m, sku): name for sku, name in latest_names(mine).items()})

        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT merchant_id, bucket, sku, quantity, net_sales_cents "
                        "FROM product_rollup_15m")
            got = {(m, b.astimezone(UTC), s): [q, n] for m, b, s, q, n in cur.fetchall()}
            assert got == dict(products)
            cur.execute("SELECT merchant_id, bucket, promo_code, orders, discounts_cents, "
                        "net_sales_cents FROM promo_rollup_15m")
            got = {(m, b.astimezone(UTC), c): [o, d, n] for m, b, c, o, d, n in cur.fetchall()}
            assert got == dict(promos)
            cur.execute("SELECT merchant_id, sku, name FROM product_names")
            assert {(m, s): n for m, s, n in cur.fetchall()} == names
    finally:
        _admin(stack, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
