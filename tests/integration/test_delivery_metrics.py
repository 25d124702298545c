"""Delivery metrics, black box: GET /v1/merchants/{id}/metrics/deliveries.

Data goes in through the API only: delivery, pickup and dine-in orders (singly and in batches)
for a merchant in Europe/Madrid (the window holds the end of summer time) and one in
Asia/Kathmandu (+05:45), then their courier events posted concurrently in shuffled order: late
events that must not change the state, terminal events, failed ones, a terminal event tied with
a non-terminal one, a second provider; some orders are cancelled after delivery, some while
their events are still arriving. Every bucket is compared with an independent computation
here (zoneinfo calendar buckets, the current state as "latest occurred_at wins, terminal wins
a tie", exact fractions for the mean), for day and hour granularity, store and channel filters
and partial edges.

Also: the response shape against openapi.yaml, rounding, freshness of an event posted after a
read (within 1 s), cache hit, ETag / If-None-Match, validation, 404/401/403.
"""

import collections
import concurrent.futures
import datetime as dt
import fractions
import pathlib
import random
import re
import subprocess
import time
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
ORDERS_PER_MERCHANT = 150
SEED = 20261122
HEADER_KEYS = ["merchant_id", "from", "to", "granularity", "timezone", "currency", "as_of"]
BUCKET_KEYS = ["start", "deliveries", "delivered", "failed", "average_delivery_minutes"]
TERMINAL = ("delivered", "failed", "cancelled")
PROGRESS = ("assigned", "picked_up", "in_transit")


# ---------------------------------------------------------------------------------------------
# the independent model


def current_state(events):
    """The delivery state from an order's events: the latest occurred_at, a terminal status
    winning a tie (the data set never ties two terminal or two non-terminal events)."""
    if not events:
        return None
    return max(events, key=lambda e: (e["at"], e["status"] in TERMINAL))


def mean_minutes(durations):
    """Mean of timedeltas in minutes, rounded half up to one decimal, as the float JSON gives."""
    if not durations:
        return None
    total_us = sum(d // dt.timedelta(microseconds=1) for d in durations)
    tenths = fractions.Fraction(total_us, len(durations) * 6_000_000)
    rounded = (tenths + fractions.Fraction(1, 2)).__floor__()
    return rounded / 10


def test_the_model_itself():
    m = dt.timedelta(minutes=1)
    assert mean_minutes([]) is None
    assert mean_minutes([m * 1.5]) == 1.5
    assert mean_minutes([dt.timedelta(seconds=3)]) == 0.1               # 0.05 goes up
    assert mean_minutes([dt.timedelta(seconds=2, microseconds=999999)]) == 0.0
    assert mean_minutes([m * 10, m * 20, m * 21]) == 17.0
    assert mean_minutes([-m * 2]) == -2.0
    a = {"at": 1, "status": "in_transit"}
    b = {"at": 1, "status": "delivered"}
    assert current_state([a, b]) is b and current_state([b, a]) is b
    assert current_state([{"at": 2, "status": "picked_up"}, b])["status"] == "picked_up"


def _resolve(bound, zone):
    if len(bound) == 10:
        y, m, d = map(int, bound.split("-"))
        return dt.datetime(y, m, d, tzinfo=ZoneInfo(zone)).astimezone(UTC)
    return dt.datetime.fromisoformat(bound).astimezone(UTC)


def _bucket_starts(t_from, t_to, zone, granularity):
    """The local starts (aware, in zone) of the calendar buckets that meet [t_from, t_to)."""
    tz = ZoneInfo(zone)
    starts = []
    if granularity == "hour":
        at = t_from
        while at < t_to:  # every quarter hour: exact for +05:45 and for 25-hour days
            start = (at - dt.timedelta(minutes=at.astimezone(tz).minute)).astimezone(tz)
            # (compared as instants: within one zone, aware datetimes compare by wall time)
            if not starts or starts[-1].astimezone(UTC) != start.astimezone(UTC):
                starts.append(start)
            at += dt.timedelta(minutes=15)
        return starts
    assert granularity == "day"
    day = t_from.astimezone(tz).date()
    while True:
        start = dt.datetime.combine(day, dt.time(), tz)
        if start.astimezone(UTC) >= t_to:
            return starts
        starts.append(start)
        day += dt.timedelta(days=1)


def expected_deliveries(merchant, frm, to, granularity="day", tz=None, store_id=None,
                        channel=None):
    """The body (without as_of) the API must give."""
    zone = tz or merchant["zone"]
    t_from, t_to = _resolve(frm, zone), _resolve(to, zone)
    starts = _bucket_starts(t_from, t_to, zone, granularity)
    rows = [[0, 0, 0, []] for _ in starts]
    for o in merchant["orders"].values():
        if (o["cancelled"] or o["fulfillment"] != "delivery" or not t_from <= o["at"] < t_to
                or (store_id is not None and o["store_id"] != store_id)
                or (channel is not None and o["channel"] != channel)):
            continue
        i = max(k for k, s in enumerate(starts) if s.astimezone(UTC) <= o["at"])
        row = rows[i]
        row[0] += 1
        state = current_state(o["events"])
        if state and state["status"] == "delivered":
            row[1] += 1
            row[3].append(state["at"] - o["at"])
        elif state and state["status"] == "failed":
            row[2] += 1
    return {
        "merchant_id": merchant["id"],
        "from": t_from.astimezone(ZoneInfo(zone)).isoformat(),
        "to": t_to.astimezone(ZoneInfo(zone)).isoformat(),
        "granularity": granularity, "timezone": zone, "currency": merchant["currency"],
        "buckets": [{"start": s.isoformat(), "deliveries": n, "delivered": d, "failed": f,
                     "average_delivery_minutes": mean_minutes(durations)}
                    for s, (n, d, f, durations) in zip(starts, rows)],
    }


# ---------------------------------------------------------------------------------------------
# data, created through the API


def _last_sunday_of_october(year):
    day = dt.date(year, 10, 31)
    return day - dt.timedelta(days=(day.weekday() + 1) % 7)


def _window():
    """[start, end) in UTC: three days either side of the last Sunday of October, in the
    latest year whose window (and its events) lies wholly in the past."""
    now = dt.datetime.now(UTC)
    year = now.year
    while True:
        sunday = _last_sunday_of_october(year)
        start = dt.datetime.combine(sunday - dt.timedelta(days=3), dt.time(), UTC)
        end = start + dt.timedelta(days=6)
        if end + dt.timedelta(days=1) < now:
            return start, end
        year -= 1


def _z(instant):
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _new_merchant(server, merchant_id, zone, currency):
    admin = make_token(scope="merchants:admin", merchants=[merchant_id])
    r = requests.put(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(admin),
                     json={"name": f"Deliveries {zone}", "timezone": zone, "currency": currency},
                     timeout=10)
    assert r.status_code == 201, r.text
    return {"id": merchant_id, "zone": zone, "currency": currency, "orders": {},
            "token": make_token(scope=DEFAULT_SCOPE, merchants=[merchant_id])}


def _order_body(rng, order_id, at, currency, fulfillment=None, store_id=None, channel=None):
    fulfillment = fulfillment or rng.choice(["delivery"] * 3 + ["pickup", "dine_in"])
    return {"order_id": order_id, "store_id": store_id or rng.choice([11, 12]),
            "channel": channel or rng.choice(["online", "pos"]), "fulfillment": fulfillment,
            "placed_at": at.astimezone(dt.timezone(dt.timedelta(hours=rng.choice([-3, 0, 2])))
                                       ).isoformat(),
            "currency": currency,
            "items": [{"sku": "S", "name": "N", "quantity": 1, "unit_price_cents": 1000}]}


def _model(body, at):
    return {"order_id": body["order_id"], "at": at, "fulfillment": body["fulfillment"],
            "store_id": body["store_id"], "channel": body["channel"], "events": [],
            "cancelled": False}


def _post_orders(server, merchant, bodies, batch):
    if batch:
        r = requests.post(f"{server.url}/v1/merchants/{merchant['id']}/order-batches",
                          json={"orders": bodies}, headers=headers(merchant["token"]), timeout=60)
        assert r.status_code == 200 and r.json()["accepted"] == len(bodies), r.text
        return
    for b in bodies:
        r = requests.post(f"{server.url}/v1/merchants/{merchant['id']}/orders", json=b,
                          headers=headers(merchant["token"]), timeout=30)
        assert r.status_code == 201, r.text


def _post_event(server, merchant, order_id, event):
    body = {"event_id": event["id"], "provider": event["provider"], "status": event["status"],
            "occurred_at": _z(event["at"])}
    r = requests.post(
        f"{server.url}/v1/merchants/{merchant['id']}/orders/{order_id}/delivery-events",
        json=body, headers=headers(merchant["token"]), timeout=30)
    assert r.status_code in (200, 201), r.text
    return r


def _cancel(server, merchant, order_id):
    r = requests.post(f"{server.url}/v1/merchants/{merchant['id']}/orders/{order_id}/cancel",
                      headers=headers(merchant["token"]), json={}, timeout=10)
    assert r.status_code == 200, r.text
    merchant["orders"][order_id]["cancelled"] = True


def _events(rng, order):
    """A courier story for a delivery order: progress events, usually a terminal one, late
    (earlier) events posted after it, sometimes a terminal event tied with a progress one."""
    placed = order["at"]
    at = placed + dt.timedelta(seconds=rng.randint(0, 600), microseconds=rng.randrange(10**6))
    story = []
    for status in PROGRESS[: rng.randint(0, 3)]:
        at += dt.timedelta(seconds=rng.randint(30, 900), microseconds=rng.randrange(10**6))
        story.append({"status": status, "at": at})
    ending = rng.choice(["delivered"] * 5 + ["failed"] * 2 + ["cancelled", None, None])
    if ending:
        at += dt.timedelta(seconds=rng.randint(60, 3600), microseconds=rng.randrange(10**6))
        story.append({"status": ending, "at": at})
        if rng.random() < 0.2:  # a progress event at the same instant: the terminal one wins
            story.append({"status": "in_transit", "at": at})
        if ending == "failed" and rng.random() < 0.3:  # redelivered later by another courier
            at += dt.timedelta(minutes=rng.randint(5, 90), seconds=rng.randint(0, 59))
            story.append({"status": "delivered", "at": at, "provider": "uber"})
    if story and rng.random() < 0.4:  # a late event: earlier than the state, changes nothing
        story.append({"status": rng.choice(PROGRESS),
                      "at": story[0]["at"] - dt.timedelta(seconds=rng.randint(1, 60))})
    for n, e in enumerate(story):
        e.setdefault("provider", "glovo")
        e["id"] = f"{order['order_id']}-ev{n}"
    return story


@pytest.fixture(scope="module")
def dataset(server):
    start, end = _window()
    rng = random.Random(SEED)
    id_base = random.SystemRandom().randint(2 * 10**12, 8 * 10**12)
    merchants = {}
    for k, (zone, currency) in enumerate(ZONES.items()):
        merchant = _new_merchant(server, id_base + k, zone, currency)
        span = int((end - start).total_seconds())
        placed = []
        for n in range(ORDERS_PER_MERCHANT):
            at = start + dt.timedelta(seconds=rng.randrange(span),
                                      microseconds=rng.randrange(10**6))
            body = _order_body(rng, f"dm-{n:04d}", at, currency)
            placed.append(body)
            merchant["orders"][body["order_id"]] = _model(body, at)
        half = len(placed) // 2
        _post_orders(server, merchant, placed[:half], batch=False)
        _post_orders(server, merchant, placed[half:], batch=True)

        deliveries = [o for o in merchant["orders"].values() if o["fulfillment"] == "delivery"]
        posts = []
        for o in deliveries:
            o["events"] = _events(rng, o)
            posts += [(o["order_id"], e) for e in o["events"]]
        rng.shuffle(posts)
        # Some orders are cancelled while their events still arrive, others after the last.
        early = set(o["order_id"] for o in rng.sample(deliveries, len(deliveries) // 12))
        cut = len(posts) // 2
        tasks = ([lambda p=p: _post_event(server, merchant, *p) for p in posts[:cut]]
                 + [lambda oid=oid: _cancel(server, merchant, oid) for oid in sorted(early)]
                 + [lambda p=p: _post_event(server, merchant, *p) for p in posts[cut:]])
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for future in [pool.submit(task) for task in tasks]:
                future.result()
        # Replays change nothing.
        list(map(lambda p: _post_event(server, merchant, *p), rng.sample(posts, 10)))
        delivered = [o for o in deliveries if o["order_id"] not in early
                     and (current_state(o["events"]) or {}).get("status") == "delivered"]
        for o in rng.sample(delivered, len(delivered) // 8):
            _cancel(server, merchant, o["order_id"])
        for o in rng.sample([o for o in merchant["orders"].values()
                             if o["fulfillment"] != "delivery"], 5):
            _cancel(server, merchant, o["order_id"])
        merchants[zone] = merchant
    return {"merchants": merchants, "start": start, "end": end}


# ---------------------------------------------------------------------------------------------
# requests and the response shape


def _url(server, merchant_id):
    return f"{server.url}/v1/merchants/{merchant_id}/metrics/deliveries"


def _get(server, merchant, params, extra_headers=None):
    return requests.get(_url(server, merchant["id"]), params=params,
                        headers=headers(merchant["token"], extra_headers), timeout=30)


_SPEC = None


def _schema(name):
    global _SPEC
    if _SPEC is None:
        _SPEC = yaml.safe_load((ROOT / "openapi" / "openapi.yaml").read_text())
    return _SPEC["components"]["schemas"][name]


def _check_shape(body):
    metrics, bucket = _schema("DeliveryMetrics"), _schema("DeliveryBucket")
    assert set(metrics["required"]) == set(body) == set(metrics["properties"])
    assert list(body) == HEADER_KEYS + ["buckets"]
    for b in body["buckets"]:
        assert list(b) == BUCKET_KEYS and set(bucket["required"]) == set(b)
        for key in BUCKET_KEYS[1:4]:
            assert isinstance(b[key], int) and not isinstance(b[key], bool) and b[key] >= 0
        avg = b["average_delivery_minutes"]
        assert (avg is None) == (b["delivered"] == 0), b
        assert avg is None or isinstance(avg, float), b


def _metrics(server, merchant, params):
    r = _get(server, merchant, params)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers["Cache-Control"] == "private, max-age=1"
    assert re.fullmatch(r'"[0-9a-f]{32}(-gzip)?"', r.headers["ETag"]), r.headers["ETag"]
    # One decimal at most, as a JSON number.
    for raw in re.findall(r'"average_delivery_minutes":([^,}]+)', r.text):
        assert raw == "null" or re.fullmatch(r"-?\d+\.\d", raw), raw
    body = r.json()
    _check_shape(body)
    as_of = body.pop("as_of")
    assert dt.datetime.fromisoformat(as_of.replace("Z", "+00:00")) <= (
        dt.datetime.now(UTC) + dt.timedelta(seconds=2))
    return body


def _assert_matches(server, merchant, params):
    model = {k: v for k, v in params.items() if k not in ("from", "to")}
    if "store_id" in model:
        model["store_id"] = int(model["store_id"])
    expected = expected_deliveries(merchant, params["from"], params["to"], **model)
    got = _metrics(server, merchant, params)
    if got != expected:
        for k in expected:
            assert got.get(k) == expected[k] or k == "buckets", (k, got.get(k), expected[k])
        assert len(got["buckets"]) == len(expected["buckets"])
        for g, e in zip(got["buckets"], expected["buckets"]):
            assert g == e
    return got


def _ranges(dataset, zone):
    start, end = dataset["start"], dataset["end"]
    tz = ZoneInfo(zone)
    first = start.astimezone(tz).date() + dt.timedelta(days=1)
    last = end.astimezone(tz).date()
    return [
        {"from": first.isoformat(), "to": last.isoformat()},                      # whole days
        {"from": (first - dt.timedelta(days=2)).isoformat(),
         "to": (last + dt.timedelta(days=1)).isoformat()},                         # empty edges
        {"from": _z(start + dt.timedelta(hours=29, minutes=45)),                   # partial edges
         "to": _z(end - dt.timedelta(hours=7, minutes=15))},
    ]


# ---------------------------------------------------------------------------------------------
# the figures


@pytest.mark.parametrize("zone", list(ZONES))
@pytest.mark.parametrize("granularity", ["day", "hour"])
def test_buckets_match_the_model(server, dataset, zone, granularity):
    merchant = dataset["merchants"][zone]
    totals = collections.Counter()
    for params in _ranges(dataset, zone):
        got = _assert_matches(server, merchant, {**params, "granularity": granularity})
        for b in got["buckets"]:
            totals.update({k: b[k] for k in ("deliveries", "delivered", "failed")})
    # The data set exercises what it claims to.
    assert totals["deliveries"] > 100 and totals["delivered"] > 40 and totals["failed"] > 5


def test_the_dst_change_is_in_range(dataset):
    merchant = dataset["merchants"]["Europe/Madrid"]
    params = _ranges(dataset, "Europe/Madrid")[0]
    days = expected_deliveries(merchant, params["from"], params["to"])["buckets"]
    offsets = {b["start"][-6:] for b in days}
    assert offsets == {"+01:00", "+02:00"}
    hours = expected_deliveries(merchant, params["from"], params["to"], "hour")["buckets"]
    assert len(hours) == 24 * len(days) + 1  # one 25-hour day


@pytest.mark.parametrize("zone", list(ZONES))
def test_store_and_channel_filters(server, dataset, zone):
    merchant = dataset["merchants"][zone]
    whole = _ranges(dataset, zone)[1]
    for extra in ({"store_id": "11"}, {"store_id": "12", "channel": "pos"},
                  {"channel": "online", "granularity": "hour"}, {"store_id": "99"}):
        _assert_matches(server, merchant, {**whole, **extra})


def test_other_time_zone_and_weeks_add_up(server, dataset):
    merchant = dataset["merchants"]["Asia/Kathmandu"]
    whole = _ranges(dataset, "Asia/Kathmandu")[1]
    days = _assert_matches(server, merchant, {**whole, "tz": "America/New_York"})
    whole_utc = {"from": _z(dataset["start"] - dt.timedelta(days=2)),
                 "to": _z(dataset["end"] + dt.timedelta(days=2))}
    weeks = _metrics(server, merchant, {**whole_utc, "granularity": "week"})
    month = _metrics(server, merchant, {**whole_utc, "granularity": "month"})
    for key in ("deliveries", "delivered", "failed"):
        assert (sum(b[key] for b in weeks["buckets"]) == sum(b[key] for b in month["buckets"])
                >= sum(b[key] for b in days["buckets"]))


def test_cancelled_orders_count_nowhere(server, dataset):
    merchant = dataset["merchants"]["Europe/Madrid"]
    params = _ranges(dataset, "Europe/Madrid")[1]
    got = _metrics(server, merchant, params)
    live = [o for o in merchant["orders"].values()
            if o["fulfillment"] == "delivery" and not o["cancelled"]]
    assert sum(b["deliveries"] for b in got["buckets"]) == len(live)
    assert any(o["cancelled"] and o["fulfillment"] == "delivery"
               for o in merchant["orders"].values())


# ---------------------------------------------------------------------------------------------
# one order at a time: rounding, state moves, cancellation, freshness


@pytest.fixture
def shop(server, merchant_id):
    return _new_merchant(server, merchant_id, "Europe/Madrid", "EUR")


T0 = dt.datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
DAY = {"from": "2026-03-03", "to": "2026-03-04"}


def _one_order(server, shop, order_id, at=T0, **kw):
    body = _order_body(random.Random(order_id), order_id, at, "EUR", fulfillment="delivery",
                       **kw)
    _post_orders(server, shop, [body], batch=False)
    shop["orders"][order_id] = _model(body, at)
    return shop["orders"][order_id]


def _send(server, shop, order, status, at, provider="glovo"):
    event = {"id": f"{order['order_id']}-{len(order['events'])}", "provider": provider,
             "status": status, "at": at}
    order["events"].append(event)
    return _post_event(server, shop, order["order_id"], event)


def _bucket(server, shop, params=DAY):
    got = _assert_matches(server, shop, params)
    (b,) = [b for b in got["buckets"] if b["deliveries"] or b["delivered"] or b["failed"]] or [
        got["buckets"][0]]
    return b


def test_rounding_half_up_to_one_decimal(server, shop):
    a = _one_order(server, shop, "r-a")
    _send(server, shop, a, "delivered", T0 + dt.timedelta(seconds=3))  # 0.05 min
    assert _bucket(server, shop)["average_delivery_minutes"] == 0.1
    b = _one_order(server, shop, "r-b", T0 + dt.timedelta(minutes=5))
    _send(server, shop, b, "delivered", T0 + dt.timedelta(minutes=5, seconds=24))  # 0.4 min
    # mean of 0.05 and 0.4 = 0.225 -> 0.2
    assert _bucket(server, shop)["average_delivery_minutes"] == 0.2
    c = _one_order(server, shop, "r-c", T0 + dt.timedelta(minutes=10))
    _send(server, shop, c, "delivered", T0 + dt.timedelta(minutes=10, seconds=81,
                                                          microseconds=1))
    # (3 + 24 + 81.000001) s / 3 = 36.0000003 s = 0.600000005 min -> 0.6
    b = _bucket(server, shop)
    assert b["delivered"] == 3 and b["average_delivery_minutes"] == 0.6
    hours = _bucket(server, shop, {**DAY, "granularity": "hour"})
    assert hours["start"] == "2026-03-03T10:00:00+01:00" and hours["deliveries"] == 3


def test_state_moves_and_cancellation_count_once(server, shop):
    o = _one_order(server, shop, "m-1")
    assert _bucket(server, shop) == {"start": "2026-03-03T00:00:00+01:00", "deliveries": 1,
                                     "delivered": 0, "failed": 0,
                                     "average_delivery_minutes": None}
    _send(server, shop, o, "failed", T0 + dt.timedelta(minutes=20))
    assert _bucket(server, shop)["failed"] == 1
    _send(server, shop, o, "in_transit", T0 + dt.timedelta(minutes=10))  # late: no change
    assert _bucket(server, shop)["failed"] == 1
    _send(server, shop, o, "delivered", T0 + dt.timedelta(minutes=45), provider="uber")
    b = _bucket(server, shop)
    assert (b["failed"], b["delivered"], b["average_delivery_minutes"]) == (0, 1, 45.0)
    _send(server, shop, o, "delivered", T0 + dt.timedelta(minutes=50))  # a later terminal
    assert _bucket(server, shop)["average_delivery_minutes"] == 50.0
    _cancel(server, shop, "m-1")
    _cancel(server, shop, "m-1")
    assert _bucket(server, shop)["deliveries"] == 0
    # Events for a cancelled order are recorded but count nowhere.
    _send(server, shop, o, "failed", T0 + dt.timedelta(minutes=90))
    assert _bucket(server, shop)["deliveries"] == 0
    pickup = _order_body(random.Random(1), "m-pickup", T0, "EUR", fulfillment="pickup")
    _post_orders(server, shop, [pickup], batch=False)
    assert _bucket(server, shop)["deliveries"] == 0


def test_an_event_after_a_read_shows_within_a_second(server, shop):
    o = _one_order(server, shop, "f-1")
    assert _bucket(server, shop)["delivered"] == 0
    assert _bucket(server, shop)["delivered"] == 0  # now cached
    _send(server, shop, o, "delivered", T0 + dt.timedelta(minutes=33, seconds=30))
    deadline = time.monotonic() + 1.0
    while True:
        b = _metrics(server, shop, DAY)["buckets"][0]
        if b["delivered"] == 1 or time.monotonic() > deadline:
            break
    assert (b["delivered"], b["average_delivery_minutes"]) == (1, 33.5)


# ---------------------------------------------------------------------------------------------
# cache, ETag, validation, access


def _log_line(server, request_id):
    def find():
        for line in reversed(server.log_lines_json()):
            if line.get("request_id") == request_id and line.get("msg") == "request":
                return line
        return None
    line = wait_until(find, timeout=5)
    assert line, f"no log line for request {request_id}"
    return line


def test_second_identical_read_is_a_cache_hit_and_etag_gives_304(server, dataset):
    merchant = dataset["merchants"]["Asia/Kathmandu"]
    params = {**_ranges(dataset, "Asia/Kathmandu")[2], "granularity": "hour"}
    first = _get(server, merchant, params)
    second = _get(server, merchant, params)
    assert first.status_code == second.status_code == 200
    assert second.content == first.content and second.headers["ETag"] == first.headers["ETag"]
    line = _log_line(server, second.headers["X-Request-Id"])
    assert line["cache"] == "hit" and "db" not in line
    etag = first.headers["ETag"]
    for value in (etag, f"W/{etag}", "*", f'"nope", {etag}'):
        again = _get(server, merchant, params, extra_headers={"If-None-Match": value})
        assert again.status_code == 304 and again.content == b"", value
        assert again.headers["ETag"] == etag
    assert _get(server, merchant, params,
                extra_headers={"If-None-Match": '"nope"'}).status_code == 200
    other = _get(server, merchant, {**params, "channel": "pos"})
    assert other.status_code == 200 and other.headers["ETag"] != etag
    sales = requests.get(f"{server.url}/v1/merchants/{merchant['id']}/metrics/sales",
                         params=params, headers=headers(merchant["token"]), timeout=10)
    assert sales.status_code == 200 and "orders" in sales.json()["buckets"][0]


VALID = {"from": "2026-10-20", "to": "2026-10-27"}


@pytest.mark.parametrize("params,field", [
    ({"to": "2026-10-27"}, "from"),
    ({"from": "2026-10-20"}, "to"),
    ({"from": "2026-10-27", "to": "2026-10-20"}, "to"),
    ({**VALID, "from": "2026-10-20T10:10:00Z"}, "from"),
    ({**VALID, "to": "yesterday"}, "to"),
    ({"from": "2025-10-01", "to": "2026-11-06"}, "to"),
    ({**VALID, "granularity": "minute"}, "granularity"),
    ({**VALID, "tz": "Mars/Olympus"}, "tz"),
    ({**VALID, "store_id": "0"}, "store_id"),
    ({**VALID, "store_id": "x"}, "store_id"),
    ({**VALID, "channel": "phone"}, "channel"),
    ({**VALID, "fulfillment": "delivery"}, "fulfillment"),  # always delivery: not a parameter
    ({**VALID, "group_by": "channel"}, "group_by"),
    ({"from": "2020-01-01T00:00:00Z", "to": "2021-02-05T00:15:00Z", "granularity": "hour"},
     "to"),
    ({**VALID, "tz": "Asia/Kolkata", "from": "2026-10-20T10:10:00+05:30"}, "from"),
])
def test_validation(server, dataset, params, field):
    merchant = dataset["merchants"]["Europe/Madrid"]
    r = _get(server, merchant, params)
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["type"] == PROBLEM_VALIDATION and problem["status"] == 400
    assert field in [e["field"] for e in problem["errors"]], problem


def test_repeated_parameter_is_refused(server, dataset):
    merchant = dataset["merchants"]["Europe/Madrid"]
    r = requests.get(f"{_url(server, merchant['id'])}?from=2026-10-20&to=2026-10-27"
                     "&channel=pos&channel=online", headers=headers(merchant["token"]),
                     timeout=10)
    assert r.status_code == 400, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["channel"]


def test_unknown_merchant_scope_and_tenant(server, merchant_id):
    token = make_token(scope="metrics:read", merchants=[merchant_id])
    url = _url(server, merchant_id)
    r = requests.get(url, params=VALID, headers=headers(token), timeout=10)
    assert r.status_code == 404, r.text
    assert requests.get(url, params=VALID, timeout=10).status_code == 401
    wrong_scope = make_token(scope="orders:read deliveries:write", merchants=[merchant_id])
    assert requests.get(url, params=VALID, headers=headers(wrong_scope),
                        timeout=10).status_code == 403
    other = make_token(scope="metrics:read", merchants=[merchant_id + 1])
    assert requests.get(url, params=VALID, headers=headers(other), timeout=10).status_code == 403


# ---------------------------------------------------------------------------------------------
# the rollups themselves: equal to a recompute, and backfilled by the migration

RECOMPUTE = """
    SELECT o.merchant_id, date_bin('15 minutes', o.placed_at, timestamptz 'epoch'), o.store_id,
           o.channel, count(*), count(*) FILTER (WHERE d.status = 3),
           count(*) FILTER (WHERE d.status = 4),
           coalesce(sum((extract(epoch FROM d.occurred_at) - extract(epoch FROM o.placed_at))
                        * 1000000) FILTER (WHERE d.status = 3), 0)::bigint
    FROM orders o LEFT JOIN deliveries d ON d.merchant_id = o.merchant_id
                                        AND d.order_id = o.order_id
    WHERE o.status = 0 AND o.fulfillment = 1 AND o.merchant_id = ANY(%s)
    GROUP BY 1, 2, 3, 4"""
ROLLUP = """
    SELECT merchant_id, bucket, store_id, channel, deliveries, delivered, failed, delivered_us
    FROM delivery_rollup_15m WHERE merchant_id = ANY(%s)"""


def _rows(conn, sql, merchant_ids):
    with conn.cursor() as cur:
        cur.execute(sql, (merchant_ids,))
        return {tuple(r[:4]): tuple(r[4:]) for r in cur.fetchall() if any(r[4:])}


def test_rollups_equal_a_recompute(stack, dataset):
    ids = [m["id"] for m in dataset["merchants"].values()]
    conn = stack.primary()
    try:
        rollup = _rows(conn, ROLLUP, ids)
        assert rollup and rollup == _rows(conn, RECOMPUTE, ids)
    finally:
        conn.close()


def test_migration_backfills_stored_deliveries(server, stack):
    """Orders and delivery states stored as a version-5 server left them; migrating builds
    the rollups an independent computation expects."""
    db = "dm_backfill_" + str(random.SystemRandom().randrange(10**9))
    admin = stack.primary()
    admin.cursor().execute(f"CREATE DATABASE {db}")
    url = stack.primary_url.rsplit("/", 1)[0] + "/" + db

    def migrate():
        r = subprocess.run([server.binary, "migrate"], env=dict(server.env, DATABASE_URL=url),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr + r.stdout

    try:
        migrate()
        rng = random.Random(SEED + 1)
        expected = collections.defaultdict(lambda: [0, 0, 0, 0])
        conn = psycopg2.connect(url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("INSERT INTO merchants (merchant_id, name, timezone, currency) "
                        "VALUES (7, 'old', 'Europe/Madrid', 'EUR')")
            for n in range(200):
                at = dt.datetime(2026, 9, 1, tzinfo=UTC) + dt.timedelta(
                    seconds=rng.randrange(3 * 86400), microseconds=rng.randrange(10**6))
                store, channel, fulfillment = rng.choice([1, 2]), rng.randrange(2), rng.randrange(3)
                cancelled = rng.random() < 0.15
                status = rng.choice([None, 0, 2, 3, 3, 3, 4, 5])
                took = dt.timedelta(seconds=rng.randrange(-60, 7200),
                                    microseconds=rng.randrange(10**6))
                cur.execute(
                    "INSERT INTO orders (merchant_id, placed_at, order_id, store_id, channel, "
                    "fulfillment, status, currency, gross_cents, discount_cents, net_cents, "
                    "tax_cents, total_cents, items_sold) "
                    "VALUES (7, %s, %s, %s, %s, %s, %s, 'EUR', 0, 0, 0, 0, 0, 0)",
                    (at, f"o-{n}", store, channel, fulfillment, int(cancelled)))
                if status is not None and fulfillment == 1:
                    cur.execute("INSERT INTO deliveries (merchant_id, order_id, placed_at, status, "
                                "provider, event_id, occurred_at) VALUES (7, %s, %s, %s, 'p', "
                                "%s, %s)", (f"o-{n}", at, status, f"e-{n}", at + took))
                if cancelled or fulfillment != 1:
                    continue
                key = (7, at.replace(minute=at.minute // 15 * 15, second=0, microsecond=0),
                       store, channel)
                row = expected[key]
                row[0] += 1
                row[1] += status == 3
                row[2] += status == 4
                row[3] += took // dt.timedelta(microseconds=1) if status == 3 else 0
            cur.execute("DROP TABLE delivery_rollup_15m")
            cur.execute("DELETE FROM schema_migrations WHERE version >= 6")
        migrate()
        got = _rows(conn, ROLLUP, [7])
        conn.close()
        assert {(m, b.astimezone(UTC), s, c): v for (m, b, s, c), v in got.items()} == {
            k: tuple(v) for k, v in expected.items()}
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.close()
