"""Retention of raw orders: `cangrejo retention` drops the monthly partitions older than
ORDER_RETENTION_MONTHS (and what refers to their orders) while every metric stays the same, and
a server with a retention refuses orders older than its window."""

import datetime as dt
import os
import subprocess

import requests

from helpers import headers

SCOPE = "merchants:admin orders:write orders:read metrics:read"


def _months_ago(months, day=15):
    today = dt.date.today()
    total = today.year * 12 + today.month - 1 - months
    return dt.datetime(total // 12, total % 12 + 1, day, 12, tzinfo=dt.timezone.utc)


def _post(server, token, merchant_id, order_id, placed):
    return requests.post(f"{server.url}/v1/merchants/{merchant_id}/orders", headers=headers(token),
                         json={"order_id": order_id, "store_id": 1, "channel": "pos",
                               "fulfillment": "pickup", "placed_at": placed.isoformat(),
                               "currency": "EUR",
                               "items": [{"sku": "S", "name": "N", "quantity": 2,
                                          "unit_price_cents": 750}]}, timeout=10)


def _sales(server, token, merchant_id, start):
    r = requests.get(f"{server.url}/v1/merchants/{merchant_id}/metrics/sales",
                     params={"from": start.date().replace(day=1).isoformat(),
                             "to": (start.date().replace(day=28) + dt.timedelta(days=4))
                             .replace(day=1).isoformat(), "granularity": "month", "tz": "UTC"},
                     headers=headers(token), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["buckets"]


def _retention(server, months):
    env = dict(server.env, ORDER_RETENTION_MONTHS=str(months))
    return subprocess.run([server.binary, "retention"], env=env, capture_output=True, text=True,
                          timeout=120)


def test_retention_drops_old_orders_and_keeps_every_metric(server, stack, make_token,
                                                            merchant_id):
    token = make_token(scope=SCOPE, merchants=[merchant_id])
    assert requests.put(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(token),
                        json={"name": "Old", "timezone": "UTC", "currency": "EUR"},
                        timeout=10).status_code == 201
    old, recent = _months_ago(20), _months_ago(1)
    assert _post(server, token, merchant_id, "old-1", old).status_code == 201
    assert _post(server, token, merchant_id, "recent-1", recent).status_code == 201
    old_before = _sales(server, token, merchant_id, old)
    assert old_before[0]["orders"] == 1 and old_before[0]["net_sales_cents"] == 1500

    done = _retention(server, 12)
    assert done.returncode == 0, done.stderr
    assert "dropped" in done.stdout

    missing = requests.get(f"{server.url}/v1/merchants/{merchant_id}/orders/old-1",
                           headers=headers(token), timeout=10)
    assert missing.status_code == 404
    kept = requests.get(f"{server.url}/v1/merchants/{merchant_id}/orders/recent-1",
                        headers=headers(token), timeout=10)
    assert kept.status_code == 200
    assert _sales(server, token, merchant_id, old) == old_before  # rollups kept
    with stack.primary() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM order_keys WHERE merchant_id = %s", (merchant_id,))
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT to_regclass(%s)", (f"orders_{old:%Y_%m}",))
        assert cur.fetchone()[0] is None

    again = _retention(server, 12)
    assert again.returncode == 0 and "dropped 0 partitions" in again.stdout

    # This server keeps raw orders forever, so it takes old orders again: the partition that
    # retention dropped under it is made anew.
    assert _post(server, token, merchant_id, "old-2", old).status_code == 201


def test_retention_needs_a_retention(server):
    done = _retention(server, 0)
    assert done.returncode != 0 and "ORDER_RETENTION_MONTHS" in done.stderr


def test_a_server_with_a_retention_refuses_older_orders(server, make_token, merchant_id):
    token = make_token(scope=SCOPE, merchants=[merchant_id])
    server.stop()
    server.env["ORDER_RETENTION_MONTHS"] = "6"
    try:
        server.start()
        assert requests.put(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(token),
                            json={"name": "Window", "timezone": "UTC", "currency": "EUR"},
                            timeout=10).status_code == 201
        r = _post(server, token, merchant_id, "too-old", _months_ago(7))
        assert r.status_code == 400, r.text
        assert [e["field"] for e in r.json()["errors"]] == ["placed_at"]
        assert _post(server, token, merchant_id, "in-window", _months_ago(5)).status_code == 201
    finally:
        server.stop()
        del server.env["ORDER_RETENTION_MONTHS"]
        server.start()
