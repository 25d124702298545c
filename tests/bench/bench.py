#!/usr/bin/python3
"""cangrejo's benchmark: every performance bar of DESIGN.md, each against its baseline, in one
run on one machine. Started by tests/bench/run (which installs the tools and builds the release
binary first); see tests/bench/README.md for what each scenario does and why it is fair.

Usage: bench.py [--smoke] [--only SCENARIO[,SCENARIO...]] [--strict] [--duration S] [--rounds N]
"""
import argparse
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zoneinfo

import conns
import dataset
import probe

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
NGINX = "/usr/sbin/nginx"
SCENARIOS = ["cached", "uncached", "ingest", "freshness", "batch", "memory"]
# Benchmark-only secrets: tokens minted with this secret are good for this stack only.
JWT_SECRET = "bench-only-secret-0123456789abcdef0123456789abcdef"
PII_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
TOKEN_TTL_S = 7200
# Merchants a run creates for its writes have ids from here on; the run deletes their rows at
# its end (and at the start of the next run, after an interrupted one), so that the seeded data
# set stays what it was.
RUN_MERCHANTS_FROM = 10**12

# Bounded figures of each mode. Durations in seconds.
MODES = {
    "full": {"duration": 8, "rounds": 3, "uncached_conns": 4, "ingest_conns": 64,
             "freshness_s": 15, "batch_orders": 10_000, "batch_rounds": 3, "idle_conns": 1000,
             "concurrent_conns": 10_000, "read_conns": [64, 256], "think_ms": 1,
             "rest_s": 6, "info_reads": True},
    "smoke": {"duration": 1, "rounds": 1, "uncached_conns": 4, "ingest_conns": 64,
              "freshness_s": 2, "batch_orders": 2_000, "batch_rounds": 1, "idle_conns": 1000,
              "concurrent_conns": 2_000, "read_conns": [64, 256], "think_ms": 1,
              "rest_s": 0, "info_reads": False},
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class ScenarioError(Exception):
    """The scenario could not run or its clients saw errors: its figures mean nothing."""


# ---- processes ------------------------------------------------------------------------------

class Cleanup:
    """Stops what the run started, newest first, whatever happens (also on SIGINT/SIGTERM)."""

    def __init__(self):
        self.steps = []

    def push(self, name, fn):
        self.steps.append((name, fn))

    def run(self):
        while self.steps:
            name, fn = self.steps.pop()
            try:
                fn()
            except Exception as e:  # keep stopping the rest
                print(f"cleanup: {name}: {e}", file=sys.stderr)


def free_port():
    """A free loopback port below the ephemeral range (outgoing connections never take it)."""
    for _ in range(1000):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def stop_process(proc, sig=signal.SIGTERM, timeout=30):
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def http_get(port, path, token=None, timeout=10):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class Stack:
    """The bench's own PostgreSQL primary + streaming replica + Redis (deploy/local/stack.sh)
    and a release cangrejo server, on free loopback ports."""

    def __init__(self, stack_dir, binary, work, cleanup):
        self.dir, self.bin, self.work, self.cleanup = stack_dir, binary, work, cleanup
        self.server = None
        self.port = None
        self.urls = {}

    def _stack_sh(self, command):
        env = dict(os.environ, STACK_DIR=self.dir)
        r = subprocess.run(["bash", os.path.join(ROOT, "deploy/local/stack.sh"), command],
                           env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"stack.sh {command} failed:\n{r.stdout}{r.stderr}")
        return r.stdout

    def start(self):
        self.cleanup.push("stack", lambda: self._stack_sh("stop"))
        self._stack_sh("start")
        for line in self._stack_sh("env").splitlines():
            key, _, value = line.partition("=")
            self.urls[key] = value

    def env(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("JWT_", "PII_", "TLS_", "CANGREJO_LISTEN"))}
        env.update(self.urls)
        env.update(JWT_HS256_SECRET=JWT_SECRET, PII_MASTER_KEY=PII_KEY,
                   LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warn"))
        if self.port:
            env["CANGREJO_LISTEN"] = f"127.0.0.1:{self.port}"
        return env

    def start_server(self):
        self.port = free_port()
        subprocess.run([self.bin, "migrate"], env=self.env(), check=True, capture_output=True,
                       timeout=600)
        logf = open(os.path.join(self.dir, "bench-server.log"), "ab")
        self.server = subprocess.Popen([self.bin, "serve"], env=self.env(), stdout=logf,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        self.cleanup.push("server", lambda: stop_process(self.server))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"the server exited ({self.server.returncode}); see "
                                   f"{self.dir}/bench-server.log")
            try:
                if http_get(self.port, "/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the server was not ready after 30 s")

    def check_server(self):
        if self.server.poll() is not None:
            raise ScenarioError(f"the server died (exit {self.server.returncode}); see "
                                f"{self.dir}/bench-server.log")

    def token(self, merchants, scopes):
        args = [self.bin, "token", "--scope", scopes, "--ttl", str(TOKEN_TTL_S), "--sub", "bench"]
        for m in merchants:
            args += ["--merchant", str(m)]
        return subprocess.run(args, env=self.env(), check=True, capture_output=True,
                              text=True).stdout.strip()

    def psql(self, sql, *extra):
        r = subprocess.run([os.path.join(PG_BIN, "psql"), "-X", "-q", "-A", "-t", "-v",
                            "ON_ERROR_STOP=1", self.urls["DATABASE_URL"], "-c", sql, *extra],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"psql: {r.stderr.strip()}")
        return r.stdout.strip()

    def purge_run_merchants(self):
        """Deletes the rows of the runs' own merchants from every table with a merchant_id
        (whatever the schema version); returns how many merchants there were."""
        n = int(self.psql(f"SELECT count(*) FROM merchants WHERE merchant_id >= "
                          f"{RUN_MERCHANTS_FROM}"))
        if n:
            tables = self.psql(
                "SELECT c.oid::regclass FROM pg_class c "
                "JOIN pg_namespace s ON s.oid = c.relnamespace "
                "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'merchant_id' "
                "AND NOT a.attisdropped WHERE s.nspname = 'public' AND c.relkind IN ('r', 'p') "
                "AND NOT c.relispartition").split()
            self.psql("; ".join(f"DELETE FROM {t} WHERE merchant_id >= {RUN_MERCHANTS_FROM}"
                                for t in tables))
        return n

    def rows(self, merchant):
        return int(self.psql(f"SELECT count(*) FROM orders WHERE merchant_id = {int(merchant)}"))

    def redis_flush(self):
        m = re.match(r"redis://([^:/]+):(\d+)", self.urls["REDIS_URL"])
        subprocess.run(["redis-cli", "-h", m.group(1), "-p", m.group(2), "FLUSHALL"], check=True,
                       capture_output=True, timeout=30)

    def counters(self):
        """The server's Prometheus counters that the scenarios check."""
        body = http_get(self.port, "/metrics")[2].decode()
        out = {}
        for name, label in (("hit", r'cangrejo_cache_requests_total\{result="hit"\}'),
                            ("miss", r'cangrejo_cache_requests_total\{result="miss"\}')):
            m = re.search(label + r" (\d+)", body)
            out[name] = int(m.group(1)) if m else None
        return out


class Nginx:
    """Debian's nginx, run as our own process on a free loopback port, serving one file (the
    very bytes of a cangrejo response) at every path, with the same content type and
    Cache-Control. Workers: one per CPU, like the server's threads. No access log, like the
    server at LOG_LEVEL=warn (see README: BENCH_LOG_LEVEL)."""

    def __init__(self, cleanup):
        # Its own directory, which the workers (user nobody) can traverse.
        self.dir = tempfile.mkdtemp(prefix="cangrejo-bench-nginx-")
        cleanup.push("nginx directory", lambda: shutil.rmtree(self.dir, ignore_errors=True))
        self.cleanup = cleanup
        self.proc = None
        self.port = None

    def start(self, body, content_type, cache_control):
        os.makedirs(os.path.join(self.dir, "www"), exist_ok=True)
        for d in (self.dir, os.path.join(self.dir, "www")):
            os.chmod(d, 0o755)  # nginx workers run as nobody
        with open(os.path.join(self.dir, "www", "response.json"), "wb") as f:
            f.write(body)
        os.chmod(os.path.join(self.dir, "www", "response.json"), 0o644)
        self.port = free_port()
        access = (f"access_log {self.dir}/access.log;" if os.environ.get("BENCH_LOG_LEVEL") ==
                  "info" else "access_log off;")
        conf = f"""
worker_processes auto;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    {access}
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 100000000;
    client_body_temp_path {self.dir}/tmp-body;
    proxy_temp_path {self.dir}/tmp-proxy;
    fastcgi_temp_path {self.dir}/tmp-fastcgi;
    uwsgi_temp_path {self.dir}/tmp-uwsgi;
    scgi_temp_path {self.dir}/tmp-scgi;
    types {{ }}
    default_type "{content_type}";
    server {{
        listen 127.0.0.1:{self.port};
        root {self.dir}/www;
        location / {{
            add_header Cache-Control "{cache_control}";
            try_files /response.json =404;
        }}
    }}
}}
"""
        with open(os.path.join(self.dir, "nginx.conf"), "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen(
            [NGINX, "-p", self.dir, "-c", os.path.join(self.dir, "nginx.conf"), "-e",
             os.path.join(self.dir, "error.log")], stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.dir, "stderr.log"), "wb"), start_new_session=True)
        self.cleanup.push("nginx", lambda: stop_process(self.proc, signal.SIGQUIT))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                status, _, got = http_get(self.port, "/x", timeout=2)
                if status == 200 and got == body:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        errors = ""
        for name in ("stderr.log", "error.log"):
            with open(os.path.join(self.dir, name), errors="replace") as f:
                errors += f.read()[-400:]
        raise ScenarioError(f"nginx did not serve the file: {errors}")


# ---- load generators ------------------------------------------------------------------------

def wrk(url, script, conns, duration, work, threads=2, env=None, timeout_s=5):
    """Runs wrk; returns its figures (requests/s, latency percentiles in ms, errors)."""
    threads = max(1, min(threads, conns))
    report = tempfile.NamedTemporaryFile(dir=work, suffix=".json", delete=False).name
    full_env = dict(os.environ, BENCH_WRK_DIR=os.path.join(HERE, "wrk"), WRK_REPORT=report,
                    WRK_THREADS=str(threads), **(env or {}))
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--timeout", f"{timeout_s}s",
           "-s", os.path.join(HERE, "wrk", script), url]
    r = subprocess.run(cmd, env=full_env, capture_output=True, text=True,
                       timeout=duration + 120)
    try:
        with open(report) as f:
            w = json.load(f)
    except (OSError, ValueError):
        raise ScenarioError(f"wrk gave no report: {r.stdout[-500:]}{r.stderr[-500:]}")
    finally:
        os.unlink(report)
    errors = sum(w["errors"].values())
    seconds = w["duration_us"] / 1e6
    ok = w["requests"] - w["errors"]["status"]
    return {"requests": w["requests"], "ok": ok, "errors": w["errors"], "error_count": errors,
            "seconds": seconds, "rps": ok / seconds if seconds else 0.0,
            "bytes_per_response": w["bytes"] / w["requests"] if w["requests"] else 0,
            "p50_ms": w["latency_us"]["p50"] / 1000, "p90_ms": w["latency_us"]["p90"] / 1000,
            "p99_ms": w["latency_us"]["p99"] / 1000, "max_ms": w["latency_us"]["max"] / 1000,
            "conns": conns, "threads": threads, "duration": duration}


def require_clean(w, what):
    if w["error_count"]:
        raise ScenarioError(f"{what}: wrk saw errors {w['errors']} in {w['requests']} requests")
    if w["requests"] == 0:
        raise ScenarioError(f"{what}: no request completed")


def percentile(values, p):
    """Nearest-rank percentile."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ---- the run --------------------------------------------------------------------------------

class Bench:
    def __init__(self, args, mode, stack, work):
        self.args, self.mode, self.stack, self.work = args, mode, stack, work
        self.cfg = dict(MODES[mode])
        if args.duration:
            self.cfg["duration"] = args.duration
        if args.rounds:
            self.cfg["rounds"] = self.cfg["batch_rounds"] = args.rounds
        self.run_id = int(time.time())
        self.dataset = None
        self._merchant_seq = 0
        self.cleanup = stack.cleanup

    # ---- helpers

    def new_merchant(self, scopes, currency="EUR", tz="Europe/Madrid"):
        """A merchant of this run only (ids unique per run), and a token for it."""
        self._merchant_seq += 1
        merchant = RUN_MERCHANTS_FROM + self.run_id * 100 + self._merchant_seq
        token = self.stack.token([merchant], "merchants:admin " + scopes)
        client = dataset.Client(self.stack.port, token)
        dataset.put_merchant(client, merchant, f"bench run {self.run_id}", tz, currency)
        client.close()
        return merchant, token

    def base_url(self):
        return f"http://127.0.0.1:{self.stack.port}"

    def data_end_date(self):
        """The local date (Europe/Madrid) at which the seeded year ends."""
        end = dt.datetime.fromtimestamp(self.dataset["end"], zoneinfo.ZoneInfo("Europe/Madrid"))
        return end.date()

    def sales_path(self, days):
        """The dashboard's request: daily sales of merchant 1 for the last `days` whole days
        of the data set, in the merchant's zone."""
        end_date = self.data_end_date()
        return (f"/v1/merchants/{dataset.BIG_MERCHANT}/metrics/sales?from="
                f"{end_date - dt.timedelta(days=days)}&to={end_date}&granularity=day")

    # ---- data set

    def ensure_dataset(self):
        plan = dataset.seed_plan(self.mode == "smoke")
        marker = os.path.join(self.stack.dir, "bench-dataset.json")
        try:
            with open(marker) as f:
                have = json.load(f)
        except (OSError, ValueError):
            have = None
        if have and have.get("plan") == plan:
            count = self.stack.rows(dataset.BIG_MERCHANT)
            if count >= have["big_merchant_orders"]:
                log(f"data set cached in {self.stack.dir}: {count} orders for merchant 1, "
                    f"{plan['small_merchants']} small merchants (seeded "
                    f"{dt.datetime.fromtimestamp(have['end'], dt.timezone.utc):%F %H:%M}Z)")
                self.dataset = have
                return
        log(f"seeding: {plan['small_merchants']} merchants x {plan['small_orders']} orders, and "
            f"merchant 1 with ~{plan['big_orders_per_day']}/day for {plan['big_days']} days "
            "(through POST .../order-batches)")
        end = int(time.time())
        token = self.stack.token(["*"], "merchants:admin orders:write deliveries:write")
        started = time.monotonic()
        try:
            accepted, duplicates = dataset.seed(self.stack.port, token, plan, end, log=log)
        except Exception as e:
            raise RuntimeError(f"seeding failed ({e}); if {self.stack.dir} holds other data, "
                               "delete it and run again") from e
        count = self.stack.rows(dataset.BIG_MERCHANT)
        seconds = time.monotonic() - started
        self.stack.psql("VACUUM ANALYZE")
        log(f"seeded {accepted} orders ({duplicates} already there) in {seconds:.0f} s; "
            f"merchant 1 has {count}")
        self.dataset = {"plan": plan, "end": end, "big_merchant_orders": count,
                        "seed_seconds": round(seconds, 1), "orders_accepted": accepted}
        with open(marker + ".tmp", "w") as f:
            json.dump(self.dataset, f)
        os.replace(marker + ".tmp", marker)

    # ---- scenarios: each returns table rows

    def scenario_cached(self):
        """Cached metrics read: the same dashboard request (30 daily buckets of merchant 1)
        against nginx serving its very bytes as a static file: flat out at 64 and 256
        connections (requests/s), and at 64 connections whose clients each wait think_ms
        between an answer and their next request (latency under a heavy but not saturating
        load: at saturation, p99 is the queue wrk builds on two shared cores, see README)."""
        cfg = self.cfg
        token = self.stack.token([dataset.BIG_MERCHANT], "metrics:read")
        path = self.sales_path(30)
        for _ in range(2):  # the first read fills the cache
            status, headers, body = http_get(self.stack.port, path, token)
            if status != 200:
                raise ScenarioError(f"GET {path}: {status} {body[:200]!r}")
        buckets = len(json.loads(body)["buckets"])
        nginx = Nginx(self.cleanup)
        nginx.start(body, headers.get("Content-Type"), headers.get("Cache-Control"))
        targets = {"cangrejo": self.base_url(), "nginx": f"http://127.0.0.1:{nginx.port}"}
        loads = [(c, None) for c in cfg["read_conns"]] + [(64, cfg["think_ms"])]
        results = {(t, load): [] for t in targets for load in loads}
        before = self.stack.counters()
        served = 0
        try:
            for rnd in range(cfg["rounds"]):
                order = list(targets) if rnd % 2 == 0 else list(reversed(targets))
                for load in loads:
                    for t in order:
                        env = {"TOKEN": token}
                        if load[1]:
                            env["THINK_MS"] = str(load[1])
                        w = wrk(targets[t] + path, "get.lua", load[0], cfg["duration"],
                                self.work, env=env)
                        require_clean(w, f"{t} at {load[0]} connections")
                        results[(t, load)].append(w)
                        served += w["requests"] if t == "cangrejo" else 0
                        self.stack.check_server()
        finally:
            stop_process(nginx.proc, signal.SIGQUIT)
        after = self.stack.counters()
        hits = (after["hit"] or 0) - (before["hit"] or 0)
        rows = [self._cached_row(buckets, load, results[("cangrejo", load)],
                                 results[("nginx", load)], path, len(body)) for load in loads]
        rows[0]["details"]["cache_hits"] = hits
        rows[0]["details"]["requests"] = served
        if hits < 0.99 * served:
            rows[0]["note"] = f"only {hits} cache hits for {served} requests"
        return rows

    @staticmethod
    def _cached_row(buckets, load, mine, theirs, path, body_bytes):
        """Flat out: requests/s against nginx's (bar >= 0.50x; nginx's p99 beside ours). With
        think time: p99 <= 5 ms, nginx's p99 and rate beside ours."""
        conns, think = load
        rps, base_rps = median([w["rps"] for w in mine]), median([w["rps"] for w in theirs])
        p99, base_p99 = median([w["p99_ms"] for w in mine]), median([w["p99_ms"] for w in theirs])
        baseline = {"name": "nginx", "rate": base_rps, "p99_ms": base_p99,
                    "p50_ms": median([w["p50_ms"] for w in theirs])}
        details = {"runs": mine, "baseline_runs": theirs, "path": path, "body_bytes": body_bytes,
                   "response_bytes": {"cangrejo": mine[0]["bytes_per_response"],
                                      "nginx": theirs[0]["bytes_per_response"]}}
        row = {"unit": "req/s", "rate": rps, "p50_ms": median([w["p50_ms"] for w in mine]),
               "p99_ms": p99, "baseline": baseline, "details": details}
        if think is None:
            baseline["text"] = f"{fmt_rate(base_rps, 'req/s')}, p99 {fmt_ms(base_p99)}"
            ratio = rps / base_rps
            return dict(row, scenario=f"cached read (sales, {buckets} days), {conns} conns",
                        ratio=ratio, bar=">=0.50x", result="PASS" if ratio >= 0.5 else "FAIL")
        baseline["text"] = f"p99 {fmt_ms(base_p99)} at {fmt_rate(base_rps, 'req/s')}"
        return dict(row, scenario=f"cached read, {conns} conns, {think} ms think time",
                    ratio=None, bar="p99<=5ms", result="PASS" if p99 <= 5 else "FAIL")

    def _uncached_paths(self, days, count, kind="sales"):
        """count distinct paths of `kind` over `days` days of merchant 1, in zones whose offset
        was a whole hour all along (so every one takes the same path through the server as
        the merchant's own zone), for windows that lie inside the seeded data."""
        end_date = self.data_end_date()
        first = end_date - dt.timedelta(days=self.dataset["plan"]["big_days"] - 1)
        pg_zones = set(self.stack.psql("SELECT name FROM pg_timezone_names").split())
        probe_days = [dt.datetime.combine(first + dt.timedelta(days=d), dt.time(12))
                      for d in range(0, (end_date - first).days + 2)]
        zones = []
        for name in sorted(zoneinfo.available_timezones()):
            if name not in pg_zones or name.startswith(("posix", "right")) or "/" not in name:
                continue
            try:
                z = zoneinfo.ZoneInfo(name)
            except Exception:
                continue
            if all(z.utcoffset(d).total_seconds() % 3600 == 0 for d in probe_days):
                zones.append(name)
        windows = [end_date - dt.timedelta(days=k) for k in range(
            0, (end_date - first).days - days + 1)]
        rng = random.Random(self.run_id)
        combos = [(z, w) for z in zones for w in windows]
        rng.shuffle(combos)
        base = f"/v1/merchants/{dataset.BIG_MERCHANT}/metrics"
        paths = []
        for z, w in combos[:count]:
            window = f"from={w - dt.timedelta(days=days)}&to={w}&tz={z}"
            paths.append(f"{base}/sales?{window}&granularity=day" if kind == "sales" else
                         f"{base}/products?{window}&sort=net_sales&limit=10")
        return paths, len(zones), len(windows)

    def _run_uncached(self, name, days, kind, rounds, bar):
        cfg = self.cfg
        token = self.stack.token([dataset.BIG_MERCHANT], "metrics:read")
        paths, n_zones, n_windows = self._uncached_paths(days, 300_000, kind)
        status, _, body = http_get(self.stack.port, paths[-1], token)
        if status != 200:
            raise ScenarioError(f"GET {paths[-1]}: {status} {body[:300]!r}")
        per_round = (len(paths) - 1) // rounds  # the last one was just read
        runs = []
        for rnd in range(rounds):
            # Each round its own paths: no cache layer (Redis or in-process) has seen them.
            paths_file = os.path.join(self.work, f"paths-{kind}-{days}-{rnd}.txt")
            with open(paths_file, "w") as f:
                f.write("\n".join(paths[rnd * per_round:(rnd + 1) * per_round]) + "\n")
            self.stack.redis_flush()  # the bench stack's own Redis
            before = self.stack.counters()
            w = wrk(self.base_url(), "paths.lua", cfg["uncached_conns"], cfg["duration"],
                    self.work, env={"TOKEN": token, "PATHS_FILE": paths_file})
            after = self.stack.counters()
            require_clean(w, name)
            w["cache_hits"] = (after["hit"] or 0) - (before["hit"] or 0)
            w["distinct_paths"] = per_round
            runs.append(w)
            self.stack.check_server()
        p50 = median([w["p50_ms"] for w in runs])
        row = {"scenario": name, "unit": "req/s", "rate": median([w["rps"] for w in runs]),
               "p50_ms": p50, "p99_ms": median([w["p99_ms"] for w in runs]),
               "details": {"runs": runs, "distinct_paths": len(paths), "zones": n_zones,
                           "windows": n_windows, "example": paths[0]}}
        hits = sum(w["cache_hits"] for w in runs)
        if hits:
            row["note"] = f"{hits} cache hits among {sum(w['requests'] for w in runs)} requests"
        if bar:
            row.update(bar="p50<=5ms", result="PASS" if p50 <= 5 else "FAIL")
        else:
            row.update(bar="-", result="INFO")
        return row

    def scenario_uncached(self):
        """Uncached metrics read: 30 daily buckets of the million-order merchant, every request
        a distinct one (time zone x window) that no cache holds, at low concurrency."""
        c = self.cfg["uncached_conns"]
        rows = [self._run_uncached(f"uncached read (sales, 30 days), {c} conns", 30, "sales",
                                   self.cfg["rounds"], True)]
        if self.cfg["info_reads"]:
            rows.append(self._run_uncached(f"uncached read (sales, 360 days), {c} conns", 360,
                                           "sales", 1, False))
            rows.append(self._run_uncached(f"uncached read (top products, 90 days), {c} conns",
                                           90, "products", 1, False))
        return rows

    def _ingest_wrk(self, merchant, token, duration):
        before = self.stack.rows(merchant)
        w = wrk(self.base_url(), "order.lua", self.cfg["ingest_conns"], duration, self.work,
                env={"TOKEN": token, "MERCHANT": str(merchant),
                     "RUN": f"r{self.run_id}-{merchant}"})
        require_clean(w, "single-order ingest")
        stored = self.stack.rows(merchant) - before
        # Every 2xx is stored; orders still in flight when wrk stopped may be stored too.
        if not w["ok"] <= stored <= w["ok"] + self.cfg["ingest_conns"]:
            raise ScenarioError(f"{w['ok']} orders answered 2xx but {stored} stored")
        w["stored"] = stored
        return w

    def _pgbench(self, merchant, duration, script="pgbench_order.sql"):
        before = self.stack.rows(merchant)
        prefix = os.path.join(self.work, f"pgbench-{merchant}")
        c = self.cfg["ingest_conns"]
        r = subprocess.run(
            [os.path.join(PG_BIN, "pgbench"), "-n", "-M", "prepared", "-c", str(c), "-j", "2",
             "-T", str(duration), "-D", f"merchant={merchant}", "-D", f"run={self.run_id}",
             "-f", os.path.join(HERE, script), "-l", f"--log-prefix={prefix}",
             self.stack.urls["DATABASE_URL"]],
            capture_output=True, text=True, timeout=duration + 120, cwd=self.work)
        if r.returncode != 0:
            raise ScenarioError(f"pgbench failed: {r.stderr[-800:]}")
        m = re.search(r"number of failed transactions: (\d+)", r.stdout)
        if m and int(m.group(1)):
            raise ScenarioError(f"pgbench: {m.group(1)} failed transactions")
        m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", r.stdout)
        latencies = []
        for name in os.listdir(self.work):
            if name.startswith(os.path.basename(prefix) + "."):
                with open(os.path.join(self.work, name)) as f:
                    latencies += [int(line.split()[2]) / 1000 for line in f]
                os.unlink(os.path.join(self.work, name))
        stored = self.stack.rows(merchant) - before
        if stored != len(latencies):
            raise ScenarioError(f"pgbench logged {len(latencies)} transactions, {stored} stored")
        return {"rps": float(m.group(1)), "stored": stored, "conns": c, "duration": duration,
                "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}

    def scenario_ingest(self):
        """Single-order ingest at 64 connections against pgbench committing the same rows one
        transaction per order (synchronous_commit on), alternating, medians of the rounds."""
        cfg = self.cfg
        mine, theirs, raw = [], [], []
        for rnd in range(cfg["rounds"]):
            merchant, token = self.new_merchant("orders:write")
            pg_merchant, _ = self.new_merchant("orders:write")
            raw_merchant, _ = self.new_merchant("orders:write")
            steps = [lambda: mine.append(self._ingest_wrk(merchant, token, cfg["duration"])),
                     lambda: theirs.append(self._pgbench(pg_merchant, cfg["duration"])),
                     lambda: raw.append(self._pgbench(raw_merchant, cfg["duration"],
                                                      "pgbench_order_rows.sql"))]
            for step in (steps if rnd % 2 == 0 else reversed(steps)):
                step()
                self.stack.check_server()
        rps, base = median([w["rps"] for w in mine]), median([p["rps"] for p in theirs])
        raw_rps = median([p["rps"] for p in raw])
        ratio = rps / base
        return [{"scenario": f"single-order ingest, {cfg['ingest_conns']} conns",
                 "unit": "orders/s", "rate": rps, "p50_ms": median([w["p50_ms"] for w in mine]),
                 "p99_ms": median([w["p99_ms"] for w in mine]),
                 "baseline": {"name": "pgbench", "rate": base,
                              "p50_ms": median([p["p50_ms"] for p in theirs]),
                              "p99_ms": median([p["p99_ms"] for p in theirs])},
                 "ratio": ratio, "bar": ">=2.00x", "result": "PASS" if ratio >= 2 else "FAIL",
                 "details": {"runs": mine, "baseline_runs": theirs}},
                {"scenario": "  same, vs pgbench of the raw rows only (no rollups)",
                 "unit": "orders/s", "rate": rps,
                 "baseline": {"name": "pgbench raw rows", "rate": raw_rps,
                              "p50_ms": median([p["p50_ms"] for p in raw]),
                              "p99_ms": median([p["p99_ms"] for p in raw])},
                 "ratio": rps / raw_rps, "bar": "-", "result": "INFO",
                 "details": {"baseline_runs": raw}}]

    def scenario_freshness(self):
        """Freshness under ingest load: a probe's orders, from their 2xx until they show in
        sales, products and deliveries, while wrk loads single-order ingest (64 conns)."""
        seconds = self.cfg["freshness_s"]
        load_merchant, load_token = self.new_merchant("orders:write")
        probe_merchant, probe_token = self.new_merchant("orders:write metrics:read")
        out = {}

        def load():
            try:
                out["load"] = self._ingest_wrk(load_merchant, load_token, seconds + 1)
            except Exception as e:
                out["load_error"] = e

        t = threading.Thread(target=load)
        t.start()
        time.sleep(0.5)  # the load is on
        try:
            result = probe.run(self.stack.port, probe_token, probe_merchant, self.run_id,
                               seconds - 0.5)
        finally:
            t.join()
        if "load_error" in out:
            raise out["load_error"]
        self.stack.check_server()
        d = result["delays_ms"]
        if not d:
            raise ScenarioError("no probe completed")
        p99 = percentile(d, 99)
        row = {"scenario": f"freshness under ingest load (n={len(d)})", "unit": "-",
               "rate": None, "p50_ms": percentile(d, 50), "p99_ms": p99, "bar": "p99<=1s",
               "result": "PASS" if p99 <= 1000 and not result["not_visible"] else "FAIL",
               "details": {"probes": len(d), "max_ms": max(d),
                           "not_visible_after_10s": result["not_visible"],
                           "per_metric_p99_ms": {k: percentile(v, 99) for k, v in
                                                 result["per_metric_ms"].items()},
                           "ingest_load": out["load"]}}
        if result["not_visible"]:
            row["note"] = f"{result['not_visible']} orders not visible after 10 s"
        return [row]

    def scenario_batch(self):
        """Batch ingest: one upload of 10,000 orders (NDJSON) against `psql \\copy` of the same
        rows into order_keys, orders and order_items; medians of the rounds."""
        cfg = self.cfg
        n = cfg["batch_orders"]
        mine, theirs = [], []
        for rnd in range(cfg["batch_rounds"]):
            merchant, token = self.new_merchant("orders:write")
            copy_merchant, _ = self.new_merchant("orders:write")
            files = {k: os.path.join(self.work, f"batch.{k}") for k in
                     ("ndjson", "keys", "orders", "items")}
            dataset.batch_files(n, merchant, copy_merchant, f"{self.run_id}x{rnd}", files)
            with open(files["ndjson"], "rb") as f:
                body = f.read()

            def upload():
                client = dataset.Client(self.stack.port, token)
                client.request("GET", "/livez")  # connected before the clock starts
                started = time.monotonic()
                status, data = client.request("POST", f"/v1/merchants/{merchant}/order-batches",
                                              body, "application/x-ndjson")
                seconds = time.monotonic() - started
                client.close()
                if status != 200:
                    raise ScenarioError(f"batch upload: {status} {data[:300]!r}")
                result = json.loads(data)
                if result["accepted"] != n:
                    raise ScenarioError(f"batch upload accepted {result['accepted']} of {n}: "
                                        f"{json.dumps(result)[:300]}")
                stored = self.stack.rows(merchant)
                if stored != n:
                    raise ScenarioError(f"batch upload: {stored} orders stored, not {n}")
                mine.append({"seconds": seconds, "rate": n / seconds})

            def copy():
                cols = {"keys": "order_keys (merchant_id, order_id, placed_at, content_hash)",
                        "orders": "orders (merchant_id, placed_at, order_id, store_id, channel, "
                                  "fulfillment, currency, gross_cents, discount_cents, "
                                  "net_cents, tax_cents, total_cents, items_sold, promo_code)",
                        "items": "order_items (merchant_id, placed_at, order_id, line_no, sku, "
                                 "name, quantity, unit_price_cents)"}
                cmd = [os.path.join(PG_BIN, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                       self.stack.urls["DATABASE_URL"]]
                for k in ("keys", "orders", "items"):
                    cmd += ["-c", f"\\copy {cols[k]} FROM '{files[k]}' CSV"]
                started = time.monotonic()
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                seconds = time.monotonic() - started
                if r.returncode != 0:
                    raise ScenarioError(f"psql \\copy: {r.stderr[-500:]}")
                stored = self.stack.rows(copy_merchant)
                if stored != n:
                    raise ScenarioError(f"psql \\copy: {stored} orders stored, not {n}")
                theirs.append({"seconds": seconds, "rate": n / seconds})

            for step in ((upload, copy) if rnd % 2 == 0 else (copy, upload)):
                step()
                self.stack.check_server()
        rate, base = median([m["rate"] for m in mine]), median([t["rate"] for t in theirs])
        ratio = rate / base
        return [{"scenario": f"batch ingest, {n:,}-order uploads", "unit": "orders/s",
                 "rate": rate, "p50_ms": None, "p99_ms": None,
                 "baseline": {"name": "psql \\copy", "rate": base},
                 "ratio": ratio, "bar": ">=0.50x", "result": "PASS" if ratio >= 0.5 else "FAIL",
                 "measured": f"{median([m['seconds'] for m in mine]):.2f} s/upload",
                 "details": {"runs": mine, "baseline_runs": theirs}}]

    def scenario_memory(self):
        """Memory: the server's VmRSS with 1,000 idle keep-alive connections, then 10,000
        concurrent connections each served one request. It starts from the server at rest:
        rest_s after the scenario before, the server has handed the heap that scenario freed
        back to the system (malloc_trim, every 5 s)."""
        cfg = self.cfg
        pid = self.stack.server.pid
        time.sleep(cfg["rest_s"])
        idle = conns.idle(self.stack.port, cfg["idle_conns"], pid)
        self.stack.check_server()
        rss = idle["rss_kib"] / 1024
        rows = [{"scenario": f"memory, {cfg['idle_conns']:,} idle keep-alive conns",
                 "unit": "-", "rate": None, "p50_ms": None, "p99_ms": None,
                 "baseline": {"name": "RSS before",
                              "text": f"{idle['rss_before_kib'] / 1024:.1f} MiB"},
                 "measured": f"RSS {rss:.1f} MiB", "bar": "RSS<=64MiB",
                 "result": "PASS" if rss <= 64 else "FAIL", "details": idle}]
        if idle["served"] != cfg["idle_conns"]:
            raise ScenarioError(f"idle connections: {idle['served']} of {cfg['idle_conns']} "
                                f"served ({idle['connect_errors'] + idle['request_errors']})")
        many = conns.concurrent(self.stack.port, cfg["concurrent_conns"], pid)
        self.stack.check_server()
        n = cfg["concurrent_conns"]
        ok = many["served"] == n
        rows.append({"scenario": f"{n:,} concurrent conns, 1 request each", "unit": "-",
                     "rate": None, "p50_ms": None, "p99_ms": None,
                     "measured": f"{many['served']:,} served, peak RSS "
                                 f"{many['peak_rss_kib'] / 1024:.0f} MiB",
                     "bar": f"all {n:,} served", "result": "PASS" if ok else "FAIL",
                     "details": many})
        if not ok:
            rows[-1]["note"] = f"errors: {many['connect_errors'] + many['request_errors']}"
        return rows


# ---- report ---------------------------------------------------------------------------------

def fmt_rate(v, unit):
    return "-" if v is None else f"{v:,.0f} {unit}"


def fmt_ms(v):
    if v is None:
        return "-"
    return f"{v:.2f}ms" if v < 10 else f"{v:.1f}ms" if v < 1000 else f"{v / 1000:.2f}s"


def table(rows):
    head = ["scenario", "rate", "p50", "p99", "baseline", "ratio", "measured", "bar", "result"]
    lines = []
    for r in rows:
        b = r.get("baseline")
        base = "-"
        if b:
            base = f"{b['name']} {b['text']}" if "text" in b else \
                f"{b['name']} {fmt_rate(b.get('rate'), r['unit'])}"
        lines.append([r["scenario"], fmt_rate(r.get("rate"), r.get("unit")),
                      fmt_ms(r.get("p50_ms")), fmt_ms(r.get("p99_ms")), base,
                      "-" if r.get("ratio") is None else f"{r['ratio']:.2f}x",
                      r.get("measured", "-"), r.get("bar", "-"), r["result"]])
    widths = [max(len(str(x[i])) for x in [head] + lines) for i in range(len(head))]
    right = {1, 2, 3, 5}

    def fmt(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(x) for x in lines]
    for r in rows:
        if r.get("note"):
            out.append(f"  note: {r['scenario']}: {r['note']}")
    return "\n".join(out)


def git_info():
    def git(*a):
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip()
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain",
                                                                  "--untracked-files=no"))}


def write_json(report, out_dir, mode):
    os.makedirs(out_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    suffix = "-smoke" if mode == "smoke" else ""
    path = os.path.join(out_dir, f"results-{stamp}{suffix}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    latest = os.path.join(out_dir, f"latest{suffix}.json")
    with open(latest + ".tmp", "w") as f:
        json.dump(report, f, indent=1, default=str)
    os.replace(latest + ".tmp", latest)
    return path


def parse_args(argv):
    p = argparse.ArgumentParser(prog="tests/bench/run", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="~20-second mode on a tiny data set (CI): fails only when a scenario "
                        "cannot run")
    p.add_argument("--only", action="append", default=[],
                   help=f"run only these scenarios (comma-separated: {', '.join(SCENARIOS)})")
    p.add_argument("--strict", action="store_true", help="exit 3 when a bar is missed")
    p.add_argument("--duration", type=int, help="seconds of each load run")
    p.add_argument("--rounds", type=int, help="rounds of each compared scenario (medians)")
    p.add_argument("--binary", default=os.path.join(ROOT, "build-bench", "cangrejo"))
    args = p.parse_args(argv)
    only = [s for item in args.only for s in item.split(",") if s]
    unknown = [s for s in only if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {', '.join(unknown)} (choose from {', '.join(SCENARIOS)})")
    args.scenarios = [s for s in SCENARIOS if not only or s in only]
    return args


def main(argv):
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    out_dir = os.environ.get("BENCH_OUT_DIR", os.path.join(ROOT, ".local", "bench"))
    stack_dir = os.environ.get("BENCH_STACK_DIR",
                               os.path.join(out_dir, "smoke-stack" if args.smoke else "stack"))
    os.makedirs(out_dir, exist_ok=True)
    started = time.time()
    load_start = os.getloadavg()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    for sig in (signal.SIGINT, signal.SIGHUP):  # unless ignored (nohup, a shell's `&`)
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, on_signal)

    cleanup = Cleanup()
    rows, report = [], None
    with tempfile.TemporaryDirectory(prefix="cangrejo-bench-") as work:
        try:
            stack = Stack(stack_dir, args.binary, work, cleanup)
            log(f"{mode} run; stack in {stack_dir}")
            stack.start()
            stack.start_server()
            log(f"server (release build) on 127.0.0.1:{stack.port}, pid {stack.server.pid}")
            if stack.purge_run_merchants():
                log("deleted the orders an interrupted run left")
            # after the server stopped and before the stack stops:
            cleanup.steps.insert(1, ("delete this run's orders", stack.purge_run_merchants))
            bench = Bench(args, mode, stack, work)
            bench.ensure_dataset()
            for name in args.scenarios:
                log(f"scenario {name}")
                t0 = time.monotonic()
                try:
                    new = getattr(bench, f"scenario_{name}")()
                except ScenarioError as e:
                    new = [{"scenario": name, "result": "ERROR", "note": str(e)}]
                except Exception as e:  # a bug of the harness or a dead dependency
                    new = [{"scenario": name, "result": "ERROR",
                            "note": f"{type(e).__name__}: {e}"}]
                for r in new:
                    r["scenario_key"] = name
                    r["seconds"] = round(time.monotonic() - t0, 1)
                    note = f" ({r['note']})" if r.get("note") else ""
                    log(f"  {r['scenario']}: {r['result']}{note}")
                rows += new
        except KeyboardInterrupt:
            print("interrupted; stopping what was started", file=sys.stderr)
            cleanup.run()
            return 130
        except Exception as e:
            rows.append({"scenario": "setup", "result": "ERROR",
                         "note": f"{type(e).__name__}: {e}"})
        finally:
            cleanup.run()
        wall = time.time() - started
        report = {"mode": mode, "started_at": dt.datetime.fromtimestamp(started).isoformat(),
                  "wall_seconds": round(wall, 1), "git": git_info(),
                  "machine": {"cpus": os.cpu_count(), "loadavg_start": load_start,
                              "loadavg_end": os.getloadavg()},
                  "settings": getattr(locals().get("bench"), "cfg", MODES[mode]),
                  "server_env": {k: v for k, v in os.environ.items() if k.startswith(
                      ("CANGREJO_", "DB_", "WRITER_", "REDIS_TIMEOUT", "RATE_LIMIT"))},
                  "dataset": getattr(locals().get("bench"), "dataset", None), "rows": rows}
    path = write_json(report, out_dir, mode)
    print()
    print(f"cangrejo benchmark ({mode}, {report['machine']['cpus']} CPUs, load "
          f"{load_start[0]:.2f} at start), {wall:.0f} s wall; JSON: {os.path.relpath(path, ROOT)}")
    print(table(rows))
    busiest = max(load_start[0], report["machine"]["loadavg_end"][0])
    if busiest > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average up to {busiest:.1f} on {os.cpu_count()} CPUs during the "
              "run: other work shared the machine, so these figures are noisy")
    if any(r["result"] == "ERROR" for r in rows):
        return 1
    if args.strict and any(r["result"] == "FAIL" for r in rows):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
