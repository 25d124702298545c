"""`cangrejo seed`: demo data written through the API's validation and ingest path,
deterministic for a seed, and safe to run twice (the second run stores nothing new)."""

import datetime as dt
import json
import re

import requests

from helpers import headers


def _seeded(output):
    m = re.search(r"seeded 3 merchants: (\d+) new orders", output)
    assert m, output
    return int(m.group(1))


def test_seed_is_realistic_deterministic_and_idempotent(server, stack, make_token):
    code, out = server.run_command("seed", "--days", "3", "--orders-per-day", "20", "--seed", "7")
    assert code == 0, out
    first = _seeded(out)
    code, out = server.run_command("seed", "--days", "3", "--orders-per-day", "20", "--seed", "7")
    assert code == 0, out
    assert _seeded(out) == 0  # the same orders again: all duplicates, nothing counted twice
    assert first > 0

    with stack.primary() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT channel), count(DISTINCT fulfillment), "
                    "count(promo_code) FROM orders WHERE merchant_id IN (1, 2, 3)")
        orders, channels, fulfillments, promos = cur.fetchone()
        cur.execute("SELECT coalesce(sum(orders), 0) FROM sales_rollup_15m "
                    "WHERE merchant_id IN (1, 2, 3)")
        rolled_up = cur.fetchone()[0]
    assert orders >= first and rolled_up == orders  # every stored order counted exactly once
    assert channels == 2 and fulfillments == 3 and promos > 0

    token = make_token(scope="metrics:read merchants:admin", merchants=[1, 2, 3])
    merchant = requests.get(f"{server.url}/v1/merchants/3", headers=headers(token), timeout=10)
    assert merchant.json()["timezone"] == "Asia/Kathmandu"
    today = dt.date.today()
    r = requests.get(f"{server.url}/v1/merchants/1/metrics/sales", headers=headers(token),
                     params={"from": (today - dt.timedelta(days=5)).isoformat(),
                             "to": (today + dt.timedelta(days=2)).isoformat()}, timeout=10)
    assert r.status_code == 200, r.text
    body = json.loads(r.text)
    assert body["currency"] == "EUR"
    with stack.primary() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders WHERE merchant_id = 1")
        assert sum(b["orders"] for b in body["buckets"]) == cur.fetchone()[0] > 0
