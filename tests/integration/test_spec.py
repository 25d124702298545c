"""openapi/openapi.yaml: linted by Spectral, true to the server's route table, its examples
valid; and spec_check.py, which checks every response of the suite against it (conftest.py),
shown to catch what it must (so it cannot pass vacuously) and to be wired to real traffic."""

import copy
import http.server
import json
import os
import re
import subprocess
import threading

import jsonschema
import pytest
import requests
import yaml

import spec_check
from helpers import REPO_ROOT, free_port, headers

SPECTRAL = os.path.join(REPO_ROOT, "node_modules", ".bin", "spectral")
RULESET = os.path.join(REPO_ROOT, ".spectral.yaml")
SPEC_PATH = spec_check.SPEC_PATH
SCOPES = ["orders:write", "orders:read", "metrics:read", "deliveries:write", "pii:read",
          "customers:erase", "merchants:admin", "admin"]
OPERATION_KEYS = ("get", "put", "post", "delete", "patch")


_SPEC = []


def _spec():
    """A fresh copy of the spec (callers may change it)."""
    if not _SPEC:
        with open(SPEC_PATH) as f:
            _SPEC.append(yaml.safe_load(f))
    return copy.deepcopy(_SPEC[0])


def _operations(spec):
    for path, item in spec["paths"].items():
        for method in OPERATION_KEYS:
            if method in item:
                yield method, path, item[method]


def _spectral(path):
    if not os.access(SPECTRAL, os.X_OK):
        pytest.fail(f"{SPECTRAL} missing: run `npm ci` (tests/run does)", pytrace=False)
    return subprocess.run([SPECTRAL, "lint", path, "--ruleset", RULESET, "--fail-severity=warn",
                           "--format=text"], capture_output=True, text=True, timeout=180,
                          cwd=REPO_ROOT)


# ---------------------------------------------------------------------------------------------
# the document


def test_spectral_finds_nothing():
    done = _spectral(SPEC_PATH)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No results" in done.stdout, done.stdout


def test_spectral_rules_bite(tmp_path):
    """The lint is not vacuous: a scope no token has, an undeclared x-scope, an unsecured /v1
    operation, a response without X-Request-Id and an example off its schema are all caught."""
    spec = _spec()
    spec["paths"]["/v1/admin/reprocess"]["post"]["security"] = [{"bearer": ["admin:all"]}]
    del spec["components"]["securitySchemes"]["bearer"]["x-scopes"]["pii:read"]
    del spec["paths"]["/v1/admin/jobs/{job_id}"]["get"]["security"]
    del spec["paths"]["/livez"]["get"]["responses"]["200"]["headers"]["X-Request-Id"]
    spec["components"]["examples"]["Order"]["value"]["status"] = "lost"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(spec))
    done = _spectral(str(broken))
    assert done.returncode != 0
    for rule in ("cangrejo-scope-defined", "cangrejo-scopes-declared",
                 "cangrejo-v1-operations-are-secured", "cangrejo-responses-carry-request-id",
                 "oas3-valid-media-example"):
        assert rule in done.stdout, (rule, done.stdout)


def _c_routes():
    text = open(os.path.join(REPO_ROOT, "server", "main.c")).read()
    table = text[text.index("routes[] = {"):]
    table = table[:table.index("\n};")]
    routes = {}
    for m in re.finditer(r'\{SRV_(\w+), "([^"]+)", (true|false),\s*([^,]+),\s*([^,]+),', table):
        method, path, auth, scopes, bodies = m.groups()
        scope_names = set() if scopes.strip() == "0" else {
            s.strip()[len("AUTH_SCOPE_"):].lower().replace("_", ":", 1)
            for s in scopes.split("|")}
        body_kinds = set() if "SRV_BODY_NONE" in bodies else {
            {"SRV_BODY_JSON": "application/json", "SRV_BODY_NDJSON": "application/x-ndjson"}[
                b.strip()] for b in bodies.split("|")}
        routes[(method.lower(), path)] = (auth == "true", scope_names, body_kinds)
    assert len(routes) >= 20, "could not read the route table of server/main.c"
    return routes


def test_operations_match_the_route_table():
    """Each route of server/main.c: same scopes (any one of them), same request media types,
    and the framework's answers documented (401/403/429 when authenticated, 413/415 with a
    body, 400 and 431 always)."""
    spec = _spec()
    routes = _c_routes()
    ops = {(m, p): op for m, p, op in _operations(spec)}
    assert set(routes) == set(ops)
    problems = []
    for key, (authenticated, scopes, bodies) in sorted(routes.items()):
        op = ops[key]
        security = op.get("security", spec["security"])
        if authenticated:
            documented = {s for req in security for names in req.values() for s in names}
            if documented != scopes or any(len(names) != 1 for req in security
                                           for names in req.values()):
                problems.append(f"{key}: security {security}, the server wants one of {scopes}")
        elif security != []:
            problems.append(f"{key}: public route with security {security}")
        media = set(op.get("requestBody", {}).get("content", {}))
        if media != bodies:
            problems.append(f"{key}: request media {media}, the server takes {bodies}")
        wanted = {"400", "431"} | ({"401", "403", "429"} if authenticated else set()) | (
            {"413", "415"} if bodies else set())
        missing = wanted - set(op["responses"])
        if missing:
            problems.append(f"{key}: responses lack {sorted(missing)}")
    assert not problems, "\n".join(problems)


def test_scopes_are_the_servers():
    spec = _spec()
    text = open(os.path.join(REPO_ROOT, "server", "auth.h")).read()
    block = text[text.index("#define AUTH_SCOPE_MAP"):]
    block = block[:block.index("\n\n")]
    server_scopes = re.findall(r'X\(\w+, "([^"]+)"\)', block)
    assert sorted(server_scopes) == sorted(SCOPES)
    assert sorted(spec["components"]["securitySchemes"]["bearer"]["x-scopes"]) == sorted(SCOPES)


def _schemas(node, where="$"):
    """(where, schema) of every schema object in the document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "schema" and isinstance(value, dict):
                yield f"{where}.schema", value
            elif key == "schemas" and where == "$.components":
                for name, schema in value.items():
                    yield f"{where}.schemas.{name}", schema
            else:
                yield from _schemas(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _schemas(value, f"{where}[{i}]")


def test_every_schema_is_valid_json_schema_2020_12():
    spec = _spec()
    found = list(_schemas(spec))
    assert len(found) > 50
    for where, schema in found:
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            pytest.fail(f"{where}: {e.message}")


def test_every_example_validates_with_formats():
    """Spectral checks examples too, but not `format`; spec_check does (date-time with an
    offset, uri, int64), so the examples must pass what the server's answers must pass."""
    checker = spec_check.SpecChecker()
    spec = checker.spec
    checked = 0
    for method, path, op in _operations(spec):
        bodies = [(code, checker.deref(r).get("content", {})) for code, r in
                  op["responses"].items()]
        bodies.append(("request", op.get("requestBody", {}).get("content", {})))
        for code, content in bodies:
            for media_type, media in content.items():
                schema = media.get("schema")
                examples = ([media["example"]] if "example" in media else []) + [
                    checker.deref(e)["value"] for e in media.get("examples", {}).values()]
                for example in examples:
                    if schema is None or not isinstance(example, (dict, list)):
                        continue
                    errors = checker.validate(example, schema)
                    assert not errors, (method, path, code, media_type, errors)
                    checked += 1
    assert checked >= 25


# ---------------------------------------------------------------------------------------------
# spec_check itself: what it must catch


REQ_ID = "3f9c2a7e5b1d4c8a9e0f6b2d7c4a1e53"
JSON = "application/json; charset=utf-8"
PROBLEM = "application/problem+json"


def _order():
    return copy.deepcopy(_spec()["components"]["examples"]["Order"]["value"])


def _problem(status, slug, **extra):
    body = {"type": f"https://cangrejo.dev/problems/{slug}", "title": "t", "status": status,
            "detail": "d", "instance": REQ_ID}
    body.update(extra)
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def checker():
    return spec_check.SpecChecker(allowed=())


def _check(checker, method, path, status, body=b"", content_type=JSON, request_headers=None,
           **extra_headers):
    hdrs = {"X-Request-Id": REQ_ID}
    if content_type:
        hdrs["Content-Type"] = content_type
    hdrs.update({k.replace("_", "-"): v for k, v in extra_headers.items()})
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return checker.check(method, f"http://127.0.0.1:1{path}", status, hdrs, body,
                         request_headers=request_headers).violations


ORDER_PATH = "/v1/merchants/42/orders"
ORDER_URL = "/v1/merchants/42/orders/web-000123"


def test_conforming_responses_pass(checker):
    assert _check(checker, "POST", ORDER_PATH, 201, _order(), Location=ORDER_URL) == []
    assert _check(checker, "POST", ORDER_PATH, 200, _order(), Idempotent_Replayed="true") == []
    assert _check(checker, "GET", ORDER_URL, 200, _order()) == []
    assert _check(checker, "GET", "/livez", 200, {"status": "ok"}) == []
    assert _check(checker, "HEAD", "/livez", 200) == []
    assert _check(checker, "DELETE", "/v1/merchants/42/customers/c-1", 204, content_type=None) == []
    assert _check(checker, "GET", ORDER_URL, 404, _problem(404, "not-found"), PROBLEM) == []
    assert _check(checker, "GET", "/v1/merchants/42", 401, _problem(401, "unauthorized"),
                  PROBLEM, WWW_Authenticate='Bearer realm="cangrejo", error="invalid_token"') == []
    assert _check(checker, "POST", ORDER_PATH, 503, _problem(503, "service-unavailable"),
                  PROBLEM, Retry_After="1") == []
    assert _check(checker, "GET", "/metrics", 200, b"# nothing\n",
                  "text/plain; version=0.0.4; charset=utf-8", Cache_Control="no-store") == []


@pytest.mark.parametrize("case", [
    "missing field", "extra field", "wrong type", "bad enum", "date-time without offset",
    "int64 overflow", "not json", "duplicate key", "NaN"])
def test_a_wrong_body_is_caught(checker, case):
    order = _order()
    body = order
    if case == "missing field":
        del order["created_at"]
    elif case == "extra field":
        order["secret"] = "x"
    elif case == "wrong type":
        order["total_cents"] = "2192"
    elif case == "bad enum":
        order["status"] = "lost"
    elif case == "date-time without offset":
        order["placed_at"] = "2026-11-21T11:31:07"
    elif case == "int64 overflow":
        order["gross_cents"] = 2 ** 63
    elif case == "not json":
        body = b"{\"order_id\": "
    elif case == "duplicate key":
        body = b"{\"status\": \"placed\", \"status\": \"placed\"}"
    elif case == "NaN":
        body = json.dumps(order).replace("2192", "NaN").encode()
    violations = _check(checker, "GET", ORDER_URL, 200, body)
    assert violations, case


def test_undocumented_statuses_and_types_are_caught(checker):
    assert _check(checker, "GET", ORDER_URL, 500, _problem(500, "internal-error"), PROBLEM)
    assert _check(checker, "GET", ORDER_URL, 418, _problem(418, "not-found"), PROBLEM)
    # a problem sent as plain JSON, or an HTML error page
    assert _check(checker, "GET", ORDER_URL, 404, _problem(404, "not-found"), JSON)
    assert _check(checker, "GET", ORDER_URL, 404, b"<html></html>", "text/html")
    assert _check(checker, "GET", ORDER_URL, 200, _order(), None)
    assert _check(checker, "GET", ORDER_URL, 200, _order(), "application/json; charset=latin1")
    # a body where the spec has none
    assert _check(checker, "DELETE", "/v1/merchants/42/customers/c-1", 204, b"{}")


def test_problem_consistency_is_caught(checker):
    assert _check(checker, "GET", ORDER_URL, 404, _problem(400, "not-found"), PROBLEM)
    assert _check(checker, "GET", ORDER_URL, 404, _problem(404, "no-such-slug"), PROBLEM)
    assert _check(checker, "GET", ORDER_URL, 404,
                  _problem(404, "not-found", instance="someone-else"), PROBLEM)
    assert _check(checker, "GET", ORDER_URL, 404, _problem(404, "not-found", trace="x"), PROBLEM)


def test_required_headers_are_caught(checker):
    assert _check(checker, "POST", ORDER_PATH, 201, _order())  # no Location
    assert _check(checker, "POST", ORDER_PATH, 200, _order())  # no Idempotent-Replayed
    assert _check(checker, "POST", ORDER_PATH, 503, _problem(503, "service-unavailable"),
                  PROBLEM)  # no Retry-After
    assert _check(checker, "POST", ORDER_PATH, 503, _problem(503, "service-unavailable"),
                  PROBLEM, Retry_After="soon")
    assert _check(checker, "GET", "/v1/merchants/42", 401, _problem(401, "unauthorized"),
                  PROBLEM)  # no WWW-Authenticate
    violations = checker.check("GET", "http://127.0.0.1:1/livez", 200,
                               {"Content-Type": JSON}, b'{"status": "ok"}').violations
    assert any("X-Request-Id" in v for v in violations), violations


def test_framework_answers(checker):
    nf = _problem(404, "not-found")
    assert _check(checker, "GET", "/v2/nothing", 404, nf, PROBLEM) == []
    assert _check(checker, "GET", "/v1/merchants/42/orders/", 404, nf, PROBLEM) == []
    assert _check(checker, "GET", "/v2/nothing", 200, {"status": "ok"})
    allow = {"Allow": "GET, HEAD, PUT"}
    mna = _problem(405, "method-not-allowed")
    assert _check(checker, "DELETE", "/v1/merchants/42", 405, mna, PROBLEM, **allow) == []
    assert _check(checker, "DELETE", "/v1/merchants/42", 405, mna, PROBLEM)  # no Allow
    assert _check(checker, "DELETE", "/v1/merchants/42", 405, mna, PROBLEM, Allow="GET, PUT")
    assert _check(checker, "DELETE", "/v1/merchants/42", 200, {"status": "ok"})
    preflight = {"Origin": "https://dash.example", "Access-Control-Request-Method": "POST"}
    ok = {"Access-Control-Allow-Origin": "https://dash.example",
          "Access-Control-Allow-Methods": "GET, HEAD, POST", "Access-Control-Max-Age": "600",
          "Access-Control-Allow-Headers": "Authorization, Content-Type, Idempotency-Key, "
                                          "If-None-Match, X-Request-Id, traceparent",
          "Vary": "Origin"}
    assert _check(checker, "OPTIONS", ORDER_PATH, 204, b"", None, preflight, **ok) == []
    assert _check(checker, "OPTIONS", ORDER_PATH, 204, b"", None, None, **ok)  # not a preflight
    assert _check(checker, "OPTIONS", ORDER_PATH, 204, b"", None, preflight)  # headers missing


def test_paths_match_like_the_router(checker):
    assert [t for t, _ in checker.match("/v1/merchants/1/orders")] == [
        "/v1/merchants/{merchant_id}/orders"]
    assert [t for t, _ in checker.match("/v1/merchants/1/order-batches")] == [
        "/v1/merchants/{merchant_id}/order-batches"]
    assert [t for t, _ in checker.match("/v1/merchants/1/customers/a%2Fb/export")] == [
        "/v1/merchants/{merchant_id}/customers/{customer_ref}/export"]
    for path in ("/v1/merchants//orders", "/v1/merchants/1/orders/", "/livez/", "//livez",
                 "/v1/merchants/1/orders/x/y/z", ""):
        assert checker.match(path) == [], path


def test_an_allowance_turns_only_its_case_into_a_note():
    allowance = spec_check.Allowance("GET", "/v1/merchants/{merchant_id}/orders/{order_id}",
                                     200, "'created_at' is a required property",
                                     "example reason")
    lenient = spec_check.SpecChecker(allowed=[allowance])
    order = _order()
    del order["created_at"]
    result = lenient.check("GET", f"http://127.0.0.1:1{ORDER_URL}", 200,
                           {"X-Request-Id": REQ_ID, "Content-Type": JSON},
                           json.dumps(order).encode())
    assert result.violations == [] and result.allowed[0][1] == "example reason"
    del order["status"]
    result = lenient.check("GET", f"http://127.0.0.1:1{ORDER_URL}", 200,
                           {"X-Request-Id": REQ_ID, "Content-Type": JSON},
                           json.dumps(order).encode())
    assert result.violations and "status" in result.violations[0]


def test_every_allowance_names_a_documented_operation_and_a_reason():
    checker = spec_check.default_checker()
    for a in spec_check.ALLOWED:
        assert a.reason.strip() and a.contains
        item = checker.spec["paths"].get(a.template)
        assert item is not None and (a.method.lower() in item or a.method == "HEAD"), a


# ---------------------------------------------------------------------------------------------
# the hook in conftest.py, on real traffic


def test_the_suite_checks_responses_of_its_servers(server, spec_check_state, make_token):
    assert server.port in spec_check_state.ports
    before = spec_check_state.checked
    assert requests.get(f"{server.url}/livez", timeout=10).status_code == 200
    token = make_token(merchants=[1])
    with requests.Session() as s:
        s.get(f"{server.url}/v1/merchants/1/orders/none-such", headers=headers(token),
              timeout=10)
    assert spec_check_state.checked == before + 2


class _Liar(http.server.BaseHTTPRequestHandler):
    """Answers like a broken cangrejo: an order without most of its fields."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        body = b'{"order_id": "x"}'
        self.send_response(200)
        self.send_header("Content-Type", JSON)
        self.send_header("X-Request-Id", REQ_ID)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_wrong_answer_of_a_registered_server_is_reported(spec_check_state):
    port = free_port()
    liar = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Liar)
    thread = threading.Thread(target=liar.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}/v1/merchants/1/orders/x"
        requests.get(url, timeout=10)
        assert spec_check_state.take() == [], "an unregistered port was checked"
        spec_check_state.ports.add(port)
        try:
            requests.get(url, timeout=10)
        finally:
            spec_check_state.ports.discard(port)
        taken = spec_check_state.take()  # taken here, so this test does not fail for it
    finally:
        liar.shutdown()
        liar.server_close()
    assert len(taken) == 1 and "'merchant_id' is a required property" in taken[0], taken
