"""Orders, black box: POST /v1/merchants/{id}/orders (validation, the 201 body and the stored
rows, idempotency under concurrency, group commit and exactly-once rollups) and
GET /v1/merchants/{id}/orders/{order_id} (read-your-writes through the replica), plus the write
and read paths with Redis, the replica or the primary stopped under a running server.

Every merchant is created first (PUT, merchants:admin, currency EUR). Every test that stops a
dependency restarts it in a `finally` and waits until /readyz reports it healthy again, so that
no later test sees a degraded stack.
"""

import contextlib
import datetime as dt
import json
import random
import re
import threading
import time
import uuid

import pytest
import requests

from helpers import headers, wait_until

PROBLEM_BASE = "https://cangrejo.dev/problems/"
ORDER_FIELDS = {
    "merchant_id", "order_id", "store_id", "channel", "fulfillment", "status", "placed_at",
    "currency", "items", "gross_cents", "discount_cents", "net_cents", "tax_cents",
    "total_cents", "promo_code", "customer_ref", "delivery", "created_at",
}
ITEM_FIELDS = {"sku", "name", "quantity", "unit_price_cents"}
CHANNELS = {"online": 0, "pos": 1}
FULFILLMENTS = {"pickup": 0, "delivery": 1, "dine_in": 2}
UTC_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
GROUP_METRIC = "cangrejo_ingest_group_size"


# ---------------------------------------------------------------------------------------------
# helpers


def _utc_now():
    return dt.datetime.now(dt.timezone.utc)


def _rfc3339(moment, offset_minutes=60):
    """`moment` (aware) written in a fixed offset, e.g. 2026-11-19T07:31:07+01:00."""
    tz = dt.timezone(dt.timedelta(minutes=offset_minutes))
    return moment.astimezone(tz).isoformat()


def _utc_z(moment):
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _past(hours=26):
    """A whole second some hours ago (safely in the past, in a partition that exists)."""
    return (_utc_now() - dt.timedelta(hours=hours)).replace(microsecond=0)


def _order(order_id=None, **overrides):
    """A valid order; overrides replace top-level fields (value None removes the field)."""
    body = {
        "order_id": order_id or f"web-{uuid.uuid4().hex[:16]}",
        "store_id": 17,
        "channel": "online",
        "fulfillment": "delivery",
        "placed_at": _rfc3339(_past()),
        "currency": "EUR",
        "items": [{"sku": "PIZ-MARG-L", "name": "Margherita L", "quantity": 2,
                   "unit_price_cents": 1150}],
        "discount_cents": 300,
        "tax_cents": 192,
        "promo_code": "2X1TUESDAY",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def _merchant(server, make_token, merchant_id, scope="orders:write orders:read"):
    """Creates the merchant (EUR) and returns a token for it with `scope`."""
    admin = make_token(scope="merchants:admin", merchants=[merchant_id])
    r = requests.put(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(admin),
                     json={"name": "Trattoria Test", "timezone": "Europe/Madrid",
                           "currency": "EUR"}, timeout=10)
    assert r.status_code == 201, r.text
    return make_token(scope=scope, merchants=[merchant_id])


def _orders_url(server, merchant_id):
    return f"{server.url}/v1/merchants/{merchant_id}/orders"


def _post(server, token, merchant_id, body, session=None, timeout=10, **kwargs):
    http = session or requests
    return http.post(_orders_url(server, merchant_id), headers=headers(token), json=body,
                     timeout=timeout, **kwargs)


def _get_order(server, token, merchant_id, order_id, session=None, extra_headers=None):
    http = session or requests
    return http.get(f"{_orders_url(server, merchant_id)}/{order_id}",
                    headers=headers(token, extra_headers), timeout=10)


def _assert_problem(r, status, slug):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers.get("Content-Type", "").startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["type"] == PROBLEM_BASE + slug, body
    assert body["status"] == status, body
    assert "title" in body and "instance" in body, body
    return body


def _assert_validation(r, *fields):
    body = _assert_problem(r, 400, "validation-error")
    listed = [e["field"] for e in body.get("errors", [])]
    assert listed, body
    for e in body["errors"]:
        assert isinstance(e.get("message"), str) and e["message"], body
    for field in fields:
        assert field in listed, f"no error for {field!r} in {listed}: {body}"
    return body


def _db_one(stack, sql, *params):
    with contextlib.closing(stack.primary()) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def _stored_count(stack, merchant_id):
    """(rows in orders, rows in order_keys, sum of rollup orders) of the merchant."""
    rows = _db_one(stack, """
        SELECT (SELECT count(*) FROM orders WHERE merchant_id = %s),
               (SELECT count(*) FROM order_keys WHERE merchant_id = %s),
               (SELECT coalesce(sum(orders), 0) FROM sales_rollup_15m WHERE merchant_id = %s)
        """, merchant_id, merchant_id, merchant_id)
    return tuple(int(v) for v in rows[0])


def _expected_figures(body):
    gross = sum(i["quantity"] * i["unit_price_cents"] for i in body["items"])
    discount = body.get("discount_cents", 0)
    tax = body.get("tax_cents", 0)
    return {"gross_cents": gross, "discount_cents": discount, "net_cents": gross - discount,
            "tax_cents": tax, "total_cents": gross - discount + tax}


def _scrape_group_histogram(server):
    """(bucket le="1", _count) of cangrejo_ingest_group_size from /metrics."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    le1 = re.search(rf'^{GROUP_METRIC}_bucket{{le="1"}} (\d+)$', text, re.M)
    count = re.search(rf"^{GROUP_METRIC}_count (\d+)$", text, re.M)
    assert le1 and count, f"no {GROUP_METRIC} histogram in /metrics"
    return int(le1.group(1)), int(count.group(1))


def _readyz_checks(server):
    r = requests.get(server.url + "/readyz", timeout=5)
    return r.json()["checks"] if r.status_code == 200 else None


def _healthy(server, name, timeout=20):
    """Waits until /readyz is 200 and reports `name` (primary, replica, redis) ok."""
    def ok():
        checks = _readyz_checks(server)
        if not checks:
            return False
        if name == "replica":
            return all(r["ok"] for r in checks["replicas"])
        return checks[name]["ok"]
    return bool(wait_until(ok, timeout=timeout, interval=0.2))


@contextlib.contextmanager
def _stopped(stack, server, name):
    """Stops one dependency (primary, replica, redis) for the block; then starts it again and
    waits until the server reports it healthy (a failure to recover fails the test, but never
    hides an assertion error raised inside the block)."""
    getattr(stack, f"stop_{name}")()
    try:
        yield
    finally:
        getattr(stack, f"start_{name}")()
        recovered = _healthy(server, name)
    assert recovered, f"/readyz did not report {name} ok within 20 s of its restart"


def _concurrently(n, fn):
    """Runs fn(i) in n threads released together; returns the results in order of i."""
    barrier = threading.Barrier(n)
    results = [None] * n

    def run(i):
        try:
            barrier.wait(timeout=30)
            results[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - reported by the caller
            results[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "requests still running after 120 s"
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, f"{len(errors)} requests raised, first: {errors[0]!r}"
    return results


# ---------------------------------------------------------------------------------------------
# validation: one case per rule


def _set_item(field, value):
    def mutate(body):
        body["items"][0][field] = value
    return mutate


def _set(field, value):
    def mutate(body):
        body[field] = value
    return mutate


def _drop(field):
    def mutate(body):
        del body[field]
    return mutate


def _placed_in(minutes):
    def mutate(body):
        body["placed_at"] = _rfc3339(_utc_now() + dt.timedelta(minutes=minutes))
    return mutate


def _many_items(n):
    def mutate(body):
        body["items"] = [{"sku": f"SKU-{i}", "name": f"Item {i}", "quantity": 1,
                          "unit_price_cents": 100} for i in range(n)]
        body["discount_cents"] = 0
    return mutate


def _discount_over_gross(body):
    body["discount_cents"] = 2 * 1150 + 1


def _wrong_total(body):
    body["total_cents"] = 2 * 1150 - 300 + 192 + 1


def _overflow(body):
    body["items"][0]["quantity"] = 1000000
    body["items"][0]["unit_price_cents"] = 10**15
    body["discount_cents"] = 0


VALIDATION_CASES = [
    ("unknown-top-level-field", _set("colour", "red"), "colour"),
    ("unknown-item-field", _set_item("colour", "red"), "items[0].colour"),
    ("order_id-missing", _drop("order_id"), "order_id"),
    ("order_id-space", _set("order_id", "web 000123"), "order_id"),
    ("order_id-65-chars", _set("order_id", "o" * 65), "order_id"),
    ("order_id-empty", _set("order_id", ""), "order_id"),
    ("store_id-0", _set("store_id", 0), "store_id"),
    ("store_id-negative", _set("store_id", -1), "store_id"),
    ("store_id-string", _set("store_id", "17"), "store_id"),
    ("store_id-fraction", _set("store_id", 17.5), "store_id"),
    ("channel-web", _set("channel", "web"), "channel"),
    ("fulfillment-drive", _set("fulfillment", "drive"), "fulfillment"),
    ("placed_at-no-offset", _set("placed_at", "2026-11-21T12:31:07"), "placed_at"),
    ("placed_at-bad-date", _set("placed_at", "2026-02-30T10:00:00Z"), "placed_at"),
    ("placed_at-10-min-ahead", _placed_in(10), "placed_at"),
    ("currency-USD", _set("currency", "USD"), "currency"),
    ("items-missing", _drop("items"), "items"),
    ("items-empty", _set("items", []), "items"),
    ("items-201", _many_items(201), "items"),
    ("quantity-0", _set_item("quantity", 0), "items[0].quantity"),
    ("quantity-negative", _set_item("quantity", -1), "items[0].quantity"),
    ("quantity-fraction", _set_item("quantity", 1.5), "items[0].quantity"),
    ("unit_price-negative", _set_item("unit_price_cents", -1), "items[0].unit_price_cents"),
    ("sku-empty", _set_item("sku", ""), "items[0].sku"),
    ("sku-65-chars", _set_item("sku", "S" * 65), "items[0].sku"),
    ("discount-over-gross", _discount_over_gross, "discount_cents"),
    ("total-wrong", _wrong_total, "total_cents"),
]


@pytest.mark.parametrize("mutate,field", [c[1:] for c in VALIDATION_CASES],
                         ids=[c[0] for c in VALIDATION_CASES])
def test_post_order_validation_rule(server, stack, make_token, merchant_id, mutate, field):
    token = _merchant(server, make_token, merchant_id)
    body = _order()
    mutate(body)
    r = _post(server, token, merchant_id, body)
    _assert_validation(r, field)
    assert _stored_count(stack, merchant_id) == (0, 0, 0)


def test_post_order_amount_overflow_is_400_not_500(server, stack, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    body = _order()
    _overflow(body)  # 10^6 x 10^15 = 10^21 > int64
    r = _post(server, token, merchant_id, body)
    body = _assert_validation(r)
    assert any(e["field"].startswith("items") for e in body["errors"]), body
    assert _stored_count(stack, merchant_id) == (0, 0, 0)


def _placed_long_ago(body):
    body["placed_at"] = "2019-03-10T23:59:59.500-08:00"  # late POS data, no partition yet


ACCEPTED_CASES = [
    ("placed_at-4-min-ahead", _placed_in(4), None),
    ("placed_at-far-in-the-past", _placed_long_ago, "2019-03-11T07:59:59.500Z"),
    ("items-200", _many_items(200), None),
    ("total-right", _set("total_cents", 2 * 1150 - 300 + 192), None),
    ("order_id-64-chars", _set("order_id", "o" * 64), None),
    ("sku-64-chars", _set_item("sku", "S" * 64), None),
]


@pytest.mark.parametrize("mutate,placed_at", [c[1:] for c in ACCEPTED_CASES],
                         ids=[c[0] for c in ACCEPTED_CASES])
def test_post_order_accepted_at_the_limit(server, stack, make_token, merchant_id, mutate,
                                          placed_at):
    token = _merchant(server, make_token, merchant_id)
    body = _order()
    mutate(body)
    r = _post(server, token, merchant_id, body)
    assert r.status_code == 201, r.text
    got = r.json()
    assert got["order_id"] == body["order_id"]
    assert got["items"] == body["items"]
    for key, value in _expected_figures(body).items():
        assert got[key] == value, (key, got)
    if placed_at:
        assert got["placed_at"] == placed_at
    assert _stored_count(stack, merchant_id) == (1, 1, 1)
    again = _get_order(server, token, merchant_id, body["order_id"])
    assert again.status_code == 200 and again.json() == got, again.text


def test_post_order_lists_every_error_at_once(server, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    body = _order(store_id=0, channel="web", currency="USD", colour="red")
    body["items"][0]["quantity"] = 0
    body["items"].append({"sku": "", "name": "Empty sku", "quantity": 1,
                          "unit_price_cents": 100})
    r = _post(server, token, merchant_id, body)
    fields = ["store_id", "channel", "currency", "colour", "items[0].quantity", "items[1].sku"]
    problem = _assert_validation(r, *fields)
    assert len(problem["errors"]) >= len(fields), problem


def test_post_order_body_not_json_is_malformed_json(server, stack, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    r = requests.post(_orders_url(server, merchant_id), data=b'{"order_id": "a", "store_id": ',
                      headers=headers(token, {"Content-Type": "application/json"}), timeout=10)
    _assert_problem(r, 400, "malformed-json")
    assert _stored_count(stack, merchant_id) == (0, 0, 0)


def test_post_order_wrong_content_type_is_415(server, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    r = requests.post(_orders_url(server, merchant_id), data=json.dumps(_order()).encode(),
                      headers=headers(token, {"Content-Type": "text/plain"}), timeout=10)
    _assert_problem(r, 415, "unsupported-media-type")


def _padded_body(size):
    """A JSON order of exactly `size` bytes (with an unknown `pad` field)."""
    body = _order()
    body["pad"] = ""
    base = len(json.dumps(body).encode())
    body["pad"] = "x" * (size - base)
    data = json.dumps(body).encode()
    assert len(data) == size
    return data


def test_post_order_body_over_256_kib_is_413(server, stack, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    h = headers(token, {"Content-Type": "application/json"})
    r = requests.post(_orders_url(server, merchant_id), data=_padded_body(256 * 1024 + 1),
                      headers=h, timeout=10)
    _assert_problem(r, 413, "payload-too-large")
    # Exactly at the limit the body is read and validated (the pad field is unknown).
    r = requests.post(_orders_url(server, merchant_id), data=_padded_body(256 * 1024),
                      headers=h, timeout=10)
    _assert_validation(r, "pad")
    assert _stored_count(stack, merchant_id) == (0, 0, 0)


def test_post_order_chunked_body_over_256_kib_is_413(server, stack, make_token, merchant_id):
    """Without a Content-Length the limit is enforced while the body streams in."""
    token = _merchant(server, make_token, merchant_id)
    data = _padded_body(300 * 1024)

    def chunks():
        for i in range(0, len(data), 16 * 1024):
            yield data[i:i + 16 * 1024]
    try:
        r = requests.post(_orders_url(server, merchant_id), data=chunks(), timeout=10,
                          headers=headers(token, {"Content-Type": "application/json"}))
    except requests.ConnectionError:
        r = None  # the server may close the connection after answering early
    if r is not None:
        _assert_problem(r, 413, "payload-too-large")
    assert requests.get(server.url + "/livez", timeout=5).status_code == 200
    assert _stored_count(stack, merchant_id) == (0, 0, 0)


def test_post_order_unknown_merchant_is_404(server, make_token, merchant_id):
    token = make_token(scope="orders:write", merchants=[merchant_id])  # never created
    r = _post(server, token, merchant_id, _order())
    _assert_problem(r, 404, "not-found")


def test_post_order_without_orders_write_scope_is_403(server, stack, make_token, merchant_id):
    _merchant(server, make_token, merchant_id)
    token = make_token(scope="orders:read metrics:read merchants:admin", merchants=[merchant_id])
    r = _post(server, token, merchant_id, _order())
    _assert_problem(r, 403, "forbidden")
    assert _stored_count(stack, merchant_id) == (0, 0, 0)


def test_post_order_token_for_another_merchant_is_403(server, stack, make_token, merchant_ids):
    mine, other = merchant_ids(), merchant_ids()
    _merchant(server, make_token, mine)
    _merchant(server, make_token, other)
    token = make_token(scope="orders:write orders:read", merchants=[other])
    r = _post(server, token, mine, _order())
    _assert_problem(r, 403, "forbidden")
    assert _stored_count(stack, mine) == (0, 0, 0)


# ---------------------------------------------------------------------------------------------
# the 201 response and the stored rows


def test_post_order_201_body_location_and_stored_rows(server, stack, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    placed = _past(hours=50)
    body = _order(
        order_id="web-000123",
        store_id=17,
        channel="online",
        fulfillment="delivery",
        placed_at=_rfc3339(placed, offset_minutes=60),
        items=[
            {"sku": "PIZ-MARG-L", "name": "Margherita L", "quantity": 2,
             "unit_price_cents": 1150},
            {"sku": "DRK-COLA-33", "name": 'Cola "zero" 33cl, ñ', "quantity": 3,
             "unit_price_cents": 250},
            {"sku": "DES-TIRA", "name": "Tiramisù", "quantity": 1, "unit_price_cents": 0},
        ],
        discount_cents=300,
        tax_cents=192,
        promo_code="2X1TUESDAY",
        customer={"ref": "c-88121", "name": "Ada Lovelace", "email": "ada@example.com",
                  "phone": "+34 600 000 000", "address": "Calle Mayor 1, Madrid"},
    )
    before = _utc_now().replace(microsecond=0) - dt.timedelta(seconds=2)
    r = _post(server, token, merchant_id, body)
    after = _utc_now() + dt.timedelta(seconds=2)
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"/v1/merchants/{merchant_id}/orders/web-000123"
    assert "Idempotent-Replayed" not in r.headers
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    got = r.json()
    assert set(got) == ORDER_FIELDS, set(got) ^ ORDER_FIELDS
    assert "customer" not in got  # no pii:read
    assert "Ada" not in r.text and "ada@example.com" not in r.text

    gross = 2 * 1150 + 3 * 250 + 0
    assert got["merchant_id"] == merchant_id
    assert got["order_id"] == "web-000123"
    assert got["store_id"] == 17
    assert got["channel"] == "online"
    assert got["fulfillment"] == "delivery"
    assert got["status"] == "placed"
    assert got["placed_at"] == _utc_z(placed)
    assert got["currency"] == "EUR"
    assert got["items"] == body["items"]
    for item in got["items"]:
        assert set(item) == ITEM_FIELDS
    assert got["gross_cents"] == gross
    assert got["discount_cents"] == 300
    assert got["net_cents"] == gross - 300
    assert got["tax_cents"] == 192
    assert got["total_cents"] == gross - 300 + 192
    assert got["promo_code"] == "2X1TUESDAY"
    assert got["customer_ref"] == "c-88121"
    assert got["delivery"] is None
    assert UTC_RE.match(got["created_at"]), got["created_at"]
    created = dt.datetime.strptime(got["created_at"][:19], "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=dt.timezone.utc)
    assert before <= created <= after, (before, created, after)

    rows = _db_one(stack, """
        SELECT store_id, channel, fulfillment, status, placed_at, currency, gross_cents,
               discount_cents, net_cents, tax_cents, total_cents, items_sold, promo_code,
               customer_ref, cancelled_at
        FROM orders WHERE merchant_id = %s AND order_id = %s""", merchant_id, "web-000123")
    assert rows == [(17, CHANNELS["online"], FULFILLMENTS["delivery"], 0, placed, "EUR", gross,
                     300, gross - 300, 192, gross - 300 + 192, 6, "2X1TUESDAY", "c-88121",
                     None)], rows
    items = _db_one(stack, """
        SELECT line_no, sku, name, quantity, unit_price_cents, placed_at
        FROM order_items WHERE merchant_id = %s AND order_id = %s ORDER BY line_no""",
                    merchant_id, "web-000123")
    assert items == [(k, it["sku"], it["name"], it["quantity"], it["unit_price_cents"], placed)
                     for k, it in enumerate(body["items"])], items
    keys = _db_one(stack, """
        SELECT placed_at, length(content_hash) FROM order_keys
        WHERE merchant_id = %s AND order_id = %s""", merchant_id, "web-000123")
    assert keys == [(placed, 32)], keys
    rollup = _db_one(stack, """
        SELECT bucket, store_id, channel, fulfillment, orders, cancelled_orders, items_sold,
               gross_cents, discount_cents, net_cents, tax_cents, total_cents
        FROM sales_rollup_15m WHERE merchant_id = %s""", merchant_id)
    bucket = placed.replace(minute=placed.minute - placed.minute % 15, second=0)
    assert rollup == [(bucket, 17, 0, 1, 1, 0, 6, gross, 300, gross - 300, 192,
                       gross - 300 + 192)], rollup


def test_post_order_defaults_discount_tax_promo_customer(server, stack, make_token,
                                                         merchant_id):
    token = _merchant(server, make_token, merchant_id)
    body = _order(channel="pos", fulfillment="dine_in", discount_cents=None, tax_cents=None,
                  promo_code=None)
    r = _post(server, token, merchant_id, body)
    assert r.status_code == 201, r.text
    got = r.json()
    assert set(got) == ORDER_FIELDS
    assert (got["channel"], got["fulfillment"]) == ("pos", "dine_in")
    assert got["gross_cents"] == 2300
    assert got["discount_cents"] == 0
    assert got["tax_cents"] == 0
    assert got["net_cents"] == 2300
    assert got["total_cents"] == 2300
    assert got["promo_code"] is None and got["customer_ref"] is None
    rows = _db_one(stack, """
        SELECT channel, fulfillment, discount_cents, tax_cents, total_cents, promo_code,
               customer_ref FROM orders WHERE merchant_id = %s""", merchant_id)
    assert rows == [(1, 2, 0, 0, 2300, None, None)], rows


# ---------------------------------------------------------------------------------------------
# idempotency


def test_same_order_twice_is_201_then_200_replayed_with_same_body(server, stack, make_token,
                                                                  merchant_id):
    token = _merchant(server, make_token, merchant_id)
    body = _order()
    first = _post(server, token, merchant_id, body)
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    second = _post(server, token, merchant_id, body)
    assert second.status_code == 200, second.text
    assert second.headers.get("Idempotent-Replayed") == "true", second.headers
    assert second.json() == first.json()
    assert _stored_count(stack, merchant_id) == (1, 1, 1)


def test_same_order_id_with_other_content_is_409(server, stack, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    body = _order()
    first = _post(server, token, merchant_id, body)
    assert first.status_code == 201, first.text
    changed = json.loads(json.dumps(body))
    changed["items"][0]["quantity"] = 3
    r = _post(server, token, merchant_id, changed)
    _assert_problem(r, 409, "conflict")
    assert "Idempotent-Replayed" not in r.headers
    stored = _get_order(server, token, merchant_id, body["order_id"])
    assert stored.status_code == 200 and stored.json() == first.json()
    assert _stored_count(stack, merchant_id) == (1, 1, 1)


def test_replay_with_total_cents_or_other_offset_is_same_content(server, stack, make_token,
                                                                  merchant_id):
    token = _merchant(server, make_token, merchant_id)
    placed = _past()
    body = _order(placed_at=_rfc3339(placed, 60))
    first = _post(server, token, merchant_id, body)
    assert first.status_code == 201, first.text
    with_total = dict(body, total_cents=first.json()["total_cents"])
    r = _post(server, token, merchant_id, with_total)
    assert r.status_code == 200, r.text
    assert r.headers.get("Idempotent-Replayed") == "true"
    assert r.json() == first.json()
    # The same instant written with another offset is the same canonical order.
    other_offset = dict(body, placed_at=_rfc3339(placed, -300))
    r = _post(server, token, merchant_id, other_offset)
    assert r.status_code == 200, r.text
    assert r.json() == first.json()
    assert _stored_count(stack, merchant_id) == (1, 1, 1)


def test_order_id_is_unique_per_merchant_only(server, stack, make_token, merchant_ids):
    """The same order_id (with every allowed punctuation) for two merchants: two orders."""
    a, b = merchant_ids(), merchant_ids()
    token = make_token(scope="merchants:admin orders:write orders:read", merchants=[a, b])
    _merchant(server, make_token, a)
    _merchant(server, make_token, b)
    body = _order("POS-17:2026.11_21-0001")
    ra = _post(server, token, a, body)
    rb = _post(server, token, b, body)
    assert (ra.status_code, rb.status_code) == (201, 201), (ra.text, rb.text)
    assert ra.json()["merchant_id"] == a and rb.json()["merchant_id"] == b
    for m, created in ((a, ra), (b, rb)):
        g = _get_order(server, token, m, body["order_id"])
        assert g.status_code == 200 and g.json() == created.json(), g.text
        assert _stored_count(stack, m) == (1, 1, 1)


def test_50_concurrent_identical_posts_store_and_count_once(server, stack, make_token,
                                                            merchant_id):
    token = _merchant(server, make_token, merchant_id)
    body = _order()
    sessions = [requests.Session() for _ in range(50)]
    try:
        responses = _concurrently(50, lambda i: _post(server, token, merchant_id, body,
                                                      session=sessions[i], timeout=30))
    finally:
        for s in sessions:
            s.close()
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 49 + [201], (
        f"statuses {statuses}; bodies of the others: "
        f"{[r.text for r in responses if r.status_code not in (200, 201)][:3]}")
    created = next(r for r in responses if r.status_code == 201)
    for r in responses:
        if r.status_code == 200:
            assert r.headers.get("Idempotent-Replayed") == "true", r.headers
        assert r.json() == created.json()
    assert _stored_count(stack, merchant_id) == (1, 1, 1)
    items = _db_one(stack, "SELECT count(*) FROM order_items WHERE merchant_id = %s",
                    merchant_id)
    assert items == [(1,)]


def test_50_concurrent_posts_same_order_id_other_content(server, stack, make_token,
                                                         merchant_id):
    token = _merchant(server, make_token, merchant_id)
    order_id = f"web-{uuid.uuid4().hex[:16]}"
    bodies = []
    for i in range(50):
        b = _order(order_id, discount_cents=0)
        b["items"][0]["quantity"] = i + 1
        bodies.append(b)
    sessions = [requests.Session() for _ in range(50)]
    try:
        responses = _concurrently(50, lambda i: _post(server, token, merchant_id, bodies[i],
                                                      session=sessions[i], timeout=30))
    finally:
        for s in sessions:
            s.close()
    statuses = [r.status_code for r in responses]
    assert all(s < 500 for s in statuses), (
        f"5xx among {sorted(statuses)}: "
        f"{[r.text for r in responses if r.status_code >= 500][:3]}")
    assert statuses.count(201) == 1, sorted(statuses)
    assert set(statuses) <= {201, 200, 409}, sorted(statuses)
    winner = statuses.index(201)
    for i, r in enumerate(responses):
        if r.status_code == 409:
            _assert_problem(r, 409, "conflict")
        elif r.status_code == 200:  # only possible for the winner's own content
            assert r.json() == responses[winner].json()
    assert _stored_count(stack, merchant_id) == (1, 1, 1)
    quantity = _db_one(stack, "SELECT quantity FROM order_items WHERE merchant_id = %s",
                       merchant_id)
    assert quantity == [(winner + 1,)], (quantity, winner)


# ---------------------------------------------------------------------------------------------
# group commit and exactly-once rollups


def test_group_commit_64_writers_store_everything_once_and_rollups_add_up(
        server, stack, make_token, merchant_ids):
    writers, per_writer = 64, 10
    merchants = [merchant_ids(), merchant_ids()]
    tokens = {m: _merchant(server, make_token, m) for m in merchants}
    rng = random.Random(20261121)
    base = _past(hours=30).replace(minute=0, second=0)
    plan = []  # (merchant, body) per writer
    for w in range(writers):
        batch = []
        for k in range(per_writer):
            items = [{"sku": f"SKU-{rng.randint(1, 40)}", "name": "Thing",
                      "quantity": rng.randint(1, 5), "unit_price_cents": rng.randint(0, 5000)}
                     for _ in range(rng.randint(1, 4))]
            gross = sum(i["quantity"] * i["unit_price_cents"] for i in items)
            placed = base + dt.timedelta(seconds=rng.randint(0, 4 * 3600 - 1))
            batch.append((merchants[w % 2], _order(
                f"gc-{w}-{k}", store_id=rng.randint(1, 3), channel=rng.choice(list(CHANNELS)),
                fulfillment=rng.choice(list(FULFILLMENTS)),
                placed_at=_rfc3339(placed, rng.choice([0, 60, -300, 330])), items=items,
                discount_cents=rng.randint(0, gross), tax_cents=rng.randint(0, 500),
                promo_code=None)))
        plan.append(batch)

    le1_before, count_before = _scrape_group_histogram(server)

    def write(w):
        results = []
        with requests.Session() as s:
            for merchant, body in plan[w]:
                r = _post(server, tokens[merchant], merchant, body, session=s, timeout=30)
                results.append((r.status_code, r.text[:300]))
        return results
    outcome = _concurrently(writers, write)
    failures = [res for batch in outcome for res in batch if res[0] != 201]
    assert not failures, f"{len(failures)} of {writers * per_writer} not 201, e.g. {failures[:3]}"

    le1_after, count_after = _scrape_group_histogram(server)
    groups = count_after - count_before
    singles = le1_after - le1_before
    assert groups >= 1 and groups - singles >= 1, (
        f"no commit group larger than one order: {groups} groups, {singles} of size 1")

    for merchant in merchants:
        posted = [b for batch in plan for m, b in batch if m == merchant]
        stored = _db_one(stack, """
            SELECT order_id, count(*) FROM orders WHERE merchant_id = %s GROUP BY order_id""",
                         merchant)
        assert sorted(stored) == sorted((b["order_id"], 1) for b in posted)
        n_items = _db_one(stack, "SELECT count(*) FROM order_items WHERE merchant_id = %s",
                          merchant)
        assert n_items == [(sum(len(b["items"]) for b in posted),)]

        expected = {}
        for b in posted:
            f = _expected_figures(b)
            placed = dt.datetime.fromisoformat(b["placed_at"])
            bucket = int(placed.timestamp()) // 900 * 900
            key = (bucket, b["store_id"], CHANNELS[b["channel"]],
                   FULFILLMENTS[b["fulfillment"]])
            row = expected.setdefault(key, [0] * 7)
            figures = [1, sum(i["quantity"] for i in b["items"]), f["gross_cents"],
                       f["discount_cents"], f["net_cents"], f["tax_cents"], f["total_cents"]]
            for k, v in enumerate(figures):
                row[k] += v
        rows = _db_one(stack, """
            SELECT extract(epoch FROM bucket)::bigint, store_id, channel, fulfillment, orders,
                   items_sold, gross_cents, discount_cents, net_cents, tax_cents, total_cents,
                   cancelled_orders
            FROM sales_rollup_15m WHERE merchant_id = %s""", merchant)
        assert all(r[11] == 0 for r in rows)
        got = {tuple(r[:4]): list(r[4:11]) for r in rows}
        assert got == expected
        totals = [sum(v[k] for v in expected.values()) for k in range(7)]
        assert totals[0] == len(posted)


# ---------------------------------------------------------------------------------------------
# GET and read-your-writes


def test_read_your_writes_200_orders_mostly_from_the_replica(server, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    get_ids = {}
    with requests.Session() as s:
        for n in range(200):
            body = _order(f"ryw-{n}")
            created = _post(server, token, merchant_id, body, session=s)
            assert created.status_code == 201, created.text
            request_id = f"ryw-{uuid.uuid4().hex}"
            got = _get_order(server, token, merchant_id, body["order_id"], session=s,
                             extra_headers={"X-Request-Id": request_id})
            assert got.status_code == 200, (n, got.text)
            assert got.json() == created.json(), n
            assert got.headers.get("X-Request-Id") == request_id
            get_ids[request_id] = n

    def logged():
        lines = [ln for ln in server.log_lines_json() if ln.get("request_id") in get_ids]
        return lines if len(lines) == len(get_ids) else None
    lines = wait_until(logged, timeout=5)
    assert lines, "not every GET has its access log line"
    roles = [ln.get("db") for ln in lines]
    assert set(roles) <= {"replica", "primary"}, set(roles)
    replica = roles.count("replica")
    print(f"read-your-writes: {replica} of {len(roles)} GETs served by the replica")
    assert replica >= 1, "no GET right after a POST was served by the replica"


def test_get_unknown_order_is_404(server, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    r = _get_order(server, token, merchant_id, "no-such-order")
    _assert_problem(r, 404, "not-found")


def test_get_order_with_only_orders_write_is_403(server, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id, scope="orders:write")
    body = _order()
    assert _post(server, token, merchant_id, body).status_code == 201
    r = _get_order(server, token, merchant_id, body["order_id"])
    _assert_problem(r, 403, "forbidden")


# ---------------------------------------------------------------------------------------------
# resilience: Redis, replica, primary stopped under the running server


def _timed(fn):
    started = time.monotonic()
    r = fn()
    return r, time.monotonic() - started


def test_orders_work_with_redis_stopped(server, stack, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    with _stopped(stack, server, "redis"):
        for n in range(3):
            body = _order(f"no-redis-{n}")
            r, took = _timed(lambda: _post(server, token, merchant_id, body))
            assert r.status_code == 201, r.text
            assert took < 2, f"POST took {took:.2f} s with Redis down"
            g, took = _timed(lambda: _get_order(server, token, merchant_id, body["order_id"]))
            assert g.status_code == 200, g.text
            assert took < 2, f"GET took {took:.2f} s with Redis down"
            assert g.json() == r.json()
        replay = _post(server, token, merchant_id, body)
        assert replay.status_code == 200 and replay.json() == r.json(), replay.text


def _write_and_wait_for_replica(server, stack, token, merchant_id, order_id):
    """POSTs an order, waits until the replica has replayed it, and reads it a few times so
    that the server has seen the replica's replay position pass it (idle replica
    connections stay in the pool). Returns the 201 response."""
    created = _post(server, token, merchant_id, _order(order_id))
    assert created.status_code == 201, created.text

    def replica_has_it():
        with contextlib.closing(stack.replica()) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM orders WHERE merchant_id = %s AND order_id = %s",
                        (merchant_id, order_id))
            return cur.fetchone()[0] == 1
    assert wait_until(replica_has_it, timeout=10), "the replica never replayed the order"
    for _ in range(5):
        r = _get_order(server, token, merchant_id, order_id)
        assert r.status_code == 200 and r.json() == created.json(), r.text
    return created


def test_get_order_with_replica_stopped_is_served_by_the_primary(server, stack, make_token,
                                                                  merchant_id):
    token = _merchant(server, make_token, merchant_id)
    created = _write_and_wait_for_replica(server, stack, token, merchant_id, "before-stop")
    request_ids = []
    with _stopped(stack, server, "replica"):
        statuses = []
        for _ in range(12):
            request_id = f"replica-down-{uuid.uuid4().hex}"
            request_ids.append(request_id)
            g, took = _timed(lambda: _get_order(server, token, merchant_id, "before-stop",
                                                extra_headers={"X-Request-Id": request_id}))
            statuses.append(g.status_code)
            assert took < 3, f"GET took {took:.2f} s with the replica down"
            if g.status_code == 200:
                assert g.json() == created.json()
        assert statuses == [200] * 12, (
            f"12 sequential GET /v1/merchants/{merchant_id}/orders/before-stop (an order the "
            f"replica had replayed) right after stopping the replica answered {statuses}; "
            f"last body: {g.text}")
    roles = {ln.get("request_id"): ln.get("db") for ln in server.log_lines_json()
             if ln.get("request_id") in request_ids}
    assert set(roles.values()) == {"primary"}, roles


def test_post_and_get_order_with_replica_stopped(server, stack, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    with _stopped(stack, server, "replica"):
        body = _order("while-replica-down")
        r, took = _timed(lambda: _post(server, token, merchant_id, body))
        assert r.status_code == 201, r.text
        assert took < 3, f"POST took {took:.2f} s with the replica down"
        g = _get_order(server, token, merchant_id, body["order_id"])
        assert g.status_code == 200, g.text
        assert g.json() == r.json()
    assert _stored_count(stack, merchant_id) == (1, 1, 1)


def test_post_503_with_retry_after_while_primary_down_then_recovers(server, stack, make_token,
                                                                     merchant_id):
    token = _merchant(server, make_token, merchant_id)
    first = _post(server, token, merchant_id, _order("before-primary-stop"))
    assert first.status_code == 201, first.text
    pid = server.pid
    body = _order("during-outage")

    stack.stop_primary()
    try:
        seen = []
        for n in range(3):
            try:
                r, took = _timed(lambda: _post(server, token, merchant_id, body, timeout=10))
            except requests.Timeout:
                pytest.fail(f"POST #{n} with the primary down did not answer within 10 s")
            seen.append((r.status_code, round(took, 2)))
            assert took < 5, f"POST #{n} took {took:.2f} s with the primary down ({seen})"
            _assert_problem(r, 503, "service-unavailable")
            retry_after = r.headers.get("Retry-After")
            assert retry_after and retry_after.isdigit() and int(retry_after) >= 1, r.headers
            if n == 1:
                time.sleep(3.2)  # past any cached merchant lookup
    finally:
        stack.start_primary()

    deadline = time.monotonic() + 20
    last = None
    while time.monotonic() < deadline:
        try:
            last = _post(server, token, merchant_id, body, timeout=10)
        except requests.RequestException as e:
            last = e
        if isinstance(last, requests.Response) and last.status_code != 503:
            break
        time.sleep(0.25)
    assert isinstance(last, requests.Response), f"POST failed after the restart: {last!r}"
    # Nothing was stored during the outage, so the retry is the first write of this order.
    assert last.status_code == 201, (last.status_code, last.text)
    assert server.running and server.pid == pid, "the server was restarted"
    nxt = _post(server, token, merchant_id, _order("after-primary-start"))
    assert nxt.status_code == 201, nxt.text
    assert _stored_count(stack, merchant_id) == (3, 3, 3)
    assert _healthy(server, "primary"), "/readyz not ready again after the primary restart"
