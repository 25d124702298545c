"""Sales metrics, black box: GET /v1/merchants/{id}/metrics/sales.

Data is created only through the API (PUT the merchant, POST its orders). Every expected
figure is computed here, independently of the server, from the orders this module posted:
bucket boundaries with zoneinfo (DST changes, +05:45 and -03:30/-02:30 zones), sums, zero-fill,
groups and the half-up average. The data set is a few hundred seeded random orders over about
two weeks around the last Sunday of October (Europe/Madrid leaves summer time then, and
America/St_Johns a week later), for merchants in Europe/Madrid, Asia/Kathmandu and
America/St_Johns, plus orders placed exactly on local midnights and around the DST changes.

Also: validation (one test per rule, checking the status and the field), 404 for an unknown
merchant, ETag / If-None-Match, the Redis cache (a second identical read is a hit, a write makes
the next read a miss that includes it) and Redis stopped (same figures from the database).
"""

import collections
import concurrent.futures
import contextlib
import datetime as dt
import random
import re
import time
from zoneinfo import ZoneInfo

import pytest
import requests

from helpers import DEFAULT_SCOPE, headers, make_token, wait_until

UTC = dt.timezone.utc
QUARTER = dt.timedelta(minutes=15)
PROBLEM_VALIDATION = "https://cangrejo.dev/problems/validation-error"

FIGURES = ("orders", "cancelled_orders", "items_sold", "gross_sales_cents", "discounts_cents",
           "net_sales_cents", "tax_cents", "total_sales_cents")
BUCKET_KEYS = ["start", *FIGURES, "average_order_value_cents"]
HEADER_KEYS = ["merchant_id", "from", "to", "granularity", "timezone", "currency", "as_of"]
GRANULARITIES = ("hour", "day", "week", "month")
STORES = (101, 102, 103)
CHANNELS = ("online", "pos")
FULFILLMENTS = ("pickup", "delivery", "dine_in")
ZONES = {"Europe/Madrid": "EUR", "Asia/Kathmandu": "NPR", "America/St_Johns": "CAD"}
RANDOM_ORDERS_PER_MERCHANT = 120
SEED = 20261025
UTC_Z_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
OFFSET_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")


# ---------------------------------------------------------------------------------------------
# the independent model


def _last_sunday_of_october(year):
    day = dt.date(year, 10, 31)
    return day - dt.timedelta(days=(day.weekday() + 1) % 7)


def _window():
    """[start, end) in UTC: from 4 days before the last Sunday of October to 9 days after it
    (the first Sunday of November, St John's change, is 7 days after), in the latest year whose
    window lies wholly in the past."""
    now = dt.datetime.now(UTC)
    year = now.year
    while True:
        sunday = _last_sunday_of_october(year)
        start = dt.datetime.combine(sunday - dt.timedelta(days=4), dt.time(), UTC)
        end = start + dt.timedelta(days=13)
        if end + dt.timedelta(hours=1) < now:
            return start, end
        year -= 1


def _resolve(bound, zone):
    """A from/to parameter as an aware UTC instant (a date is local midnight in zone)."""
    if len(bound) == 10:
        y, m, d = map(int, bound.split("-"))
        return dt.datetime(y, m, d, tzinfo=ZoneInfo(zone)).astimezone(UTC)
    return dt.datetime.fromisoformat(bound).astimezone(UTC)


def _bucket_start(instant, zone, granularity):
    """The UTC instant at which the local calendar bucket holding `instant` starts."""
    local = instant.astimezone(ZoneInfo(zone))
    if granularity == "hour":
        start = local.replace(minute=0, second=0, microsecond=0)  # keeps fold: repeated hours
    elif granularity == "day":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    elif granularity == "week":
        monday = local.date() - dt.timedelta(days=local.weekday())
        start = dt.datetime(monday.year, monday.month, monday.day, tzinfo=ZoneInfo(zone))
    else:
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start.astimezone(UTC)


def _bucket_starts(frm, to, zone, granularity):
    starts, t = set(), frm
    while t < to:
        starts.add(_bucket_start(t, zone, granularity))
        t += QUARTER
    return sorted(starts)


def _label(instant, zone):
    return instant.astimezone(ZoneInfo(zone)).isoformat()


def _round_half_up(num, den):
    return 0 if den <= 0 else (2 * num + den) // (2 * den)


def _bucket_json(label, sums):
    body = {"start": label}
    body.update(zip(FIGURES, sums))
    body["average_order_value_cents"] = _round_half_up(body["net_sales_cents"], body["orders"])
    return body


def _order_figures(order):
    """The contribution of one stored order, in FIGURES order."""
    if order["cancelled"]:
        return (0, 1, 0, 0, 0, 0, 0, 0)
    return (1, 0, order["items_sold"], order["gross"], order["discount"], order["net"],
            order["tax"], order["total"])


def expected_sales(merchant, frm, to, granularity="day", tz=None, store_id=None, channel=None,
                   fulfillment=None, group_by=None):
    """The response body (without as_of) the API must give for these parameters."""
    zone = tz or merchant["zone"]
    t_from, t_to = _resolve(frm, zone), _resolve(to, zone)
    starts = _bucket_starts(t_from, t_to, zone, granularity)
    index = {s: i for i, s in enumerate(starts)}
    labels = [_label(s, zone) for s in starts]
    series = collections.defaultdict(lambda: [[0] * len(FIGURES) for _ in starts])
    for o in merchant["orders"]:
        if not (t_from <= o["instant"] < t_to):
            continue
        if (store_id and o["store_id"] != store_id) or (channel and o["channel"] != channel) or \
                (fulfillment and o["fulfillment"] != fulfillment):
            continue
        sums = series[o[group_by] if group_by else None][index[_bucket_start(o["instant"], zone,
                                                                             granularity)]]
        for k, v in enumerate(_order_figures(o)):
            sums[k] += v
    body = {"merchant_id": merchant["id"], "from": _label(t_from, zone),
            "to": _label(t_to, zone), "granularity": granularity, "timezone": zone,
            "currency": merchant["currency"]}
    if not group_by:
        sums = series.get(None) or [[0] * len(FIGURES) for _ in starts]
        body["buckets"] = [_bucket_json(labels[i], s) for i, s in enumerate(sums)]
        return body
    body["group_by"] = group_by
    body["groups"] = [{"key": key, "buckets": [_bucket_json(labels[i], s)
                                               for i, s in enumerate(series[key])]}
                      for key in sorted(series)]
    return body


# ---------------------------------------------------------------------------------------------
# the data set, created through the API


def _put_merchant(server, merchant_id, zone, currency):
    admin = make_token(scope="merchants:admin", merchants=[merchant_id])
    r = requests.put(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(admin),
                     json={"name": f"Sales test {zone}", "timezone": zone, "currency": currency},
                     timeout=10)
    assert r.status_code == 201, r.text
    return make_token(scope=DEFAULT_SCOPE, merchants=[merchant_id])


def _edge_instants(zone, start, end):
    """Instants where bucketing is easy to get wrong: local midnights (and a second before),
    quarter hours, and both sides of each UTC offset change (the repeated hour twice)."""
    z = ZoneInfo(zone)
    found = []
    day = start.astimezone(z).date()
    while True:
        midnight = dt.datetime(day.year, day.month, day.day, tzinfo=z).astimezone(UTC)
        if midnight >= end:
            break
        found += [midnight, midnight - dt.timedelta(seconds=1), midnight + QUARTER]
        day += dt.timedelta(days=3)
    t = start
    while t + QUARTER < end:
        if t.astimezone(z).utcoffset() != (t + QUARTER).astimezone(z).utcoffset():
            change = t + QUARTER
            found += [change - dt.timedelta(minutes=31), change - dt.timedelta(seconds=1),
                      change, change + dt.timedelta(minutes=30),
                      change + dt.timedelta(minutes=59, seconds=59),
                      change + dt.timedelta(minutes=75)]
        t += QUARTER
    return [f for f in found if start <= f < end]


def _order(rng, n, instant, zone, currency):
    """(request body, model) of one random order placed at `instant`."""
    items = [{"sku": f"SKU-{rng.randrange(30):02d}", "name": "Item", "quantity": rng.randint(1, 4),
              "unit_price_cents": rng.randint(50, 2500)} for _ in range(rng.randint(1, 3))]
    gross = sum(i["quantity"] * i["unit_price_cents"] for i in items)
    discount = rng.choice([0, 0, rng.randint(0, gross // 3)])
    tax = rng.randint(0, (gross - discount) // 5)
    written_in = rng.choice([UTC, ZoneInfo(zone), dt.timezone(dt.timedelta(hours=-5)),
                             dt.timezone(dt.timedelta(hours=5, minutes=45))])
    body = {"order_id": f"sales-{n:05d}", "store_id": rng.choice(STORES),
            "channel": rng.choice(CHANNELS), "fulfillment": rng.choice(FULFILLMENTS),
            "placed_at": instant.astimezone(written_in).isoformat(), "currency": currency,
            "items": items, "discount_cents": discount, "tax_cents": tax}
    model = {"instant": instant, "store_id": body["store_id"], "channel": body["channel"],
             "fulfillment": body["fulfillment"], "cancelled": False,
             "items_sold": sum(i["quantity"] for i in items), "gross": gross,
             "discount": discount, "net": gross - discount, "tax": tax,
             "total": gross - discount + tax}
    return body, model


def _post_orders(server, token, merchant_id, bodies, workers=8):
    url = f"{server.url}/v1/merchants/{merchant_id}/orders"

    def post(body):
        r = requests.post(url, json=body, headers=headers(token), timeout=30)
        assert r.status_code == 201, f"{body['order_id']}: {r.status_code} {r.text}"

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(post, bodies))


def _new_merchant(server, zone, currency, merchant_id):
    token = _put_merchant(server, merchant_id, zone, currency)
    return {"id": merchant_id, "zone": zone, "currency": currency, "token": token, "orders": []}


def _add_orders(server, merchant, placed):
    """Posts orders (list of (body, model)) and records them in the model."""
    _post_orders(server, merchant["token"], merchant["id"], [b for b, _ in placed])
    merchant["orders"] += [m for _, m in placed]


@pytest.fixture(scope="module")
def dataset(server):
    """{zone: merchant} with the posted orders, and the window they lie in."""
    start, end = _window()
    rng = random.Random(SEED)
    id_base = random.SystemRandom().randint(2 * 10**12, 8 * 10**12)  # apart from conftest's ids
    merchants = {}
    for k, (zone, currency) in enumerate(ZONES.items()):
        merchant = _new_merchant(server, zone, currency, id_base + k)
        span = int((end - start).total_seconds())
        instants = [start + dt.timedelta(seconds=rng.randrange(span))
                    for _ in range(RANDOM_ORDERS_PER_MERCHANT)]
        instants += _edge_instants(zone, start, end)
        placed = [_order(rng, n, t, zone, currency) for n, t in enumerate(instants)]
        _add_orders(server, merchant, placed)
        merchants[zone] = merchant
    return {"merchants": merchants, "start": start, "end": end}


# ---------------------------------------------------------------------------------------------
# requests


def _sales_url(server, merchant_id):
    return f"{server.url}/v1/merchants/{merchant_id}/metrics/sales"


def _get(server, merchant, params, extra_headers=None, token=None):
    return requests.get(_sales_url(server, merchant["id"]), params=params,
                        headers=headers(token or merchant["token"], extra_headers), timeout=30)


def _check_as_of(body, not_before=None):
    as_of = body.pop("as_of")
    assert UTC_Z_RE.match(as_of), as_of
    moment = dt.datetime.fromisoformat(as_of)
    assert moment <= dt.datetime.now(UTC) + dt.timedelta(seconds=2)
    if not_before:
        assert moment >= not_before - dt.timedelta(seconds=1), (as_of, not_before)


def _sales(server, merchant, params, **kwargs):
    """GET, check 200 and the envelope, return the body without as_of."""
    r = _get(server, merchant, params, **kwargs)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers["Cache-Control"] == "private, max-age=1"
    assert re.fullmatch(r'"[0-9a-f]{32}(-gzip)?"', r.headers["ETag"]), r.headers["ETag"]
    body = r.json()
    keys = HEADER_KEYS + (["group_by", "groups"] if "group_by" in params else ["buckets"])
    assert list(body) == keys
    for series in body.get("groups", [{"buckets": body.get("buckets")}]):
        for bucket in series["buckets"]:
            assert list(bucket) == BUCKET_KEYS
            assert OFFSET_RE.match(bucket["start"]), bucket["start"]
    _check_as_of(body)
    return body


def _assert_matches_model(server, merchant, params):
    model_params = {k: v for k, v in params.items()}
    if "store_id" in model_params:
        model_params["store_id"] = int(model_params["store_id"])
    expected = expected_sales(merchant, model_params.pop("from"), model_params.pop("to"),
                              **model_params)
    got = _sales(server, merchant, params)
    assert got == expected, _first_difference(got, expected)


def _first_difference(got, expected):
    for key in expected:
        if got.get(key) != expected[key]:
            if key in ("buckets", "groups"):
                return _series_difference(got.get(key), expected[key])
            return f"{key}: got {got.get(key)!r}, expected {expected[key]!r}"
    return f"unexpected keys {set(got) - set(expected)}"


def _series_difference(got, expected):
    if not isinstance(got, list) or len(got) != len(expected):
        return f"got {len(got or [])} entries, expected {len(expected)}: " \
               f"{[g.get('key', g.get('start')) for g in got or []]} vs " \
               f"{[e.get('key', e.get('start')) for e in expected]}"
    for g, e in zip(got, expected):
        if g != e:
            return f"first differing entry:\n got      {g}\n expected {e}"
    return "no difference found"


def _day(instant, days=0):
    return (instant + dt.timedelta(days=days)).date().isoformat()


# ---------------------------------------------------------------------------------------------
# figures against the model


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("zone", list(ZONES))
def test_every_granularity_matches_the_model(server, dataset, zone, granularity):
    merchant = dataset["merchants"][zone]
    start, end = dataset["start"], dataset["end"]
    params = {"from": _day(start, -1), "to": _day(end, 1), "granularity": granularity}
    _assert_matches_model(server, merchant, params)
    assert sum(b["orders"] for b in _sales(server, merchant, params)["buckets"]) == \
        len(merchant["orders"])


def test_default_granularity_is_day(server, dataset):
    merchant = dataset["merchants"]["Europe/Madrid"]
    params = {"from": _day(dataset["start"]), "to": _day(dataset["end"])}
    body = _sales(server, merchant, params)
    assert body["granularity"] == "day"
    assert body == expected_sales(merchant, params["from"], params["to"], "day")


def test_dst_day_has_25_hours_and_labels_change_offset(server, dataset):
    merchant = dataset["merchants"]["Europe/Madrid"]
    sunday = _last_sunday_of_october(dataset["start"].year)
    params = {"from": sunday.isoformat(), "to": (sunday + dt.timedelta(days=1)).isoformat(),
              "granularity": "hour"}
    body = _sales(server, merchant, params)
    starts = [b["start"] for b in body["buckets"]]
    assert len(starts) == 25
    assert starts[:4] == [f"{sunday}T00:00:00+02:00", f"{sunday}T01:00:00+02:00",
                          f"{sunday}T02:00:00+02:00", f"{sunday}T02:00:00+01:00"]
    assert body["from"] == f"{sunday}T00:00:00+02:00"
    assert body["to"] == f"{sunday + dt.timedelta(days=1)}T00:00:00+01:00"
    _assert_matches_model(server, merchant, params)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("zone", list(ZONES))
def test_partial_edge_buckets(server, dataset, zone, granularity):
    """from/to inside buckets (and written in other offsets): the edge buckets keep their
    calendar labels but count only [from, to)."""
    merchant = dataset["merchants"][zone]
    start = dataset["start"]
    frm = (start + dt.timedelta(days=2, hours=13, minutes=45)).astimezone(
        dt.timezone(dt.timedelta(hours=-3, minutes=-30))).isoformat()
    to = (start + dt.timedelta(days=9, hours=7, minutes=15)).isoformat().replace("+00:00", "Z")
    _assert_matches_model(server, merchant, {"from": frm, "to": to, "granularity": granularity})


@pytest.mark.parametrize("zone", list(ZONES))
def test_date_and_instant_bounds_mixed(server, dataset, zone):
    merchant = dataset["merchants"][zone]
    start = dataset["start"]
    to = (start + dt.timedelta(days=6, hours=18)).isoformat()
    _assert_matches_model(server, merchant, {"from": _day(start, 1), "to": to})
    _assert_matches_model(server, merchant, {"from": to, "to": _day(start, 11),
                                             "granularity": "hour"})


@pytest.mark.parametrize("filters", [
    {"store_id": "102"},
    {"channel": "pos"},
    {"channel": "online"},
    {"fulfillment": "dine_in"},
    {"fulfillment": "delivery", "channel": "online"},
    {"store_id": "101", "channel": "pos", "fulfillment": "pickup"},
    {"store_id": "999"},
])
@pytest.mark.parametrize("zone", list(ZONES))
def test_filters(server, dataset, zone, filters):
    merchant = dataset["merchants"][zone]
    params = {"from": _day(dataset["start"]), "to": _day(dataset["end"]), **filters}
    _assert_matches_model(server, merchant, params)


@pytest.mark.parametrize("group_by", ["channel", "fulfillment", "store_id"])
@pytest.mark.parametrize("zone", list(ZONES))
def test_group_by(server, dataset, zone, group_by):
    merchant = dataset["merchants"][zone]
    params = {"from": _day(dataset["start"], 2), "to": _day(dataset["end"], -2),
              "granularity": "week", "group_by": group_by}
    _assert_matches_model(server, merchant, params)
    body = _sales(server, merchant, params)
    keys = [g["key"] for g in body["groups"]]
    assert keys == sorted(keys)
    if group_by == "store_id":
        assert all(isinstance(k, int) for k in keys)
    else:
        assert all(isinstance(k, str) for k in keys)


@pytest.mark.parametrize("params", [
    {"group_by": "fulfillment", "channel": "pos", "granularity": "day"},
    {"group_by": "store_id", "fulfillment": "delivery", "granularity": "hour"},
    {"group_by": "channel", "store_id": "103", "granularity": "month"},
])
def test_group_by_with_filters(server, dataset, params):
    merchant = dataset["merchants"]["America/St_Johns"]
    _assert_matches_model(server, merchant, {"from": _day(dataset["start"]),
                                             "to": _day(dataset["end"]), **params})


def test_group_by_lists_only_keys_with_orders(server, dataset):
    merchant = dataset["merchants"]["Asia/Kathmandu"]
    params = {"from": _day(dataset["start"]), "to": _day(dataset["end"]), "store_id": "101",
              "channel": "online", "fulfillment": "pickup", "group_by": "channel"}
    body = _sales(server, merchant, params)
    assert [g["key"] for g in body["groups"]] == ["online"]
    params["store_id"] = "424242"
    assert _sales(server, merchant, params)["groups"] == []


@pytest.mark.parametrize("zone,tz", [
    ("Europe/Madrid", "Asia/Kathmandu"),
    ("Europe/Madrid", "America/St_Johns"),
    ("Asia/Kathmandu", "Europe/Madrid"),
    ("America/St_Johns", "UTC"),
    ("Europe/Madrid", "Asia/Kolkata"),
])
def test_tz_overrides_the_merchant_zone(server, dataset, zone, tz):
    merchant = dataset["merchants"][zone]
    for granularity in ("hour", "day"):
        params = {"from": _day(dataset["start"]), "to": _day(dataset["end"]), "tz": tz,
                  "granularity": granularity}
        _assert_matches_model(server, merchant, params)
    assert _sales(server, merchant, params)["timezone"] == tz


def test_zero_fill_outside_the_data(server, dataset):
    merchant = dataset["merchants"]["Europe/Madrid"]
    params = {"from": _day(dataset["start"], -20), "to": _day(dataset["start"], -13)}
    body = _sales(server, merchant, params)
    assert len(body["buckets"]) == 7
    assert all(b[f] == 0 for b in body["buckets"] for f in FIGURES)
    assert all(b["average_order_value_cents"] == 0 for b in body["buckets"])
    _assert_matches_model(server, merchant, params)


def test_merchant_without_orders_gets_zero_filled_buckets(server, merchant_id):
    merchant = _new_merchant(server, "Asia/Kathmandu", "NPR", merchant_id)
    params = {"from": "2026-01-01", "to": "2026-01-02", "granularity": "hour"}
    body = _sales(server, merchant, params)
    assert [b["start"] for b in body["buckets"]] == \
        [f"2026-01-01T{h:02d}:00:00+05:45" for h in range(24)]
    assert body == expected_sales(merchant, params["from"], params["to"], "hour")


# ---------------------------------------------------------------------------------------------
# the average


def _fixed_order(n, instant, net, currency, **fields):
    body = {"order_id": f"avg-{n}", "store_id": 7, "channel": "pos", "fulfillment": "dine_in",
            "placed_at": instant.isoformat(), "currency": currency,
            "items": [{"sku": "X", "name": "X", "quantity": 1, "unit_price_cents": net}],
            **fields}
    model = {"instant": instant, "store_id": 7, "channel": "pos", "fulfillment": "dine_in",
             "cancelled": False, "items_sold": 1, "gross": net, "discount": 0, "net": net,
             "tax": 0, "total": net}
    return body, model


def test_average_order_value_rounds_half_up(server, merchant_id):
    merchant = _new_merchant(server, "Europe/Madrid", "EUR", merchant_id)
    day = dt.datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # one order set per day
    nets_per_day = [[2, 3], [1, 1, 2], [1, 2], [3, 4], [7], [1, 1, 1]]
    placed, n = [], 0
    for d, nets in enumerate(nets_per_day):
        for net in nets:
            placed.append(_fixed_order(n, day + dt.timedelta(days=d, minutes=n), net, "EUR"))
            n += 1
    _add_orders(server, merchant, placed)
    body = _sales(server, merchant, {"from": "2026-03-02", "to": "2026-03-08"})
    averages = [b["average_order_value_cents"] for b in body["buckets"]]
    assert averages == [3, 1, 2, 4, 7, 1]  # 5/2, 4/3, 3/2, 7/2, 7/1, 3/3
    assert body == expected_sales(merchant, "2026-03-02", "2026-03-08")


# ---------------------------------------------------------------------------------------------
# validation


VALID = {"from": "2026-10-20", "to": "2026-10-27"}


@pytest.mark.parametrize("params,field", [
    ({"to": "2026-10-27"}, "from"),
    ({"from": "2026-10-20"}, "to"),
    ({**VALID, "from": "20-10-2026"}, "from"),
    ({**VALID, "from": "2026-10-20T00:00:00"}, "from"),            # no offset
    ({**VALID, "from": "2026-02-30"}, "from"),
    ({**VALID, "to": "2026-10-27T10:07:00+02:00"}, "to"),          # not on a quarter hour
    ({**VALID, "from": "2026-10-20T10:15:01Z"}, "from"),
    ({**VALID, "from": "2026-10-20T10:15:00.250Z"}, "from"),       # fractional seconds
    ({"from": "2026-10-27", "to": "2026-10-20"}, "to"),            # to before from
    ({"from": "2026-10-20", "to": "2026-10-20"}, "to"),            # empty range
    ({"from": "2026-10-20T10:00:00Z", "to": "2026-10-20T12:00:00+02:00"}, "to"),
    ({"from": "2025-01-01T00:00:00Z", "to": "2026-02-05T00:15:00Z"}, "to"),  # 400 d + 15 min
    ({"from": "2025-10-01", "to": "2026-11-06"}, "to"),            # 401 days
    ({**VALID, "granularity": "year"}, "granularity"),
    ({**VALID, "granularity": "Day"}, "granularity"),
    ({**VALID, "tz": "Europe/Atlantis"}, "tz"),
    ({**VALID, "tz": "../../etc/passwd"}, "tz"),
    ({**VALID, "tz": ""}, "tz"),
    ({**VALID, "store_id": "0"}, "store_id"),
    ({**VALID, "store_id": "-4"}, "store_id"),
    ({**VALID, "store_id": "abc"}, "store_id"),
    ({**VALID, "store_id": "9223372036854775808"}, "store_id"),
    ({**VALID, "channel": "web"}, "channel"),
    ({**VALID, "fulfillment": "drive_thru"}, "fulfillment"),
    ({**VALID, "group_by": "promo_code"}, "group_by"),
    ({**VALID, "limit": "10"}, "limit"),                           # unknown parameter
])
def test_validation(server, dataset, params, field):
    merchant = dataset["merchants"]["Europe/Madrid"]
    r = _get(server, merchant, params)
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["type"] == PROBLEM_VALIDATION
    assert problem["status"] == 400
    assert field in [e["field"] for e in problem["errors"]], problem


@pytest.mark.parametrize("query,field", [
    ("from=2026-10-20&from=2026-10-21&to=2026-10-27", "from"),
    ("from=2026-10-20&to=2026-10-27&channel=pos&channel=pos", "channel"),
    ("from=2026-10-20&to=2026-10-27&group_by=channel&group_by=store_id", "group_by"),
])
def test_repeated_parameter_is_refused(server, dataset, query, field):
    merchant = dataset["merchants"]["Europe/Madrid"]
    r = requests.get(f"{_sales_url(server, merchant['id'])}?{query}",
                     headers=headers(merchant["token"]), timeout=10)
    assert r.status_code == 400, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]


@pytest.mark.parametrize("params", [
    {"from": "2025-01-01T00:00:00Z", "to": "2026-02-05T00:00:00Z"},   # exactly 400 days
    {"from": "2025-10-01", "to": "2026-11-05"},  # 400 dates, and the autumn DST hour (Madrid)
    {"from": "2026-10-20T10:00:00.000+02:00", "to": "2026-10-20T10:15:00Z"},
])
def test_range_limits_themselves_are_allowed(server, dataset, params):
    merchant = dataset["merchants"]["Europe/Madrid"]
    _assert_matches_model(server, merchant, params)


def test_unknown_merchant_is_404(server, merchant_id):
    token = make_token(scope="metrics:read", merchants=[merchant_id])
    r = requests.get(_sales_url(server, merchant_id), params=VALID, headers=headers(token),
                     timeout=10)
    assert r.status_code == 404, r.text
    assert r.json()["type"].endswith("/not-found")


def test_token_scope_and_tenant_are_checked(server, dataset):
    merchant = dataset["merchants"]["Europe/Madrid"]
    url = _sales_url(server, merchant["id"])
    assert requests.get(url, params=VALID, timeout=10).status_code == 401
    wrong_scope = make_token(scope="orders:read", merchants=[merchant["id"]])
    assert requests.get(url, params=VALID, headers=headers(wrong_scope),
                        timeout=10).status_code == 403
    other = make_token(scope="metrics:read", merchants=[merchant["id"] + 1])
    assert requests.get(url, params=VALID, headers=headers(other), timeout=10).status_code == 403


# ---------------------------------------------------------------------------------------------
# ETag, cache, Redis down


def _log_line(server, request_id):
    def find():
        for line in reversed(server.log_lines_json()):
            if line.get("request_id") == request_id and line.get("msg") == "request":
                return line
        return None
    line = wait_until(find, timeout=5)
    assert line, f"no log line for request {request_id}"
    return line


def _cache_hits(server):
    text = requests.get(server.url + "/metrics", timeout=5).text
    match = re.search(r'^cangrejo_cache_requests_total\{result="hit"\} (\d+)$', text, re.M)
    return int(match.group(1))


def test_etag_and_if_none_match(server, dataset):
    merchant = dataset["merchants"]["Asia/Kathmandu"]
    params = {"from": _day(dataset["start"]), "to": _day(dataset["end"]), "granularity": "week"}
    r = _get(server, merchant, params)
    assert r.status_code == 200
    etag = r.headers["ETag"]
    assert re.fullmatch(r'"[0-9a-f]{32}(-gzip)?"', etag)
    for value in (etag, f"W/{etag}", "*", f'"nope", {etag}', f'W/"x",W/{etag}'):
        again = _get(server, merchant, params, extra_headers={"If-None-Match": value})
        assert again.status_code == 304, value
        assert again.content == b""
        assert again.headers["ETag"] == etag
        assert again.headers["Cache-Control"] == "private, max-age=1"
    for value in ('"nope"', etag[:-2] + '"', etag.strip('"')):
        assert _get(server, merchant, params,
                    extra_headers={"If-None-Match": value}).status_code == 200, value
    other = _get(server, merchant, {**params, "granularity": "day"})
    assert other.headers["ETag"] != etag


def test_second_identical_read_is_a_cache_hit(server, dataset):
    merchant = dataset["merchants"]["America/St_Johns"]
    params = {"from": _day(dataset["start"], 3), "to": _day(dataset["start"], 5),
              "granularity": "hour", "channel": "online"}
    first = _get(server, merchant, params)
    hits = _cache_hits(server)
    second = _get(server, merchant, params)
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.headers["ETag"] == first.headers["ETag"]
    assert _log_line(server, first.headers["X-Request-Id"])["cache"] in ("miss", "hit")
    line = _log_line(server, second.headers["X-Request-Id"])
    assert line["cache"] == "hit"
    assert "db" not in line
    assert _cache_hits(server) >= hits + 1


def test_a_write_makes_the_next_read_a_miss_that_includes_it(server, merchant_id):
    merchant = _new_merchant(server, "Europe/Madrid", "EUR", merchant_id)
    base = dt.datetime(2026, 10, 24, 21, 50, tzinfo=UTC)  # 23:50 local, Saturday
    _add_orders(server, merchant, [_fixed_order(1, base, 1000, "EUR")])
    params = {"from": "2026-10-24", "to": "2026-10-26"}
    first = _get(server, merchant, params)
    second = _get(server, merchant, params)
    assert _log_line(server, second.headers["X-Request-Id"])["cache"] == "hit"
    assert [b["orders"] for b in second.json()["buckets"]] == [1, 0]

    before_write = dt.datetime.now(UTC)
    _add_orders(server, merchant, [_fixed_order(2, base + dt.timedelta(hours=3), 500, "EUR")])
    third = _get(server, merchant, params)
    assert third.status_code == 200
    line = _log_line(server, third.headers["X-Request-Id"])
    assert line["cache"] == "miss"
    assert line["db"] in ("replica", "primary")
    body = third.json()
    assert [b["orders"] for b in body["buckets"]] == [1, 1]
    assert third.headers["ETag"] != first.headers["ETag"]
    _check_as_of(body, not_before=before_write)
    assert body == expected_sales(merchant, params["from"], params["to"])


def _healthy_redis(server):
    def ok():
        r = requests.get(server.url + "/readyz", timeout=5)
        return r.status_code == 200 and r.json()["checks"]["redis"]["ok"]
    return bool(wait_until(ok, timeout=20, interval=0.2))


@contextlib.contextmanager
def _redis_stopped(stack, server):
    stack.stop_redis()
    try:
        yield
    finally:
        stack.start_redis()
        recovered = _healthy_redis(server)
    assert recovered, "/readyz did not report Redis ok within 20 s of its restart"


def test_reads_work_with_redis_stopped(server, stack, dataset):
    merchant = dataset["merchants"]["Europe/Madrid"]
    params = {"from": _day(dataset["start"]), "to": _day(dataset["end"]), "group_by": "channel"}
    cached = _sales(server, merchant, params)
    with _redis_stopped(stack, server):
        for _ in range(3):  # every worker thread may meet the outage
            r = _get(server, merchant, params)
            assert r.status_code == 200, r.text
            body = r.json()
            _check_as_of(body)
            assert body == cached
            assert _log_line(server, r.headers["X-Request-Id"])["cache"] == "error"
        validation = _get(server, merchant, {**params, "channel": "web"})
        assert validation.status_code == 400
    assert _sales(server, merchant, params) == cached


def _healthy_replica(server):
    def ok():
        r = requests.get(server.url + "/readyz", timeout=5)
        return r.status_code == 200 and all(x["ok"] for x in r.json()["checks"]["replicas"])
    return bool(wait_until(ok, timeout=30, interval=0.2))


def test_reads_work_with_the_replica_stopped(server, stack, dataset):
    merchant = dataset["merchants"]["Asia/Kathmandu"]
    params = {"from": _day(dataset["start"]), "to": _day(dataset["end"]), "channel": "pos",
              "granularity": "hour"}
    expected = expected_sales(merchant, params["from"], params["to"], "hour", channel="pos")
    stack.stop_replica()
    try:
        for tz in ("Asia/Kathmandu", "Asia/Kolkata", "UTC"):  # distinct queries: cache misses
            r = _get(server, merchant, {**params, "tz": tz})
            assert r.status_code == 200, r.text
            assert _log_line(server, r.headers["X-Request-Id"])["db"] == "primary"
            if tz == "Asia/Kathmandu":
                body = r.json()
                _check_as_of(body)
                assert body == expected
    finally:
        stack.start_replica()
        recovered = _healthy_replica(server)
    assert recovered, "/readyz did not report the replica ok within 30 s of its restart"


def test_cancelled_orders_count_only_as_cancelled(server, merchant_id):
    merchant = _new_merchant(server, "Europe/Madrid", "EUR", merchant_id)
    base = dt.datetime(2026, 2, 10, 12, 0, tzinfo=UTC)
    _add_orders(server, merchant, [_fixed_order(1, base, 800, "EUR"),
                                   _fixed_order(2, base + dt.timedelta(minutes=5), 200, "EUR")])
    r = requests.post(f"{server.url}/v1/merchants/{merchant['id']}/orders/avg-2/cancel",
                      headers=headers(merchant["token"]), timeout=10)
    assert r.status_code == 200, r.text
    merchant["orders"][1]["cancelled"] = True
    body = _sales(server, merchant, {"from": "2026-02-10", "to": "2026-02-11"})
    assert body["buckets"][0]["orders"] == 1
    assert body["buckets"][0]["cancelled_orders"] == 1
    assert body["buckets"][0]["net_sales_cents"] == 800
    assert body == expected_sales(merchant, "2026-02-10", "2026-02-11")
