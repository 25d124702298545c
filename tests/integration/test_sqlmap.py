"""SQL injection, black box: sqlmap against every authenticated operation of
openapi/openapi.yaml on the running test server, with a valid token, testing every parameter
the spec declares (path parameters as custom injection points, query parameters, header
parameters, every field of the JSON bodies, nested ones included), and finding nothing
injectable.

Bounded: PostgreSQL payloads only, level 1 / risk 1 (boolean, error, UNION, stacked and time
based), a 2 s time delay, several sqlmap processes at once, sessions flushed, output in a
temporary directory, loopback only. sqlmap's log is parsed for the points it tested, so the
test cannot pass by testing nothing, and the same harness must find an injection planted in a
small server of the test's own (against the same PostgreSQL), so it cannot pass by reading the
log wrong.
"""

import concurrent.futures
import datetime
import http.server
import json
import os
import re
import subprocess
import threading
import time
import urllib.parse
import uuid

import pytest
import requests

from helpers import free_port, make_token
from test_isolation import (ADMIN_OPERATIONS, ALL_SCOPES, EXEMPT, _admin_requests, _bodies,
                            _dataset, _load_spec, _path, _query_value, _today, operations)

PARALLEL = 4
SQLMAP_TIMEOUT = 110

# Values for query parameters that are not enums, or need one that suits every operation
# (RFC 3339 bounds are valid for order lists and metrics alike); None leaves it out (a cursor
# is only valid as the server wrote it).
_DAY = _today()
OPTIONAL_QUERY = {"from": f"{_DAY - datetime.timedelta(days=7)}T00:00:00Z",
                  "to": f"{_DAY + datetime.timedelta(days=1)}T00:00:00Z",
                  "store_id": "7", "limit": "10", "tz": "Europe/Madrid", "cursor": None}


def _query_for(params):
    """Every query parameter of the operation, with a valid value."""
    query = {}
    for p in params:
        if p["in"] != "query":
            continue
        schema = p.get("schema", {})
        if p["name"] in OPTIONAL_QUERY:
            if OPTIONAL_QUERY[p["name"]] is not None:
                query[p["name"]] = OPTIONAL_QUERY[p["name"]]
        elif p.get("required"):
            query[p["name"]] = _query_value(p)
        elif schema.get("enum"):
            query[p["name"]] = str(schema["enum"][0])
        elif schema.get("examples"):
            query[p["name"]] = str(schema["examples"][0])
        elif "default" in schema:
            query[p["name"]] = str(schema["default"])
        else:
            raise AssertionError(f"no value for the query parameter {p['name']!r}: add one to "
                                 "OPTIONAL_QUERY")
    return query


HEADER_VALUES = {"Idempotency-Key": lambda: f"sqlmap-{uuid.uuid4().hex[:12]}",
                 "If-None-Match": lambda: '"0123456789abcdef"'}
MARK = "*"  # sqlmap's custom injection marker: test the value just before it


def _mark_json(value):
    """JSON text with a marker after every string and number leaf."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_mark_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_mark_json(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)[:-1] + MARK + '"'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return json.dumps(value) + MARK
    return json.dumps(value)


def _mark_body(content_type, body):
    if content_type == "application/json":
        return _mark_json(json.loads(body))
    if content_type == "application/x-ndjson":
        return "\n".join(_mark_json(json.loads(line)) for line in body.decode().splitlines()
                         if line.strip())
    raise AssertionError(f"no way to mark a {content_type} body")


class Target:
    """One sqlmap run: an operation (and one of its body content types) with every parameter
    marked, and how many marked points of each kind sqlmap must report."""

    def __init__(self, label, method, url, headers, body):
        self.label, self.method, self.url, self.headers, self.body = \
            label, method, url, headers, body
        self.expected = {"URI": url.count(MARK),
                         "HEADER": sum(v.endswith(MARK) for v in headers.values()),
                         "BODY": body.count(MARK) if body else 0}


def _targets(spec, records_for):
    """One Target per operation and body content type; records_for(label) gives the records
    (merchant, order, customer, job) that operation's run works on."""
    targets = []
    for method, path, op, params in operations(spec):
        if (method, path) in EXEMPT:
            continue
        query = _query_for(params)
        headers = {p["name"]: HEADER_VALUES[p["name"]]() + MARK for p in params
                   if p["in"] == "header"}
        if (method, path) in ADMIN_OPERATIONS:
            bodies = [(None, None)]
            if op.get("requestBody"):
                bodies = [("application/json", None)]  # built per records below
        else:
            bodies = _bodies(spec, op)
        for content_type, body in bodies:
            label = f"{method.upper()} {path} [{content_type or 'no body'}]"
            records = records_for(label)
            if (method, path) in ADMIN_OPERATIONS and content_type:
                body = _admin_requests(method, path, records)[0][4]
            url = re.sub(r"\{([^}]+)\}", lambda m: _path(m.group(0), records) + MARK, path)
            if query:
                url += "?" + "&".join(f"{k}={requests.utils.quote(v, safe='')}{MARK}"
                                      for k, v in query.items())
            h = dict(headers)
            if content_type:
                h["Content-Type"] = content_type
            marked = _mark_body(content_type, body) if content_type else None
            targets.append(Target(label, method.upper(), url, h, marked))
    return targets


# ---------------------------------------------------------------------------------------------
# running sqlmap and reading its log

TESTED = re.compile(r"testing for SQL injection on (.+?) parameter '([^']*)'")
NOT_INJECTABLE = re.compile(r"(.+?) parameter '([^']*)' does not seem to be injectable")
FOUND = re.compile(r"(is vulnerable|appears to be '.*' injectable|is '.*' injectable|"
                   r"identified the following injection point|might be injectable \(possible)",
                   re.IGNORECASE)
HTTP_CODES = re.compile(r"HTTP error codes detected during run:\s*\n(.*)")


def _unmarked(text):
    return text.replace(MARK, "") if text else text


def _baseline(server, token, target):
    """The request sqlmap starts from, without markers: it must work."""
    h = {k: _unmarked(v) for k, v in target.headers.items()}
    h["Authorization"] = f"Bearer {token}"
    r = requests.request(target.method, server.url + _unmarked(target.url), headers=h,
                         data=_unmarked(target.body).encode() if target.body else None,
                         timeout=15)
    return r.status_code, r.text[:300]


def _sqlmap(server, token, target, out_dir):
    h = dict(target.headers, Authorization=f"Bearer {token}")
    cmd = ["sqlmap", "-u", server.url + target.url, "--method", target.method,
           "--headers", "\n".join(f"{k}: {v}" for k, v in h.items()),
           "--batch", "--dbms=PostgreSQL", "--level=1", "--risk=1", "--time-sec=2",
           "--skip-waf", "--flush-session", "--output-dir", out_dir, "--disable-coloring",
           "--timeout=10", "--retries=1", "-v", "1"]
    if target.body is not None:
        cmd += ["--data", target.body]
    env = dict(os.environ, HOME=out_dir)  # sqlmap keeps its own files under $HOME
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SQLMAP_TIMEOUT, env=env,
                          stdin=subprocess.DEVNULL)
    return proc, time.monotonic() - started


def _verdict(target, proc):
    """Problems in one sqlmap run: anything found, a 5xx, or fewer points tested than marked."""
    out = proc.stdout
    problems = [f"sqlmap reports: {line.strip()}" for line in out.splitlines()
                if FOUND.search(line)]
    # sqlmap names points inconsistently (a PUT's path and body markers are all "PUT parameter
    # 'JSON #n*'"), so points are counted, headers apart.
    tested, cleared = TESTED.findall(out), NOT_INJECTABLE.findall(out)
    marked = sum(target.expected.values())
    if len(tested) != marked or len(cleared) != marked:
        problems.append(f"{len(tested)} point(s) tested and {len(cleared)} cleared, {marked} "
                        f"marked: {tested}")
    headers = sum(1 for place, _ in tested if "HEADER" in place)
    if headers != target.expected["HEADER"]:
        problems.append(f"{headers} header(s) tested, {target.expected['HEADER']} marked")
    if "all tested parameters do not appear to be injectable" not in out:
        problems.append("no final 'do not appear to be injectable'")
    codes = HTTP_CODES.search(out)
    if codes and re.search(r"\b5\d\d \(", codes.group(1)):
        problems.append(f"server errors during the run: {codes.group(1).strip()}")
    if problems:
        problems.append("sqlmap output (tail):\n" + out[-3000:] + proc.stderr[-1000:])
    return problems, sum(target.expected.values())


# ---------------------------------------------------------------------------------------------
# the test


@pytest.fixture(scope="module")
def records_by_label(server):
    """Each sqlmap run gets records of its own, so that one run's writes (a cancel, an
    erasure) never change what another run starts from."""
    from conftest import _merchant_counter

    made = {}

    def records_for(label):
        if label not in made:
            made[label] = _dataset(server, next(_merchant_counter), "sqlmap")
        return made[label]

    return made, records_for


def test_sqlmap_finds_nothing_injectable(server, records_by_label, tmp_path):
    made, records_for = records_by_label
    targets = _targets(_load_spec(), records_for)
    token = make_token(scope=ALL_SCOPES, merchants=[r["merchant_id"] for r in made.values()])
    for target in targets:
        status, text = _baseline(server, token, target)
        assert 200 <= status < 300, f"{target.label}: baseline request gets {status}: {text}"
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        runs = {pool.submit(_sqlmap, server, token, t, str(tmp_path / f"run{i}")): t
                for i, t in enumerate(targets)}
        results = [(runs[f], *f.result()) for f in concurrent.futures.as_completed(runs)]
    elapsed = time.monotonic() - started
    problems, points = [], 0
    for target, proc, seconds in sorted(results, key=lambda r: r[0].label):
        found, n = _verdict(target, proc)
        points += n
        problems += [f"{target.label} ({seconds:.0f} s): {p}" for p in found]
    assert not problems, "\n".join(problems)
    assert points >= 100, f"only {points} injection points tested"
    print(f"sqlmap: {len(targets)} operations, {points} injection points, {elapsed:.0f} s")


class _PlantedInjection(http.server.BaseHTTPRequestHandler):
    """GET /things?name=...: the name pasted into SQL text, as no code of cangrejo may do."""

    conn = None
    lock = threading.Lock()

    def do_GET(self):
        name = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query).get("name", [""])[0]
        with self.lock:
            try:
                with self.conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM pg_catalog.pg_class WHERE relname = '"
                                + name + "'")
                    body, status = f"found {cur.fetchone()[0]}".encode(), 200
            except Exception:  # noqa: BLE001 - the database's refusal is the page
                body, status = b"error", 500
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_harness_finds_a_planted_injection(stack, tmp_path):
    """Control: the same sqlmap options and log reading flag a query built by pasting."""
    conn = stack.primary()
    conn.set_session(readonly=True, autocommit=True)  # what sqlmap sends can only read
    _PlantedInjection.conn = conn
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _PlantedInjection)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        planted = type("Srv", (), {"url": f"http://127.0.0.1:{httpd.server_address[1]}"})()
        target = Target("planted", "GET", f"/things?name=pg_class{MARK}", {}, None)
        proc, _ = _sqlmap(planted, "no-token-needed", target, str(tmp_path))
        problems, _ = _verdict(target, proc)
    finally:
        httpd.shutdown()
        conn.close()
    assert any(p.startswith("sqlmap reports:") for p in problems), proc.stdout[-3000:]
