"""HTTP manners a browser dashboard expects: gzip when asked (with its own ETag), CORS for
allowed origins (preflights answered without a token), and nothing of the sort otherwise."""
import gzip
import json

import pytest
import requests

from helpers import headers

ORIGIN = "https://dash.example.com"


@pytest.fixture
def merchant_with_sales(server, make_token, merchant_id):
    token = make_token(scope="merchants:admin metrics:read", merchants=[merchant_id])
    r = requests.put(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(token),
                     json={"name": "Manners", "timezone": "UTC", "currency": "EUR"}, timeout=10)
    assert r.status_code == 201, r.text
    url = (f"{server.url}/v1/merchants/{merchant_id}/metrics/sales"
           "?from=2026-01-01&to=2026-03-01")  # 59 daily buckets: several KiB of JSON
    return url, token


def _get(url, token, **extra):
    return requests.get(url, headers=headers(token, extra), timeout=10, stream=True)


def test_gzip_when_asked_with_its_own_etag(merchant_with_sales):
    url, token = merchant_with_sales
    plain = _get(url, token, **{"Accept-Encoding": "identity"})
    zipped = _get(url, token, **{"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in plain.headers
    assert zipped.headers["Content-Encoding"] == "gzip"
    for r in (plain, zipped):
        assert "Accept-Encoding" in r.headers["Vary"]
    raw = zipped.raw.read(decode_content=False)
    assert len(raw) < len(plain.content) / 3
    assert json.loads(gzip.decompress(raw)) == json.loads(plain.content)
    assert zipped.headers["ETag"] == plain.headers["ETag"][:-1] + '-gzip"'


@pytest.mark.parametrize("accept", ["gzip;q=0", "br", "identity", ""])
def test_no_gzip_unless_accepted(merchant_with_sales, accept):
    url, token = merchant_with_sales
    r = _get(url, token, **{"Accept-Encoding": accept})
    assert "Content-Encoding" not in r.headers
    json.loads(r.raw.read(decode_content=False))


def test_if_none_match_knows_both_representations(merchant_with_sales):
    url, token = merchant_with_sales
    plain_tag = _get(url, token, **{"Accept-Encoding": "identity"}).headers["ETag"]
    gzip_tag = _get(url, token, **{"Accept-Encoding": "gzip"}).headers["ETag"]
    r = _get(url, token, **{"Accept-Encoding": "gzip", "If-None-Match": gzip_tag})
    assert r.status_code == 304 and r.headers["ETag"] == gzip_tag
    r = _get(url, token, **{"Accept-Encoding": "identity", "If-None-Match": plain_tag})
    assert r.status_code == 304 and r.headers["ETag"] == plain_tag


def test_small_bodies_are_not_compressed(server):
    r = requests.get(server.url + "/livez", headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert r.status_code == 200 and "Content-Encoding" not in r.headers


@pytest.fixture
def cors_server(start_server):
    return start_server("cors", CORS_ALLOWED_ORIGINS=f"{ORIGIN}, http://localhost:3000")


def test_allowed_origin_may_read_the_answer(cors_server, make_token, merchant_id):
    token = make_token(merchants=[merchant_id])
    r = requests.get(f"{cors_server.url}/v1/merchants/{merchant_id}", timeout=10,
                     headers=headers(token, {"Origin": ORIGIN}))
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Origin" in r.headers["Vary"]
    exposed = [h.strip() for h in r.headers["Access-Control-Expose-Headers"].split(",")]
    assert {"ETag", "X-Request-Id", "Retry-After", "Link", "RateLimit"} <= set(exposed)
    assert "Access-Control-Allow-Credentials" not in r.headers


@pytest.mark.parametrize("origin", ["https://evil.example", "https://dash.example.com.evil.net",
                                    "http://dash.example.com", "null"])
def test_other_origins_get_no_cors_headers(cors_server, make_token, merchant_id, origin):
    token = make_token(merchants=[merchant_id])
    r = requests.get(f"{cors_server.url}/v1/merchants/{merchant_id}", timeout=10,
                     headers=headers(token, {"Origin": origin}))
    assert "Access-Control-Allow-Origin" not in r.headers
    assert "Origin" in r.headers["Vary"]


def _preflight(srv, path, origin=ORIGIN, method="POST"):
    return requests.options(srv.url + path, timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type"})


def test_preflight_is_answered_without_a_token(cors_server):
    r = _preflight(cors_server, "/v1/merchants/7/orders")
    assert r.status_code == 204, r.text
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    methods = [m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")]
    assert "POST" in methods and "GET" in methods
    allowed = r.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert int(r.headers["Access-Control-Max-Age"]) > 0


def test_preflight_from_another_origin_is_403(cors_server):
    r = _preflight(cors_server, "/v1/merchants/7/orders", origin="https://evil.example")
    assert r.status_code == 403
    assert "Access-Control-Allow-Origin" not in r.headers


def test_preflight_of_an_unknown_path_is_404(cors_server):
    assert _preflight(cors_server, "/v2/nothing").status_code == 404


def test_without_cors_configured_there_is_none(server, make_token, merchant_id):
    token = make_token(merchants=[merchant_id])
    r = requests.get(f"{server.url}/v1/merchants/{merchant_id}", timeout=10,
                     headers=headers(token, {"Origin": ORIGIN}))
    assert "Access-Control-Allow-Origin" not in r.headers
    assert _preflight(server, "/v1/merchants/7/orders").status_code == 405
