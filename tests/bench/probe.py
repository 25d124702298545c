"""Freshness probe: how long after its 2xx an order shows in every metric.

One client, one order at a time, for a merchant of its own (so it knows exactly what each
metric must show): it posts a delivery order with the SKU FRESH-PROBE, notes when the 201
arrived, then polls sales (orders), products (FRESH-PROBE's quantity) and deliveries
(deliveries) over the days around now in UTC, each until it shows the new order, and records
the time until the last of the three did. Meant to run while another client loads ingestion.
"""
import datetime as dt
import json
import time

import dataset

POLL_PAUSE_S = 0.002  # between two rounds of polls: ~ms resolution without hammering
PROBE_PAUSE_S = 0.02  # between two probes
GIVE_UP_S = 10.0


def _range():
    today = dt.datetime.now(dt.timezone.utc).date()
    return f"from={today - dt.timedelta(days=1)}&to={today + dt.timedelta(days=2)}&tz=UTC"


def _get(client, path):
    status, body = client.request("GET", path)
    if status != 200:
        raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
    return json.loads(body)


def _seen(client, merchant, n):
    """Which of the three metrics show the first n probe orders."""
    base = f"/v1/merchants/{merchant}/metrics"
    r = _range()
    return {
        "sales": lambda: sum(b["orders"] for b in _get(client, f"{base}/sales?{r}")["buckets"])
        >= n,
        "products": lambda: any(
            p["sku"] == "FRESH-PROBE" and p["quantity"] >= n
            for p in _get(client, f"{base}/products?{r}&sort=quantity&limit=5")["products"]),
        "deliveries": lambda: sum(
            b["deliveries"] for b in _get(client, f"{base}/deliveries?{r}")["buckets"]) >= n,
    }


def _order(run, i):
    placed = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({
        "order_id": f"fresh-{run}-{i}", "store_id": 1, "channel": "online",
        "fulfillment": "delivery", "placed_at": placed, "currency": "EUR",
        "items": [{"sku": "FRESH-PROBE", "name": "Freshness probe", "quantity": 1,
                   "unit_price_cents": 500}]})


def run(port, token, merchant, run_id, seconds):
    """Probes for about `seconds`; returns the delays in ms and what went wrong, if anything."""
    client = dataset.Client(port, token, timeout=30)
    delays, per_metric, not_visible = [], {"sales": [], "products": [], "deliveries": []}, 0
    deadline = time.monotonic() + seconds
    i = 0
    try:
        while time.monotonic() < deadline:
            i += 1
            status, body = client.request("POST", f"/v1/merchants/{merchant}/orders",
                                          _order(run_id, i))
            acked = time.monotonic()
            if status != 201:
                raise RuntimeError(f"probe order {i}: {status} {body[:200]!r}")
            pending = _seen(client, merchant, i)
            while pending and time.monotonic() - acked < GIVE_UP_S:
                for name, check in list(pending.items()):
                    if check():
                        per_metric[name].append((time.monotonic() - acked) * 1000)
                        del pending[name]
                if pending:
                    time.sleep(POLL_PAUSE_S)
            if pending:
                not_visible += 1
                delays.append(GIVE_UP_S * 1000)
            else:
                delays.append((time.monotonic() - acked) * 1000)
            time.sleep(PROBE_PAUSE_S)
    finally:
        client.close()
    return {"delays_ms": delays, "per_metric_ms": per_metric, "not_visible": not_visible}
