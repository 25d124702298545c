#!/usr/bin/python3
"""make_corpus.py - writes the seed corpora of tests/fuzz/corpus/<target>/: realistic inputs
from API.md, and tricky ones next to them. Run it from anywhere; it rewrites only the seed-*
files (crash-* regression inputs are kept as they are). Standard library only."""
import base64
import hashlib
import hmac
import json
import os
import pathlib

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"
# The fuzz targets' fixed secret (tests/fuzz/fuzz_jwt.c, fuzz_http.c): fuzzing only.
SECRET = b"fuzz-only-hs256-secret-0123456789abcdef"
ISSUER = "https://issuer.cangrejo.test"
AUDIENCE = "cangrejo-api"
NOW = 1795264800  # the targets' fixed clock, 2026-11-21T12:40:00Z
FAR = 4102444800  # 2100-01-01: fuzz_http verifies against the real clock


def order(**over):
    o = {"order_id": "web-000123", "store_id": 17, "channel": "online",
         "fulfillment": "delivery", "placed_at": "2026-11-21T12:31:07+01:00", "currency": "EUR",
         "items": [{"sku": "PIZ-MARG-L", "name": "Margherita L", "quantity": 2,
                    "unit_price_cents": 1150}],
         "discount_cents": 300, "tax_cents": 192}
    o.update(over)
    return {k: v for k, v in o.items() if v is not ...}


def dumps(v, **kw):
    return json.dumps(v, ensure_ascii=False, **kw)


def order_seeds():
    item = {"sku": "X", "name": "X", "quantity": 1, "unit_price_cents": 1}
    api = order(promo_code="2X1TUESDAY",
                customer={"ref": "c-88121", "name": "Ana García", "email": "ana@example.com",
                          "phone": "+34 600 000 000", "address": "Calle Mayor 1, Madrid"})
    s = {
        "api-example": dumps(api, indent=1),
        "minimal-pos": dumps(order(order_id="pos-17:0001", channel="pos", fulfillment="dine_in",
                                   discount_cents=..., tax_cents=...)),
        "total-matches": dumps(order(total_cents=2192)),
        "total-wrong": dumps(order(total_cents=2191)),
        "customer-ref-only": dumps(order(customer={"ref": "c-1"})),
        "customer-null-promo-null": dumps(order(customer=None, promo_code=None)),
        "offset-kathmandu-fraction": dumps(order(placed_at="2026-11-21T17:59:59.123456+05:45")),
        "lowercase-t-z-nanos": dumps(order(placed_at="2026-11-21t10:00:00.123456789z")),
        "no-offset": dumps(order(placed_at="2026-11-21T10:00:00")),
        "leap-day": dumps(order(placed_at="2024-02-29T23:59:59-12:00")),
        "not-leap-day": dumps(order(placed_at="2023-02-29T00:00:00Z")),
        "before-1970": dumps(order(placed_at="1969-12-31T23:59:59Z")),
        "future": dumps(order(placed_at="2026-11-21T12:46:00Z")),
        "unicode-names": dumps(order(items=[{"sku": "CAFÉ-☕", "name": "Café con leche 🥛 \u00e9",
                                             "quantity": 3, "unit_price_cents": 250}])),
        "escaped-unicode": json.dumps(order(items=[{"sku": "A\u00e9", "name": "\ud83c\udf55 slice",
                                                    "quantity": 1, "unit_price_cents": 0}])),
        "max-amounts": dumps(order(items=[{"sku": "GOLD", "name": "Gold", "quantity": 1000000,
                                           "unit_price_cents": 1000000000000000}])),
        "gross-overflow": dumps(order(items=[dict(item, quantity=1000000,
                                                  unit_price_cents=1000000000000000)] * 3)),
        "discount-over-gross": dumps(order(discount_cents=999999)),
        "types-wrong": dumps(order(store_id="17", items=[dict(item, quantity=1.0)],
                                   tax_cents=-1, channel="ONLINE")),
        "huge-number": '{"order_id":"a","store_id":123456789012345678901234567890}',
        "items-200": dumps(order(items=[dict(item, sku=f"S{i}") for i in range(200)])),
        "items-201": dumps(order(items=[item] * 201)),
        "items-empty": dumps(order(items=[])),
        "unknown-fields": dumps(order(extra={"a": [[[[[[[[1]]]]]]]]},
                                      items=[dict(item, colour="red")],
                                      customer={"ref": "c", "nickname": "x"})),
        "control-chars": dumps(order(order_id="bad id\t", items=[dict(item, name="a\u0001b")])),
        "blank-strings": dumps(order(items=[dict(item, sku="   ", name="")], promo_code=" ")),
        "duplicate-key": '{"order_id":"a","order_id":"b"}',
        "not-object": '[1, "two", {"three": 3}]',
        "nul-escape": '{"order_id":"a\\u0000b","store_id":1}',
        "bad-utf8": b'{"order_id":"\xc3\x28","store_id":1}',
        "deep-nesting": "[" * 2000 + "]" * 2000,
    }
    return s


def batch_seeds():
    o1 = order(order_id="pos-1", channel="pos", fulfillment="pickup")
    o2 = order(order_id="pos-2", items=[{"sku": "A", "name": "{\"}]", "quantity": 1,
                                         "unit_price_cents": 5}])
    return {
        "json-two-orders": dumps({"orders": [o1, o2]}),
        "json-pretty": dumps({"orders": [o1]}, indent=2),
        "json-empty": '{"orders": []}',
        "json-scalars-and-strings": ' {"orders" : [ {"a":"}\\"{"}, {"b":[1,{"c":2}]} ,7, "x", '
                                    'true, null, -1.5e3] } ',
        "json-trailing-comma": '{"orders":[{},]}',
        "json-leading-comma": '{"orders":[,{}]}',
        "json-other-member": '{"orders":[], "other": 1}',
        "json-not-object": '[{"orders":[]}]',
        "json-unclosed": '{"orders":[{"a":[1,2}',
        "json-garbage-after": '{"orders":[{}]} x',
        "json-nested-arrays": '{"orders":[[[[]]],[{"a":[]}]]}',
        "ndjson-lines": "\n".join(dumps(o) for o in (o1, o2)) + "\n",
        "ndjson-crlf-blank": dumps(o1) + "\r\n\r\n   \n" + dumps(o2) + "\r\n",
        "ndjson-no-final-newline": dumps(o1) + "\n" + dumps(o2),
        "ndjson-junk-lines": '{"a":1}\nnot json\n[1]\n""\n{"orders":[]}\n',
    }


def delivery_seeds():
    ev = {"event_id": "prov-ev-991", "provider": "glovo", "status": "picked_up",
          "occurred_at": "2026-11-21T12:35:00+01:00", "eta": "2026-11-21T12:55:00+01:00",
          "courier_ref": "courier-77"}
    s = {"api-example": dumps(ev)}
    for st in ("assigned", "in_transit", "delivered", "failed", "cancelled"):
        s["status-" + st] = dumps(dict(ev, status=st, eta=None, courier_ref=None))
    s.update({
        "minimal": dumps({"event_id": "e", "provider": "p", "status": "delivered",
                          "occurred_at": "2026-11-21T11:00:00Z"}),
        "fractions-offsets": dumps(dict(ev, occurred_at="2026-11-21T17:59:59.999999+05:45",
                                        eta="2026-11-21T00:00:00.5-09:30")),
        "year-0000-offset": dumps(dict(ev, occurred_at="0000-01-01T00:30:00+01:00")),
        "year-9999-eta": dumps(dict(ev, eta="9999-12-31T23:59:59+14:00")),
        "future": dumps(dict(ev, occurred_at="2026-11-21T12:45:01Z")),
        "bad-status": dumps(dict(ev, status="lost")),
        "bad-types": dumps(dict(ev, event_id=7, eta=3, courier_ref=False)),
        "unknown-field": dumps(dict(ev, signature="abc")),
        "long-strings": dumps(dict(ev, event_id="e" * 129, provider="p" * 65)),
        "empty": "{}",
        "no-offset": dumps(dict(ev, occurred_at="2026-11-21T12:35:00")),
    })
    return s


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hs256_token(header, claims, secret=SECRET):
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    sig = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(sig)


def jwt_seeds():
    full = {"sub": "pos-sync", "scope": "orders:write orders:read", "merchants": [42, 1, 42],
            "exp": NOW + 3600, "iat": NOW - 10, "nbf": NOW - 10, "iss": ISSUER, "aud": AUDIENCE}
    bare = {"sub": "dash", "scope": "metrics:read", "merchants": "*", "exp": NOW + 60}

    def signed(mode, header, claims, hs_only=False):
        first = bytes([mode | (8 if hs_only else 0)])
        return first + json.dumps(header).encode() + b"\n" + json.dumps(claims).encode()

    def raw(token, hs_only=False):
        return bytes([8 if hs_only else 0]) + token.encode()

    hs = {"alg": "HS256", "typ": "JWT"}
    good = hs256_token(hs, full)
    s = {
        "hs256-full": signed(1, hs, full),
        "hs256-bare-hsonly": signed(1, hs, bare, hs_only=True),
        "hs256-aud-array": signed(1, hs, dict(full, aud=["other", AUDIENCE])),
        "hs256-wrong-iss": signed(1, hs, dict(full, iss=ISSUER + "/")),
        "hs256-wrong-aud": signed(1, hs, dict(full, aud=["other"])),
        "hs256-exp-string": signed(1, hs, dict(full, exp=str(NOW + 60))),
        "hs256-exp-float": signed(1, hs, dict(full, exp=NOW + 60.5)),
        "hs256-expired": signed(1, hs, dict(full, exp=NOW - 31)),
        "hs256-nbf-future": signed(1, hs, dict(full, nbf=NOW + 31)),
        "hs256-iat-future": signed(1, hs, dict(full, iat=NOW + 31)),
        "hs256-no-exp": signed(1, hs, {k: v for k, v in full.items() if k != "exp"}),
        "hs256-merchants-bad": signed(1, hs, dict(full, merchants=[0, -1, "3", 1.5])),
        "hs256-merchants-big": signed(1, hs, dict(full, merchants=list(range(9, 0, -1)) * 3)),
        "hs256-merchants-star-string": signed(1, hs, dict(full, merchants="**")),
        "hs256-crit": signed(1, dict(hs, crit=["exp"]), full),
        "hs256-duplicate-claim": bytes([1]) + b'{"alg":"HS256"}\n{"exp":1,"exp":' +
                                 str(NOW + 60).encode() + b"}",
        "hs256-payload-not-object": signed(1, hs, [full]),
        "es256-ec1": signed(2, {"alg": "ES256", "kid": "ec1"}, full),
        "es256-ec2-jwks": signed(3, {"alg": "ES256", "kid": "ec2", "typ": "JWT"}, full),
        "es256-wrong-kid": signed(2, {"alg": "ES256", "kid": "ec2"}, full),
        "es256-kid-of-rsa": signed(2, {"alg": "ES256", "kid": "rsa1"}, full),
        "rs256-rsa1": signed(4, {"alg": "RS256", "kid": "rsa1"}, full),
        "rs256-rsa2-jwks": signed(5, {"alg": "RS256", "kid": "rsa2"}, full),
        "rs256-no-kid": signed(4, {"alg": "RS256"}, full),
        "rs256-kid-not-string": signed(4, {"alg": "RS256", "kid": 1}, full),
        "rs256-hostile-header": signed(4, {"alg": "RS256", "kid": "../../etc/passwd",
                                           "jku": "https://evil.test/jwks",
                                           "jwk": {"kty": "oct", "k": "AAAA"}}, full),
        "confusion-hs256-rsa1-pem": signed(6, {"alg": "HS256", "kid": "rsa1"}, full),
        "confusion-rs256-header": signed(6, {"alg": "RS256", "kid": "rsa1"}, full),
        "none-alg": signed(7, {"alg": "none"}, full),
        "none-alg-hs256": signed(7, hs, dict(full, sub="x")),
        "alg-lowercase": signed(1, {"alg": "hs256"}, full),
        "raw-valid": raw(good),
        "raw-valid-hsonly": raw(hs256_token(hs, bare), hs_only=True),
        "raw-four-segments": raw(good + ".x"),
        "raw-padding": raw(good.replace(".", "=.", 1)),
        "raw-bad-base64": raw("e30.e30.a+/b"),
        "raw-empty-segments": raw(".."),
        "raw-too-large-hsonly": raw(hs256_token(hs, dict(bare, pad="x" * 600)), hs_only=True),
        "raw-none-unsigned": raw(b64(b'{"alg":"none"}') + "." + b64(json.dumps(full).encode()) +
                                 "."),
    }
    return s


def http_seeds():
    tok = hs256_token({"alg": "HS256", "typ": "JWT"},
                      {"sub": "fuzz", "merchants": [42], "exp": FAR,
                       "scope": "orders:write orders:read metrics:read deliveries:write "
                                "merchants:admin customers:erase admin"})
    auth = "Authorization: Bearer " + tok + "\r\n"
    body = dumps(order())
    ndjson = dumps(order()) + "\n" + dumps(order(order_id="b")) + "\n"

    def req(head, body="", extra=""):
        return head + "\r\nHost: localhost\r\n" + extra + "\r\n" + body

    def post(path, body, ct="application/json", extra=""):
        return req("POST " + path + " HTTP/1.1", body,
                   auth + "Content-Type: " + ct + "\r\nContent-Length: " +
                   str(len(body.encode())) + "\r\n" + extra)

    def chunked(text):
        return "".join("%x\r\n%s\r\n" % (len(c), c) for c in (text[:10], text[10:])) + "0\r\n\r\n"

    orders = "/v1/merchants/42/orders"
    s = {
        "livez": req("GET /livez HTTP/1.1"),
        "livez-http10": "GET /livez HTTP/1.0\r\n\r\n",
        "metrics-head": req("HEAD /metrics HTTP/1.1"),
        "sales-query": req("GET /v1/merchants/42/metrics/sales?from=2026-11-01&to=2026-11-22"
                           "&granularity=day HTTP/1.1", extra=auth),
        "list-query-encoded": req("GET " + orders + "?from=2026-11-21T10%3A00%3A00%2B01%3A00&"
                                  "to=a+b&limit=5&limit=6&zz=%00%ZZ HTTP/1.1", extra=auth),
        "get-order-encoded": req("GET " + orders + "/web%2F000%41123 HTTP/1.1", extra=auth +
                                 "X-Request-Id: req-1.2:3_4\r\ntraceparent: 00-0af7651916cd43dd8448"
                                 "eb211c80319c-b7ad6b7169203331-01\r\n"),
        "post-order": post(orders, body),
        "post-order-charset": post(orders, body, "application/json; charset=\"UTF-8\""),
        "post-order-wrong-type": post(orders, body, "text/plain"),
        "post-order-ndjson-type": post(orders, body, "application/x-ndjson"),
        "post-order-bad-json": post(orders, '{"order_id": '),
        "post-batch-ndjson": post("/v1/merchants/42/order-batches", ndjson,
                                  "application/x-ndjson"),
        "post-batch-chunked": req("POST /v1/merchants/42/order-batches HTTP/1.1", chunked(ndjson),
                                  auth + "Content-Type: application/json\r\n"
                                  "Transfer-Encoding: chunked\r\n"),
        "post-batch-over-limit": post("/v1/merchants/42/order-batches", ndjson * 3,
                                      "application/x-ndjson"),
        "post-batch-stop": post("/v1/merchants/42/order-batches", "!" + ndjson,
                                "application/x-ndjson"),
        "cancel-over-limit": post(orders + "/web-1/cancel", "{" + '"a":1,' * 20 + '"b":2}'),
        "delivery-event": post(orders + "/web-1/delivery-events",
                               '{"event_id":"e","provider":"p","status":"delivered",'
                               '"occurred_at":"2026-11-21T12:00:00Z"}'),
        "put-merchant": req("PUT /v1/merchants/42 HTTP/1.1",
                            '{"name":"Pizzeria Roma","timezone":"Europe/Madrid","currency":"EUR"}',
                            auth + "Content-Type: application/json\r\nContent-Length: 68\r\n"),
        "delete-customer": req("DELETE /v1/merchants/42/customers/c-88121 HTTP/1.1", extra=auth),
        "other-merchant": req("GET /v1/merchants/43/orders HTTP/1.1", extra=auth),
        "merchant-id-zero": req("GET /v1/merchants/0042 HTTP/1.1", extra=auth),
        "method-not-allowed": req("PATCH /v1/merchants/42/orders HTTP/1.1", extra=auth),
        "no-such-route": req("GET /v1/../etc/passwd HTTP/1.1"),
        "no-token": req("GET " + orders + " HTTP/1.1"),
        "basic-auth": req("GET " + orders + " HTTP/1.1", extra="Authorization: Basic YTpi\r\n"),
        "bad-token": req("GET " + orders + " HTTP/1.1", extra="Authorization: Bearer  a.b.c  \r\n"),
        "cl-and-te": req("POST " + orders + " HTTP/1.1", chunked(body),
                         auth + "Content-Type: application/json\r\nContent-Length: 4\r\n"
                         "Transfer-Encoding: chunked\r\n"),
        "cl-twice": req("POST " + orders + " HTTP/1.1", body,
                        auth + "Content-Type: application/json\r\nContent-Length: %d\r\n"
                        "Content-Length: %d\r\n" % (len(body), len(body))),
        "cl-list": req("POST " + orders + " HTTP/1.1", body,
                       auth + "Content-Type: application/json\r\nContent-Length: %d, %d\r\n"
                       % (len(body), len(body))),
        "cl-plus-sign": req("POST " + orders + " HTTP/1.1", body,
                            auth + "Content-Type: application/json\r\nContent-Length: +%d\r\n"
                            % len(body)),
        "cl-huge": req("POST " + orders + " HTTP/1.1", body,
                       auth + "Content-Type: application/json\r\n"
                       "Content-Length: 99999999999999999999999\r\n"),
        "te-gzip-chunked": req("POST " + orders + " HTTP/1.1", chunked(body),
                               auth + "Content-Type: application/json\r\n"
                               "Transfer-Encoding: gzip, chunked\r\n"),
        "te-twice": req("POST " + orders + " HTTP/1.1", chunked(body),
                        auth + "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                        "Transfer-Encoding: chunked\r\n"),
        "te-identity": req("POST " + orders + " HTTP/1.1", body,
                           auth + "Content-Type: application/json\r\n"
                           "Transfer-Encoding: identity\r\n"),
        "space-before-colon": req("POST " + orders + " HTTP/1.1", body,
                                  auth + "Content-Type: application/json\r\n"
                                  "Content-Length : %d\r\n" % len(body)),
        "obs-fold": req("GET " + orders + " HTTP/1.1",
                        extra=auth + "X-Folded: a\r\n  b\r\n"),
        "pipelined": req("GET /livez HTTP/1.1") + req("GET /metrics HTTP/1.1") +
                     req("GET /livez HTTP/1.1", extra="Connection: close\r\n") +
                     req("GET /livez HTTP/1.1"),
        "smuggle-after-cl-te": req("POST " + orders + " HTTP/1.1", "0\r\n\r\n" +
                                   req("GET /livez HTTP/1.1"),
                                   auth + "Content-Type: application/json\r\nContent-Length: 5\r\n"
                                   "Transfer-Encoding: chunked\r\n"),
        "early-401-with-body": req("POST " + orders + " HTTP/1.1", body +
                                   req("GET /livez HTTP/1.1"),
                                   "Content-Type: application/json\r\nContent-Length: %d\r\n"
                                   % len(body)),
        "expect-continue": post(orders, body, extra="Expect: 100-continue\r\n"),
        "bad-chunk-size": req("POST " + orders + " HTTP/1.1", "zz\r\n{}\r\n0\r\n\r\n",
                              auth + "Content-Type: application/json\r\n"
                              "Transfer-Encoding: chunked\r\n"),
        "bare-lf": "GET /livez HTTP/1.1\nHost: x\n\n",
        "headers-over-16k": req("GET /livez HTTP/1.1",
                                extra="".join("X-Pad-%d: %s\r\n" % (i, "p" * 1000)
                                              for i in range(17))),
    }
    return s


def write(target, seeds):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("seed-*"):
        old.unlink()
    for name, data in seeds.items():
        (d / ("seed-" + name)).write_bytes(data if isinstance(data, bytes) else data.encode())


def main():
    write("order", order_seeds())
    write("batch", batch_seeds())
    write("delivery", delivery_seeds())
    write("jwt", jwt_seeds())
    write("http", http_seeds())
    for d in sorted(CORPUS.iterdir()):
        print(d.name, len(os.listdir(d)))


if __name__ == "__main__":
    main()
