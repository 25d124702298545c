"""Tenant isolation on every route of openapi/openapi.yaml, black box.

Merchant B holds a token with every scope the spec names, for B only. Every operation of the
spec is sent as B against merchant A's real records (its merchant id, an order with delivery
events and customer PII, a customer, a reprocess job), with a valid body where the operation
takes one (each content type of the spec), and must get a 403 problem+json that says nothing
about A: the same status, body (but for the request id) and header names as the same request
for a merchant id that does not exist, or an order id / customer ref that A does not have.
Afterwards A's data is as it was. A control walk sends the same requests as B against B's own
records and gets past the tenant check, so the 403s are not an artefact of wrong requests.

The list of operations comes from the spec: an operation with {merchant_id} in its path is
walked generically; any other must be listed below, either as walked by hand (admin routes,
scoped by the merchant in their body or job) or as exempt with the reason. A new operation that
is neither makes the test fail.
"""

import copy
import datetime
import json
import os
import random
import re
import time
import uuid

import pytest
import requests
import yaml

from helpers import REPO_ROOT, make_token

SPEC_PATH = os.path.join(REPO_ROOT, "openapi", "openapi.yaml")
PROBLEM_KEYS = {"type", "title", "status", "detail", "instance"}

# Operations without a merchant in their path that are walked by hand below (body or job).
ADMIN_OPERATIONS = {("post", "/v1/admin/reprocess"), ("get", "/v1/admin/jobs/{job_id}")}

# Operations that hold no tenant data, with why: every public operation of the spec must be
# here, and nothing here may need a token.
EXEMPT = {
    ("get", "/livez"): "liveness probe: no authentication, answers from the process alone",
    ("get", "/readyz"): "readiness probe: no authentication, reports dependencies only",
    ("get", "/metrics"): "Prometheus text: counters by route template and status, no tenant",
    ("get", "/openapi.json"): "the public contract, the same bytes for everyone",
    ("get", "/docs"): "static page (Swagger UI of /openapi.json), the same bytes for everyone",
    ("get", "/docs/{asset}"): "static script or style sheet of /docs",
    ("get", "/dashboard"): "static page; the merchant's token stays in the browser, and the "
                           "data comes through the /v1 routes walked here",
    ("get", "/dashboard/{asset}"): "static script or style sheet of /dashboard",
}

# Headers whose values differ per request whatever the tenant.
PER_REQUEST_HEADERS = {"date", "x-request-id"}


# ---------------------------------------------------------------------------------------------
# the spec


def _load_spec():
    with open(SPEC_PATH) as f:
        return yaml.safe_load(f)


def _deref(spec, obj):
    while isinstance(obj, dict) and "$ref" in obj:
        node = spec
        for part in obj["$ref"].lstrip("#/").split("/"):
            node = node[part]
        obj = node
    return obj


def operations(spec):
    """[(method, path, operation, parameters)] of every operation in the spec."""
    ops = []
    for path, item in spec["paths"].items():
        shared = [_deref(spec, p) for p in item.get("parameters", [])]
        for method, op in item.items():
            if method in ("parameters", "summary", "description", "servers"):
                continue
            params = shared + [_deref(spec, p) for p in op.get("parameters", [])]
            ops.append((method, path, op, params))
    return ops


def all_scopes(spec):
    scopes = set()
    for _, _, op, _ in operations(spec):
        for requirement in op.get("security", spec.get("security", [])):
            for names in requirement.values():
                scopes.update(names)
    return " ".join(sorted(scopes))


def _is_public(spec, op):
    return op.get("security", spec.get("security")) == []


# ---------------------------------------------------------------------------------------------
# the two tenants


def _today():
    return datetime.datetime.now(datetime.timezone.utc).date()


def _dataset(server, merchant_id, tag):
    """A merchant with an order (delivery, PII, promo), a delivery event and a reprocess job;
    returns the ids and every string that belongs to it."""
    token = make_token(scope=ALL_SCOPES, merchants=[merchant_id])
    h = {"Authorization": f"Bearer {token}"}
    unique = uuid.uuid4().hex[:10]
    name = f"Isolation {tag} {unique}"
    r = requests.put(f"{server.url}/v1/merchants/{merchant_id}", headers=h, timeout=10,
                     json={"name": name, "timezone": "Europe/Madrid", "currency": "EUR"})
    assert r.status_code == 201, r.text
    order_id, customer_ref = f"iso-{tag}-{unique}", f"cust-{tag}-{unique}"
    pii = {"name": f"Person {unique}", "email": f"p-{unique}@example.com",
           "phone": f"+34 600 {random.randint(100000, 999999)}", "address": f"Calle {unique} 1"}
    placed = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))
    order = {"order_id": order_id, "store_id": 7, "channel": "online",
             "fulfillment": "delivery", "placed_at": placed.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
             "currency": "EUR", "promo_code": f"PROMO{unique.upper()}",
             "items": [{"sku": f"SKU-{unique}", "name": f"Dish {unique}", "quantity": 2,
                        "unit_price_cents": 1234}],
             "customer": dict(pii, ref=customer_ref)}
    r = requests.post(f"{server.url}/v1/merchants/{merchant_id}/orders", headers=h, json=order,
                      timeout=10)
    assert r.status_code == 201, r.text
    event = {"event_id": f"ev-{unique}", "provider": "glovo", "status": "picked_up",
             "occurred_at": placed.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
             "courier_ref": f"courier-{unique}"}
    r = requests.post(f"{server.url}/v1/merchants/{merchant_id}/orders/{order_id}"
                      "/delivery-events", headers=h, json=event, timeout=10)
    assert r.status_code == 201, r.text
    day = _today()
    r = requests.post(f"{server.url}/v1/admin/reprocess", headers=h, timeout=10,
                      json={"merchant_id": merchant_id, "from": f"{day}T00:00:00Z",
                            "to": f"{day + datetime.timedelta(days=1)}T00:00:00Z"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    secrets = [name, order_id, customer_ref, f"PROMO{unique.upper()}", f"SKU-{unique}",
               f"Dish {unique}", f"ev-{unique}", f"courier-{unique}", job_id, *pii.values(),
               str(merchant_id)]
    return {"merchant_id": merchant_id, "order_id": order_id, "customer_ref": customer_ref,
            "job_id": job_id, "token": token, "secrets": secrets}


ALL_SCOPES = all_scopes(_load_spec())


@pytest.fixture(scope="module")
def tenants(server):
    from conftest import _merchant_counter

    a_id, b_id, missing = (next(_merchant_counter) for _ in range(3))
    a = _dataset(server, a_id, "a")
    b = _dataset(server, b_id, "b")
    return a, b, missing


# ---------------------------------------------------------------------------------------------
# requests built from the spec


def _query_value(param):
    """A valid value for a query parameter the operation requires."""
    name, schema = param["name"], param.get("schema", {})
    if name == "from":
        return str(_today() - datetime.timedelta(days=7))
    if name == "to":
        return str(_today() + datetime.timedelta(days=1))
    for key in ("example", "default"):
        if key in schema:
            return str(schema[key])
    if schema.get("examples"):
        return str(schema["examples"][0])
    if schema.get("enum"):
        return str(schema["enum"][0])
    raise AssertionError(f"no value known for the required query parameter {name!r}: "
                         "add one to _query_value")


TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def _freshen(text):
    """The spec's example timestamps moved to an hour ago, so the examples are valid now."""
    ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    return TIMESTAMP.sub(ago.strftime("%Y-%m-%dT%H:%M:%S+00:00"), text)


def _bodies(spec, op):
    """[(content type, bytes)] for every content type the operation's body may have; [None]
    when it takes no body."""
    body = op.get("requestBody")
    if not body:
        return [(None, None)]
    found = []
    for content_type, media in body["content"].items():
        example = media.get("example")
        if example is None:
            schema = _deref(spec, media.get("schema", {}))
            assert schema.get("type") == "object" and not schema.get("required"), \
                f"no example body for {content_type}: add one to the spec"
            example = {}
        data = example if isinstance(example, str) else json.dumps(example)
        found.append((content_type, _freshen(data).encode()))
    return found


def _path(path, values):
    def fill(m):
        name = m.group(1)
        assert name in values, f"no value for path parameter {{{name}}} of {path}"
        return requests.utils.quote(str(values[name]), safe="")
    return re.sub(r"\{([^}]+)\}", fill, path)


def _send(server, method, path, token, query, content_type, body):
    h = {"Authorization": f"Bearer {token}"}
    if content_type:
        h["Content-Type"] = content_type
    return requests.request(method.upper(), f"{server.url}{path}", params=query, data=body,
                            headers=h, timeout=15)


def _merchant_requests(spec, method, path, op, params, target):
    """[(label, path, query, content type, body)] for one merchant-scoped operation aimed at
    the records in `target` (ids by path parameter name)."""
    for p in params:
        if p["in"] == "path":
            assert p["name"] in target, f"{method.upper()} {path}: no value for {p['name']}"
    query = {p["name"]: _query_value(p) for p in params if p["in"] == "query"
             and p.get("required")}
    return [(f"{method.upper()} {path} [{ct or 'no body'}]", _path(path, target), query, ct, b)
            for ct, b in _bodies(spec, op)]


def _admin_requests(method, path, target):
    day = _today()
    if (method, path) == ("post", "/v1/admin/reprocess"):
        body = {"merchant_id": target["merchant_id"], "from": f"{day}T00:00:00Z",
                "to": f"{day + datetime.timedelta(days=1)}T00:00:00Z"}
        return [(f"POST {path}", path, {}, "application/json", json.dumps(body).encode())]
    if (method, path) == ("get", "/v1/admin/jobs/{job_id}"):
        return [(f"GET {path}", _path(path, target), {}, None, None)]
    raise AssertionError(f"{method} {path}")


# ---------------------------------------------------------------------------------------------
# checks


def _assert_forbidden_revealing_nothing(r, label, secrets):
    assert r.status_code == 403, f"{label}: {r.status_code} {r.text[:300]}"
    assert r.headers["Content-Type"].split(";")[0] == "application/problem+json", label
    body = r.json()
    assert set(body) == PROBLEM_KEYS, (label, body)
    assert body["type"] == "https://cangrejo.dev/problems/forbidden", (label, body)
    assert body["status"] == 403 and body["instance"] == r.headers["X-Request-Id"], label
    text = r.text + json.dumps(dict(r.headers))
    for s in secrets:
        assert s not in text, f"{label}: the 403 carries {s!r}: {r.text} {dict(r.headers)}"
    for name in ("ETag", "Location", "Last-Modified", "Idempotent-Replayed", "RateLimit",
                 "RateLimit-Policy"):
        assert name not in r.headers, f"{label}: the 403 carries {name}"
    return body


def _shape(r):
    body = r.json()
    body.pop("instance", None)
    return r.status_code, body, sorted(k.lower() for k in r.headers
                                       if k.lower() not in PER_REQUEST_HEADERS)


def _snapshot(server, a):
    """What A's token sees of A's records."""
    h = {"Authorization": f"Bearer {a['token']}"}
    base = f"{server.url}/v1/merchants/{a['merchant_id']}"
    merchant = requests.get(base, headers=h, timeout=10).json()
    order = requests.get(f"{base}/orders/{a['order_id']}", headers=h, timeout=10).json()
    customer = requests.get(f"{base}/customers/{a['customer_ref']}/export", headers=h,
                            timeout=10).json()
    orders = requests.get(f"{base}/orders", headers=h, timeout=10).json()
    return {"merchant": merchant, "order": order, "customer": customer,
            "order_ids": sorted(o["order_id"] for o in orders["orders"])}


# ---------------------------------------------------------------------------------------------
# tests


def test_every_operation_is_walked_or_exempt():
    spec = _load_spec()
    public = {(m, p) for m, p, op, _ in operations(spec) if _is_public(spec, op)}
    assert public <= set(EXEMPT), ("public operations of the spec not listed as exempt (say "
                                   f"why they hold no tenant data): {sorted(public - set(EXEMPT))}")
    listed = {(m, p) for m, p, _, _ in operations(spec)} & set(EXEMPT)
    assert listed <= public, f"exempt but authenticated in the spec: {sorted(listed - public)}"
    for method, path, op, _ in operations(spec):
        key = (method, path)
        if key in EXEMPT or key in ADMIN_OPERATIONS:
            continue
        assert "{merchant_id}" in path, (
            f"{method.upper()} {path} has no {{merchant_id}} in its path and is neither exempt "
            "nor walked by hand: decide how its tenant is checked and add it to the walk")
    assert ADMIN_OPERATIONS <= {(m, p) for m, p, _, _ in operations(spec)}, \
        "ADMIN_OPERATIONS names an operation the spec no longer has"
    assert set(ALL_SCOPES.split()) >= {"orders:write", "orders:read", "metrics:read",
                                       "deliveries:write", "pii:read", "customers:erase",
                                       "merchants:admin", "admin"}, ALL_SCOPES


def test_another_merchants_token_gets_403_revealing_nothing_on_every_route(server, tenants):
    a, b, missing = tenants
    spec = _load_spec()
    before = _snapshot(server, a)
    walked, control = [], []
    not_a = {"merchant_id": missing, "order_id": f"no-such-{uuid.uuid4().hex[:8]}",
             "customer_ref": f"no-such-{uuid.uuid4().hex[:8]}", "job_id": None}
    for method, path, op, params in operations(spec):
        if (method, path) in EXEMPT:
            continue
        if (method, path) in ADMIN_OPERATIONS:
            requests_a = _admin_requests(method, path, a)
            requests_b = _admin_requests(method, path, b)
            compare = [_admin_requests(method, path, dict(a, merchant_id=missing))] \
                if "job_id" not in path else []
        else:
            requests_a = _merchant_requests(spec, method, path, op, params, a)
            requests_b = _merchant_requests(spec, method, path, op, params, b)
            # The same request for a merchant that does not exist, and for records A does not
            # have: B must not be able to tell any of them apart.
            compare = [_merchant_requests(spec, method, path, op, params,
                                          dict(a, merchant_id=missing)),
                       _merchant_requests(spec, method, path, op, params,
                                          {**a, **{k: v for k, v in not_a.items()
                                                   if k in ("order_id", "customer_ref")}})]
        for i, (label, url, query, ct, body) in enumerate(requests_a):
            r = _send(server, method, url, b["token"], query, ct, body)
            _assert_forbidden_revealing_nothing(r, label, a["secrets"])
            for other in compare:
                o_label, o_url, o_query, o_ct, o_body = other[i]
                o = _send(server, method, o_url, b["token"], o_query, o_ct, o_body)
                assert _shape(o) == _shape(r), (
                    f"{label}: B can tell A's records from others: {o_url} gives "
                    f"{_shape(o)}, {url} gives {_shape(r)}")
            walked.append(label)
        # Control: the same requests for B's own records get past the tenant check.
        for label, url, query, ct, body in requests_b:
            r = _send(server, method, url, b["token"], query, ct, body)
            assert 200 <= r.status_code < 300, f"control {label}: {r.status_code} {r.text[:300]}"
            control.append((label, r.status_code))
    assert len(walked) >= len(operations(spec)) - len(EXEMPT), walked
    after = _snapshot(server, a)
    assert after == before, "B's requests changed A's records"
    assert before["customer"]["customer"] is not None, "A's customer lost its data"


def test_admin_job_of_another_merchant(server, tenants):
    """A job over every merchant needs a token for every merchant; B's job is B's alone."""
    a, b, _ = tenants
    h = {"Authorization": f"Bearer {b['token']}"}
    day = _today()
    r = requests.post(f"{server.url}/v1/admin/reprocess", headers=h, timeout=10,
                      json={"merchant_id": None, "from": f"{day}T00:00:00Z",
                            "to": f"{day + datetime.timedelta(days=1)}T00:00:00Z"})
    _assert_forbidden_revealing_nothing(r, "POST /v1/admin/reprocess (every merchant)",
                                        a["secrets"])
    r = requests.get(f"{server.url}/v1/admin/jobs/{a['job_id']}", headers=h, timeout=10)
    _assert_forbidden_revealing_nothing(r, "GET A's job", a["secrets"])
    r = requests.get(f"{server.url}/v1/admin/jobs/{a['job_id']}", timeout=10,
                     headers={"Authorization": f"Bearer {a['token']}"})
    assert r.status_code == 200 and r.json()["merchant_id"] == a["merchant_id"], r.text


def test_exempt_routes_hold_no_tenant_data(server, tenants):
    a, b, _ = tenants
    h = {"Authorization": f"Bearer {b['token']}"}
    spec = _load_spec()
    for method, path, _, params in operations(spec):
        if (method, path) not in EXEMPT:
            continue
        values = {p["name"]: p["schema"]["enum"][0] for p in params if p["in"] == "path"}
        r = requests.request(method.upper(), f"{server.url}{_path(path, values)}", headers=h,
                             timeout=10)
        assert r.status_code in (200, 503), (path, r.status_code)
        for s in a["secrets"][:-1] + b["secrets"][:-1]:  # ids may appear as numbers anywhere
            assert s not in r.text, f"{path} carries tenant data {s!r}"
