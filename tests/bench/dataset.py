"""The benchmark's orders: realistic, deterministic, and written the way clients write them.

- `seed_plan` describes the data set: many small merchants with a month of orders each, and one
  big merchant with a year of them (about a million in the full mode). `seed` generates those
  orders and uploads them through the server's own batch endpoint (`POST .../order-batches`,
  10,000 orders a request, NDJSON), then posts couriers' events for the big merchant's recent
  delivery orders and cancels 1% of its last month, so every row, rollup and data version is
  exactly what the API makes; re-running it is harmless (orders and events are idempotent).
- `order_json` is one order as NDJSON text; `batch_files` writes one batch both as NDJSON for
  the server and as CSV of the very same rows for `psql \\copy` (the batch baseline).
"""
import csv
import datetime as dt
import hashlib
import http.client
import json
import random
import threading
import time

BIG_MERCHANT = 1
SMALL_MERCHANT_FIRST = 2
BATCH_MAX = 10_000

# (sku, name, unit price in minor units, weight)
MENU = [
    ("PIZ-MARG-M", "Margherita M", 950, 30), ("PIZ-MARG-L", "Margherita L", 1150, 20),
    ("PIZ-DIAV-L", "Diavola L", 1350, 15), ("PIZ-4FOR-L", "Quattro Formaggi L", 1450, 10),
    ("PIZ-PROS-L", "Prosciutto L", 1400, 9), ("PIZ-VEGE-M", "Vegetariana M", 1050, 8),
    ("CAL-RIC", "Calzone ricotta", 1250, 8), ("CAL-SPIN", "Calzone spinaci", 1250, 5),
    ("PAS-CARB", "Carbonara", 1100, 12), ("PAS-BOLO", "Bolognese", 1050, 11),
    ("PAS-PEST", "Trofie al pesto", 1000, 6), ("ANT-BRUS", "Bruschetta", 550, 10),
    ("ANT-ARAN", "Arancini", 650, 7), ("SAL-CAES", "Caesar salad", 850, 6),
    ("SAL-CAPR", "Caprese", 800, 5), ("BEV-COLA", "Cola 33cl", 250, 35),
    ("BEV-WATR", "Water 50cl", 180, 25), ("BEV-BIRRA", "Birra Moretti", 350, 20),
    ("BEV-VINO", "Vino rosso, glass", 450, 9), ("BEV-ESPR", "Espresso", 150, 14),
    ("DES-TIRA", "Tiramisu", 550, 12), ("DES-PANA", "Panna cotta", 500, 7),
    ("DES-GELA", "Gelato, two scoops", 450, 8), ("SID-FOCA", "Focaccia", 400, 9),
]
PROMOS = ["2X1TUESDAY", "WELCOME10", "LUNCH5", "FAMILY15"]
# How busy each local hour is (relative): lunch and dinner peaks.
HOUR_WEIGHT = [0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 3, 6, 14, 16, 10, 4, 3, 4, 8, 14, 18, 15, 8, 3]
# Small merchants' zones and currencies (whole-hour and 30/45-minute zones alike).
LOCALES = [("Europe/Madrid", "EUR", 1), ("America/New_York", "USD", -5),
           ("Europe/London", "GBP", 0), ("Asia/Kolkata", "INR", 5.5),
           ("America/Sao_Paulo", "BRL", -3), ("Asia/Kathmandu", "NPR", 5.75),
           ("Australia/Sydney", "AUD", 10), ("America/Mexico_City", "MXN", -6)]


def seed_plan(smoke):
    """What the data set holds; its JSON form marks a data directory as seeded."""
    if smoke:
        return {"version": 2, "small_merchants": 20, "small_orders": 50, "small_days": 31,
                "big_orders_per_day": 400, "big_days": 40, "big_stores": 4}
    return {"version": 2, "small_merchants": 1000, "small_orders": 200, "small_days": 31,
            "big_orders_per_day": 2740, "big_days": 365, "big_stores": 10}


def _weighted(rng, cumulative, total):
    return _bisect(cumulative, rng.random() * total)


def _bisect(cumulative, x):
    lo, hi = 0, len(cumulative) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cumulative[mid] > x:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _cumulative(weights):
    out, s = [], 0
    for w in weights:
        s += w
        out.append(s)
    return out, s


MENU_CUM = _cumulative([m[3] for m in MENU])
HOUR_CUM = _cumulative(HOUR_WEIGHT)


class Order:
    """One order's fields, enough to write it as API JSON and as table rows."""
    __slots__ = ("order_id", "store_id", "channel", "fulfillment", "placed_epoch", "placed",
                 "currency", "items", "discount", "tax", "promo")

    def __init__(self, order_id, store_id, channel, fulfillment, placed_epoch, currency, items,
                 discount, tax, promo):
        self.order_id, self.store_id, self.channel = order_id, store_id, channel
        self.fulfillment, self.placed_epoch, self.currency = fulfillment, placed_epoch, currency
        self.placed = dt.datetime.fromtimestamp(placed_epoch, dt.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        self.items, self.discount, self.tax, self.promo = items, discount, tax, promo

    @property
    def gross(self):
        return sum(q * p for _, _, q, p in self.items)

    def json(self):
        items = ",".join(
            f'{{"sku":"{s}","name":"{n}","quantity":{q},"unit_price_cents":{p}}}'
            for s, n, q, p in self.items)
        promo = f',"promo_code":"{self.promo}"' if self.promo else ""
        return (f'{{"order_id":"{self.order_id}","store_id":{self.store_id},'
                f'"channel":"{self.channel}","fulfillment":"{self.fulfillment}",'
                f'"placed_at":"{self.placed}","currency":"{self.currency}","items":[{items}],'
                f'"discount_cents":{self.discount},"tax_cents":{self.tax}{promo}}}')


def random_order(rng, order_id, store_id, placed_epoch, currency, price_scale=1):
    """A realistic order: 1-4 lines from the menu, 12% with a promotion (10% off)."""
    items = []
    for _ in range(1 + int(rng.random() * 4)):
        sku, name, price, _w = MENU[_weighted(rng, *MENU_CUM)]
        items.append((sku, name, 2 if rng.random() < 0.1 else 1, price * price_scale))
    gross = sum(q * p for _, _, q, p in items)
    online = rng.random() < 0.55
    if online:
        fulfillment = "delivery" if rng.random() < 0.7 else "pickup"
    else:
        fulfillment = "dine_in" if rng.random() < 0.6 else "pickup"
    promo = PROMOS[int(rng.random() * len(PROMOS))] if rng.random() < 0.12 else None
    discount = gross // 10 if promo else 0
    return Order(order_id, store_id, "online" if online else "pos", fulfillment, placed_epoch,
                 currency, items, discount, (gross - discount) // 10, promo)


def _placed_epoch(rng, day_start, utc_offset_h, end):
    hour = _weighted(rng, *HOUR_CUM)
    t = day_start + int((hour - utc_offset_h) * 3600) + int(rng.random() * 3600)
    return min(t, end - 60 - int(rng.random() * 3600))


def big_merchant_orders(plan, end):
    """The big merchant's orders: a year (full mode) ending an hour before `end` (UTC
    seconds), busier on weekends, at lunch and dinner time in Europe/Madrid."""
    rng = random.Random(1)
    first_day = (end // 86400 - plan["big_days"]) * 86400
    serial = 0
    for d in range(plan["big_days"]):
        day = first_day + d * 86400
        weekend = (day // 86400 + 3) % 7 >= 5  # 1970-01-01 was a Thursday
        for _ in range(plan["big_orders_per_day"] * (13 if weekend else 9) // 10):
            serial += 1
            store = 100 + 1 + int(rng.random() * plan["big_stores"])
            yield random_order(rng, f"s1-{serial:07d}", store, _placed_epoch(rng, day, 1, end),
                               "EUR")


def small_merchant_orders(plan, merchant, end):
    """One small merchant's month: `small_orders` orders over `small_days` days."""
    rng = random.Random(merchant)
    tz, currency, offset = LOCALES[merchant % len(LOCALES)]
    scale = 80 if currency in ("INR", "NPR") else 1
    first_day = (end // 86400 - plan["small_days"]) * 86400
    for serial in range(1, plan["small_orders"] + 1):
        day = first_day + int(rng.random() * plan["small_days"]) * 86400
        yield random_order(rng, f"s{merchant}-{serial:05d}", merchant * 100 + 1 + serial % 2,
                           _placed_epoch(rng, day, offset, end), currency, scale)


def merchants(plan):
    """(merchant_id, name, timezone, currency) of every merchant of the data set."""
    yield BIG_MERCHANT, "Big pizzeria (a million orders)", "Europe/Madrid", "EUR"
    for m in range(SMALL_MERCHANT_FIRST, SMALL_MERCHANT_FIRST + plan["small_merchants"]):
        tz, currency, _ = LOCALES[m % len(LOCALES)]
        yield m, f"Merchant {m}", tz, currency


class Client:
    """A keep-alive HTTP/1.1 client of the server (one per thread)."""

    def __init__(self, port, token, timeout=120):
        self.port, self.token, self.timeout = port, token, timeout
        self.conn = None

    def request(self, method, path, body=None, content_type="application/json"):
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn:
            self.conn.close()


def put_merchant(client, merchant_id, name, tz, currency):
    body = json.dumps({"name": name, "timezone": tz, "currency": currency})
    status, data = client.request("PUT", f"/v1/merchants/{merchant_id}", body)
    if status not in (200, 201):
        raise RuntimeError(f"PUT merchant {merchant_id}: {status} {data[:300]!r}")


def upload(client, merchant_id, orders):
    """Posts orders (a list of Order) as one NDJSON batch; returns the parsed result."""
    body = "\n".join(o.json() for o in orders).encode()
    status, data = client.request("POST", f"/v1/merchants/{merchant_id}/order-batches", body,
                                  "application/x-ndjson")
    if status != 200:
        raise RuntimeError(f"batch for merchant {merchant_id}: {status} {data[:300]!r}")
    result = json.loads(data)
    if result.get("rejected"):
        raise RuntimeError(f"batch for merchant {merchant_id} rejected orders: "
                           f"{json.dumps(result['rejected'][:3])}")
    return result


def _batches(plan, end, later):
    """(merchant, [orders]) uploads of the whole data set, at most BATCH_MAX orders each.
    Collects into `later` what follows the uploads: couriers' events of the big merchant's
    delivery orders of the last two days, and cancellations of 1% of its last month."""
    chunk = []
    rng = random.Random(2)
    for o in big_merchant_orders(plan, end):
        if o.placed_epoch >= end - 30 * 86400 and rng.random() < 0.01:
            later.append(("POST", f"/v1/merchants/{BIG_MERCHANT}/orders/{o.order_id}/cancel",
                          None))
        elif o.fulfillment == "delivery" and o.placed_epoch >= end - 2 * 86400:
            later += delivery_events(rng, o, end)
        chunk.append(o)
        if len(chunk) == BATCH_MAX:
            yield BIG_MERCHANT, chunk
            chunk = []
    if chunk:
        yield BIG_MERCHANT, chunk
    for m, *_ in merchants(plan):
        if m != BIG_MERCHANT:
            yield m, list(small_merchant_orders(plan, m, end))


def delivery_events(rng, order, end):
    """A courier's events for a delivery order (assigned, picked up, then delivered or, now
    and then, failed), minutes after it was placed; those that already happened by `end`."""
    provider = ("glovo", "ubereats", "deliveroo")[int(rng.random() * 3)]
    courier = f"courier-{int(rng.random() * 40)}"
    steps = [("assigned", 2 + rng.random() * 4), ("picked_up", 12 + rng.random() * 10),
             ("failed" if rng.random() < 0.05 else "delivered", 28 + rng.random() * 25)]
    out = []
    for k, (status, minutes) in enumerate(steps):
        at = order.placed_epoch + int(minutes * 60)
        if at > end:
            break
        body = json.dumps({
            "event_id": f"{order.order_id}-{k}", "provider": provider, "status": status,
            "occurred_at": dt.datetime.fromtimestamp(at, dt.timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ"), "courier_ref": courier})
        out.append(("POST", f"/v1/merchants/{BIG_MERCHANT}/orders/{order.order_id}"
                            "/delivery-events", body))
    return out


def _send_all(port, token, requests, workers):
    """Sends (method, path, body) requests from `workers` threads; each must get a 2xx."""
    lock = threading.Lock()
    jobs = iter(requests)
    errors = []

    def work():
        c = Client(port, token)
        try:
            while not errors:
                with lock:
                    job = next(jobs, None)
                if job is None:
                    return
                status, data = c.request(*job)
                if status // 100 != 2:
                    errors.append(f"{job[0]} {job[1]}: {status} {data[:200]!r}")
        except Exception as e:
            errors.append(repr(e))
        finally:
            c.close()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(errors[0])


def seed(port, token, plan, end, workers=2, log=print):
    """Creates the merchants and uploads every order through POST .../order-batches with
    `workers` concurrent uploads. Returns (accepted, duplicates)."""
    client = Client(port, token)
    for m in merchants(plan):
        put_merchant(client, *m)
    client.close()
    lock = threading.Lock()
    later = []
    jobs = _batches(plan, end, later)
    totals = {"accepted": 0, "duplicates": 0, "error": None}
    started = time.monotonic()
    last_note = [started]

    def work():
        c = Client(port, token)
        try:
            while True:
                with lock:
                    if totals["error"]:
                        return
                    try:
                        merchant, orders = next(jobs)
                    except StopIteration:
                        return
                result = upload(c, merchant, orders)
                with lock:
                    totals["accepted"] += result["accepted"]
                    totals["duplicates"] += result["duplicates"]
                    now = time.monotonic()
                    if now - last_note[0] >= 15:
                        last_note[0] = now
                        log(f"  seed: {totals['accepted'] + totals['duplicates']} orders "
                            f"after {now - started:.0f} s")
        except Exception as e:  # reported by the caller
            with lock:
                totals["error"] = e
        finally:
            c.close()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if totals["error"]:
        raise totals["error"]
    log(f"  seed: {len(later)} delivery events and cancellations")
    _send_all(port, token, later, 4)
    return totals["accepted"], totals["duplicates"]


def batch_files(n, merchant, copy_merchant, run, paths):
    """One POS upload of n orders, as NDJSON for the server (merchant) and as CSV of the same
    rows for `psql \\copy` into order_keys, orders and order_items (copy_merchant), with
    order ids unique to this run. paths: dict with ndjson, keys, orders, items."""
    rng = random.Random(7)
    end = int(time.time())
    channels, fulfillments = {"online": 0, "pos": 1}, {"pickup": 0, "delivery": 1, "dine_in": 2}
    with open(paths["ndjson"], "w") as nd, open(paths["keys"], "w", newline="") as fk, \
            open(paths["orders"], "w", newline="") as fo, \
            open(paths["items"], "w", newline="") as fi:
        keys, rows, items = csv.writer(fk), csv.writer(fo), csv.writer(fi)
        for i in range(n):
            placed = end - 120 - int(rng.random() * 6 * 3600)
            o = random_order(rng, f"pos-{run}-{i}", 100 + 1 + i % 5, placed, "EUR")
            nd.write(o.json() + "\n")
            oid = f"copy-{run}-{i}"
            gross = o.gross
            net = gross - o.discount
            keys.writerow([copy_merchant, oid, o.placed,
                           "\\x" + hashlib.sha256(o.json().encode()).hexdigest()])
            rows.writerow([copy_merchant, o.placed, oid, o.store_id, channels[o.channel],
                           fulfillments[o.fulfillment], "EUR", gross, o.discount, net, o.tax,
                           net + o.tax, sum(q for _, _, q, _ in o.items), o.promo or ""])
            for line, (sku, name, q, p) in enumerate(o.items):
                items.writerow([copy_merchant, o.placed, oid, line, sku, name, q, p])
