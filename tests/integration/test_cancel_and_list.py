"""Cancellation and order lists, black box:
POST /v1/merchants/{id}/orders/{order_id}/cancel and GET /v1/merchants/{id}/orders.

Cancellation: the 200 body, the stored status, the sales metrics taking the order back (every
figure checked against values computed here from the posted orders), the no-op second cancel,
20 concurrent cancels changing the rollups exactly once, replays of a cancelled order, group_by
keeping a group whose only order was cancelled, 404/403/400.

Order lists: newest first by placed_at (ties by order_id descending, byte order), the envelope
and next_cursor, 1,000 orders paged with limit 37 while other orders are written between every
page (each original exactly once and in order, and every order committed before a page was
asked for shows on it when it belongs there), the filters (from inclusive, to exclusive,
store_id, status), validation of every parameter, scope and tenancy.

Every merchant is created first (PUT, merchants:admin, Europe/Madrid, EUR). Sales are read
with tz=UTC and granularity=hour so that the expected buckets are simple to compute.
"""

import concurrent.futures
import contextlib
import datetime as dt
import random
import threading
import time
import uuid

import pytest
import requests

from helpers import headers

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
PROBLEM_BASE = "https://cangrejo.dev/problems/"
ORDER_FIELDS = {
    "merchant_id", "order_id", "store_id", "channel", "fulfillment", "status", "placed_at",
    "currency", "items", "gross_cents", "discount_cents", "net_cents", "tax_cents",
    "total_cents", "promo_code", "customer_ref", "delivery", "created_at",
}
FIGURES = ("orders", "cancelled_orders", "items_sold", "gross_sales_cents", "discounts_cents",
           "net_sales_cents", "tax_cents", "total_sales_cents")
SCOPE = "orders:write orders:read metrics:read"


# ---------------------------------------------------------------------------------------------
# helpers


def _utc_now():
    return dt.datetime.now(UTC)


def _hour_ago(hours):
    """The start of the UTC hour `hours` hours ago."""
    return (_utc_now() - dt.timedelta(hours=hours)).replace(minute=0, second=0, microsecond=0)


def _rfc3339(moment, offset_minutes=60):
    return moment.astimezone(dt.timezone(dt.timedelta(minutes=offset_minutes))).isoformat()


def _z(moment):
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _us(moment):
    """Microseconds since the epoch of an aware datetime (exact)."""
    return (moment - EPOCH) // dt.timedelta(microseconds=1)


def _parse_us(text):
    return _us(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))


def _order(order_id=None, placed=None, store_id=17, channel="online", fulfillment="pickup",
           items=None, discount=0, tax=0, offset_minutes=60):
    items = items or [{"sku": "PIZ-MARG-L", "name": "Margherita L", "quantity": 2,
                       "unit_price_cents": 1150}]
    placed = placed or (_utc_now() - dt.timedelta(hours=26)).replace(microsecond=0)
    return {
        "order_id": order_id or f"o-{uuid.uuid4().hex[:16]}",
        "store_id": store_id,
        "channel": channel,
        "fulfillment": fulfillment,
        "placed_at": _rfc3339(placed, offset_minutes),
        "currency": "EUR",
        "items": items,
        "discount_cents": discount,
        "tax_cents": tax,
    }


def _key(body):
    """The list's sort key of a posted order: (placed_at in µs, order_id)."""
    return (_parse_us(body["placed_at"]), body["order_id"])


def _merchant(server, make_token, merchant_id, scope=SCOPE):
    admin = make_token(scope="merchants:admin", merchants=[merchant_id])
    r = requests.put(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(admin),
                     json={"name": "Cancel and list", "timezone": "Europe/Madrid",
                           "currency": "EUR"}, timeout=10)
    assert r.status_code == 201, r.text
    return make_token(scope=scope, merchants=[merchant_id])


def _orders_url(server, merchant_id):
    return f"{server.url}/v1/merchants/{merchant_id}/orders"


def _post(server, token, merchant_id, body, session=None, timeout=10):
    http = session or requests
    return http.post(_orders_url(server, merchant_id), headers=headers(token), json=body,
                     timeout=timeout)


def _post_ok(server, token, merchant_id, body, session=None):
    r = _post(server, token, merchant_id, body, session=session)
    assert r.status_code == 201, f"{body['order_id']}: {r.status_code} {r.text}"
    return r.json()


def _post_many(server, token, merchant_id, bodies, workers=12):
    """POSTs the orders from `workers` threads (one HTTP session each); all must be 201."""
    local = threading.local()

    def post(body):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        r = _post(server, token, merchant_id, body, session=local.session, timeout=30)
        return body["order_id"], r.status_code, r.text[:300]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(post, bodies))
    failed = [res for res in results if res[1] != 201]
    assert not failed, f"{len(failed)} of {len(bodies)} POSTs not 201, e.g. {failed[:3]}"


def _cancel(server, token, merchant_id, order_id, session=None, timeout=10, **kwargs):
    http = session or requests
    extra = kwargs.pop("extra_headers", None)
    return http.post(f"{_orders_url(server, merchant_id)}/{order_id}/cancel",
                     headers=headers(token, extra), timeout=timeout, **kwargs)


def _get_order(server, token, merchant_id, order_id):
    return requests.get(f"{_orders_url(server, merchant_id)}/{order_id}",
                        headers=headers(token), timeout=10)


def _list(server, token, merchant_id, params=None, query=None, session=None):
    http = session or requests
    url = _orders_url(server, merchant_id)
    if query is not None:
        url += "?" + query
    return http.get(url, params=params, headers=headers(token), timeout=30)


def _list_ok(server, token, merchant_id, params=None, session=None):
    r = _list(server, token, merchant_id, params, session=session)
    assert r.status_code == 200, (params, r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    body = r.json()
    assert list(body) == ["orders", "next_cursor"], list(body)
    assert isinstance(body["orders"], list)
    assert body["next_cursor"] is None or (isinstance(body["next_cursor"], str)
                                           and body["next_cursor"]), body["next_cursor"]
    for o in body["orders"]:
        assert set(o) == ORDER_FIELDS, set(o) ^ ORDER_FIELDS
        assert o["merchant_id"] == merchant_id, o
    return body


def _list_all(server, token, merchant_id, params=None, limit=None):
    """Pages through the whole list; returns the orders (checks page sizes and the last
    next_cursor)."""
    params = dict(params or {})
    if limit:
        params["limit"] = str(limit)
    page_size = limit or 50
    got, cursor = [], None
    for _ in range(10000):
        page = _list_ok(server, token, merchant_id,
                        {**params, **({"cursor": cursor} if cursor else {})})
        if page["next_cursor"] is not None:
            assert len(page["orders"]) == page_size, (len(page["orders"]), page_size)
        else:
            assert len(page["orders"]) <= page_size
        got += page["orders"]
        cursor = page["next_cursor"]
        if cursor is None:
            return got
    raise AssertionError("the list never ended")


def _ids(orders):
    return [o["order_id"] for o in orders]


def _newest_first(bodies):
    """Order ids newest first by placed_at, ties by order_id descending (byte order)."""
    return [b["order_id"] for b in sorted(bodies, key=_key, reverse=True)]


def _assert_problem(r, status, slug):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers.get("Content-Type", "").startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["type"] == PROBLEM_BASE + slug, body
    assert body["status"] == status, body
    return body


def _assert_validation(r, *fields):
    body = _assert_problem(r, 400, "validation-error")
    listed = [e["field"] for e in body.get("errors", [])]
    for field in fields:
        assert field in listed, f"no error for {field!r} in {listed}: {body}"
    return body


def _db(stack, sql, *params):
    with contextlib.closing(stack.primary()) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def _concurrently(n, fn):
    """Runs fn(i) in n threads released together; returns the results in order of i."""
    barrier = threading.Barrier(n)
    results = [None] * n

    def run(i):
        try:
            barrier.wait(timeout=30)
            results[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "requests still running after 60 s"
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, f"{len(errors)} requests raised, first: {errors[0]!r}"
    return results


# ---------------------------------------------------------------------------------------------
# the sales model


def _figures(body, cancelled):
    """One order's contribution, in FIGURES order."""
    if cancelled:
        return (0, 1, 0, 0, 0, 0, 0, 0)
    gross = sum(i["quantity"] * i["unit_price_cents"] for i in body["items"])
    net = gross - body.get("discount_cents", 0)
    tax = body.get("tax_cents", 0)
    return (1, 0, sum(i["quantity"] for i in body["items"]), gross,
            body.get("discount_cents", 0), net, tax, net + tax)


def _expected_buckets(bodies, cancelled_ids, frm, hours):
    """The hourly UTC buckets [frm, frm + hours h) as lists of FIGURES."""
    buckets = [[0] * len(FIGURES) for _ in range(hours)]
    for b in bodies:
        placed = dt.datetime.fromisoformat(b["placed_at"])
        index = int((placed - frm) // dt.timedelta(hours=1))
        if 0 <= index < hours:
            for k, v in enumerate(_figures(b, b["order_id"] in cancelled_ids)):
                buckets[index][k] += v
    return buckets


def _sales(server, token, merchant_id, frm, hours, group_by=None, etag=False):
    params = {"from": _z(frm), "to": _z(frm + dt.timedelta(hours=hours)), "tz": "UTC",
              "granularity": "hour"}
    if group_by:
        params["group_by"] = group_by
    r = requests.get(f"{server.url}/v1/merchants/{merchant_id}/metrics/sales", params=params,
                     headers=headers(token), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    return (body, r.headers["ETag"]) if etag else body


def _bucket_figures(series):
    """The FIGURES of each bucket of a series, checking the labels are the hours in order."""
    starts = [dt.datetime.fromisoformat(b["start"]) for b in series]
    assert all(b - a == dt.timedelta(hours=1) for a, b in zip(starts, starts[1:])), starts
    return [[b[f] for f in FIGURES] for b in series]


def _totals(buckets):
    return [sum(b[k] for b in buckets) for k in range(len(FIGURES))]


def _assert_sales(server, token, merchant_id, frm, hours, bodies, cancelled_ids):
    """The sales series equals the model, bucket by bucket; returns the server's buckets."""
    got = _bucket_figures(_sales(server, token, merchant_id, frm, hours)["buckets"])
    expected = _expected_buckets(bodies, cancelled_ids, frm, hours)
    assert got == expected, (f"cancelled {sorted(cancelled_ids)}\n got      {got}\n"
                             f" expected {expected}")
    return got


def _rollup(stack, merchant_id):
    """The merchant's sales_rollup_15m rows on the primary, by key."""
    rows = _db(stack, """
        SELECT bucket, store_id, channel, fulfillment, orders, cancelled_orders, items_sold,
               gross_cents, discount_cents, net_cents, tax_cents, total_cents
        FROM sales_rollup_15m WHERE merchant_id = %s ORDER BY 1, 2, 3, 4""", merchant_id)
    return {tuple(r[:4]): list(r[4:]) for r in rows}


def _varied_orders(prefix, base, n, rng):
    """n orders with random items, discounts and taxes, placed within 3 h after `base`."""
    bodies = []
    for k in range(n):
        items = [{"sku": f"SKU-{rng.randint(1, 9)}", "name": "Thing",
                  "quantity": rng.randint(1, 5), "unit_price_cents": rng.randint(1, 4000)}
                 for _ in range(rng.randint(1, 3))]
        gross = sum(i["quantity"] * i["unit_price_cents"] for i in items)
        placed = base + dt.timedelta(seconds=rng.randrange(3 * 3600), microseconds=k)
        bodies.append(_order(f"{prefix}-{k}", placed, store_id=rng.choice([1, 2]),
                             channel=rng.choice(["online", "pos"]), items=items,
                             discount=rng.randint(0, gross // 2), tax=rng.randint(0, 900),
                             offset_minutes=rng.choice([0, 60, -300, 345])))
    return bodies


# ---------------------------------------------------------------------------------------------
# cancellation


def test_cancel_returns_the_cancelled_order_and_sales_take_it_back(server, stack, make_token,
                                                                   merchant_id):
    token = _merchant(server, make_token, merchant_id)
    frm, hours = _hour_ago(30), 4
    bodies = _varied_orders("c", frm, 6, random.Random(1121))
    created = {b["order_id"]: _post_ok(server, token, merchant_id, b) for b in bodies}
    before = _assert_sales(server, token, merchant_id, frm, hours, bodies, set())
    assert _totals(before)[0] == 6

    victim = bodies[2]
    r = _cancel(server, token, merchant_id, victim["order_id"])
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    got = r.json()
    assert set(got) == ORDER_FIELDS, set(got) ^ ORDER_FIELDS
    assert got["status"] == "cancelled"
    assert got == {**created[victim["order_id"]], "status": "cancelled"}

    g = _get_order(server, token, merchant_id, victim["order_id"])
    assert g.status_code == 200, g.text
    assert g.json() == got
    for other in bodies:
        if other is not victim:
            assert _get_order(server, token, merchant_id,
                              other["order_id"]).json()["status"] == "placed"
    assert _db(stack, """SELECT status, cancelled_at IS NOT NULL FROM orders
                         WHERE merchant_id = %s AND order_id = %s""",
               merchant_id, victim["order_id"]) == [(1, True)]

    after = _assert_sales(server, token, merchant_id, frm, hours, bodies,
                          {victim["order_id"]})
    # The difference is exactly the victim's figures, moved into cancelled_orders.
    f = _figures(victim, False)
    delta = [a - b for a, b in zip(_totals(after), _totals(before))]
    assert delta == [-1, 1] + [-v for v in f[2:]], (delta, f)


def test_cancelling_twice_is_a_no_op_200(server, stack, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    frm, hours = _hour_ago(40), 4
    bodies = _varied_orders("twice", frm, 3, random.Random(7))
    for b in bodies:
        _post_ok(server, token, merchant_id, b)
    victim = bodies[0]["order_id"]
    first = _cancel(server, token, merchant_id, victim)
    assert first.status_code == 200, first.text
    sales, etag = _sales(server, token, merchant_id, frm, hours, etag=True)
    rollup = _rollup(stack, merchant_id)
    version = _db(stack, "SELECT data_version FROM merchants WHERE merchant_id = %s",
                  merchant_id)

    for _ in range(2):
        again = _cancel(server, token, merchant_id, victim)
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
        assert again.json()["status"] == "cancelled"
    assert _rollup(stack, merchant_id) == rollup
    assert _db(stack, "SELECT data_version FROM merchants WHERE merchant_id = %s",
               merchant_id) == version
    now_sales, now_etag = _sales(server, token, merchant_id, frm, hours, etag=True)
    assert now_sales["buckets"] == sales["buckets"]
    assert now_etag == etag
    _assert_sales(server, token, merchant_id, frm, hours, bodies, {victim})


def test_20_concurrent_cancels_change_the_figures_exactly_once(server, stack, make_token,
                                                               merchant_id):
    token = _merchant(server, make_token, merchant_id)
    frm = _hour_ago(50)
    placed = frm + dt.timedelta(minutes=20, seconds=5)  # same 15-minute bucket for both
    victim = _order("race-victim", placed, store_id=3, channel="pos", fulfillment="dine_in",
                    items=[{"sku": "A", "name": "A", "quantity": 3, "unit_price_cents": 999}],
                    discount=120, tax=300)
    keeper = _order("race-keeper", placed + dt.timedelta(minutes=3), store_id=3, channel="pos",
                    fulfillment="dine_in",
                    items=[{"sku": "B", "name": "B", "quantity": 2, "unit_price_cents": 450}],
                    discount=0, tax=90)
    created = _post_ok(server, token, merchant_id, victim)
    _post_ok(server, token, merchant_id, keeper)
    before = _assert_sales(server, token, merchant_id, frm, 1, [victim, keeper], set())
    assert before[0][:2] == [2, 0]

    sessions = [requests.Session() for _ in range(20)]
    try:
        responses = _concurrently(20, lambda i: _cancel(server, token, merchant_id,
                                                        "race-victim", session=sessions[i],
                                                        timeout=30))
    finally:
        for s in sessions:
            s.close()
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 20, (statuses, [r.text for r in responses if r.status_code != 200])
    for r in responses:
        assert r.json() == {**created, "status": "cancelled"}

    bucket = placed.replace(minute=15, second=0)
    assert _rollup(stack, merchant_id) == {
        (bucket, 3, 1, 2): [1, 1, 2, 900, 0, 900, 90, 990]}
    sales = _assert_sales(server, token, merchant_id, frm, 1, [victim, keeper],
                          {"race-victim"})
    assert sales == [[1, 1, 2, 900, 0, 900, 90, 990]]


def _expected_rollup(bodies, cancelled_ids):
    """sales_rollup_15m as it must be: {(bucket, store, channel, fulfillment): FIGURES}."""
    channels = {"online": 0, "pos": 1}
    fulfillments = {"pickup": 0, "delivery": 1, "dine_in": 2}
    rows = {}
    for b in bodies:
        placed_s = _parse_us(b["placed_at"]) // 1000000
        bucket = EPOCH + dt.timedelta(seconds=placed_s // 900 * 900)
        key = (bucket, b["store_id"], channels[b["channel"]], fulfillments[b["fulfillment"]])
        row = rows.setdefault(key, [0] * len(FIGURES))
        for k, v in enumerate(_figures(b, b["order_id"] in cancelled_ids)):
            row[k] += v
    return rows


def test_cancels_racing_with_new_orders_keep_the_rollups_exact(server, stack, make_token,
                                                               merchant_id):
    """Many cancels (each order twice at once) and new orders in the same rollup rows, all
    at the same time: every figure ends exactly as computed here."""
    token = _merchant(server, make_token, merchant_id)
    rng = random.Random(4242)
    frm, hours = _hour_ago(80), 4
    first = _varied_orders("mix", frm, 40, rng)
    later = _varied_orders("mix-late", frm, 30, rng)
    _post_many(server, token, merchant_id, first)
    victims = [b["order_id"] for b in rng.sample(first, 25)]
    jobs = [("cancel", v) for v in victims for _ in range(2)] + [("post", b) for b in later]
    rng.shuffle(jobs)
    sessions = [requests.Session() for _ in jobs]

    def run(i):
        kind, what = jobs[i]
        if kind == "cancel":
            r = _cancel(server, token, merchant_id, what, session=sessions[i], timeout=30)
            return kind, r.status_code, r.text[:200], 200
        r = _post(server, token, merchant_id, what, session=sessions[i], timeout=30)
        return kind, r.status_code, r.text[:200], 201
    try:
        results = _concurrently(len(jobs), run)
    finally:
        for s in sessions:
            s.close()
    wrong = [res for res in results if res[1] != res[3]]
    assert not wrong, f"{len(wrong)} of {len(jobs)} requests failed, e.g. {wrong[:3]}"
    everything = first + later
    assert _rollup(stack, merchant_id) == _expected_rollup(everything, set(victims))
    sales = _assert_sales(server, token, merchant_id, frm, hours, everything, set(victims))
    assert _totals(sales)[:2] == [len(everything) - len(victims), len(victims)]
    cancelled = _list_all(server, token, merchant_id, {"status": "cancelled"}, limit=500)
    assert sorted(_ids(cancelled)) == sorted(victims)


def test_cancel_unknown_order_is_404(server, make_token, merchant_ids):
    mine, other = merchant_ids(), merchant_ids()
    token = _merchant(server, make_token, mine)
    other_token = _merchant(server, make_token, other)
    _post_ok(server, token, mine, _order("exists-here"))
    _post_ok(server, other_token, other, _order("only-there"))
    _assert_problem(_cancel(server, token, mine, "no-such-order"), 404, "not-found")
    # Another merchant's order is unknown here, and stays placed there.
    _assert_problem(_cancel(server, token, mine, "only-there"), 404, "not-found")
    assert _get_order(server, other_token, other, "only-there").json()["status"] == "placed"
    assert _get_order(server, token, mine, "exists-here").json()["status"] == "placed"


def test_cancel_needs_orders_write_for_that_merchant(server, make_token, merchant_ids):
    mine, other = merchant_ids(), merchant_ids()
    token = _merchant(server, make_token, mine)
    _merchant(server, make_token, other)
    _post_ok(server, token, mine, _order("guarded"))
    no_write = make_token(scope="orders:read metrics:read merchants:admin", merchants=[mine])
    _assert_problem(_cancel(server, no_write, mine, "guarded"), 403, "forbidden")
    other_tenant = make_token(scope=SCOPE, merchants=[other])
    _assert_problem(_cancel(server, other_tenant, mine, "guarded"), 403, "forbidden")
    r = requests.post(f"{_orders_url(server, mine)}/guarded/cancel", timeout=10)
    assert r.status_code == 401, r.text
    assert _get_order(server, token, mine, "guarded").json()["status"] == "placed"


def test_cancel_body_may_be_empty_object_but_nothing_else(server, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    for n in range(4):
        _post_ok(server, token, merchant_id, _order(f"body-{n}"))
    json_type = {"Content-Type": "application/json"}

    r = _cancel(server, token, merchant_id, "body-0", json={})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"

    r = _cancel(server, token, merchant_id, "body-1", json={"reason": "x"})
    _assert_validation(r, "reason")
    r = _cancel(server, token, merchant_id, "body-1", data=b'{"reason": ',
                extra_headers=json_type)
    _assert_problem(r, 400, "malformed-json")
    r = _cancel(server, token, merchant_id, "body-1", data=b"[]", extra_headers=json_type)
    _assert_problem(r, 400, "validation-error")
    r = _cancel(server, token, merchant_id, "body-1", data=b"{}",
                extra_headers={"Content-Type": "text/plain"})
    _assert_problem(r, 415, "unsupported-media-type")
    assert _get_order(server, token, merchant_id, "body-1").json()["status"] == "placed"

    r = _cancel(server, token, merchant_id, "body-2")  # no body at all
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    statuses = [_get_order(server, token, merchant_id, f"body-{n}").json()["status"]
                for n in range(4)]
    assert statuses == ["cancelled", "placed", "cancelled", "placed"]


def test_replaying_a_cancelled_order_is_200_cancelled_and_counts_nothing(server, stack,
                                                                         make_token,
                                                                         merchant_id):
    token = _merchant(server, make_token, merchant_id)
    frm, hours = _hour_ago(60), 4
    bodies = _varied_orders("replay", frm, 2, random.Random(99))
    for b in bodies:
        _post_ok(server, token, merchant_id, b)
    cancelled = _cancel(server, token, merchant_id, bodies[0]["order_id"])
    assert cancelled.status_code == 200, cancelled.text
    sales = _assert_sales(server, token, merchant_id, frm, hours, bodies,
                          {bodies[0]["order_id"]})
    rollup = _rollup(stack, merchant_id)

    for _ in range(2):
        r = _post(server, token, merchant_id, bodies[0])
        assert r.status_code == 200, r.text
        assert r.headers.get("Idempotent-Replayed") == "true", r.headers
        assert r.json() == cancelled.json()
        assert r.json()["status"] == "cancelled"
    assert _rollup(stack, merchant_id) == rollup
    assert _assert_sales(server, token, merchant_id, frm, hours, bodies,
                         {bodies[0]["order_id"]}) == sales
    assert _db(stack, "SELECT count(*) FROM orders WHERE merchant_id = %s",
               merchant_id) == [(2,)]
    assert _get_order(server, token, merchant_id,
                      bodies[0]["order_id"]).json() == cancelled.json()


def test_group_by_keeps_a_group_whose_only_order_was_cancelled(server, make_token,
                                                               merchant_id):
    token = _merchant(server, make_token, merchant_id)
    frm, hours = _hour_ago(70), 2
    kept = _order("grp-kept", frm + dt.timedelta(minutes=10), store_id=5, channel="online",
                  fulfillment="delivery")
    gone = _order("grp-gone", frm + dt.timedelta(minutes=70), store_id=6, channel="pos",
                  fulfillment="dine_in", discount=100, tax=50)
    for b in (kept, gone):
        _post_ok(server, token, merchant_id, b)
    assert _cancel(server, token, merchant_id, "grp-gone").status_code == 200

    expected = {
        "store_id": {5: kept, 6: gone},
        "channel": {"online": kept, "pos": gone},
        "fulfillment": {"delivery": kept, "dine_in": gone},
    }
    for group_by, groups in expected.items():
        body = _sales(server, token, merchant_id, frm, hours, group_by=group_by)
        assert body["group_by"] == group_by
        assert [g["key"] for g in body["groups"]] == list(groups), (group_by, body["groups"])
        for g in body["groups"]:
            order = groups[g["key"]]
            assert _bucket_figures(g["buckets"]) == _expected_buckets(
                [order], {"grp-gone"}, frm, hours), (group_by, g)
        only_cancelled = body["groups"][1]["buckets"]
        assert [b["cancelled_orders"] for b in only_cancelled] == [0, 1]
        assert all(b["orders"] == 0 and b["net_sales_cents"] == 0 for b in only_cancelled)


# ---------------------------------------------------------------------------------------------
# order lists: order, envelope, cursor


def test_list_is_newest_first_ties_by_order_id_descending(server, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    t = (_utc_now() - dt.timedelta(hours=30)).replace(microsecond=0)
    tie_ids = ["t-b", "t.a", "t0", "t:z", "tA", "t_q", "ta", "t-a", "tZ9"]  # byte order differs
    bodies = [_order(i, t, offset_minutes=m)                             # from "human" order
              for i, m in zip(tie_ids, [0, 60, -300, 345, 330, -210, 0, 60, 120])]
    bodies += [
        _order("us-1", t + dt.timedelta(microseconds=1)),
        _order("us-500000", t + dt.timedelta(microseconds=500000)),
        _order("us-minus-1", t - dt.timedelta(microseconds=1)),
        _order("older", t - dt.timedelta(days=2)),
        _order("newest", _utc_now() - dt.timedelta(seconds=5)),
    ]
    created = {b["order_id"]: _post_ok(server, token, merchant_id, b)
               for b in random.Random(3).sample(bodies, len(bodies))}
    expected = _newest_first(bodies)
    assert expected[:3] == ["newest", "us-500000", "us-1"]
    assert expected[-2:] == ["us-minus-1", "older"]

    page = _list_ok(server, token, merchant_id)
    assert _ids(page["orders"]) == expected
    assert page["next_cursor"] is None
    for o in page["orders"]:
        assert o == created[o["order_id"]]  # the full order, as stored

    for limit in (1, 2, 3, 5, 13):
        assert _ids(_list_all(server, token, merchant_id, limit=limit)) == expected, limit
    exact = _list_ok(server, token, merchant_id, {"limit": str(len(bodies))})
    assert _ids(exact["orders"]) == expected and exact["next_cursor"] is None
    short = _list_ok(server, token, merchant_id, {"limit": str(len(bodies) - 1)})
    assert _ids(short["orders"]) == expected[:-1] and short["next_cursor"]
    rest = _list_ok(server, token, merchant_id, {"cursor": short["next_cursor"]})
    assert _ids(rest["orders"]) == expected[-1:] and rest["next_cursor"] is None


def test_list_of_a_merchant_without_orders_is_empty(server, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    assert _list_ok(server, token, merchant_id) == {"orders": [], "next_cursor": None}


def test_1000_orders_paged_by_37_while_orders_keep_arriving(server, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    rng = random.Random(20261121)
    newest = _utc_now() - dt.timedelta(hours=2)
    span_s = 3 * 86400
    seps = "-._:"
    originals, placed = [], None
    for n in range(1000):
        if placed is None or n % 25:  # every 25th order shares the previous one's placed_at
            placed = newest - dt.timedelta(seconds=rng.randrange(span_s),
                                           microseconds=rng.choice([0, 0, rng.randrange(10**6)]))
        originals.append(_order(f"L{seps[n % 4]}{n:04d}", placed, store_id=rng.randint(1, 4),
                                offset_minutes=rng.choice([0, 60, -300, 345])))
    _post_many(server, token, merchant_id, originals, workers=12)
    original_keys = {b["order_id"]: _key(b) for b in originals}
    oldest = min(k[0] for k in original_keys.values())

    # The writer posts one order at a time, alternately placed now and placed somewhere in the
    # range of the originals, and records when each was acknowledged.
    stop = threading.Event()
    acked = []  # (monotonic time of the 201, key)
    writer_errors = []

    def writer():
        k = 0
        with requests.Session() as s:
            while not stop.is_set():
                if k % 2:
                    at = _utc_now() - dt.timedelta(seconds=1)
                else:
                    at = EPOCH + dt.timedelta(microseconds=rng.randrange(oldest, _us(newest)))
                body = _order(f"new-{k:04d}", at, store_id=2)
                try:
                    r = _post(server, token, merchant_id, body, session=s)
                except requests.RequestException as e:
                    writer_errors.append(repr(e))
                    return
                if r.status_code != 201:
                    writer_errors.append(f"{r.status_code} {r.text[:200]}")
                    return
                acked.append((time.monotonic(), _key(body)))
                k += 1
    thread = threading.Thread(target=writer)
    thread.start()
    pages = []  # (monotonic start, cursor key or None, orders, next_cursor)
    try:
        cursor, cursor_key = None, None
        with requests.Session() as s:
            for _ in range(200):
                seen = len(acked)
                # at least one more order committed between two pages
                deadline = time.monotonic() + 5
                while len(acked) == seen and time.monotonic() < deadline and not writer_errors:
                    time.sleep(0.005)
                assert not writer_errors, writer_errors
                assert len(acked) > seen, "the writer committed nothing within 5 s"
                started = time.monotonic()
                params = {"limit": "37", **({"cursor": cursor} if cursor else {})}
                page = _list_ok(server, token, merchant_id, params, session=s)
                pages.append((started, cursor_key, page["orders"], page["next_cursor"]))
                if page["next_cursor"] is None:
                    break
                assert len(page["orders"]) == 37, len(page["orders"])
                last = page["orders"][-1]
                cursor = page["next_cursor"]
                cursor_key = (_parse_us(last["placed_at"]), last["order_id"])
    finally:
        stop.set()
        thread.join(30)
    assert not writer_errors, writer_errors
    assert pages[-1][3] is None, "the list did not end"

    listed = [o for _, _, orders, _ in pages for o in orders]
    keys = [(_parse_us(o["placed_at"]), o["order_id"]) for o in listed]
    assert all(a > b for a, b in zip(keys, keys[1:])), "the pages are not strictly newest first"
    new_keys = {key for _, key in acked}
    assert set(keys) <= set(original_keys.values()) | new_keys, "an order nobody posted"
    listed_originals = [o["order_id"] for o in listed if o["order_id"] in original_keys]
    assert len(listed_originals) == len(set(listed_originals)), "an original listed twice"
    missing = set(original_keys) - set(listed_originals)
    assert not missing, f"{len(missing)} originals never listed, e.g. {sorted(missing)[:5]}"
    assert listed_originals == _newest_first(originals)
    by_id = {b["order_id"]: b for b in originals}
    for o in listed:
        if o["order_id"] in by_id:
            assert o["store_id"] == by_id[o["order_id"]]["store_id"], o

    # An order acknowledged before a page was asked for, whose key lies in the page's range,
    # is on that page (read-your-writes for lists).
    checked = 0
    for started, top, orders, next_cursor in pages:
        keys_on = {(_parse_us(o["placed_at"]), o["order_id"]) for o in orders}
        bottom = min(keys_on) if next_cursor else None
        for when, key in acked:
            if when < started and (top is None or key < top) and (bottom is None
                                                                  or key >= bottom):
                assert key in keys_on, f"order {key} acknowledged before the page is missing"
                checked += 1
    assert checked >= 5, f"only {checked} orders written while paging belonged on a later page"
    print(f"paged {len(pages)} pages while {len(acked)} orders arrived ({checked} checked)")

    # With nothing arriving any more: the default page size is 50, and a complete walk with the
    # largest pages lists exactly what was posted.
    everything = originals + [{"order_id": key[1], "placed_at": _z(
        EPOCH + dt.timedelta(microseconds=key[0]))} for _, key in acked]
    first = _list_ok(server, token, merchant_id)
    assert _ids(first["orders"]) == _newest_first(everything)[:50] and first["next_cursor"]
    assert _ids(_list_all(server, token, merchant_id, limit=500)) == _newest_first(everything)


# ---------------------------------------------------------------------------------------------
# order lists: filters


def test_list_filters(server, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    t0 = (_utc_now() - dt.timedelta(hours=50)).replace(microsecond=0)
    t1 = t0 + dt.timedelta(hours=5)
    plan = [
        ("before-from", t0 - dt.timedelta(microseconds=1), 1),
        ("at-from", t0, 1),
        ("at-from-b", t0, 2),
        ("half-second", t0 + dt.timedelta(microseconds=500000), 2),
        ("middle", t0 + dt.timedelta(hours=2), 1),
        ("middle-b", t0 + dt.timedelta(hours=2, minutes=1), 3),
        ("before-to", t1 - dt.timedelta(microseconds=1), 2),
        ("at-to", t1, 1),
        ("after-to", t1 + dt.timedelta(seconds=1), 2),
        ("much-later", t1 + dt.timedelta(hours=20), 3),
    ]
    bodies = [_order(i, at, store_id=s, offset_minutes=-300) for i, at, s in plan]
    for b in bodies:
        _post_ok(server, token, merchant_id, b)
    cancelled = {"at-from-b", "middle", "at-to", "much-later"}
    for order_id in sorted(cancelled):
        assert _cancel(server, token, merchant_id, order_id).status_code == 200

    def expect(frm=None, to=None, store=None, status=None):
        chosen = [b for b in bodies
                  if (frm is None or _parse_us(b["placed_at"]) >= _us(frm))
                  and (to is None or _parse_us(b["placed_at"]) < _us(to))
                  and (store is None or b["store_id"] == store)
                  and (status is None or (b["order_id"] in cancelled) == (status == "cancelled"))]
        return _newest_first(chosen)

    kathmandu = 345
    cases = [
        ({"from": _z(t0)}, expect(frm=t0)),
        ({"from": _rfc3339(t0, kathmandu)}, expect(frm=t0)),
        ({"to": _rfc3339(t1, -210)}, expect(to=t1)),
        ({"from": _z(t0), "to": _z(t1)}, expect(t0, t1)),
        ({"from": _z(t0 + dt.timedelta(microseconds=500000))},
         expect(frm=t0 + dt.timedelta(microseconds=500000))),
        ({"from": _z(t0), "to": _z(t0 + dt.timedelta(microseconds=500000))},
         ["at-from-b", "at-from"]),
        ({"store_id": "2"}, expect(store=2)),
        ({"store_id": "4"}, []),
        ({"status": "cancelled"}, expect(status="cancelled")),
        ({"status": "placed"}, expect(status="placed")),
        ({"from": _z(t0), "to": _z(t1), "store_id": "1", "status": "placed"},
         expect(t0, t1, 1, "placed")),
        ({"from": _z(t0), "to": _z(t1), "status": "cancelled"}, expect(t0, t1, None, "cancelled")),
    ]
    assert expect(t0, t1) == ["before-to", "middle-b", "middle", "half-second", "at-from-b",
                              "at-from"]
    assert expect(status="cancelled") == ["much-later", "at-to", "middle", "at-from-b"]
    for params, expected in cases:
        page = _list_ok(server, token, merchant_id, params)
        assert _ids(page["orders"]) == expected, params
        assert page["next_cursor"] is None
        for o in page["orders"]:
            assert o["status"] == ("cancelled" if o["order_id"] in cancelled else "placed")
        for limit in (1, 2):  # the filters hold on every page
            assert _ids(_list_all(server, token, merchant_id, params, limit)) == expected, \
                (params, limit)


# ---------------------------------------------------------------------------------------------
# order lists: validation, scope, tenancy


def _hex(text):
    return text.encode().hex()


LIST_VALIDATION_CASES = [
    # (id, query string, the field the 400 must name)
    ("limit-0", "limit=0", "limit"),
    ("limit-501", "limit=501", "limit"),
    ("limit-x", "limit=x", "limit"),
    ("limit-empty", "limit=", "limit"),
    ("limit-negative", "limit=-1", "limit"),
    ("limit-fraction", "limit=1.5", "limit"),
    ("limit-repeated", "limit=5&limit=6", "limit"),
    ("cursor-not-hex", "cursor=zz", "cursor"),
    ("cursor-odd-length", "cursor=abc", "cursor"),
    ("cursor-empty", "cursor=", "cursor"),
    ("cursor-nul", "cursor=00", "cursor"),
    ("cursor-too-long", "cursor=" + "ab" * 200, "cursor"),
    ("cursor-no-colon", "cursor=" + _hex("1700000000000000"), "cursor"),
    ("cursor-no-position", "cursor=" + _hex(":web-1"), "cursor"),
    ("cursor-no-order-id", "cursor=" + _hex("1700000000000000:"), "cursor"),
    ("cursor-bad-position", "cursor=" + _hex("17x0:web-1"), "cursor"),
    # positions no timestamp can have: a forged cursor is the client's error, never a 503
    ("cursor-int64-max", "cursor=" + _hex("9223372036854775807:web-1"), "cursor"),
    ("cursor-int64-min", "cursor=" + _hex("-9223372036854775808:web-1"), "cursor"),
    ("cursor-over-int64", "cursor=" + _hex("99999999999999999999:web-1"), "cursor"),
    ("from-no-offset", "from=2026-11-01T00:00:00", "from"),
    ("from-date", "from=2026-11-01", "from"),
    ("from-word", "from=yesterday", "from"),
    ("to-bad-date", "to=2026-02-30T00:00:00Z", "to"),
    ("store_id-0", "store_id=0", "store_id"),
    ("store_id-negative", "store_id=-3", "store_id"),
    ("store_id-abc", "store_id=abc", "store_id"),
    ("store_id-over-int64", "store_id=9223372036854775808", "store_id"),
    ("status-open", "status=open", "status"),
    ("status-capitalised", "status=Cancelled", "status"),
    ("status-empty", "status=", "status"),
    ("status-repeated", "status=placed&status=cancelled", "status"),
    ("unknown-parameter", "sort=asc", "sort"),
]


@pytest.mark.parametrize("query,field", [c[1:] for c in LIST_VALIDATION_CASES],
                         ids=[c[0] for c in LIST_VALIDATION_CASES])
def test_list_validation(server, make_token, merchant_id, query, field):
    token = _merchant(server, make_token, merchant_id)
    r = _list(server, token, merchant_id, query=query)
    body = _assert_validation(r, field)
    assert all(isinstance(e["message"], str) and e["message"] for e in body["errors"]), body


def test_list_parameters_at_their_limits_are_accepted(server, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    for n in range(3):
        _post_ok(server, token, merchant_id, _order(f"lim-{n}"))
    assert len(_list_ok(server, token, merchant_id, {"limit": "1"})["orders"]) == 1
    assert len(_list_ok(server, token, merchant_id, {"limit": "500"})["orders"]) == 3
    big = _list_ok(server, token, merchant_id, {"store_id": "9223372036854775807"})
    assert big["orders"] == []
    # The widest range of instants that render in RFC 3339 UTC (years 0000 to 9999).
    wide = {"from": "0001-01-01T00:00:00+23:59", "to": "9999-12-31T23:59:59.999999Z"}
    assert len(_list_ok(server, token, merchant_id, wide)["orders"]) == 3
    beyond = _list(server, token, merchant_id, query="to=9999-12-31T23:59:59.999999-23:59")
    _assert_validation(beyond, "to")  # year 10000 in UTC
    assert _list_ok(server, token, merchant_id, {"to": "1970-01-01T00:00:00Z"})["orders"] == []


def test_list_needs_orders_read_for_that_merchant(server, make_token, merchant_ids):
    mine, other = merchant_ids(), merchant_ids()
    _merchant(server, make_token, mine)
    _merchant(server, make_token, other)
    url = _orders_url(server, mine)
    no_read = make_token(scope="orders:write metrics:read merchants:admin", merchants=[mine])
    _assert_problem(requests.get(url, headers=headers(no_read), timeout=10), 403, "forbidden")
    other_tenant = make_token(scope=SCOPE, merchants=[other])
    _assert_problem(requests.get(url, headers=headers(other_tenant), timeout=10), 403,
                    "forbidden")
    r = requests.get(url, timeout=10)
    assert r.status_code == 401, r.text


def test_list_never_shows_another_merchants_orders(server, make_token, merchant_ids):
    a, b = merchant_ids(), merchant_ids()
    _merchant(server, make_token, a)
    _merchant(server, make_token, b)
    platform = make_token(scope=SCOPE, merchants="*")
    t = (_utc_now() - dt.timedelta(hours=30)).replace(microsecond=0)
    a_bodies = [_order(f"same-{n}", t + dt.timedelta(minutes=2 * n), store_id=1)
                for n in range(5)]
    b_bodies = [_order(f"same-{n}", t + dt.timedelta(minutes=2 * n + 1), store_id=9)
                for n in range(5)]
    b_bodies += [_order(f"b-only-{n}", t + dt.timedelta(minutes=n), store_id=1)
                 for n in range(5)]
    for body in a_bodies:
        _post_ok(server, platform, a, body)
    for body in b_bodies:
        _post_ok(server, platform, b, body)
    assert _cancel(server, platform, b, "same-0").status_code == 200

    for params in ({}, {"store_id": "1"}, {"status": "placed"}, {"status": "cancelled"}):
        got = _list_all(server, platform, a, params, limit=2)
        assert all(o["merchant_id"] == a for o in got)
        assert all(o["store_id"] == 1 and o["status"] == "placed" for o in got)
        expected = [] if params.get("status") == "cancelled" else _newest_first(a_bodies)
        assert _ids(got) == expected, params
    # A cursor from B's list positions A's list; it never brings B's orders along.
    b_page = _list_ok(server, platform, b, {"limit": "3"})
    cursor_key = _parse_us(b_page["orders"][-1]["placed_at"])
    got = _list_ok(server, platform, a, {"cursor": b_page["next_cursor"]})
    assert all(o["merchant_id"] == a for o in got["orders"])
    assert _ids(got["orders"]) == [i for i in _newest_first(a_bodies)
                                   if _key(next(x for x in a_bodies
                                                if x["order_id"] == i))[0] < cursor_key]


def test_link_header_leads_to_the_next_page_with_the_same_filters(server, make_token,
                                                                  merchant_id):
    """RFC 8288: each page that has a next one says where it is; following the links walks
    the same list as next_cursor does, filters kept."""
    token = _merchant(server, make_token, merchant_id)
    for n in range(5):
        _post_ok(server, token, merchant_id, _order(f"link-{n}"))
    url = f"{_orders_url(server, merchant_id)}?limit=2&status=placed"
    seen, pages = [], 0
    while url:
        r = requests.get(url, headers=headers(token), timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        seen += [o["order_id"] for o in body["orders"]]
        pages += 1
        link = r.links.get("next", {}).get("url")
        assert (link is None) == (body["next_cursor"] is None), (link, body["next_cursor"])
        if link:
            assert "limit=2" in link and "status=placed" in link and link.count("cursor=") == 1
            url = server.url + link
        else:
            url = None
    assert pages == 3 and sorted(seen) == sorted(f"link-{n}" for n in range(5))
