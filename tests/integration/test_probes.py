"""Operations endpoints, black box: /livez, /readyz (with dependencies stopped and restarted
under a running server) and the Prometheus exposition at /metrics.

Every test that stops a dependency restarts it in a `finally`, and waits until the server
reports it healthy again, so that no later test sees a degraded stack.
"""

import contextlib
import math
import re
import time

import pytest
import requests

from helpers import headers, wait_until

PROBLEM_BASE = "https://cangrejo.dev/problems/"
MERCHANT_ROUTE = "/v1/merchants/{merchant_id}"


# ---------------------------------------------------------------------------------------------
# helpers


def _get(server, path, timeout=10, **kwargs):
    return requests.get(server.url + path, timeout=timeout, **kwargs)


def _readyz(server, timeout=10):
    return _get(server, "/readyz", timeout=timeout)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _assert_readyz_shape(body):
    """The exact /readyz body of API.md (schema.expected_version is the one documented
    addition, in openapi.yaml)."""
    assert set(body) == {"status", "checks"}, body
    assert body["status"] in ("ready", "not_ready"), body
    checks = body["checks"]
    assert set(checks) == {"primary", "replicas", "redis", "schema"}, checks

    primary = checks["primary"]
    assert set(primary) == {"ok", "latency_ms"}, primary
    assert isinstance(primary["ok"], bool), primary
    assert primary["latency_ms"] is None or (_is_number(primary["latency_ms"])
                                             and primary["latency_ms"] >= 0), primary

    assert isinstance(checks["replicas"], list), checks
    for replica in checks["replicas"]:
        assert set(replica) == {"ok", "latency_ms", "lag_ms"}, replica
        assert isinstance(replica["ok"], bool), replica
        assert replica["latency_ms"] is None or (_is_number(replica["latency_ms"])
                                                 and replica["latency_ms"] >= 0), replica
        assert replica["lag_ms"] is None or (_is_int(replica["lag_ms"])
                                             and replica["lag_ms"] >= 0), replica

    redis = checks["redis"]
    assert set(redis) == {"ok", "latency_ms"}, redis
    assert isinstance(redis["ok"], bool), redis
    assert redis["latency_ms"] is None or (_is_number(redis["latency_ms"])
                                           and redis["latency_ms"] >= 0), redis

    schema = checks["schema"]
    assert {"ok", "version"} <= set(schema) <= {"ok", "version", "expected_version"}, schema
    assert isinstance(schema["ok"], bool), schema
    assert schema["version"] is None or _is_int(schema["version"]), schema
    if "expected_version" in schema:
        assert _is_int(schema["expected_version"]) and schema["expected_version"] >= 1, schema
    return checks


def _wait_ready_with(server, predicate, timeout=15.0):
    """Polls /readyz until it answers 200 and predicate(checks) holds; returns the body."""
    def ready():
        r = _readyz(server, timeout=5)
        if r.status_code != 200:
            return None
        body = r.json()
        return body if predicate(body["checks"]) else None
    return wait_until(ready, timeout=timeout, interval=0.2)


@contextlib.contextmanager
def _stopped(stack, name):
    """Stops one dependency (primary, replica, redis) for the block; restarts it after."""
    getattr(stack, f"stop_{name}")()
    try:
        yield
    finally:
        getattr(stack, f"start_{name}")()


# ---------------------------------------------------------------------------------------------
# /livez and /readyz


def test_livez_is_200_json(server):
    r = _get(server, "/livez")
    assert r.status_code == 200
    assert r.headers["Content-Type"].split(";")[0].strip() == "application/json"
    assert r.json() == {"status": "ok"}
    assert r.headers.get("X-Request-Id")


def test_readyz_body_has_the_documented_shape(server):
    r = _readyz(server)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].split(";")[0].strip() == "application/json"
    body = r.json()
    checks = _assert_readyz_shape(body)
    assert body["status"] == "ready"
    assert checks["primary"]["ok"] is True
    assert _is_number(checks["primary"]["latency_ms"])
    # The test stack has exactly one streaming replica, and it is up.
    assert len(checks["replicas"]) == 1, checks["replicas"]
    replica = checks["replicas"][0]
    assert replica["ok"] is True
    assert _is_number(replica["latency_ms"])
    assert _is_int(replica["lag_ms"])
    assert checks["redis"]["ok"] is True
    assert _is_number(checks["redis"]["latency_ms"])
    assert checks["schema"]["ok"] is True
    assert _is_int(checks["schema"]["version"]) and checks["schema"]["version"] >= 1
    if "expected_version" in checks["schema"]:
        assert checks["schema"]["version"] == checks["schema"]["expected_version"]


def test_readyz_503_while_primary_down_and_recovers_without_restart(server, stack, make_token,
                                                                     merchant_id):
    token = make_token(scope="merchants:admin", merchants=[merchant_id])
    put = requests.put(f"{server.url}/v1/merchants/{merchant_id}", timeout=10,
                       json={"name": "Probe", "timezone": "Europe/Madrid", "currency": "EUR"},
                       headers=headers(token))
    assert put.status_code == 201, put.text
    pid = server.pid

    stack.stop_primary()
    try:
        deadline = time.monotonic() + 5
        not_ready = None
        while time.monotonic() < deadline:
            started = time.monotonic()
            r = _readyz(server)
            assert time.monotonic() - started < 3, "/readyz took over 3 s with the primary down"
            if r.status_code == 503:
                not_ready = r.json()
                break
            time.sleep(0.1)
        assert not_ready is not None, "/readyz did not turn 503 within 5 s of stopping the primary"
        checks = _assert_readyz_shape(not_ready)
        assert not_ready["status"] == "not_ready"
        assert checks["primary"]["ok"] is False

        # Liveness never depends on the database.
        for _ in range(5):
            started = time.monotonic()
            r = _get(server, "/livez", timeout=5)
            elapsed = time.monotonic() - started
            assert r.status_code == 200
            assert r.json() == {"status": "ok"}
            assert elapsed < 0.5, f"/livez took {elapsed:.3f} s with the primary down"
    finally:
        stack.start_primary()

    body = _wait_ready_with(server, lambda c: c["primary"]["ok"] and c["schema"]["ok"])
    assert body is not None, "/readyz not 200 again within 15 s of restarting the primary"
    assert body["status"] == "ready"
    assert server.running and server.pid == pid, "the server was restarted"
    # Requests that need the primary work again on the same process.
    get = requests.get(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(token),
                       timeout=10)
    assert get.status_code == 200, get.text
    assert get.json()["name"] == "Probe"


def test_readyz_stays_ready_with_replica_down(server, stack):
    with _stopped(stack, "replica"):
        def replica_reported_down():
            resp = _readyz(server)
            if resp.status_code != 200 or not resp.json()["checks"]["replicas"][0]["ok"]:
                return resp
            return None
        r = wait_until(replica_reported_down, timeout=5)
        assert r is not None, "the replica still reported ok 5 s after it was stopped"
        assert r.status_code == 200, r.text
        body = r.json()
        checks = _assert_readyz_shape(body)
        assert body["status"] == "ready"
        assert checks["primary"]["ok"] is True
        assert len(checks["replicas"]) == 1
        assert checks["replicas"][0]["ok"] is False
    assert _wait_ready_with(server, lambda c: c["replicas"][0]["ok"]) is not None, \
        "the replica was not reported ok again within 15 s of its restart"


def _primary_lsn(stack):
    with contextlib.closing(stack.primary()) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn()::text")
        return cur.fetchone()[0]


def _replica_replay_state(stack):
    """(replay LSN, seconds since the last replayed commit or None) on the replica."""
    with contextlib.closing(stack.replica()) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_last_wal_replay_lsn()::text, "
                    "extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8")
        return cur.fetchone()


def _idle_caught_up_lag_sample(server, stack, make_token, merchant_id):
    """Writes once, restarts the replica, then looks for a /readyz answer given while the
    replica had replayed all the primary's WAL and its last replayed commit was over 1.5 s old.
    Returns that answer's lag_ms, or None when WAL kept arriving and no such moment came."""
    _create_merchant(server, make_token, merchant_id)  # a commit the replica will replay again
    after_commit = _primary_lsn(stack)
    # The primary logs a standby snapshot soon after activity; let it happen before the
    # restart so the primary stays quiet during the sampling below (best effort).
    wait_until(lambda: _primary_lsn(stack) != after_commit, timeout=3, interval=0.1)
    with _stopped(stack, "replica"):
        pass
    assert _wait_ready_with(server, lambda c: c["replicas"][0]["ok"]) is not None, \
        "the restarted replica was not reported ok within 15 s"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        before = _primary_lsn(stack)
        replay, age = _replica_replay_state(stack)
        r = _readyz(server)
        after = _primary_lsn(stack)
        replay_after, _ = _replica_replay_state(stack)
        if (before == after == replay == replay_after and age is not None and age >= 1.5
                and r.status_code == 200):
            return r.json()["checks"]["replicas"][0]["lag_ms"]
        time.sleep(0.2)
    return None


def test_readyz_replica_lag_is_zero_once_caught_up_after_replica_restart(server, stack,
                                                                         make_token,
                                                                         merchant_ids):
    """A replica that has replayed everything the primary wrote has no replication lag, even
    when the primary has been idle for a while since its last commit. Scenario: a write, the
    replica restarts (it replays that commit again from its last restartpoint), no more
    writes: lag_ms must stay near 0, not grow with the age of that commit."""
    for _ in range(2):
        lag = _idle_caught_up_lag_sample(server, stack, make_token, merchant_ids())
        if lag is not None:
            break
    else:
        pytest.skip("the primary kept writing WAL: no idle, caught-up moment to judge lag")
    assert lag is not None and lag < 1000, (
        f"replica reports lag_ms={lag} while its replay LSN equals the primary's current WAL "
        f"LSN (idle primary, replica restarted after the last commit)")


def test_readyz_stays_ready_with_redis_down(server, stack):
    with _stopped(stack, "redis"):
        started = time.monotonic()
        r = _readyz(server)
        assert time.monotonic() - started < 2, "/readyz took over 2 s with Redis down"
        assert r.status_code == 200, r.text
        body = r.json()
        checks = _assert_readyz_shape(body)
        assert body["status"] == "ready"
        assert checks["primary"]["ok"] is True
        assert checks["redis"]["ok"] is False
    assert _wait_ready_with(server, lambda c: c["redis"]["ok"]) is not None, \
        "Redis was not reported ok again within 15 s of its restart"


# ---------------------------------------------------------------------------------------------
# /metrics: a strict parser for the text exposition format 0.0.4


_METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE_RE = re.compile(
    rf"^(?P<name>{_METRIC_NAME})"
    rf"(?:\{{(?P<labels>(?:{_LABEL_NAME}={_LABEL_VALUE}(?:,{_LABEL_NAME}={_LABEL_VALUE})*)?,?)\}})?"
    r" (?P<value>\S+)(?: (?P<ts>-?[0-9]+))?$")
_LABEL_RE = re.compile(rf"({_LABEL_NAME})=({_LABEL_VALUE})")
_HELP_RE = re.compile(rf"^# HELP (?P<name>{_METRIC_NAME}) (?P<text>.*)$")
_TYPE_RE = re.compile(rf"^# TYPE (?P<name>{_METRIC_NAME}) "
                      r"(?P<type>counter|gauge|histogram|summary|untyped)$")
_FLOAT_RE = re.compile(r"^[+-]?(?:Inf|NaN|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)$")


class Family:
    def __init__(self, name):
        self.name = name
        self.help = None
        self.type = None
        self.samples = []  # (sample name, labels dict, value)


def _unescape(value):
    return value[1:-1].replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def _parse_float(text, where):
    assert _FLOAT_RE.match(text), f"{where}: value {text!r} is not a float"
    return float(text)


def _family_of(sample_name, families):
    """The declared family a sample belongs to (histogram/summary suffixes included)."""
    if sample_name in families and families[sample_name].type not in ("histogram",):
        return families[sample_name]
    for suffix, kinds in (("_bucket", ("histogram",)), ("_sum", ("histogram", "summary")),
                          ("_count", ("histogram", "summary"))):
        if sample_name.endswith(suffix):
            base = sample_name[: -len(suffix)]
            if base in families and families[base].type in kinds:
                return families[base]
    return None


def parse_exposition(text):
    """Parses a whole exposition strictly; returns {family name: Family}. Raises
    AssertionError naming the line on any violation."""
    assert text.endswith("\n"), "the exposition does not end with a newline"
    families = {}
    closed = set()
    current = None
    seen = set()
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {number} {line!r}"
        assert line == line.strip() or line.startswith("# HELP "), f"{where}: stray whitespace"
        assert line, f"{where}: empty line"
        if line.startswith("#"):
            m = _HELP_RE.match(line) or _TYPE_RE.match(line)
            if not m:
                assert not line.startswith("# HELP") and not line.startswith("# TYPE"), \
                    f"{where}: malformed HELP/TYPE line"
                continue  # a plain comment
            name = m.group("name")
            assert name not in closed, f"{where}: {name} declared again after its samples ended"
            family = families.setdefault(name, Family(name))
            assert not family.samples, f"{where}: HELP/TYPE after samples of {name}"
            if line.startswith("# HELP"):
                assert family.help is None, f"{where}: second HELP for {name}"
                family.help = m.group("text")
            else:
                assert family.type is None, f"{where}: second TYPE for {name}"
                family.type = m.group("type")
            if current is not None and current is not family:
                closed.add(current.name)
            current = family
            continue
        m = _SAMPLE_RE.match(line)
        assert m, f"{where}: not a sample line `name{{labels}} value`"
        family = _family_of(m.group("name"), families)
        assert family is not None, f"{where}: sample of an undeclared family"
        assert family.help is not None, f"{where}: family {family.name} has no # HELP"
        assert family.type is not None, f"{where}: family {family.name} has no # TYPE"
        assert family.name not in closed, \
            f"{where}: samples of {family.name} are not contiguous"
        if current is not None and current is not family:
            closed.add(current.name)
        current = family
        labels = {}
        raw_labels = m.group("labels") or ""
        for label, value in _LABEL_RE.findall(raw_labels):
            assert label not in labels, f"{where}: label {label} repeated"
            assert not label.startswith("__"), f"{where}: reserved label name {label}"
            labels[label] = _unescape(value)
        value = _parse_float(m.group("value"), where)
        key = (m.group("name"), tuple(sorted(labels.items())))
        assert key not in seen, f"{where}: duplicate sample"
        seen.add(key)
        if family.type == "counter" or m.group("name").endswith(("_count", "_bucket")):
            assert value >= 0 or math.isnan(value), f"{where}: negative counter"
        family.samples.append((m.group("name"), labels, value))
    for family in families.values():
        assert family.help is not None and family.type is not None, \
            f"family {family.name} lacks HELP or TYPE"
        if family.type == "histogram":
            _check_histogram(family)
    return families


def _check_histogram(family):
    groups = {}
    for name, labels, value in family.samples:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        group = groups.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if name == family.name + "_bucket":
            assert "le" in labels, f"{family.name}{dict(rest)}: bucket without le"
            group["buckets"].append((labels["le"], value))
        elif name == family.name + "_sum":
            assert "le" not in labels
            group["sum"] = value
        elif name == family.name + "_count":
            assert "le" not in labels
            group["count"] = value
        else:
            raise AssertionError(f"{name}: not a sample name of histogram {family.name}")
    for rest, group in groups.items():
        where = f"{family.name}{dict(rest)}"
        buckets = group["buckets"]
        assert buckets, f"{where}: no buckets"
        assert group["sum"] is not None, f"{where}: no _sum"
        assert group["count"] is not None, f"{where}: no _count"
        bounds = [_parse_float(le, where) for le, _ in buckets]
        assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds), \
            f"{where}: le bounds not strictly increasing: {bounds}"
        assert buckets[-1][0] == "+Inf", f"{where}: last bucket is le={buckets[-1][0]!r}"
        counts = [v for _, v in buckets]
        assert all(float(c).is_integer() for c in counts), f"{where}: bucket counts {counts}"
        assert counts == sorted(counts), f"{where}: buckets not cumulative: {counts}"
        assert counts[-1] == group["count"], \
            f"{where}: le=+Inf is {counts[-1]} but _count is {group['count']}"


def _scrape(server):
    r = _get(server, "/metrics")
    assert r.status_code == 200, r.text
    return parse_exposition(r.text)


def _value(families, family, sample_name, **labels):
    """The value of one sample, or None when absent."""
    for name, sample_labels, value in families.get(family, Family(family)).samples:
        if name == sample_name and sample_labels == labels:
            return value
    return None


def _merchant_request_count(families, status):
    return _value(families, "cangrejo_http_requests_total", "cangrejo_http_requests_total",
                  method="GET", route=MERCHANT_ROUTE, status=str(status)) or 0


def _create_merchant(server, make_token, merchant_id):
    token = make_token(scope="merchants:admin", merchants=[merchant_id])
    r = requests.put(f"{server.url}/v1/merchants/{merchant_id}", timeout=10,
                     json={"name": "Metrics", "timezone": "UTC", "currency": "EUR"},
                     headers=headers(token))
    assert r.status_code == 201, r.text
    return token


def test_metrics_content_type_is_prometheus_text_0_0_4(server):
    r = _get(server, "/metrics")
    assert r.status_code == 200
    parts = [p.strip() for p in r.headers["Content-Type"].split(";")]
    assert parts[0] == "text/plain"
    params = dict(p.split("=", 1) for p in parts[1:])
    assert params.get("version") == "0.0.4", r.headers["Content-Type"]


def test_metrics_exposition_is_well_formed(server, make_token, merchant_id):
    # Make sure counters and histograms have series for several routes and statuses.
    _get(server, "/livez")
    _get(server, "/no/such/route")
    token = _create_merchant(server, make_token, merchant_id)
    requests.get(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(token), timeout=10)
    requests.get(f"{server.url}/v1/merchants/{merchant_id}", timeout=10)  # 401
    families = _scrape(server)
    assert families["cangrejo_http_requests_total"].type == "counter"
    assert families["cangrejo_http_request_duration_seconds"].type == "histogram"
    assert families["cangrejo_http_requests_total"].samples
    assert families["cangrejo_http_request_duration_seconds"].samples


def test_parse_exposition_rejects_bad_input():
    """The parser itself is strict (so that the test above means something)."""
    good = ("# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n"
            "# HELP h H.\n# TYPE h histogram\n"
            "h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n")
    assert set(parse_exposition(good)) == {"a_total", "h"}
    bad = [
        good.replace("# HELP a_total A.\n", ""),                      # no HELP
        good.replace("# TYPE a_total counter\n", ""),                 # no TYPE
        good + "a_total{x=\"2\"} 1\n",                                # not contiguous
        good.replace("h_count 2", "h_count 3"),                       # +Inf != _count
        good.replace("h_bucket{le=\"1\"} 1", "h_bucket{le=\"1\"} 5"),  # not cumulative
        good.replace("h_bucket{le=\"+Inf\"} 2\n", ""),                 # no +Inf bucket
        good.replace("a_total{x=\"1\"} 3", "a_total{x=1} 3"),          # unquoted label
        good.replace("a_total{x=\"1\"} 3", "a_total{x=\"1\"}  3"),     # two spaces
        good.replace("a_total{x=\"1\"} 3", "a_total{x=\"1\"} three"),  # not a number
        good[:-1],                                                     # no final newline
    ]
    for text in bad:
        with pytest.raises(AssertionError):
            parse_exposition(text)


def test_metrics_request_counter_counts_one_request_exactly_once(server, make_token,
                                                                  merchant_id):
    token = _create_merchant(server, make_token, merchant_id)
    before = _merchant_request_count(_scrape(server), 200)
    r = requests.get(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(token),
                     timeout=10)
    assert r.status_code == 200
    # The count is taken when the request completes, which may be just after the client
    # has the response: wait for it, then make sure it did not move by more than one.
    def counted():
        value = _merchant_request_count(_scrape(server), 200)
        return value if value >= before + 1 else None
    after = wait_until(counted, timeout=3)
    assert after is not None, "the GET was not counted within 3 s"
    time.sleep(0.2)
    assert _merchant_request_count(_scrape(server), 200) == before + 1


def test_metrics_duration_histogram_for_the_merchant_route(server, make_token, merchant_id):
    token = _create_merchant(server, make_token, merchant_id)
    r = requests.get(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(token),
                     timeout=10)
    assert r.status_code == 200
    labels = {"method": "GET", "route": MERCHANT_ROUTE, "status": "200"}
    name = "cangrejo_http_request_duration_seconds"

    def scraped():
        f = _scrape(server)
        return f if (_value(f, name, name + "_count", **labels) or 0) >= 1 else None
    families = wait_until(scraped, timeout=3)
    assert families is not None, "no duration histogram for GET /v1/merchants/{merchant_id}"
    buckets = [(s[1]["le"], s[2]) for s in families[name].samples
               if s[0] == name + "_bucket" and {k: v for k, v in s[1].items() if k != "le"}
               == labels]
    assert len(buckets) >= 2 and buckets[-1][0] == "+Inf"
    count = _value(families, name, name + "_count", **labels)
    total = _value(families, name, name + "_sum", **labels)
    assert count >= 1 and total is not None and total >= 0
    assert count == _value(families, "cangrejo_http_requests_total",
                           "cangrejo_http_requests_total", **labels)


def test_metrics_db_pool_gauges_present(server):
    families = _scrape(server)
    family = families.get("cangrejo_db_pool_connections")
    assert family is not None, "no cangrejo_db_pool_connections family"
    assert family.type == "gauge"
    primary = {labels.get("state"): value for _, labels, value in family.samples
               if labels.get("pool") == "primary"}
    assert primary, "no cangrejo_db_pool_connections{pool=\"primary\",...} sample"
    assert None not in primary, "a primary pool sample without a state label"
    assert {"busy", "idle"} <= set(primary), primary
    assert all(v >= 0 and float(v).is_integer() for v in primary.values()), primary


def test_metrics_cache_requests_total_present(server):
    families = _scrape(server)
    family = families.get("cangrejo_cache_requests_total")
    assert family is not None, "no cangrejo_cache_requests_total family"
    assert family.type == "counter"
    assert family.samples, "cangrejo_cache_requests_total has no samples"
