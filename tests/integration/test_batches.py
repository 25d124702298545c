"""Order batches, black box: POST /v1/merchants/{id}/order-batches.

A POS upload as `{"orders": [...]}` (application/json) or one order per line
(application/x-ndjson): valid orders are stored even when others are rejected, the answer is
`{"accepted", "duplicates", "rejected": [{"index", "order_id", "errors": [{"field",
"message"}]}]}`; at most 10,000 orders (413, nothing stored) and 32 MiB; a batch streams
through the server without being held whole (RSS check on a ~30 MiB upload); an
`Idempotency-Key` makes the whole request replayable (replay, 422 for another body, 409 while
the first request with the key runs, keys per merchant); and the sales metrics count exactly
the accepted orders.

Every merchant is created first (PUT, merchants:admin, currency EUR).
"""

import contextlib
import datetime as dt
import http.client
import json
import os
import socket
import threading
import time
import uuid

import pytest
import requests

from helpers import free_port, headers, sanitizer_reports, wait_until

PROBLEM_BASE = "https://cangrejo.dev/problems/"
RESULT_KEYS = {"accepted", "duplicates", "rejected"}
MAX_ORDERS = 10000
MAX_BODY = 32 * 1024 * 1024
JSON_CT = "application/json"
NDJSON_CT = "application/x-ndjson"


# ---------------------------------------------------------------------------------------------
# helpers


def _utc_now():
    return dt.datetime.now(dt.timezone.utc)


def _past(hours=26):
    """A whole second some hours ago (safely in the past)."""
    return (_utc_now() - dt.timedelta(hours=hours)).replace(microsecond=0)


def _rfc3339(moment, offset_minutes=60):
    return moment.astimezone(dt.timezone(dt.timedelta(minutes=offset_minutes))).isoformat()


PLACED = _rfc3339(_past())


def _order(order_id=None, **overrides):
    """A valid POS order (net 300, tax 30); overrides replace fields (None removes one)."""
    body = {
        "order_id": order_id or f"pos-{uuid.uuid4().hex[:16]}",
        "store_id": 3,
        "channel": "pos",
        "fulfillment": "dine_in",
        "placed_at": PLACED,
        "currency": "EUR",
        "items": [{"sku": "CAF-SOLO", "name": "Café solo", "quantity": 2,
                   "unit_price_cents": 150}],
        "discount_cents": 0,
        "tax_cents": 30,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def _net(order):
    return (sum(i["quantity"] * i["unit_price_cents"] for i in order["items"])
            - order.get("discount_cents", 0))


def _with_item(order, **item_overrides):
    """A copy of `order` whose first item has the overrides."""
    changed = json.loads(json.dumps(order))
    changed["items"][0].update(item_overrides)
    return changed


def _merchant(server, make_token, merchant_id, scope="orders:write orders:read"):
    """Creates the merchant (EUR) and returns a token for it with `scope`."""
    admin = make_token(scope="merchants:admin", merchants=[merchant_id])
    r = requests.put(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(admin),
                     json={"name": "Bar Test", "timezone": "Europe/Madrid", "currency": "EUR"},
                     timeout=10)
    assert r.status_code == 201, r.text
    return make_token(scope=scope, merchants=[merchant_id])


def _batch_path(merchant_id):
    return f"/v1/merchants/{merchant_id}/order-batches"


def _json_body(orders):
    return json.dumps({"orders": orders}).encode()


def _ndjson_body(orders):
    return b"".join(json.dumps(o).encode() + b"\n" for o in orders)


def _post_raw(server, token, merchant_id, data, content_type=JSON_CT, extra=None, timeout=60):
    h = {"Content-Type": content_type} if content_type else {}
    h.update(extra or {})
    return requests.post(server.url + _batch_path(merchant_id), data=data,
                         headers=headers(token, h), timeout=timeout)


def _post_batch(server, token, merchant_id, orders, fmt="json", extra=None, timeout=60):
    if fmt == "json":
        return _post_raw(server, token, merchant_id, _json_body(orders), JSON_CT, extra, timeout)
    return _post_raw(server, token, merchant_id, _ndjson_body(orders), NDJSON_CT, extra, timeout)


def _result(r):
    """The 200 batch result, checked for shape and order of `rejected`."""
    assert r.status_code == 200, (r.status_code, r.text[:2000])
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == RESULT_KEYS, body
    indexes = [e["index"] for e in body["rejected"]]
    assert indexes == sorted(indexes), f"rejected not sorted by index: {indexes}"
    for e in body["rejected"]:
        assert set(e) == {"index", "order_id", "errors"}, e
        assert e["errors"], e
        for err in e["errors"]:
            assert set(err) == {"field", "message"}, e
            assert isinstance(err["field"], str), e
            assert isinstance(err["message"], str) and err["message"], e
    return body


def _rejected_map(body):
    """{index: (order_id, {fields})} of a batch result."""
    return {e["index"]: (e["order_id"], {err["field"] for err in e["errors"]})
            for e in body["rejected"]}


def _assert_problem(r, status, slug):
    assert r.status_code == status, (r.status_code, r.text[:2000])
    assert r.headers.get("Content-Type", "").startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["type"] == PROBLEM_BASE + slug, body
    assert body["status"] == status, body
    return body


def _db(stack, sql, *params):
    with contextlib.closing(stack.primary()) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def _stored_count(stack, merchant_id):
    """(rows in orders, rows in order_keys, sum of rollup orders) of the merchant."""
    rows = _db(stack, """
        SELECT (SELECT count(*) FROM orders WHERE merchant_id = %s),
               (SELECT count(*) FROM order_keys WHERE merchant_id = %s),
               (SELECT coalesce(sum(orders), 0) FROM sales_rollup_15m WHERE merchant_id = %s)
        """, merchant_id, merchant_id, merchant_id)
    return tuple(int(v) for v in rows[0])


def _stored_ids(stack, merchant_id):
    return {r[0] for r in _db(stack, "SELECT order_id FROM orders WHERE merchant_id = %s",
                              merchant_id)}


def _get_order(server, token, merchant_id, order_id):
    return requests.get(f"{server.url}/v1/merchants/{merchant_id}/orders/{order_id}",
                        headers=headers(token), timeout=10)


def _idem(key):
    return {"Idempotency-Key": key}


class _RawRequest:
    """A POST written on its own socket, whose answer is read later (or never)."""

    def __init__(self, server, path, token, content_type, body_parts, pause=0.0, key=None):
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}",
                 f"Authorization: Bearer {token}", f"Content-Type: {content_type}",
                 f"Content-Length: {sum(len(p) for p in body_parts)}", "Connection: close"]
        if key is not None:
            lines.append(f"Idempotency-Key: {key}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.parts = list(body_parts)
        self.pause = pause
        self.error = None
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def _send(self):
        try:
            for i, part in enumerate(self.parts):
                if i and self.pause:
                    time.sleep(self.pause)
                self.sock.sendall(part)
        except OSError as e:
            self.error = e

    def sent(self, timeout=60):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the body was not sent in time"
        assert self.error is None, f"sending the body failed: {self.error!r}"

    def response(self):
        """(status, {header: value} lower-cased, body bytes)."""
        self.sent()
        resp = http.client.HTTPResponse(self.sock)
        try:
            resp.begin()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            resp.close()
            self.sock.close()

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()


# ---------------------------------------------------------------------------------------------
# memory: a ~30 MiB upload streams through (on a fresh server, so that no earlier request has
# grown the heap the baseline is taken from)


def _vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class _RssSampler(threading.Thread):
    def __init__(self, pid, interval=0.01):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = _vm_rss_kib(pid)
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.peak = max(self.peak, _vm_rss_kib(self.pid))
            self.samples += 1
            time.sleep(self.interval)

    def stop(self):
        self._stop_event.set()
        self.join(10)
        self.peak = max(self.peak, _vm_rss_kib(self.pid))


BIG_ORDERS = 8300
BIG_ITEMS = 14


def _big_line(n):
    """NDJSON line n of the big batch: BIG_ITEMS items with long names, a fixed length."""
    items = [{"sku": f"SKU-{n % 97:02d}-{k:03d}",
              "name": (f"{k:03d} Pizza cuatro quesos extra grande con borde relleno de queso "
                       f"crema, albahaca fresca y aceite de oliva virgen extra ").ljust(190, "."),
              "quantity": 1 + k % 3, "unit_price_cents": 100 + k}
             for k in range(BIG_ITEMS)]
    order = _order(f"big-{n:06d}", items=items)
    return json.dumps(order, separators=(",", ":")).encode() + b"\n"


@contextlib.contextmanager
def _own_server(server, name, **env):
    """A second `cangrejo serve` of the same binary and configuration on its own port, with
    AddressSanitizer's quarantine off: ASan keeps up to 256 MiB of freed memory out of reuse
    (the test build measured +510 MiB for the upload below, +51 MiB with the quarantine off,
    +39 MiB without sanitizers), which would measure the sanitizer, not the server. Yields
    the Server; fails if its log gained a sanitizer report."""
    port = free_port()
    env = dict(server.env, CANGREJO_LISTEN=f"127.0.0.1:{port}", **env)
    env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") +
                           ":quarantine_size_mb=0:thread_local_quarantine_size_kb=0")
    log_path = os.path.join(os.path.dirname(server.log_path), f"server-{name}.log")
    own = type(server)(server.binary, env, log_path, port)
    own.start()
    try:
        yield own
    finally:
        own.stop()
    reports = sanitizer_reports(own.log_text())
    assert not reports, f"sanitizer reports in {log_path}:\n" + "\n".join(reports[:20])


def test_batch_of_30_mib_streams_through_without_growing_rss_much(server, stack, make_token,
                                                                     merchant_id):
    line_len = len(_big_line(0))
    total = line_len * BIG_ORDERS
    assert all(len(_big_line(n)) == line_len for n in (1, 99, BIG_ORDERS - 1))
    assert 29 * 2**20 <= total <= 31 * 2**20, total

    def body():  # never the whole body in memory: about 64 KiB at a time
        chunk = []
        for n in range(BIG_ORDERS):
            chunk.append(_big_line(n))
            if len(chunk) * line_len >= 64 * 1024:
                yield b"".join(chunk)
                chunk = []
        if chunk:
            yield b"".join(chunk)

    with _own_server(server, "rss") as own:
        token = _merchant(own, make_token, merchant_id)
        # A small batch first, so that one-time allocations are not counted as growth.
        warm = _post_batch(own, token, merchant_id, [_order("warm-up")], fmt="ndjson")
        assert _result(warm)["accepted"] == 1
        time.sleep(0.5)
        before = _vm_rss_kib(own.pid)
        sampler = _RssSampler(own.pid)
        sampler.start()
        try:
            started = time.monotonic()
            r = requests.post(own.url + _batch_path(merchant_id), data=body(), timeout=120,
                              headers=headers(token, {"Content-Type": NDJSON_CT}))
            took = time.monotonic() - started
        finally:
            sampler.stop()
        growth_mib = (sampler.peak - before) / 1024
        print(f"30 MiB batch: {total} bytes, {BIG_ORDERS} orders in {took:.1f} s; server VmRSS "
              f"{before / 1024:.1f} MiB before, peak {sampler.peak / 1024:.1f} MiB "
              f"(+{growth_mib:.1f} MiB, {sampler.samples} samples)")
        result = _result(r)
        assert result == {"accepted": BIG_ORDERS, "duplicates": 0, "rejected": []}
        assert _stored_count(stack, merchant_id) == (BIG_ORDERS + 1,) * 3
        items = _db(stack, "SELECT count(*) FROM order_items WHERE merchant_id = %s",
                    merchant_id)
        assert items == [(BIG_ORDERS * BIG_ITEMS + 1,)]
        assert growth_mib < 64, (
            f"server RSS grew by {growth_mib:.1f} MiB (from {before / 1024:.1f} to "
            f"{sampler.peak / 1024:.1f} MiB) for a {total / 2**20:.1f} MiB batch")


# ---------------------------------------------------------------------------------------------
# mixed valid and invalid orders


def _mixed_batch(prefix):
    """(elements, expected {index: (order_id, fields)}, valid orders)."""
    ok = [_order(f"{prefix}-ok-{n}") for n in range(4)]
    bad_quantity = _with_item(_order(f"{prefix}-bad-qty"), quantity=0)
    bad_id = _order("has space")
    many = _order(f"{prefix}-bad-many", store_id=0, channel="web", colour="red")
    many["items"].append({"sku": "", "name": "No sku", "quantity": 1, "unit_price_cents": 1})
    no_id = _order()
    del no_id["order_id"]
    elements = [
        ok[0],                 # 0
        bad_quantity,          # 1
        42,                    # 2 not an object
        ok[1],                 # 3
        bad_id,                # 4 invalid order_id: no order_id in the rejection
        "an order",            # 5 not an object
        many,                  # 6 several errors at once
        [ok[2]],               # 7 an array is not an order
        None,                  # 8
        no_id,                 # 9 no order_id at all
        ok[2],                 # 10
        _order(f"{prefix}-usd", currency="USD"),  # 11
        ok[3],                 # 12
    ]
    expected = {
        1: (f"{prefix}-bad-qty", {"items[0].quantity"}),
        2: (None, {""}),
        4: (None, {"order_id"}),
        5: (None, {""}),
        6: (f"{prefix}-bad-many", {"store_id", "channel", "colour", "items[1].sku"}),
        7: (None, {""}),
        8: (None, {""}),
        9: (None, {"order_id"}),
        11: (f"{prefix}-usd", {"currency"}),
    }
    return elements, expected, ok


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_batch_mixed_valid_and_invalid_orders(server, stack, make_token, merchant_id, fmt):
    token = _merchant(server, make_token, merchant_id)
    elements, expected, ok = _mixed_batch(fmt)
    r = _post_batch(server, token, merchant_id, elements, fmt=fmt)
    body = _result(r)
    assert "Idempotent-Replayed" not in r.headers
    assert body["accepted"] == len(ok) and body["duplicates"] == 0, body
    assert _rejected_map(body) == expected, body["rejected"]
    # Valid orders are stored (on the primary, and readable through the API) despite the rest.
    assert _stored_ids(stack, merchant_id) == {o["order_id"] for o in ok}
    assert _stored_count(stack, merchant_id) == (len(ok),) * 3
    for o in ok:
        got = _get_order(server, token, merchant_id, o["order_id"])
        assert got.status_code == 200, got.text
        got = got.json()
        assert got["items"] == o["items"] and got["net_cents"] == _net(o), got
        assert got["status"] == "placed" and got["store_id"] == 3, got
    for rejected in (f"{fmt}-bad-qty", f"{fmt}-bad-many", f"{fmt}-usd"):
        assert _get_order(server, token, merchant_id, rejected).status_code == 404


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_batch_parsed_in_chunks_keeps_every_index(server, stack, make_token, merchant_id, fmt):
    """~1 MiB of orders is parsed as several chunks on job threads: every rejection still
    carries its own batch index, in order, and exactly the valid orders are stored."""
    token = _merchant(server, make_token, merchant_id)
    elements, expected, valid = [], {}, []
    for block in range(230):
        part, part_expected, part_ok = _mixed_batch(f"{fmt}{block}")
        expected.update({len(elements) + i: v for i, v in part_expected.items()})
        elements += part
        valid += part_ok
    body = _json_body(elements) if fmt == "json" else _ndjson_body(elements)
    assert len(body) > 5 * 128 * 1024, len(body)  # several chunks (CHUNK_BYTES in batches.c)
    r = _post_raw(server, token, merchant_id, body, JSON_CT if fmt == "json" else NDJSON_CT)
    result = _result(r)
    assert result["accepted"] == len(valid) and result["duplicates"] == 0, result["accepted"]
    assert _rejected_map(result) == expected
    assert _stored_ids(stack, merchant_id) == {o["order_id"] for o in valid}
    assert _stored_count(stack, merchant_id) == (len(valid),) * 3


def test_batch_client_gone_mid_upload_leaves_the_server_well(server, stack, make_token,
                                                             merchant_id):
    """Clients hang up after ~1.5 MiB of a ~3 MiB body, parts of which are being parsed on job
    threads: each request ends as 499 (at the connection timeout: libmicrohttpd 0.9.75 only
    notices then), nothing is stored, the server (sanitizers on) stays up and the next batch
    is stored."""
    with _own_server(server, "client-gone", CANGREJO_CONNECTION_TIMEOUT_SECONDS="2") as own:
        token = _merchant(own, make_token, merchant_id)
        data = _n_orders_ndjson("gone", 8000)
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", own.port), timeout=30)
            head = (f"POST {_batch_path(merchant_id)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {token}\r\nContent-Type: {NDJSON_CT}\r\n"
                    f"Content-Length: {2 * len(data)}\r\n\r\n")
            sock.sendall(head.encode() + data)
            sock.close()

        def ended():
            return own.log_text().count('"status":499') >= 3
        assert wait_until(ended, timeout=20), "the abandoned uploads never ended"
        assert requests.get(own.url + "/livez", timeout=10).status_code == 200
        assert _stored_count(stack, merchant_id) == (0, 0, 0)
        r = _post_raw(own, token, merchant_id, _n_orders_ndjson("after", 3000), NDJSON_CT)
        assert _result(r) == {"accepted": 3000, "duplicates": 0, "rejected": []}
        assert _stored_count(stack, merchant_id) == (3000,) * 3


def test_batch_ndjson_garbage_and_blank_lines(server, stack, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    a, b, c, d = (_order(f"nd-{n}") for n in range(4))
    lines = [
        b"",                                      # blank lines are skipped, not orders
        json.dumps(a).encode(),                   # 0
        b"   \t",
        b"this is not json at all",               # 1
        json.dumps(b).encode() + b"\r",           # 2 (CRLF line ending)
        b'{"order_id": "nd-cut", "store_id": ',   # 3 truncated object
        b"",
        b"",
        json.dumps(_with_item(_order("nd-neg"), unit_price_cents=-5)).encode(),  # 4
        b"[1, 2, 3]",                             # 5
        json.dumps(c).encode(),                   # 6
        b'{"order_id": "nd-dup-key", "order_id": "nd-dup-key"}',  # 7 duplicate member
        json.dumps(d).encode(),                   # 8, last line without a newline
    ]
    data = b"\n".join(lines)
    r = _post_raw(server, token, merchant_id, data, NDJSON_CT + "; charset=utf-8")
    body = _result(r)
    assert body["accepted"] == 4 and body["duplicates"] == 0, body
    got = _rejected_map(body)
    assert sorted(got) == [1, 3, 4, 5, 7], body["rejected"]
    assert got[1] == (None, {""}) and got[3] == (None, {""}) and got[5] == (None, {""}), got
    assert got[4] == ("nd-neg", {"items[0].unit_price_cents"}), got
    assert got[7][1] == {""}, got
    assert _stored_ids(stack, merchant_id) == {"nd-0", "nd-1", "nd-2", "nd-3"}
    assert _stored_count(stack, merchant_id) == (4, 4, 4)


def test_batch_json_strings_scalars_and_layout_do_not_confuse_the_scanner(
        server, stack, make_token, merchant_id):
    """Brackets, quotes, backslashes and commas inside strings, raw UTF-8, scalars of every
    kind and a pretty-printed body: order boundaries are where JSON says they are."""
    token = _merchant(server, make_token, merchant_id)
    names = ['Tarta "}{" de [queso], ñ', "back\\slash \\\" ] }", "«línea» {[:,]} / 'x'",
             "🍕 ]]]}}}"]
    valid = [_order(f"scan-{n}", items=[{"sku": f"S-{n}", "name": name, "quantity": 1,
                                          "unit_price_cents": 100}])
             for n, name in enumerate(names)]
    elements = [valid[0], 7, valid[1], True, -1.5e3, valid[2], "x]}", {}, valid[3], False]
    data = json.dumps({"orders": elements}, ensure_ascii=False, indent=2).encode()
    body = _result(_post_raw(server, token, merchant_id, data, JSON_CT + "; charset=utf-8"))
    assert body["accepted"] == 4 and body["duplicates"] == 0, body
    rejected = _rejected_map(body)
    assert sorted(rejected) == [1, 3, 4, 6, 7, 9], body
    assert all(rejected[i] == (None, {""}) for i in (1, 3, 4, 6, 9)), rejected
    assert rejected[7][0] is None and "order_id" in rejected[7][1], rejected  # {} lacks all
    for order in valid:
        got = _get_order(server, token, merchant_id, order["order_id"])
        assert got.status_code == 200 and got.json()["items"] == order["items"], got.text
    assert _stored_count(stack, merchant_id) == (4, 4, 4)


def test_batch_empty_orders_array_and_blank_ndjson(server, stack, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    for data, ct in ((b'{"orders": []}', JSON_CT), (b' { "orders" : [ ] } \n', JSON_CT),
                     (b"\n\n  \n", NDJSON_CT)):
        body = _result(_post_raw(server, token, merchant_id, data, ct))
        assert body == {"accepted": 0, "duplicates": 0, "rejected": []}, (data, body)
    assert _stored_count(stack, merchant_id) == (0, 0, 0)


def test_batch_order_over_256_kib_is_rejected_alone(server, stack, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    huge = _order("huge", promo_code="x" * (300 * 1024))
    small = _order("small")
    for fmt in ("json", "ndjson"):
        body = _result(_post_batch(server, token, merchant_id, [huge, small], fmt=fmt))
        assert _rejected_map(body) == {0: (None, {""})}, body
        assert body["accepted"] + body["duplicates"] == 1, body
    assert _stored_ids(stack, merchant_id) == {"small"}


# ---------------------------------------------------------------------------------------------
# duplicates and conflicts


def test_batch_again_counts_duplicates_and_rollups_once(server, stack, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    orders = [_order(f"again-{n}") for n in range(5)]
    first = _result(_post_batch(server, token, merchant_id, orders))
    assert first == {"accepted": 5, "duplicates": 0, "rejected": []}
    for fmt in ("json", "ndjson"):  # the same orders again, in either format
        again = _result(_post_batch(server, token, merchant_id, orders, fmt=fmt))
        assert again == {"accepted": 0, "duplicates": 5, "rejected": []}, (fmt, again)
    assert _stored_count(stack, merchant_id) == (5, 5, 5)
    rollup = _db(stack, "SELECT sum(net_cents) FROM sales_rollup_15m WHERE merchant_id = %s",
                 merchant_id)
    assert rollup == [(5 * 300,)]

    changed = _with_item(orders[2], quantity=7)
    fresh = _order("again-new")
    r = _post_batch(server, token, merchant_id, [changed, orders[0], fresh])
    body = _result(r)
    assert body["accepted"] == 1 and body["duplicates"] == 1, body
    assert _rejected_map(body) == {0: ("again-2", {"order_id"})}, body
    assert _stored_count(stack, merchant_id) == (6, 6, 6)
    stored = _get_order(server, token, merchant_id, "again-2").json()
    assert stored["items"][0]["quantity"] == 2, stored  # the first content stays


def test_batch_duplicates_inside_one_batch(server, stack, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    a, b, c = _order("in-a"), _order("in-b"), _order("in-c")
    a_changed = _with_item(a, quantity=5)
    elements = [a, a, b, a_changed, c, b, a]
    body = _result(_post_batch(server, token, merchant_id, elements))
    assert body["accepted"] == 3 and body["duplicates"] == 3, body
    assert _rejected_map(body) == {3: ("in-a", {"order_id"})}, body
    assert _stored_count(stack, merchant_id) == (3, 3, 3)
    assert _get_order(server, token, merchant_id, "in-a").json()["items"][0]["quantity"] == 2


def test_batch_duplicates_across_storage_groups(server, stack, make_token, merchant_id):
    """Orders are stored in groups (transactions); a repeat far from its first occurrence is
    still a duplicate, a changed repeat still a conflict."""
    token = _merchant(server, make_token, merchant_id)
    orders = [_order(f"grp-{n:05d}") for n in range(2500)]
    elements = orders + [orders[3], _with_item(orders[5], quantity=9), orders[1500]]
    elements.insert(1200, orders[10])
    body = _result(_post_batch(server, token, merchant_id, elements, fmt="ndjson"))
    assert body["accepted"] == 2500 and body["duplicates"] == 3, body
    assert _rejected_map(body) == {len(elements) - 2: ("grp-00005", {"order_id"})}, body
    assert _stored_count(stack, merchant_id) == (2500, 2500, 2500)


def test_large_batch_again_counts_duplicates_and_conflicts(server, stack, make_token,
                                                          merchant_id):
    """A group of 256 orders or more looks up the keys already stored and copies the new ones
    in: repeats are duplicates, a changed repeat a conflict, new orders are stored."""
    token = _merchant(server, make_token, merchant_id)
    orders = [_order(f"big-again-{n:04d}") for n in range(400)]
    assert _result(_post_batch(server, token, merchant_id, orders))["accepted"] == 400
    again = (orders[:300] + [_with_item(orders[300], quantity=9)] +
             [_order(f"big-new-{n:04d}") for n in range(100)])
    body = _result(_post_batch(server, token, merchant_id, again, fmt="ndjson"))
    assert body["accepted"] == 100 and body["duplicates"] == 300, body["accepted"]
    assert _rejected_map(body) == {300: ("big-again-0300", {"order_id"})}, body["rejected"]
    assert _stored_count(stack, merchant_id) == (500, 500, 500)
    stored = _get_order(server, token, merchant_id, "big-again-0300").json()
    assert stored["items"][0]["quantity"] == 2, stored  # the first content stays


def test_large_batch_racing_another_writer_for_a_key(server, stack, make_token, merchant_id):
    """Another writer stores one of a large group's keys after the group looked its keys up:
    the group's COPY fails on it, the group is stored again through INSERT ... ON CONFLICT,
    and the raced order is judged against what the other writer stored (here: a conflict)."""
    token = _merchant(server, make_token, merchant_id)
    orders = [_order(f"race-{n:04d}") for n in range(300)]
    conn = stack.primary()
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO order_keys (merchant_id, order_id, placed_at, content_hash) "
                        "VALUES (%s, 'race-0000', now(), '\\x00'::bytea)", (merchant_id,))
        first = _RawRequest(server, _batch_path(merchant_id), token, JSON_CT,
                            [_json_body(orders)])
        try:
            first.sent()
            _wait_until_storing_is_blocked(stack, "COPY order_keys")
            conn.commit()  # the other writer's key is in: the COPY fails on it
            status, _, data = first.response()
        finally:
            first.close()
    finally:
        conn.rollback()
        conn.close()
    assert status == 200, (status, data[:300])
    result = json.loads(data)
    assert result["accepted"] == 299 and result["duplicates"] == 0, result
    assert [(e["index"], e["order_id"]) for e in result["rejected"]] == [(0, "race-0000")]
    assert _stored_count(stack, merchant_id) == (299, 300, 299)


def test_concurrent_batches_with_overlapping_orders_store_each_once(server, stack, make_token,
                                                                    merchant_id):
    """Two uploads at once sharing 1,000 orders (in opposite order): every order is stored and
    counted once, and none is reported as failed."""
    token = _merchant(server, make_token, merchant_id)
    orders = [_order(f"ov-{n:05d}") for n in range(2000)]
    batches = [orders[:1500], list(reversed(orders[500:]))]
    barrier = threading.Barrier(2)
    results = [None, None]

    def upload(i):
        try:
            barrier.wait(timeout=10)
            results[i] = _post_batch(server, token, merchant_id, batches[i], timeout=120)
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = e
    threads = [threading.Thread(target=upload, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert not any(isinstance(r, Exception) for r in results), results
    bodies = [_result(r) for r in results]
    assert [b["rejected"] for b in bodies] == [[], []], [b["rejected"][:3] for b in bodies]
    assert sum(b["accepted"] for b in bodies) == 2000, bodies
    assert sum(b["duplicates"] for b in bodies) == 1000, bodies
    assert _stored_count(stack, merchant_id) == (2000, 2000, 2000)


# ---------------------------------------------------------------------------------------------
# limits


def _n_orders_ndjson(prefix, n):
    return b"".join(b'{"order_id":"%s-%05d","store_id":3,"channel":"pos","fulfillment":'
                    b'"pickup","placed_at":"%s","currency":"EUR","items":[{"sku":"S",'
                    b'"name":"N","quantity":1,"unit_price_cents":100}]}\n'
                    % (prefix.encode(), i, PLACED.encode()) for i in range(n))


def _ndjson_to_json(data):
    return b'{"orders": [' + b",".join(data.splitlines()) + b"]}"


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_batch_of_10001_orders_is_413_and_stores_nothing(server, stack, make_token,
                                                          merchant_id, fmt):
    token = _merchant(server, make_token, merchant_id)
    data = _n_orders_ndjson("over", MAX_ORDERS + 1)
    if fmt == "json":
        r = _post_raw(server, token, merchant_id, _ndjson_to_json(data), JSON_CT)
    else:
        r = _post_raw(server, token, merchant_id, data, NDJSON_CT)
    _assert_problem(r, 413, "payload-too-large")
    assert _stored_count(stack, merchant_id) == (0, 0, 0)


def test_batch_of_exactly_10000_orders_is_stored(server, stack, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    data = _ndjson_to_json(_n_orders_ndjson("max", MAX_ORDERS))
    started = time.monotonic()
    body = _result(_post_raw(server, token, merchant_id, data, JSON_CT, timeout=120))
    print(f"10,000 orders stored in {time.monotonic() - started:.1f} s")
    assert body == {"accepted": MAX_ORDERS, "duplicates": 0, "rejected": []}
    assert _stored_count(stack, merchant_id) == (MAX_ORDERS,) * 3


MALFORMED = [
    ("top-level-array", b'[{"order_id": "m-1"}]'),
    ("unknown-member-after", b'{"orders": [], "source": "pos"}'),
    ("unknown-member-before", b'{"source": "pos", "orders": []}'),
    ("orders-twice", b'{"orders": [], "orders": []}'),
    ("no-orders-member", b"{}"),
    ("orders-not-array", b'{"orders": {"order_id": "m-1"}}'),
    ("orders-null", b'{"orders": null}'),
    ("truncated-in-order", b'{"orders": [%s, {"order_id": "m-2", "store_id": '),
    ("truncated-after-array", b'{"orders": [%s]'),
    ("missing-element", b'{"orders": [%s,,%s]}'),
    ("no-comma", b'{"orders": [%s %s]}'),
    ("trailing-garbage", b'{"orders": [%s]} x'),
    ("not-json", b"orders=1"),
    ("empty", b""),
]


@pytest.mark.parametrize("data", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_batch_body_malformed_as_a_whole_is_400(server, stack, make_token, merchant_id, data):
    token = _merchant(server, make_token, merchant_id)
    valid = json.dumps(_order("valid-in-malformed")).encode()
    data = data.replace(b"%s", valid)
    r = _post_raw(server, token, merchant_id, data, JSON_CT)
    assert r.status_code == 400, (r.status_code, r.text)
    body = r.json()
    assert body["type"] in (PROBLEM_BASE + "malformed-json", PROBLEM_BASE + "bad-request"), body
    assert _stored_count(stack, merchant_id) == (0, 0, 0)


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/xml", "application/x-www-form-urlencoded",
    "application/json; charset=latin1", "application/ndjson-ish", None])
def test_batch_wrong_content_type_is_415(server, stack, make_token, merchant_id, content_type):
    token = _merchant(server, make_token, merchant_id)
    r = _post_raw(server, token, merchant_id, _json_body([_order()]), content_type)
    _assert_problem(r, 415, "unsupported-media-type")
    assert _stored_count(stack, merchant_id) == (0, 0, 0)


def test_batch_declared_body_over_32_mib_is_413_unread(server, stack, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall((f"POST {_batch_path(merchant_id)} HTTP/1.1\r\n"
                      f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                      f"Content-Type: {NDJSON_CT}\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n")
                     .encode())
        sock.sendall(_n_orders_ndjson("cl", 10))  # a start of the body; the rest never comes
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        assert resp.status == 413, (resp.status, resp.read())
        body = json.loads(resp.read())
        assert body["type"] == PROBLEM_BASE + "payload-too-large", body
    assert _stored_count(stack, merchant_id) == (0, 0, 0)


def test_batch_streamed_body_over_32_mib_is_413(server, stack, make_token, merchant_id):
    """Chunked, no Content-Length: valid orders up to past 32 MiB; nothing is stored."""
    token = _merchant(server, make_token, merchant_id)
    line = _n_orders_ndjson("chunk", 1)
    pad = b" " * (1024 * 1024 - len(line) - 1) + b"\n"  # a blank-padded line: no order
    chunk = line + pad
    assert len(chunk) == 1024 * 1024

    def body():
        for _ in range(33):
            yield chunk
    try:
        r = requests.post(server.url + _batch_path(merchant_id), data=body(), timeout=60,
                          headers=headers(token, {"Content-Type": NDJSON_CT}))
    except requests.ConnectionError:
        r = None  # the server may close the connection once it has answered
    if r is not None:
        _assert_problem(r, 413, "payload-too-large")
    assert requests.get(server.url + "/livez", timeout=5).status_code == 200
    assert _stored_count(stack, merchant_id) == (0, 0, 0)


def test_batch_auth_scope_tenant_and_unknown_merchant(server, stack, make_token, merchant_ids):
    mine, other, unknown = merchant_ids(), merchant_ids(), merchant_ids()
    _merchant(server, make_token, mine)
    _merchant(server, make_token, other)
    data = _json_body([_order()])
    no_write = make_token(scope="orders:read metrics:read merchants:admin", merchants=[mine])
    _assert_problem(_post_raw(server, no_write, mine, data), 403, "forbidden")
    other_tenant = make_token(scope="orders:write", merchants=[other])
    _assert_problem(_post_raw(server, other_tenant, mine, data), 403, "forbidden")
    r = requests.post(server.url + _batch_path(mine), data=data, timeout=10,
                      headers={"Content-Type": JSON_CT})
    _assert_problem(r, 401, "unauthorized")
    assert _stored_count(stack, mine) == (0, 0, 0)
    writer = make_token(scope="orders:write", merchants=[unknown])
    _assert_problem(_post_raw(server, writer, unknown, data), 404, "not-found")
    _assert_problem(_post_raw(server, writer, unknown, _ndjson_body([_order()]), NDJSON_CT),
                    404, "not-found")
    assert _stored_count(stack, unknown) == (0, 0, 0)


# ---------------------------------------------------------------------------------------------
# Idempotency-Key


def test_idempotency_key_replay_returns_the_first_result(server, stack, make_token,
                                                         merchant_id):
    token = _merchant(server, make_token, merchant_id)
    key = f"upload-{uuid.uuid4()}"
    orders = [_order("idem-0"), _with_item(_order("idem-bad"), quantity=0), _order("idem-1")]
    first = _post_batch(server, token, merchant_id, orders, extra=_idem(key))
    result = _result(first)
    assert "Idempotent-Replayed" not in first.headers
    assert result["accepted"] == 2 and _rejected_map(result) == {
        1: ("idem-bad", {"items[0].quantity"})}, result
    for _ in range(2):
        again = _post_batch(server, token, merchant_id, orders, extra=_idem(key))
        assert again.status_code == 200, again.text
        assert again.headers.get("Idempotent-Replayed") == "true", again.headers
        assert again.json() == result  # the first result, not "2 duplicates"
    assert _stored_count(stack, merchant_id) == (2, 2, 2)
    # Without the key the same body is a new request: the orders are duplicates now.
    plain = _result(_post_batch(server, token, merchant_id, orders))
    assert plain["accepted"] == 0 and plain["duplicates"] == 2, plain


def test_idempotency_key_with_another_body_is_422(server, stack, make_token, merchant_id):
    token = _merchant(server, make_token, merchant_id)
    key = f"upload-{uuid.uuid4()}"
    first = [_order("k-0"), _order("k-1")]
    assert _result(_post_batch(server, token, merchant_id, first, extra=_idem(key)))[
        "accepted"] == 2
    for other in ([_order("k-0"), _order("k-1"), _order("k-2")],  # another body
                  [_order("k-1"), _order("k-0")]):                # same orders, another order
        r = _post_batch(server, token, merchant_id, other, extra=_idem(key))
        _assert_problem(r, 422, "idempotency-key-reused")
    # The same orders as NDJSON are other bytes too.
    r = _post_batch(server, token, merchant_id, first, fmt="ndjson", extra=_idem(key))
    _assert_problem(r, 422, "idempotency-key-reused")
    assert _stored_ids(stack, merchant_id) == {"k-0", "k-1"}


def test_idempotency_key_is_per_merchant(server, stack, make_token, merchant_ids):
    m1, m2 = merchant_ids(), merchant_ids()
    t1, t2 = _merchant(server, make_token, m1), _merchant(server, make_token, m2)
    key = f"shared-{uuid.uuid4()}"
    orders = [_order("pm-0"), _order("pm-1")]
    r1 = _post_batch(server, t1, m1, orders, extra=_idem(key))
    r2 = _post_batch(server, t2, m2, orders, extra=_idem(key))
    for r in (r1, r2):
        assert _result(r) == {"accepted": 2, "duplicates": 0, "rejected": []}
        assert "Idempotent-Replayed" not in r.headers
    # ... and another body under the same key for the other merchant is no 422 either.
    wildcard = make_token(scope="orders:write", merchants="*")
    r3 = _post_batch(server, wildcard, m2, [_order("pm-2")], extra=_idem(f"{key}-2"))
    assert _result(r3)["accepted"] == 1
    r4 = _post_batch(server, wildcard, m1, [_order("pm-3")], extra=_idem(f"{key}-2"))
    assert _result(r4)["accepted"] == 1 and "Idempotent-Replayed" not in r4.headers
    assert _stored_count(stack, m1) == (3, 3, 3)
    assert _stored_count(stack, m2) == (3, 3, 3)


def test_idempotency_key_not_taken_by_refused_requests(server, stack, make_token, merchant_id):
    """A request refused as a whole (400, 413) stores nothing and does not bind the key."""
    token = _merchant(server, make_token, merchant_id)
    key = f"upload-{uuid.uuid4()}"
    r = _post_raw(server, token, merchant_id, b'{"orders": [', JSON_CT, _idem(key))
    _assert_problem(r, 400, "malformed-json")
    r = _post_raw(server, token, merchant_id, _n_orders_ndjson("too", MAX_ORDERS + 1),
                  NDJSON_CT, _idem(key))
    _assert_problem(r, 413, "payload-too-large")
    ok = _post_batch(server, token, merchant_id, [_order("after-refusals")], extra=_idem(key))
    assert _result(ok) == {"accepted": 1, "duplicates": 0, "rejected": []}
    assert "Idempotent-Replayed" not in ok.headers


@pytest.mark.parametrize("key,valid", [
    ("", False), ("k" * 256, False), ("bad\x7fkey", False), ("clé", False),
    ("k" * 255, True), ("a b:c/d?e=f", True), ("~", True)],
    ids=["empty", "256-chars", "DEL", "non-ascii", "255-chars", "spaces-and-punct", "one-char"])
def test_idempotency_key_syntax(server, stack, make_token, merchant_id, key, valid):
    token = _merchant(server, make_token, merchant_id)
    r = _post_batch(server, token, merchant_id, [_order("syntax")], extra=_idem(key))
    if valid:
        assert _result(r)["accepted"] == 1
        again = _post_batch(server, token, merchant_id, [_order("syntax")], extra=_idem(key))
        assert again.status_code == 200 and again.headers.get("Idempotent-Replayed") == "true"
        assert again.json() == r.json()
    else:
        _assert_problem(r, 400, "bad-request")
        assert _stored_count(stack, merchant_id) == (0, 0, 0)


def test_idempotency_key_in_use_during_a_slow_upload_is_409(server, stack, make_token,
                                                            merchant_id):
    """The first request with the key sends its body in pieces over ~2 s; the same key (and
    body) meanwhile is 409; after the first answers, a replay gives the first's result."""
    token = _merchant(server, make_token, merchant_id)
    key = f"slow-{uuid.uuid4()}"
    data = _ndjson_body([_order(f"slow-{n}") for n in range(40)])
    parts = [data[i:i + len(data) // 10 + 1] for i in range(0, len(data), len(data) // 10 + 1)]
    first = _RawRequest(server, _batch_path(merchant_id), token, NDJSON_CT, parts, pause=0.2,
                        key=key)
    try:
        time.sleep(0.6)  # the first request is uploading
        assert first.thread.is_alive(), "the slow upload ended too early"
        during = _post_raw(server, token, merchant_id, data, NDJSON_CT, _idem(key))
        still_uploading = first.thread.is_alive()
        status, first_headers, first_body = first.response()
    finally:
        first.close()
    assert still_uploading, "the slow upload ended before the second request was answered"
    assert during.status_code == 409, (
        f"POST {_batch_path(merchant_id)} with Idempotency-Key {key!r} while the first request "
        f"with that key was still sending its body: expected 409 request-in-progress, got "
        f"{during.status_code} {during.text[:300]}; the first request then got {status} "
        f"(Idempotent-Replayed: {first_headers.get('idempotent-replayed')}) "
        f"{first_body[:300]!r}")
    _assert_problem(during, 409, "request-in-progress")
    assert status == 200, (status, first_body)
    assert "idempotent-replayed" not in first_headers, first_headers
    result = json.loads(first_body)
    assert result == {"accepted": 40, "duplicates": 0, "rejected": []}
    replay = _post_raw(server, token, merchant_id, data, NDJSON_CT, _idem(key))
    assert replay.status_code == 200 and replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json() == result
    assert _stored_count(stack, merchant_id) == (40, 40, 40)


@contextlib.contextmanager
def _order_key_held(stack, merchant_id, order_id):
    """An uncommitted row of order_keys for this order: a batch holding the order waits in its
    first storage transaction until the block ends (the row is then rolled back)."""
    conn = stack.primary()
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO order_keys (merchant_id, order_id, placed_at, content_hash) "
                        "VALUES (%s, %s, now(), '\\x00'::bytea)", (merchant_id, order_id))
        yield
    finally:
        conn.rollback()
        conn.close()


def _wait_until_storing_is_blocked(stack, statement="INSERT INTO order_keys"):
    """Until a statement taking keys waits for a lock: INSERT ... ON CONFLICT for a group of
    fewer than 256 orders, COPY for a larger one (COPY_KEYS_MIN in db/ingest.c)."""
    def blocked():
        rows = _db(stack, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                          "AND query LIKE %s", f"%{statement}%")
        return rows[0][0] >= 1
    assert wait_until(blocked, timeout=15), "the batch never started storing its orders"


def _keyed_batch_while_storing(server, stack, token, merchant_id, key, prefix, n, during):
    """Posts n orders with the key; while they are being stored (held at the first order),
    calls during(data) and returns (its result, (status, headers, body) of the first)."""
    data = _ndjson_to_json(_n_orders_ndjson(prefix, n))
    with _order_key_held(stack, merchant_id, f"{prefix}-00000"):
        first = _RawRequest(server, _batch_path(merchant_id), token, JSON_CT, [data], key=key)
        try:
            first.sent()
            _wait_until_storing_is_blocked(stack)
            seen = during(data)
        except BaseException:
            first.close()
            raise
    try:
        return seen, first.response()
    finally:
        first.close()


def test_idempotency_key_in_use_while_storing_is_409(server, stack, make_token, merchant_id):
    """The body is in and the orders are being stored on a job thread: the key is taken."""
    token = _merchant(server, make_token, merchant_id)
    key = f"storing-{uuid.uuid4()}"

    def during(data):
        same = _post_raw(server, token, merchant_id, data, JSON_CT, _idem(key))
        other = _post_batch(server, token, merchant_id, [_order("st-other")], extra=_idem(key))
        return same, other, _stored_count(stack, merchant_id)
    (same, other, stored), (status, first_headers, first_body) = _keyed_batch_while_storing(
        server, stack, token, merchant_id, key, "st", 50, during)
    assert stored == (0, 0, 0)
    _assert_problem(same, 409, "request-in-progress")
    assert other.status_code in (409, 422), other.text
    assert status == 200 and "idempotent-replayed" not in first_headers, (status, first_body)
    result = json.loads(first_body)
    assert result == {"accepted": 50, "duplicates": 0, "rejected": []}
    data = _ndjson_to_json(_n_orders_ndjson("st", 50))
    replay = _post_raw(server, token, merchant_id, data, JSON_CT, _idem(key))
    assert replay.status_code == 200 and replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json() == result
    assert _stored_count(stack, merchant_id) == (50, 50, 50)


def test_idempotency_key_reused_after_24_hours_is_a_new_request(server, stack, make_token,
                                                                merchant_id):
    """Once a key is older than 24 h it may be used again, for another body; while that new
    request runs, the same key is 409 (never the expired request's answer)."""
    token = _merchant(server, make_token, merchant_id)
    key = f"expired-{uuid.uuid4()}"
    old = _result(_post_batch(server, token, merchant_id, [_order("old-0"), _order("old-1")],
                              extra=_idem(key)))
    assert old == {"accepted": 2, "duplicates": 0, "rejected": []}
    _db(stack, "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' "
               "WHERE merchant_id = %s AND key = %s RETURNING 1", merchant_id, key)

    def during(data):
        return _post_raw(server, token, merchant_id, data, JSON_CT, _idem(key))
    during_r, (status, first_headers, first_body) = _keyed_batch_while_storing(
        server, stack, token, merchant_id, key, "new", 30, during)
    assert status == 200 and "idempotent-replayed" not in first_headers, (status, first_body)
    result = json.loads(first_body)
    assert result == {"accepted": 30, "duplicates": 0, "rejected": []}
    assert during_r.status_code == 409, (
        f"POST {_batch_path(merchant_id)} with a key last used more than 24 h ago, while the "
        f"new request with it (another body) was being stored: expected 409 "
        f"request-in-progress, got {during_r.status_code} (Idempotent-Replayed: "
        f"{during_r.headers.get('Idempotent-Replayed')}) {during_r.text[:300]}; the expired "
        f"request's answer was {json.dumps(old)}")
    data = _ndjson_to_json(_n_orders_ndjson("new", 30))
    replay = _post_raw(server, token, merchant_id, data, JSON_CT, _idem(key))
    assert replay.status_code == 200 and replay.json() == result, replay.text
    assert _stored_count(stack, merchant_id) == (32, 32, 32)


# ---------------------------------------------------------------------------------------------
# metrics


def test_sales_metrics_count_exactly_the_accepted_orders(server, stack, make_token,
                                                         merchant_id):
    token = _merchant(server, make_token, merchant_id,
                      scope="orders:write orders:read metrics:read")
    base = _past(hours=30).replace(minute=0, second=0)
    accepted = []
    elements = []
    for n in range(30):
        placed = _rfc3339(base + dt.timedelta(minutes=37 * n), offset_minutes=[0, 60, 330][n % 3])
        order = _order(f"met-{n}", placed_at=placed, discount_cents=n % 4 * 10,
                       items=[{"sku": f"S{n % 5}", "name": "Thing", "quantity": 1 + n % 3,
                               "unit_price_cents": 100 + 7 * n}])
        if n % 7 == 3:
            order = _with_item(order, quantity=-1)  # rejected
        elif n % 11 == 5:
            order["discount_cents"] = 10**6          # rejected: net < 0
        else:
            accepted.append(order)
        elements.append(order)
    elements.append(accepted[0])  # a duplicate inside the batch: counted once
    body = _result(_post_batch(server, token, merchant_id, elements, fmt="ndjson"))
    assert body["accepted"] == len(accepted) and body["duplicates"] == 1, body
    assert len(body["rejected"]) == 30 - len(accepted), body
    # The same batch again changes nothing.
    again = _result(_post_batch(server, token, merchant_id, elements, fmt="json"))
    assert again["accepted"] == 0 and again["duplicates"] == len(accepted) + 1, again

    start = (base - dt.timedelta(days=1)).date().isoformat()
    end = (base + dt.timedelta(days=2)).date().isoformat()
    want_net = sum(_net(o) for o in accepted)

    def sales():
        r = requests.get(f"{server.url}/v1/merchants/{merchant_id}/metrics/sales",
                         params={"from": start, "to": end, "granularity": "hour", "tz": "UTC"},
                         headers=headers(token), timeout=10)
        assert r.status_code == 200, r.text
        buckets = r.json()["buckets"]
        return (sum(b["orders"] for b in buckets), sum(b["net_sales_cents"] for b in buckets),
                sum(b["items_sold"] for b in buckets))
    def settled():
        figures = sales()
        return figures if figures[0] == len(accepted) else None
    got = wait_until(settled, timeout=5)
    assert got, f"sales metrics never showed {len(accepted)} orders: {sales()}"
    assert got == (len(accepted), want_net,
                   sum(i["quantity"] for o in accepted for i in o["items"])), got
