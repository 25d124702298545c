"""The pages the server serves itself: /docs (Swagger UI) and /dashboard (merchant dashboard).

- The vendored browser libraries in web/vendor/ are byte-identical to the pinned npm packages
  in node_modules, and web/vendor/README names their versions.
- Every page and asset is served as the file in web/ (the binary embeds them), with its content
  type, a strong ETag (If-None-Match: 304, for the gzip copy too), a cache policy, a strict
  Content-Security-Policy, nosniff; unknown assets are 404.
- In headless Chromium (tests/web/*.mjs, playwright-core): /docs renders every operation of
  /openapi.json; /dashboard, given a token, shows the totals of a merchant seeded here through
  the API, draws its charts, picks up a new order by its own refresh, explains 401/403/429/503,
  and neither page requests anything from another origin, stores the token or trips the CSP.

A screenshot of the dashboard goes to $CANGREJO_WEB_SCREENSHOT when set (docs/dashboard.png in
the README is made that way), else into a temporary file.
"""

import datetime as dt
import json
import math
import os
import random
import re
import subprocess
import threading
import zoneinfo

import pytest
import requests

from helpers import REPO_ROOT, headers, make_token

WEB = os.path.join(REPO_ROOT, "web")
NODE_MODULES = os.path.join(REPO_ROOT, "node_modules")
CSP = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
SERVED = {  # URL path -> (file under web/, content type)
    "/docs": ("docs.html", "text/html; charset=utf-8"),
    "/docs/docs.js": ("docs.js", "text/javascript; charset=utf-8"),
    "/docs/swagger-ui-bundle.js": ("vendor/swagger-ui-dist/swagger-ui-bundle.js",
                                   "text/javascript; charset=utf-8"),
    "/docs/swagger-ui.css": ("vendor/swagger-ui-dist/swagger-ui.css", "text/css; charset=utf-8"),
    "/dashboard": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/dashboard/chart.umd.js": ("vendor/chart.js/chart.umd.js", "text/javascript; charset=utf-8"),
}
VENDORED = {  # web/vendor/ file -> node_modules file
    "swagger-ui-dist/swagger-ui-bundle.js": "swagger-ui-dist/swagger-ui-bundle.js",
    "swagger-ui-dist/swagger-ui-bundle.js.LICENSE.txt":
        "swagger-ui-dist/swagger-ui-bundle.js.LICENSE.txt",
    "swagger-ui-dist/swagger-ui.css": "swagger-ui-dist/swagger-ui.css",
    "swagger-ui-dist/LICENSE": "swagger-ui-dist/LICENSE",
    "swagger-ui-dist/NOTICE": "swagger-ui-dist/NOTICE",
    "chart.js/chart.umd.js": "chart.js/dist/chart.umd.js",
    "chart.js/LICENSE.md": "chart.js/LICENSE.md",
}
NODE_TIMEOUT = 90
REFRESH_S = 2

MENU = [("TAC-PAS", "Tacos al pastor", 850), ("BUR-POL", "Burrito de pollo", 1050),
        ("QUE-SAD", "Quesadilla", 700), ("NAC-GRA", "Nachos grandes", 900),
        ("HOR-CHA", "Horchata", 350)]
ZONE = "Europe/Madrid"


def _read(path):
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------------------------
# vendored files and HTTP


def test_vendored_libraries_are_the_pinned_npm_files():
    for ours, theirs in VENDORED.items():
        assert _read(os.path.join(WEB, "vendor", ours)) == \
            _read(os.path.join(NODE_MODULES, theirs)), \
            f"web/vendor/{ours} differs from node_modules/{theirs}: bash web/vendor/refresh.sh"
    with open(os.path.join(WEB, "vendor", "README"), encoding="utf-8") as f:
        readme = f.read()
    for package in ("swagger-ui-dist", "chart.js"):
        with open(os.path.join(NODE_MODULES, package, "package.json"), encoding="utf-8") as f:
            version = json.load(f)["version"]
        assert f"npm {package} {version}" in readme, f"web/vendor/README: {package} {version}"


def test_pages_have_no_inline_script_or_style():
    for name in ("docs.html", "dashboard.html"):
        html = _read(os.path.join(WEB, name)).decode()
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), name
        assert not re.search(r"<style|\son[a-z]+=|\sstyle=", html), name


def test_pages_and_assets_are_served_with_their_headers(server):
    for path, (name, content_type) in SERVED.items():
        r = requests.get(server.url + path, headers={"Accept-Encoding": "identity"}, timeout=10)
        assert r.status_code == 200, (path, r.status_code)
        assert r.content == _read(os.path.join(WEB, name)), f"{path} is not web/{name}: rebuild"
        assert r.headers["Content-Type"] == content_type, path
        assert r.headers["Content-Security-Policy"] == CSP, path
        assert r.headers["X-Content-Type-Options"] == "nosniff", path
        assert r.headers["Referrer-Policy"] == "no-referrer", path
        page = content_type.startswith("text/html")
        assert r.headers["Cache-Control"] == ("no-cache" if page else "public, max-age=300")
        etag = r.headers["ETag"]
        assert re.fullmatch(r'"[0-9a-f]{20}"', etag), etag
        again = requests.get(server.url + path, timeout=10,
                             headers={"If-None-Match": etag, "Accept-Encoding": "identity"})
        assert again.status_code == 304 and again.content == b"", path
        assert again.headers["ETag"] == etag
        head = requests.head(server.url + path, timeout=10)
        assert head.status_code == 200 and head.content == b"", path


def test_gzip_copies_revalidate_too(server):
    r = requests.get(server.url + "/docs/swagger-ui-bundle.js", timeout=10,
                     headers={"Accept-Encoding": "gzip"})
    assert r.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in r.headers["Vary"]
    assert r.content == _read(os.path.join(WEB, SERVED["/docs/swagger-ui-bundle.js"][0]))
    assert int(r.headers["Content-Length"]) < len(r.content) // 2
    again = requests.get(server.url + "/docs/swagger-ui-bundle.js", timeout=10,
                         headers={"Accept-Encoding": "gzip", "If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304, again.status_code


def test_unknown_assets_are_404_and_pages_take_only_get(server):
    for path in ("/docs/nope.js", "/dashboard/", "/docs/docs.html",
                 "/dashboard/vendor", "/docs/swagger-ui-bundle.js.map"):
        r = requests.get(server.url + path, timeout=10)
        assert r.status_code == 404, (path, r.status_code)
    r = requests.post(server.url + "/dashboard", data="x", timeout=10)
    assert r.status_code == 405 and "GET" in r.headers["Allow"]


# ---------------------------------------------------------------------------------------------
# headless Chromium


def _node(script, *args, feed=()):
    """Runs tests/web/<script> with args, writes the `feed` lines to its stdin one at a time
    (each after the script printed a line, except the first), returns the JSON lines it
    printed. A callable in feed is called first and its string result written."""
    proc = subprocess.Popen(["node", os.path.join(REPO_ROOT, "tests", "web", script), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    watchdog = threading.Timer(NODE_TIMEOUT, proc.kill)
    watchdog.start()
    lines = []
    try:
        for i, item in enumerate(feed):
            if i > 0:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(json.loads(line))
            proc.stdin.write((item() if callable(item) else item) + "\n")
            proc.stdin.flush()
        out, err = proc.communicate()
    finally:
        watchdog.cancel()
    lines += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{err[-4000:]}"
    return lines


def test_docs_page_renders_every_operation_from_this_origin_only(server):
    spec = requests.get(server.url + "/openapi.json", timeout=10).json()
    expected = sorted((m.upper(), p) for p, ops in spec["paths"].items() for m in ops
                      if m in ("get", "put", "post", "delete", "patch"))
    (page,) = _node("docs.mjs", server.url)
    assert page["status"] == 200
    assert page["infoTitle"].startswith(spec["info"]["title"])
    assert sorted((o["method"], o["path"]) for o in page["operations"]) == expected
    assert page["servers"][0] == server.url  # "Try it out" calls the server of the page
    assert any(u.endswith("/openapi.json") for u in page["requests"])
    assert page["offsite"] == [], page["offsite"]
    assert page["csp"] == [] and page["pageErrors"] == [], (page["csp"], page["pageErrors"])
    assert [c for c in page["console"] if c.startswith("error")] == [], page["console"]


def _money(cents):
    return f"€{cents / 100:,.2f}"


def _order(rng, n, placed_at):
    items = [{"sku": sku, "name": name, "quantity": rng.randint(1, 3), "unit_price_cents": price}
             for sku, name, price in rng.sample(MENU, rng.randint(1, 3))]
    gross = sum(i["quantity"] * i["unit_price_cents"] for i in items)
    fulfillment = rng.choice(["delivery", "delivery", "pickup", "dine_in"])
    body = {"order_id": f"web-{n:04d}", "store_id": rng.choice([1, 2]),
            "channel": "online" if fulfillment == "delivery" else rng.choice(["online", "pos"]),
            "fulfillment": fulfillment, "placed_at": placed_at.isoformat(), "currency": "EUR",
            "items": items}
    promo = rng.choice([None, None, "WELCOME10", "2X1TUESDAY"])
    discount = 0
    if promo:
        body["promo_code"] = promo
        discount = gross // 10 if promo == "WELCOME10" else min(i["unit_price_cents"]
                                                                  for i in items)
        body["discount_cents"] = discount
    body["tax_cents"] = (gross - discount) // 10
    return body


def _totals(orders):
    keep = [o for o in orders if not o.get("cancelled")]
    gross = sum(i["quantity"] * i["unit_price_cents"] for o in keep for i in o["items"])
    discounts = sum(o.get("discount_cents", 0) for o in keep)
    tax = sum(o["tax_cents"] for o in keep)
    net = gross - discounts
    return {"orders": len(keep), "cancelled_orders": len(orders) - len(keep),
            "items_sold": sum(i["quantity"] for o in keep for i in o["items"]),
            "gross_sales_cents": gross, "discounts_cents": discounts, "net_sales_cents": net,
            "tax_cents": tax, "total_sales_cents": net + tax,
            "average_order_value_cents": (2 * net + len(keep)) // (2 * len(keep))}


@pytest.fixture(scope="module")
def shop(server):
    """A merchant with 40 orders over the last 6 days (products, two promo codes, deliveries
    delivered after whole minutes, failed or under way, one cancelled order), posted through
    the API; returns its id, range, tokens, the orders and the delivery outcomes."""
    mid = _new_merchant_id()
    token = _token(mid, "merchants:admin orders:write deliveries:write metrics:read")
    base = f"{server.url}/v1/merchants/{mid}"
    r = requests.put(base, headers=headers(token), timeout=10,
                     json={"name": "Taquería Cangrejo", "timezone": ZONE, "currency": "EUR"})
    assert r.status_code == 201, r.text
    rng = random.Random(20261121)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    orders = [_order(rng, n, (now - dt.timedelta(minutes=rng.randint(120, 140 * 60)))
                     .astimezone(zoneinfo.ZoneInfo(ZONE))) for n in range(40)]
    r = requests.post(f"{base}/order-batches", json={"orders": orders}, headers=headers(token),
                      timeout=60)
    assert r.status_code == 200 and r.json()["accepted"] == len(orders), r.text
    deliveries = []
    for k, o in enumerate(o for o in orders if o["fulfillment"] == "delivery"):
        status, minutes = [("delivered", 20 + 5 * (k % 4)), ("failed", 45), ("picked_up", 10)][k % 3]
        at = dt.datetime.fromisoformat(o["placed_at"]) + dt.timedelta(minutes=minutes)
        r = requests.post(f"{base}/orders/{o['order_id']}/delivery-events", headers=headers(token),
                          timeout=10, json={"event_id": f"{o['order_id']}-1", "provider": "glovo",
                                            "status": status, "occurred_at": at.isoformat()})
        assert r.status_code == 201, r.text
        deliveries.append((status, minutes))
    cancelled = next(o for o in orders if o["fulfillment"] == "pickup")
    r = requests.post(f"{base}/orders/{cancelled['order_id']}/cancel", json={},
                      headers=headers(token), timeout=10)
    assert r.status_code == 200, r.text
    cancelled["cancelled"] = True
    today = dt.datetime.now(zoneinfo.ZoneInfo(ZONE)).date()
    return {"id": mid, "base": base, "orders": orders, "deliveries": deliveries,
            "from": (today - dt.timedelta(days=6)).isoformat(),
            "to": (today + dt.timedelta(days=1)).isoformat(),
            "writer": token, "reader": _token(mid, "metrics:read")}


def _token(mid, scope):
    return make_token(scope=scope, merchants=[mid])


def _new_merchant_id():
    return random.SystemRandom().randint(10**13, 2 * 10**13)


def _api(shop, metric, **params):
    r = requests.get(f"{shop['base']}/metrics/{metric}", headers=headers(shop["reader"]),
                     params=dict({"from": shop["from"], "to": shop["to"]}, **params), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _check_sales(page, expected):
    for field, value in expected.items():
        figure = page["figures"][f"sales-{field}"]
        assert int(figure["value"]) == value, (field, figure, value)
        text = _money(value) if field.endswith("_cents") else f"{value:,}"
        assert figure["text"] == text, (field, figure["text"], text)
    sales = page["charts"]["sales-chart"]
    assert sales["sums"] == [expected["net_sales_cents"], expected["orders"]]
    assert len(sales["labels"]) == 7


def _check_charts_drawn(page):
    for name, chart in page["charts"].items():
        assert chart["width"] > 100 and chart["height"] > 100, (name, chart)
        assert chart["lit"] > 0.02 * chart["width"] * chart["height"], (name, chart)


def test_dashboard_shows_the_totals_draws_the_charts_and_refreshes(server, shop, tmp_path):
    orders = shop["orders"]
    expected = _totals(orders)
    products = _api(shop, "products", sort="net_sales", limit=10)["products"]
    promotions = _api(shop, "promotions")["promotions"]
    buckets = _api(shop, "deliveries")["buckets"]
    assert sum(b["orders"] for b in _api(shop, "sales")["buckets"]) == expected["orders"]
    screenshot = os.environ.get("CANGREJO_WEB_SCREENSHOT") or str(tmp_path / "dashboard.png")
    settings = {"token": shop["reader"], "merchant": shop["id"], "from": shop["from"],
                "to": shop["to"], "refresh": REFRESH_S, "screenshot": os.path.abspath(screenshot)}
    extra = {"order_id": "web-late", "store_id": 1, "channel": "online", "fulfillment": "pickup",
             "placed_at": dt.datetime.now(dt.timezone.utc).isoformat(), "currency": "EUR",
             "items": [{"sku": "HOR-CHA", "name": "Horchata", "quantity": 4,
                        "unit_price_cents": 350}], "tax_cents": 140}

    def post_extra():
        r = requests.post(f"{shop['base']}/orders", json=extra, headers=headers(shop["writer"]),
                          timeout=10)
        assert r.status_code == 201, r.text
        return "next"

    steps = _node("dashboard.mjs", server.url, "live", feed=[json.dumps(settings), post_extra])
    first = steps[0]
    assert first["error"] is None and first["loads"] == 1, first
    refreshed = steps[1]

    assert first["merchantName"] == "· Taquería Cangrejo (Europe/Madrid, EUR)"
    _check_sales(first, expected)
    _check_charts_drawn(first)
    assert os.path.getsize(screenshot) > 20000

    # Top products: the API's ranking, as text, and the quantities add up to the orders'.
    assert first["products"] == [[p["sku"], p["name"], f"{p['quantity']:,}",
                                  _money(p["net_sales_cents"])] for p in products]
    assert sum(p["quantity"] for p in products) == expected["items_sold"]
    assert first["charts"]["products-chart"]["sums"] == [sum(p["net_sales_cents"]
                                                             for p in products)]
    # Promotions: orders and discounts from the orders themselves, net from the API.
    kept = [o for o in orders if not o.get("cancelled") and o.get("promo_code")]
    assert first["figures"]["promotions-orders"]["value"] == str(len(kept))
    assert first["figures"]["promotions-discounts_cents"]["value"] == \
        str(sum(o["discount_cents"] for o in kept))
    assert first["figures"]["promotions-net_sales_cents"]["text"] == \
        _money(sum(p["net_sales_cents"] for p in promotions))
    assert [row[0] for row in first["promotions"]] == [p["promo_code"] for p in promotions]
    assert {row[0] for row in first["promotions"]} == {"WELCOME10", "2X1TUESDAY"}
    # Deliveries: counts from the events posted; the mean from the buckets, near the exact one.
    outcomes = shop["deliveries"]
    delivered = [m for s, m in outcomes if s == "delivered"]
    for field, value in (("deliveries", len(outcomes)), ("delivered", len(delivered)),
                         ("failed", sum(s == "failed" for s, _ in outcomes))):
        assert first["figures"][f"deliveries-{field}"]["value"] == str(value), field
    mean = float(first["figures"]["deliveries-average_delivery_minutes"]["value"])
    weighted = sum((b["average_delivery_minutes"] or 0) * b["delivered"] for b in buckets)
    assert mean == math.floor(weighted / len(delivered) * 10 + 0.5) / 10  # half up, as shown
    assert abs(mean - sum(delivered) / len(delivered)) <= 0.1
    assert first["figures"]["deliveries-average_delivery_minutes"]["text"] == f"{mean:.1f} min"

    # The page's own refresh picked up the order posted meanwhile.
    after = _totals(orders + [extra])
    assert refreshed["loads"] >= 2 and refreshed["error"] is None
    assert refreshed["waitedMs"] < 4 * REFRESH_S * 1000
    _check_sales(refreshed, after)
    _check_charts_drawn(refreshed)
    assert refreshed["offsite"] == [] and refreshed["urlsWithToken"] == []
    assert refreshed["stored"] == {"localStorage": 0, "sessionStorage": 0, "cookie": ""}
    assert refreshed["csp"] == [] and refreshed["pageErrors"] == [], refreshed
    assert [c for c in refreshed["console"] if c.startswith("error")] == [], refreshed["console"]


def test_dashboard_explains_errors_and_keeps_no_token(server, shop):
    settings = {"token": shop["reader"], "otherToken": _token(shop["id"] + 1, "metrics:read"),
                "merchant": shop["id"], "from": shop["from"], "to": shop["to"], "refresh": 30}
    (out,) = _node("dashboard.mjs", server.url, "errors", feed=[json.dumps(settings)])
    assert "401" in out["unauthorized"]["error"] and "token was refused" in \
        out["unauthorized"]["error"]
    assert f"may not read merchant {shop['id']}" in out["forbidden"]["error"]
    assert "rate limited" in out["rateLimited"]["error"]
    assert "Retrying in 30 s" in out["rateLimited"]["error"]  # Retry-After 7 < the refresh 30
    assert "503" in out["unavailable"]["error"] and "unavailable" in out["unavailable"]["error"]
    assert "simulated-503" in out["unavailable"]["error"]  # the request id, for support
    assert out["recovered"]["error"] is None and out["recovered"]["loads"] == 1
    assert out["forgotten"] == {"token": "", "orders": "–", "charts": 4, "chartObjects": 0}
    assert out["stored"] == {"localStorage": 0, "sessionStorage": 0, "cookie": ""}
    assert out["urlsWithToken"] == [] and out["offsite"] == []
    assert out["csp"] == [] and out["pageErrors"] == [], out
