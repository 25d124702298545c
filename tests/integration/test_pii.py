"""Customer personal data, black box: encryption at rest, pii:read, export and erasure.

An order's `customer.name/email/phone/address` is sealed per customer (AES-256-GCM under a key
derived from PII_MASTER_KEY and a random per-customer secret, with the row's identity as
associated data). Checked here: canary values written through the API (single orders and a
batch) appear in plaintext nowhere (every table and partition of the primary and the replica,
every Redis key and value, the server log, error bodies); orders carry `customer` only for
`pii:read` tokens; a ciphertext moved to another order's row does not decrypt (that order's
customer reads as null, never as the other's data, and nothing fails); the export
(`GET .../customers/{ref}/export`) and the erasure (`DELETE .../customers/{ref}`), which keeps
orders and sales metrics as they were; idempotency covers the PII (another e-mail is a 409); and
`serve` refuses to start without a valid master key.
"""

import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import re
import subprocess
import uuid

import pytest
import requests

from helpers import free_port, headers, sanitizer_reports, wait_for_http, wait_until

PROBLEM_BASE = "https://cangrejo.dev/problems/"
PII_FIELDS = {"name", "email", "phone", "address"}
EXPORT_FIELDS = {"merchant_id", "customer_ref", "customer", "erased_at", "order_ids"}
UTC_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
WRITER = "orders:write orders:read"
READER = "orders:read pii:read"


# ---------------------------------------------------------------------------------------------
# helpers


def _past(hours=26):
    moment = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=hours)
    return moment.replace(microsecond=0).isoformat()


def _canary(kind):
    return f"canary{kind}{uuid.uuid4().hex}"


def _pii(tag=None):
    """Personal data of unique random strings (easy to look for anywhere)."""
    tag = tag or uuid.uuid4().hex[:12]
    return {"name": f"Name {_canary('n')} {tag}", "email": f"{_canary('e')}@example.com",
            "phone": f"+34 {_canary('p')}", "address": f"Calle {_canary('a')} 1, Madrid"}


def _order(order_id=None, customer=None, hours=26):
    body = {
        "order_id": order_id or f"web-{uuid.uuid4().hex[:16]}",
        "store_id": 17,
        "channel": "online",
        "fulfillment": "delivery",
        "placed_at": _past(hours),
        "currency": "EUR",
        "items": [{"sku": "PIZ-MARG-L", "name": "Margherita L", "quantity": 2,
                   "unit_price_cents": 1150}],
        "discount_cents": 300,
        "tax_cents": 192,
    }
    if customer is not None:
        body["customer"] = customer
    return body


def _merchant(server, make_token, merchant_id):
    admin = make_token(scope="merchants:admin", merchants=[merchant_id])
    r = requests.put(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(admin),
                     json={"name": "Trattoria PII", "timezone": "Europe/Madrid",
                           "currency": "EUR"}, timeout=10)
    assert r.status_code == 201, r.text


def _tokens(make_token, merchant_id):
    """(writer, reader with pii:read, eraser, plain reader) tokens for the merchant."""
    return (make_token(scope=WRITER, merchants=[merchant_id]),
            make_token(scope=READER, merchants=[merchant_id]),
            make_token(scope="customers:erase", merchants=[merchant_id]),
            make_token(scope="orders:read", merchants=[merchant_id]))


def _post(server, token, merchant_id, body):
    return requests.post(f"{server.url}/v1/merchants/{merchant_id}/orders",
                         headers=headers(token), json=body, timeout=10)


def _get(server, token, merchant_id, order_id):
    return requests.get(f"{server.url}/v1/merchants/{merchant_id}/orders/{order_id}",
                        headers=headers(token), timeout=10)


def _customer_url(server, merchant_id, ref):
    return (f"{server.url}/v1/merchants/{merchant_id}/customers/"
            f"{requests.utils.quote(ref, safe='')}")


def _export(server, token, merchant_id, ref):
    return requests.get(_customer_url(server, merchant_id, ref) + "/export",
                        headers=headers(token), timeout=10)


def _erase(server, token, merchant_id, ref):
    return requests.delete(_customer_url(server, merchant_id, ref), headers=headers(token),
                           timeout=10)


def _sales(server, make_token, merchant_id):
    token = make_token(scope="metrics:read", merchants=[merchant_id])
    day = dt.date.today()
    r = requests.get(f"{server.url}/v1/merchants/{merchant_id}/metrics/sales",
                     params={"from": str(day - dt.timedelta(days=7)),
                             "to": str(day + dt.timedelta(days=1))},
                     headers=headers(token), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _assert_problem(r, status, slug):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["type"] == PROBLEM_BASE + slug, body
    return body


def _db(stack, sql, *params, replica=False):
    conn = stack.replica() if replica else stack.primary()
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else None


def _replica_caught_up(stack, timeout=20):
    """Waits until the replica has replayed everything the primary has written so far."""
    target = _db(stack, "SELECT pg_current_wal_lsn()")[0][0]

    def replayed():
        return _db(stack, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", target,
                   replica=True)[0][0]
    assert wait_until(replayed, timeout=timeout, interval=0.1), "the replica did not catch up"


def _tables(stack, replica=False):
    """Every ordinary table (partitions included) of schema public."""
    rows = _db(stack, """
        SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1""", replica=replica)
    return [r[0] for r in rows]


def _rows_containing(stack, needles, replica=False):
    """{table: count} of rows whose text form holds any of needles (as text, or as the hex a
    bytea column would show)."""
    patterns = []
    for needle in needles:
        patterns += [needle, needle.encode().hex()]
    tables = _tables(stack, replica)
    assert any(t.startswith("public.orders_") for t in tables), tables  # partitions are scanned
    found = {}
    for table in tables:
        where = " OR ".join(["strpos(t::text, %s) > 0"] * len(patterns))
        count = _db(stack, f"SELECT count(*) FROM {table} AS t WHERE {where}", *patterns,
                    replica=replica)[0][0]
        if count:
            found[table] = count
    return found


def _redis_holding(stack, needles):
    """Redis keys whose name or value holds any of needles."""
    client = stack.redis()
    hits = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            values = [client.get(key) or b""]
        elif kind == b"hash":
            values = [k + b"=" + v for k, v in client.hgetall(key).items()]
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"zset":
            values = client.zrange(key, 0, -1)
        else:
            values = []
        blob = key + b"\n" + b"\n".join(values)
        if any(n.encode() in blob for n in needles):
            hits.append(key)
    return hits


# ---------------------------------------------------------------------------------------------
# encryption at rest: canaries


def test_canary_pii_is_nowhere_in_plaintext(server, stack, make_token, merchant_id):
    _merchant(server, make_token, merchant_id)
    writer, reader, _, plain = _tokens(make_token, merchant_id)
    pii = _pii()
    batch_pii = _pii()
    needles = [pii["email"], pii["phone"], batch_pii["email"], batch_pii["phone"]]
    ref = f"c-{uuid.uuid4().hex[:10]}"
    start = server.log_size()

    first = _order(customer={"ref": ref, **pii})
    r = _post(server, writer, merchant_id, first)
    assert r.status_code == 201, r.text
    assert not any(n in r.text for n in needles)
    assert _post(server, writer, merchant_id, first).status_code == 200  # a replay
    other = dict(first, customer={"ref": ref, **dict(pii, email=_canary("x"))})
    conflict = _post(server, writer, merchant_id, other)
    _assert_problem(conflict, 409, "conflict")
    # A POS batch carries PII too, and its rejections (kept for Idempotency-Key replays) must
    # not echo any.
    batch = [_order(customer={"ref": ref, **batch_pii}),
             _order(customer={"ref": f"{ref}-b", "email": batch_pii["email"]}),
             _order(customer={"ref": ref, "phone": batch_pii["phone"] + "\t"})]
    r = requests.post(f"{server.url}/v1/merchants/{merchant_id}/order-batches",
                      headers=headers(writer, {"Idempotency-Key": uuid.uuid4().hex}),
                      json={"orders": batch}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 2, r.text
    assert [e["field"] for e in r.json()["rejected"][0]["errors"]] == ["customer.phone"], r.text
    assert not any(n in r.text for n in needles), r.text
    # Reads with and without pii:read, the export, and a metrics read (cached in Redis).
    got = _get(server, reader, merchant_id, first["order_id"])
    assert got.status_code == 200 and got.json()["customer"]["email"] == pii["email"], got.text
    got = _get(server, reader, merchant_id, batch[0]["order_id"])
    assert got.json()["customer"] == batch_pii, got.text
    assert "customer" not in _get(server, plain, merchant_id, first["order_id"]).json()
    exported = _export(server, reader, merchant_id, ref)
    assert exported.status_code == 200, exported.text
    _sales(server, make_token, merchant_id)
    _sales(server, make_token, merchant_id)
    # Invalid PII: the error names the field, never the value.
    bad = _order(customer={"ref": ref, "email": pii["email"] + "\n", "phone": pii["phone"] * 20})
    r = _post(server, writer, merchant_id, bad)
    body = _assert_problem(r, 400, "validation-error")
    assert {e["field"] for e in body["errors"]} == {"customer.email", "customer.phone"}, body
    assert not any(n in r.text for n in needles), r.text
    # A body that is not JSON is not echoed either: an unterminated string, a raw control
    # character and a bad escape inside a string holding PII.
    text = json.dumps(_order(customer={"ref": ref, **pii}))
    end = text.index(pii["phone"]) + len(pii["phone"])
    for broken in (text[:end], text[:end] + "\t" + text[end:], text[:end] + "\\x" + text[end:]):
        r = requests.post(f"{server.url}/v1/merchants/{merchant_id}/orders", data=broken,
                          headers=headers(writer, {"Content-Type": "application/json"}),
                          timeout=10)
        _assert_problem(r, 400, "malformed-json")
        assert not any(n in r.text for n in needles), r.text

    stored = _db(stack, """
        SELECT count(*), min(length(ciphertext)), min(length(nonce)) FROM order_pii
        WHERE merchant_id = %s""", merchant_id)[0]
    assert stored[0] == 3 and stored[1] > 16 and stored[2] == 12, stored
    assert _rows_containing(stack, needles) == {}
    _replica_caught_up(stack)
    assert _rows_containing(stack, needles, replica=True) == {}
    assert _redis_holding(stack, needles) == []
    log = server.log_since(start)
    assert log.count('"status"') >= 10, log[-2000:]  # the requests above were logged here
    assert not any(n in log for n in needles), "PII in the server log"


# ---------------------------------------------------------------------------------------------
# pii:read


def test_customer_only_with_pii_read(server, make_token, merchant_id):
    _merchant(server, make_token, merchant_id)
    writer, reader, _, plain = _tokens(make_token, merchant_id)
    writer_pii = make_token(scope="orders:write orders:read pii:read", merchants=[merchant_id])
    ref = f"c-{uuid.uuid4().hex[:10]}"
    partial = {"ref": ref, "email": _canary("e") + "@example.com"}
    with_pii = _order(customer=partial)
    ref_only = _order(customer={"ref": ref})
    no_customer = _order()

    r = _post(server, writer, merchant_id, with_pii)
    assert r.status_code == 201, r.text
    assert "customer" not in r.json() and partial["email"] not in r.text
    for body in (ref_only, no_customer):
        r = _post(server, writer_pii, merchant_id, body)
        assert r.status_code == 201, r.text
        assert r.json()["customer"] is None, r.text

    r = _get(server, plain, merchant_id, with_pii["order_id"])
    assert r.status_code == 200 and "customer" not in r.json(), r.text
    assert partial["email"] not in r.text
    r = _get(server, reader, merchant_id, with_pii["order_id"])
    assert r.status_code == 200, r.text
    assert r.json()["customer"] == {"name": None, "email": partial["email"], "phone": None,
                                    "address": None}
    assert r.json()["customer_ref"] == ref
    assert r.headers.get("Cache-Control") == "no-store", r.headers
    for body in (ref_only, no_customer):
        r = _get(server, reader, merchant_id, body["order_id"])
        assert r.status_code == 200 and r.json()["customer"] is None, r.text

    # The 201 and the replayed 200 of a pii:read writer carry what was stored.
    pii = _pii()
    again = _order(customer={"ref": ref, **pii})
    first = _post(server, writer_pii, merchant_id, again)
    assert first.status_code == 201 and first.json()["customer"] == pii, first.text
    replay = _post(server, writer_pii, merchant_id, again)
    assert replay.status_code == 200, replay.text
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json() == first.json()
    assert "customer" not in _post(server, writer, merchant_id, again).json()


def test_pii_routes_need_their_scopes(server, make_token, merchant_ids):
    mine, other = merchant_ids(), merchant_ids()
    _merchant(server, make_token, mine)
    ref = "c-anyone"
    no_pii = make_token(scope="orders:read orders:write metrics:read", merchants=[mine])
    _assert_problem(_export(server, no_pii, mine, ref), 403, "forbidden")
    _assert_problem(_erase(server, no_pii, mine, ref), 403, "forbidden")
    reader = make_token(scope="pii:read", merchants=[mine])
    _assert_problem(_erase(server, reader, mine, ref), 403, "forbidden")
    elsewhere = make_token(scope="pii:read customers:erase", merchants=[other])
    _assert_problem(_export(server, elsewhere, mine, ref), 403, "forbidden")
    _assert_problem(_erase(server, elsewhere, mine, ref), 403, "forbidden")


# ---------------------------------------------------------------------------------------------
# a ciphertext moved to another row


def test_ciphertext_moved_to_another_order_does_not_decrypt(server, stack, make_token,
                                                            merchant_id):
    _merchant(server, make_token, merchant_id)
    writer, reader, _, _ = _tokens(make_token, merchant_id)
    ref = f"c-{uuid.uuid4().hex[:10]}"
    a, b = _pii("a"), _pii("b")
    order_a = _order(customer={"ref": ref, **a}, hours=30)
    order_b = _order(customer={"ref": ref, **b}, hours=29)
    for body in (order_a, order_b):
        assert _post(server, writer, merchant_id, body).status_code == 201
    assert _get(server, reader, merchant_id, order_a["order_id"]).json()["customer"] == a

    # Swap the two rows' nonce and ciphertext, as someone with write access to the table could.
    _db(stack, """
        UPDATE order_pii p SET nonce = q.nonce, ciphertext = q.ciphertext
        FROM order_pii q WHERE p.merchant_id = %s AND q.merchant_id = p.merchant_id
        AND p.order_id IN (%s, %s) AND q.order_id IN (%s, %s) AND q.order_id <> p.order_id""",
        merchant_id, order_a["order_id"], order_b["order_id"], order_a["order_id"],
        order_b["order_id"])
    _replica_caught_up(stack)
    start = server.log_size()
    for body in (order_a, order_b):
        r = _get(server, reader, merchant_id, body["order_id"])
        assert r.status_code == 200, r.text
        assert r.json()["customer"] is None, r.text
        assert a["email"] not in r.text and b["email"] not in r.text
    exported = _export(server, reader, merchant_id, ref)
    assert exported.status_code == 200, exported.text
    assert exported.json()["customer"] is None, exported.text
    assert set(exported.json()["order_ids"]) == {order_a["order_id"], order_b["order_id"]}
    log = server.log_since(start)
    assert "does not authenticate" in log
    assert a["email"] not in log and b["email"] not in log

    # A later order of the customer is readable again, and is what the export shows.
    c = _pii("c")
    order_c = _order(customer={"ref": ref, **c}, hours=28)
    assert _post(server, writer, merchant_id, order_c).status_code == 201
    assert _export(server, reader, merchant_id, ref).json()["customer"] == c


# ---------------------------------------------------------------------------------------------
# export and erasure


def test_export_then_erasure_keeps_orders_and_metrics(server, stack, make_token, merchant_id):
    _merchant(server, make_token, merchant_id)
    writer, reader, eraser, _ = _tokens(make_token, merchant_id)
    ref = f"c-{uuid.uuid4().hex[:10]}"
    old, new = _pii("old"), _pii("new")
    orders = [_order(customer={"ref": ref, **old}, hours=50),
              _order(customer={"ref": ref}, hours=40),
              _order(customer={"ref": ref, **new}, hours=30),
              _order(customer={"ref": f"{ref}-other", **_pii()}, hours=20)]
    for body in orders:
        assert _post(server, writer, merchant_id, body).status_code == 201
    mine = [o["order_id"] for o in orders[:3]]

    r = _export(server, reader, merchant_id, ref)
    assert r.status_code == 200, r.text
    assert r.headers.get("Cache-Control") == "no-store"
    body = r.json()
    assert set(body) == EXPORT_FIELDS, body
    assert body == {"merchant_id": merchant_id, "customer_ref": ref, "customer": new,
                    "erased_at": None, "order_ids": mine}, body

    before_orders = {o: _get(server, reader, merchant_id, o).json() for o in mine}
    before_sales = _sales(server, make_token, merchant_id)
    r = _erase(server, eraser, merchant_id, ref)
    assert r.status_code == 204, r.text
    assert r.content == b""

    erased = _export(server, reader, merchant_id, ref)
    assert erased.status_code == 200, erased.text
    after = erased.json()
    assert after["customer"] is None and after["order_ids"] == mine, after
    assert UTC_RE.match(after["erased_at"] or ""), after
    assert old["email"] not in erased.text and new["email"] not in erased.text
    for order_id in mine:
        got = _get(server, reader, merchant_id, order_id)
        assert got.status_code == 200, got.text
        assert got.json()["customer"] is None, got.text
        assert {k: v for k, v in got.json().items() if k != "customer"} == \
            {k: v for k, v in before_orders[order_id].items() if k != "customer"}
    after_sales = _sales(server, make_token, merchant_id)
    assert after_sales["buckets"] == before_sales["buckets"]
    assert _db(stack, "SELECT count(*) FROM order_pii WHERE merchant_id = %s AND customer_ref = %s",
               merchant_id, ref) == [(0,)]
    assert _db(stack, "SELECT secret IS NULL, erased_at IS NOT NULL FROM customers "
               "WHERE merchant_id = %s AND customer_ref = %s", merchant_id, ref) == [(True, True)]
    # Another customer of the merchant is untouched.
    assert _export(server, reader, merchant_id, f"{ref}-other").json()["customer"] is not None

    # Erasing again changes nothing; later orders of an erased customer keep no PII.
    assert _erase(server, eraser, merchant_id, ref).status_code == 204
    assert _export(server, reader, merchant_id, ref).json()["erased_at"] == after["erased_at"]
    writer_pii = make_token(scope="orders:write pii:read", merchants=[merchant_id])
    late = _order(customer={"ref": ref, **_pii("late")}, hours=10)
    r = _post(server, writer_pii, merchant_id, late)
    assert r.status_code == 201, r.text
    assert r.json()["customer"] is None, r.text
    assert _db(stack, "SELECT count(*) FROM order_pii WHERE merchant_id = %s AND customer_ref = %s",
               merchant_id, ref) == [(0,)]
    final = _export(server, reader, merchant_id, ref).json()
    assert final["customer"] is None and final["order_ids"] == mine + [late["order_id"]]


def test_erasing_a_customer_known_only_from_orders(server, stack, make_token, merchant_id):
    _merchant(server, make_token, merchant_id)
    writer, reader, eraser, _ = _tokens(make_token, merchant_id)
    ref = f"c-{uuid.uuid4().hex[:10]}"
    first = _order(customer={"ref": ref}, hours=30)
    assert _post(server, writer, merchant_id, first).status_code == 201
    r = _export(server, reader, merchant_id, ref)
    assert r.status_code == 200, r.text
    assert r.json() == {"merchant_id": merchant_id, "customer_ref": ref, "customer": None,
                        "erased_at": None, "order_ids": [first["order_id"]]}
    assert _erase(server, eraser, merchant_id, ref).status_code == 204
    assert UTC_RE.match(_export(server, reader, merchant_id, ref).json()["erased_at"] or "")
    # PII given after the erasure is not stored.
    late = _order(customer={"ref": ref, **_pii()}, hours=20)
    assert _post(server, writer, merchant_id, late).status_code == 201
    assert _get(server, reader, merchant_id, late["order_id"]).json()["customer"] is None
    assert _db(stack, "SELECT count(*) FROM order_pii WHERE merchant_id = %s",
               merchant_id) == [(0,)]


def test_unknown_customer_erase_is_204_export_is_404(server, stack, make_token, merchant_ids):
    merchant_id = merchant_ids()
    _merchant(server, make_token, merchant_id)
    _, reader, eraser, _ = _tokens(make_token, merchant_id)
    ref = f"c-never-{uuid.uuid4().hex[:8]}"
    _assert_problem(_export(server, reader, merchant_id, ref), 404, "not-found")
    assert _erase(server, eraser, merchant_id, ref).status_code == 204
    assert _erase(server, eraser, merchant_id, ref).status_code == 204
    _assert_problem(_export(server, reader, merchant_id, ref), 404, "not-found")
    assert _db(stack, "SELECT count(*) FROM customers WHERE merchant_id = %s",
               merchant_id) == [(0,)]
    # Odd references are just customers never seen.
    for odd in ("x" * 300, "a b/c"):
        assert _erase(server, eraser, merchant_id, odd).status_code == 204
        _assert_problem(_export(server, reader, merchant_id, odd), 404, "not-found")
    # An unknown merchant is another matter.
    nobody = merchant_ids()
    token = make_token(scope="customers:erase pii:read", merchants=[nobody])
    _assert_problem(_erase(server, token, nobody, ref), 404, "not-found")
    _assert_problem(_export(server, token, nobody, ref), 404, "not-found")


def test_concurrent_writes_and_an_erasure_leave_no_readable_pii(server, stack, make_token,
                                                                merchant_id):
    """40 orders of one new customer written concurrently (several groups, several writers)
    share one secret; an erasure racing with 40 more leaves no ciphertext behind: a group
    either commits before the erasure (whose delete then sees its rows) or finds the secret
    gone."""
    _merchant(server, make_token, merchant_id)
    writer, reader, eraser, _ = _tokens(make_token, merchant_id)
    ref = f"c-{uuid.uuid4().hex[:10]}"
    first = [_order(customer={"ref": ref, **_pii()}) for _ in range(40)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda b: _post(server, writer, merchant_id, b).status_code, first))
    assert codes == [201] * 40, codes
    assert _db(stack, "SELECT count(*), count(DISTINCT secret) FROM customers "
               "WHERE merchant_id = %s", merchant_id) == [(1, 1)]
    assert _db(stack, "SELECT count(*) FROM order_pii WHERE merchant_id = %s",
               merchant_id) == [(40,)]
    for body in first[:5]:
        got = _get(server, reader, merchant_id, body["order_id"]).json()["customer"]
        assert got == {k: v for k, v in body["customer"].items() if k != "ref"}

    second = [_order(customer={"ref": ref, **_pii()}) for _ in range(40)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        posts = [pool.submit(_post, server, writer, merchant_id, b) for b in second]
        erased = pool.submit(_erase, server, eraser, merchant_id, ref)
        codes = [f.result().status_code for f in posts]
        assert erased.result().status_code == 204
    assert codes == [201] * 40, codes
    # Any group that committed after the erasure found the secret gone and kept no PII.
    assert _db(stack, "SELECT count(*) FROM order_pii WHERE merchant_id = %s",
               merchant_id) == [(0,)]
    exported = _export(server, reader, merchant_id, ref).json()
    assert exported["customer"] is None and len(exported["order_ids"]) == 80


# ---------------------------------------------------------------------------------------------
# idempotency covers the PII


def test_same_order_with_other_pii_is_409_same_pii_is_200(server, stack, make_token,
                                                         merchant_id):
    _merchant(server, make_token, merchant_id)
    writer, _, _, _ = _tokens(make_token, merchant_id)
    ref = f"c-{uuid.uuid4().hex[:10]}"
    pii = _pii()
    body = _order(customer={"ref": ref, **pii})
    first = _post(server, writer, merchant_id, body)
    assert first.status_code == 201, first.text
    same = json.loads(json.dumps(body))
    same["customer"] = dict(reversed(list(same["customer"].items())))  # key order is no content
    r = _post(server, writer, merchant_id, same)
    assert r.status_code == 200 and r.headers.get("Idempotent-Replayed") == "true", r.text
    assert r.json() == first.json()
    for change in ({"email": "someone.else@example.com"}, {"phone": None}, {"address": "x"}):
        changed = dict(body, customer={**body["customer"], **change})
        _assert_problem(_post(server, writer, merchant_id, changed), 409, "conflict")
    _assert_problem(_post(server, writer, merchant_id, dict(body, customer={"ref": ref})), 409,
                    "conflict")
    # The stored hash is a hash: nothing of the PII is in it.
    stored = _db(stack, "SELECT encode(content_hash, 'hex') FROM order_keys "
                 "WHERE merchant_id = %s", merchant_id)
    assert len(stored) == 1 and len(stored[0][0]) == 64
    assert _db(stack, "SELECT count(*) FROM order_pii WHERE merchant_id = %s",
               merchant_id) == [(1,)]


# ---------------------------------------------------------------------------------------------
# serve needs a master key


def _serve_briefly(server, env, timeout=20):
    """Runs `cangrejo serve` with env; returns (exit code or None if still running, output)."""
    proc = subprocess.run([server.binary, "serve"], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("change,named", [
    ({"PII_MASTER_KEY": None}, "PII_MASTER_KEY is required"),
    ({"PII_MASTER_KEY": ""}, "PII_MASTER_KEY is required"),
    ({"PII_MASTER_KEY": "not base64 at all!"}, "PII_MASTER_KEY must be"),
    ({"PII_MASTER_KEY": "c2hvcnQta2V5LXNlY3JldA=="}, "PII_MASTER_KEY must be"),  # 16 bytes
    ({"PII_MASTER_KEY": "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl9g"}, "PII_MASTER_KEY must be"),
    ({"PII_MASTER_KEY_ID": "key one"}, "PII_MASTER_KEY_ID"),
    ({"PII_MASTER_KEY_ID": "k" * 33}, "PII_MASTER_KEY_ID"),
], ids=["missing", "empty", "not-base64", "16-bytes", "33-bytes", "id-space", "id-33-chars"])
def test_serve_refuses_to_start_without_a_valid_master_key(server, change, named):
    env = dict(server.env, CANGREJO_LISTEN=f"127.0.0.1:{free_port()}")
    for name, value in change.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    code, output = _serve_briefly(server, env)
    assert code not in (0, None), output
    assert named in output, output
    assert not sanitizer_reports(output), output
    key = change.get("PII_MASTER_KEY")
    if key:
        assert key not in output, "the key was echoed"


def test_serve_reads_the_master_key_from_a_file(server, stack, tmp_path):
    path = tmp_path / "pii.key"
    path.write_text(server.env["PII_MASTER_KEY"] + "\n")
    os.chmod(path, 0o600)
    port = free_port()
    env = dict(server.env, CANGREJO_LISTEN=f"127.0.0.1:{port}", PII_MASTER_KEY_FILE=str(path))
    env.pop("PII_MASTER_KEY")
    both = dict(env, PII_MASTER_KEY=server.env["PII_MASTER_KEY"])
    code, output = _serve_briefly(server, both)
    assert code not in (0, None) and "PII_MASTER_KEY_FILE" in output, output
    proc = subprocess.Popen([server.binary, "serve"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/readyz", 30, proc=proc), \
            proc.stdout.read().decode() if proc.poll() is not None else "not ready"
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert not sanitizer_reports(output), output
