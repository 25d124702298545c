"""Session fixtures for the black-box integration suite.

The real stack runs once per test session, on free loopback ports, in a temporary directory:
a PostgreSQL 15 primary, a streaming replica made from it with pg_basebackup, and Redis
(all via deploy/local/stack.sh), then the cangrejo server binary under test.

Fixtures:
  stack           session: the databases and Redis (see Stack)
  server          session: the running server (see Server); restarted before a test if an
                  earlier test left it stopped
  make_token      function make_token(scope=..., merchants=[1] | "*", sub="test", exp_in=300,
                  **extra_claims) -> HS256 JWT signed with TEST_SECRET
  merchant_ids    callable/iterator of merchant ids unique in the session
  merchant_id     one fresh merchant id
Every test that uses `server` fails if the server wrote a sanitizer report, or died, while
it ran.

Environment: CANGREJO_BIN (default <repo>/build-test/cangrejo); CANGREJO_KEEP_TMP=1 keeps the
temporary directory (data dirs, logs, server.log) for inspection.
"""

import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile

import psycopg2
import pytest

from helpers import (  # noqa: F401 - re-exported for tests
    DEFAULT_SCOPE,
    REPO_ROOT,
    STACK_SH,
    TEST_PII_MASTER_KEY,
    TEST_PII_MASTER_KEY_ID,
    TEST_SECRET,
    free_port,
    headers,
    make_token as _make_token,
    sanitizer_reports,
    tail,
    wait_for_http,
)

PG_EXTRA_OPTS = "-c fsync=off -c full_page_writes=off"
SERVER_READY_TIMEOUT = 30
KEEP_TMP = os.environ.get("CANGREJO_KEEP_TMP") == "1"

# Configuration the developer's shell might hold that must not leak into the server under test.
_SERVER_ENV_DROP = (
    "CANGREJO_LISTEN", "CANGREJO_THREADS", "DATABASE_URL", "DATABASE_REPLICA_URLS", "REDIS_URL",
    "JWT_HS256_SECRET", "JWT_PUBLIC_KEYS", "JWT_JWKS_FILE", "JWT_ISSUER", "JWT_AUDIENCE",
    "PII_MASTER_KEY", "PII_MASTER_KEY_FILE", "PII_MASTER_KEY_ID", "TLS_CERT_FILE",
    "TLS_KEY_FILE", "LOG_LEVEL", "ASAN_OPTIONS", "UBSAN_OPTIONS",
)


# ---------------------------------------------------------------------------------------------
# stack


class Stack:
    """PostgreSQL primary + streaming replica + Redis, driven through deploy/local/stack.sh."""

    def __init__(self, directory, primary_port, replica_port, redis_port):
        self.dir = directory
        self.primary_port = primary_port
        self.replica_port = replica_port
        self.redis_port = redis_port
        self.primary_url = f"postgresql://postgres@127.0.0.1:{primary_port}/cangrejo"
        self.replica_url = f"postgresql://postgres@127.0.0.1:{replica_port}/cangrejo"
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        self.script_env = dict(
            os.environ,
            STACK_DIR=directory,
            PG_PRIMARY_PORT=str(primary_port),
            PG_REPLICA_PORT=str(replica_port),
            REDIS_PORT=str(redis_port),
            PG_EXTRA_OPTS=PG_EXTRA_OPTS,
        )
        # Where stack.sh keeps what proves which processes it started.
        self.pid_files = {
            "primary": os.path.join(directory, "pg", "primary", "postmaster.pid"),
            "replica": os.path.join(directory, "pg", "replica", "postmaster.pid"),
            "redis": os.path.join(directory, "redis", "redis.pid"),
        }
        self.log_files = {
            "primary": os.path.join(directory, "pg", "primary.log"),
            "replica": os.path.join(directory, "pg", "replica.log"),
            "redis": os.path.join(directory, "redis", "redis.log"),
        }

    def run(self, command, check=True, timeout=300):
        """Run `stack.sh <command>`; returns the CompletedProcess (raises if check and it fails)."""
        proc = subprocess.run(["bash", STACK_SH, command], env=self.script_env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"stack.sh {command} exited {proc.returncode}\n"
                               f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def start(self):
        self.run("start")

    def stop(self):
        self.run("stop")

    def status(self):
        return self.run("status", check=False).stdout

    def stop_primary(self):
        self.run("stop-primary")

    def start_primary(self):
        self.run("start-primary")

    def stop_replica(self):
        self.run("stop-replica")

    def start_replica(self):
        self.run("start-replica")

    def stop_redis(self):
        self.run("stop-redis")

    def start_redis(self):
        self.run("start-redis")

    def primary(self, **kwargs):
        """A new autocommit psycopg2 connection to the primary's cangrejo database."""
        return self._connect(self.primary_url, **kwargs)

    def replica(self, **kwargs):
        """A new autocommit psycopg2 connection to the replica's cangrejo database."""
        return self._connect(self.replica_url, **kwargs)

    def redis(self):
        """A new redis-py client for the stack's Redis."""
        import redis

        return redis.Redis.from_url(self.redis_url, socket_timeout=5)

    def pids(self):
        """{name: pid} from the pid files that exist now."""
        found = {}
        for name, path in self.pid_files.items():
            try:
                with open(path) as f:
                    found[name] = int(f.readline().strip())
            except (FileNotFoundError, ValueError):
                pass
        return found

    @staticmethod
    def _connect(url, **kwargs):
        kwargs.setdefault("connect_timeout", 5)
        conn = psycopg2.connect(url, **kwargs)
        conn.autocommit = True
        return conn


@pytest.fixture(scope="session")
def stack():
    directory = tempfile.mkdtemp(prefix="cangrejo-it-")
    s = Stack(directory, free_port(), free_port(), free_port())  # distinct by construction
    try:
        s.start()
        yield s
    finally:
        stopped = s.run("stop", check=False)
        if KEEP_TMP or stopped.returncode != 0:
            print(f"\nintegration stack directory kept: {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
        if stopped.returncode != 0:
            raise RuntimeError(f"stack.sh stop failed:\n{stopped.stdout}\n{stopped.stderr}")


# ---------------------------------------------------------------------------------------------
# server


class Server:
    """The cangrejo binary under test, run as `cangrejo serve`, output appended to log_path."""

    def __init__(self, binary, env, log_path, port):
        self.binary = binary
        self.env = env
        self.log_path = log_path
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None
        self.expect_running = False  # False after stop(): its exit is no crash

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _log_note(self, text):
        with open(self.log_path, "a") as log:
            log.write(f"--- conftest: {text} ---\n")

    def run_command(self, *args, timeout=120):
        """Run `cangrejo <args>` with the server's env, output appended to the log;
        returns (exit code, the output it wrote)."""
        start = self.log_size()
        self._log_note(f"cangrejo {' '.join(args)}")
        with open(self.log_path, "ab") as log:
            code = subprocess.run([self.binary, *args], env=self.env, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
        return code, self.log_since(start)

    def start(self):
        """Start `cangrejo serve` and wait until GET /readyz answers 200."""
        if self.running:
            raise RuntimeError("server already running")
        self._log_note("cangrejo serve")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "serve"], env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.expect_running = True
        if not wait_for_http(self.url + "/readyz", SERVER_READY_TIMEOUT, proc=self.proc):
            code = self.proc.poll()
            if code is None:
                self.proc.kill()
                self.proc.wait()
            self.expect_running = False
            why = (f"exited with {code} before GET /readyz answered 200" if code is not None else
                   f"did not answer GET /readyz with 200 within {SERVER_READY_TIMEOUT}s (killed)")
            raise RuntimeError(f"cangrejo serve on {self.url} {why}. "
                               f"Last lines of {self.log_path}:\n{tail(self.log_path)}")

    def stop(self, sig=signal.SIGTERM, timeout=20):
        """Send `sig`, wait up to `timeout` s for the exit, return the exit code (negative:
        killed by that signal). If it does not exit in time: SIGKILL, then TimeoutError."""
        self.expect_running = False
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise TimeoutError(f"server (pid {self.proc.pid}) did not exit within {timeout}s "
                               f"of signal {sig}; killed") from None

    def kill(self):
        """kill -9; returns the exit code (-9)."""
        return self.stop(signal.SIGKILL)

    def restart(self):
        self.stop()
        self.start()

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except FileNotFoundError:
            return 0

    def log_since(self, offset):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_text(self):
        return self.log_since(0)

    def log_lines_json(self):
        """The log lines that are JSON objects, parsed (other lines are ignored)."""
        lines = []
        for line in self.log_text().splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                lines.append(value)
        return lines


def _server_env(stack, port):
    env = {k: v for k, v in os.environ.items() if k not in _SERVER_ENV_DROP}
    env.update(
        CANGREJO_LISTEN=f"127.0.0.1:{port}",
        DATABASE_URL=stack.primary_url,
        DATABASE_REPLICA_URLS=stack.replica_url,
        REDIS_URL=stack.redis_url,
        JWT_HS256_SECRET=TEST_SECRET,
        PII_MASTER_KEY=TEST_PII_MASTER_KEY,
        PII_MASTER_KEY_ID=TEST_PII_MASTER_KEY_ID,
        LOG_LEVEL="debug",
        CANGREJO_THREADS="4",
        # No log_path: reports go to stderr, i.e. into server.log, where the checks look.
        ASAN_OPTIONS="abort_on_error=0:detect_leaks=1",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=0",
    )
    return env


@pytest.fixture(scope="session")
def server(stack):
    binary = os.path.abspath(os.environ.get("CANGREJO_BIN",
                                            os.path.join(REPO_ROOT, "build-test", "cangrejo")))
    if not os.access(binary, os.X_OK):
        pytest.fail(f"server binary {binary} not found: build it (e.g. meson setup build-test "
                    f"-Db_sanitize=address,undefined && ninja -C build-test) or set CANGREJO_BIN",
                    pytrace=False)
    port = free_port()
    srv = Server(binary, _server_env(stack, port), os.path.join(stack.dir, "server.log"), port)
    code, output = srv.run_command("migrate")
    if code != 0:
        pytest.fail(f"`cangrejo migrate` exited {code}:\n{output[-6000:]}", pytrace=False)
    srv.start()
    yield srv
    try:
        srv.stop()
    finally:
        reports = sanitizer_reports(srv.log_text())
        if reports:
            pytest.fail(f"sanitizer reports in {srv.log_path}:\n" + "\n".join(reports[:20]),
                        pytrace=False)


def server_with_env(stack, binary, name, **changes):
    """A Server (not started) on the session stack, its own port and log (<stack dir>/<name>.log),
    with the test environment changed by changes (a value of None removes a variable)."""
    port = free_port()
    env = _server_env(stack, port)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return Server(binary, env, os.path.join(stack.dir, f"{name}.log"), port)


@pytest.fixture
def start_server(stack, server):
    """start_server(name, **env) -> another `cangrejo serve` on the same stack, its own port and
    log (<stack dir>/<name>.log), with the test environment changed by env (a value of None
    removes a variable). Stopped at teardown, which fails on sanitizer reports in its log."""
    started = []

    def start(name, **changes):
        srv = server_with_env(stack, server.binary, name, **changes)
        started.append(srv)
        srv.start()
        return srv

    yield start
    for srv in started:
        srv.stop()
    reports = [r for srv in started for r in sanitizer_reports(srv.log_text())]
    if reports:
        pytest.fail("sanitizer reports in a started server's log:\n" + "\n".join(reports[:20]),
                    pytrace=False)


# ---------------------------------------------------------------------------------------------
# per-test checks: sanitizer reports and unexpected server exits


def _server_problems(srv, offset):
    problems = []
    reports = sanitizer_reports(srv.log_since(offset))
    if reports:
        problems.append("sanitizer report(s) in the server log:\n  " + "\n  ".join(reports[:20]))
    if srv.expect_running and srv.proc is not None and srv.proc.poll() is not None:
        problems.append(f"the server exited unexpectedly with code {srv.proc.returncode}")
        srv.expect_running = False  # report it once; the next test starts it again
    if problems:
        problems.append(f"last lines of {srv.log_path}:\n{tail(srv.log_path, 40)}")
    return "\n".join(problems)


@pytest.fixture(autouse=True)
def no_sanitizer_reports(request):
    """For tests using `server`: start it if an earlier test left it stopped, and fail the
    test if the server log gained a sanitizer report, or the server died, meanwhile."""
    if "server" not in request.fixturenames:
        yield
        return
    srv = request.getfixturevalue("server")
    if not srv.running:
        srv.start()
    watch = {"server": srv, "offset": srv.log_size()}
    request.node._cangrejo_watch = watch
    yield
    # What the call phase did was checked in pytest_runtest_makereport; this covers teardown.
    problems = _server_problems(srv, watch["offset"])
    if problems:
        pytest.fail(problems, pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Turn a server problem during the test body into a failure of the test itself (not a
    teardown error), or attach it to a test that failed anyway."""
    outcome = yield
    report = outcome.get_result()
    watch = getattr(item, "_cangrejo_watch", None)
    if report.when != "call" or watch is None:
        return
    problems = _server_problems(watch["server"], watch["offset"])
    watch["offset"] = watch["server"].log_size()
    if not problems:
        return
    if report.passed:
        report.outcome = "failed"
        report.longrepr = problems
    else:
        report.sections.append(("cangrejo server", problems))


# ---------------------------------------------------------------------------------------------
# tokens and ids


@pytest.fixture
def make_token():
    """make_token(scope=DEFAULT_SCOPE, merchants=[1] | "*", sub="test", exp_in=300,
    **extra_claims) -> JWT (HS256, TEST_SECRET). A claim passed as None is left out."""
    return _make_token


class MerchantIds:
    """Hands out merchant ids unique within the session: ids() or next(ids)."""

    def __init__(self, counter):
        self._counter = counter

    def __call__(self):
        return next(self._counter)

    __next__ = __call__

    def __iter__(self):
        return self


# A random high start so that runs against a reused database do not collide either.
_merchant_counter = itertools.count(random.randint(10**9, 10**12))


@pytest.fixture
def merchant_ids():
    return MerchantIds(_merchant_counter)


@pytest.fixture
def merchant_id(merchant_ids):
    return merchant_ids()


# ---------------------------------------------------------------------------------------------
# BEGIN spec check: every response of a cangrejo server checked against openapi/openapi.yaml
#
# Every HTTP request made with `requests` (module functions and Sessions alike) goes through
# Session.send, wrapped here once: the response is checked after it returns (its body read,
# timings untouched; a failure to read the body reaches the test as before). A response from
# a port where a `Server` of this suite listens (the registry below: every Server, TlsServer
# and start_server instance) is checked by spec_check.py; the ways it differs from the spec
# are collected for the running test (fixture setup and the test body count as the test,
# teardown as its teardown) and fail it. Responses outside any test (a thread outliving its
# test) are listed in the terminal summary. CANGREJO_SPEC_CHECK_LOG=path writes the count of
# checked responses per route and status, and every violation, there as JSON at the end.

import threading as _sc_threading
import urllib.parse as _sc_urlparse

import requests.sessions as _sc_sessions

import spec_check as _spec_check

_SC_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


class _SpecCheckState:
    def __init__(self):
        self.lock = _sc_threading.Lock()
        self.ports = set()          # where servers of this suite listen
        self.current = None         # violations of the running test, or None between tests
        self.checked = 0            # responses checked
        self.counts = {}            # (method, template, status) -> responses
        self.failed_tests = {}      # nodeid -> [violation text]
        self.allowed = {}           # (method, template, status, reason) -> responses
        self.orphans = []           # violations outside any test
        self.errors = []            # the checker itself raised

    def record(self, result):
        with self.lock:
            self.checked += 1
            key = (result.method, result.template, result.status)
            self.counts[key] = self.counts.get(key, 0) + 1
            for _, reason in result.allowed:
                akey = key + (reason,)
                self.allowed[akey] = self.allowed.get(akey, 0) + 1
            if result.violations:
                text = result.describe()
                (self.current if self.current is not None else self.orphans).append(text)

    def take(self):
        with self.lock:
            taken = list(self.current or [])
            if self.current is not None:
                self.current.clear()
            return taken


_SC = _SpecCheckState()
_sc_original_send = _sc_sessions.Session.send
_sc_original_server_init = Server.__init__


def _sc_server_init(self, *args, **kwargs):
    _sc_original_server_init(self, *args, **kwargs)
    with _SC.lock:
        _SC.ports.add(int(self.port))


Server.__init__ = _sc_server_init


def _sc_check(response, streamed):
    request = response.request
    try:
        parts = _sc_urlparse.urlsplit(request.url)
        if parts.hostname not in _SC_LOOPBACK or parts.port not in _SC.ports:
            return
        body = None if streamed else response.content  # already read by Session.send
        _SC.record(_spec_check.default_checker().check(
            request.method, request.url, response.status_code, response.headers, body,
            body_known=not streamed, request_headers=request.headers))
    except Exception as e:  # noqa: BLE001 - a checker bug must show, not break the request
        with _SC.lock:
            _SC.errors.append(f"{request.method} {request.url}: {type(e).__name__}: {e}")
            if _SC.current is not None:
                _SC.current.append(f"spec_check raised on {request.method} {request.url}: "
                                   f"{type(e).__name__}: {e}")


def _sc_checked_send(self, request, **kwargs):
    response = _sc_original_send(self, request, **kwargs)
    streamed = bool(kwargs.get("stream"))
    for earlier in response.history:  # redirects (cangrejo sends none)
        _sc_check(earlier, False)
    _sc_check(response, streamed)
    return response


_sc_sessions.Session.send = _sc_checked_send


class _SpecCheckPlugin:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item):
        with _SC.lock:
            _SC.current = []
        yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if report.when == "setup" and report.passed:
            return  # setup's responses are reported with the test body's
        violations = _SC.take()
        if report.when == "teardown":
            with _SC.lock:
                _SC.current = None
        if not violations:
            return
        _SC.failed_tests.setdefault(item.nodeid, []).extend(violations)
        text = (f"{len(violations)} response(s) not as openapi/openapi.yaml describes:\n"
                + "\n".join(violations[:30])
                + (f"\n... and {len(violations) - 30} more" if len(violations) > 30 else ""))
        if report.passed:
            report.outcome = "failed"
            report.longrepr = text
        else:
            report.sections.append(("openapi spec check", text))

    def pytest_terminal_summary(self, terminalreporter):
        tr = terminalreporter
        with _SC.lock:
            tr.write_line(f"spec check: {_SC.checked} responses of cangrejo checked against "
                          f"openapi/openapi.yaml; {len(_SC.failed_tests)} test(s) got responses "
                          f"it does not describe")
            for (method, template, status, reason), n in sorted(_SC.allowed.items()):
                tr.write_line(f"spec check: allowed {n}x {method} {template} {status}: {reason}")
            for text in _SC.orphans[:20]:
                tr.write_line(f"spec check: outside any test: {text}")
            for text in _SC.errors[:20]:
                tr.write_line(f"spec check: checker error: {text}")
        path = os.environ.get("CANGREJO_SPEC_CHECK_LOG")
        if path:
            with _SC.lock, open(path, "w") as f:
                json.dump({"checked": _SC.checked,
                           "counts": [[*k, n] for k, n in sorted(_SC.counts.items(),
                                                                 key=lambda kv: str(kv[0]))],
                           "failed_tests": _SC.failed_tests,
                           "allowed": [[*k, n] for k, n in sorted(_SC.allowed.items())],
                           "orphans": _SC.orphans, "errors": _SC.errors}, f, indent=1)


def pytest_configure(config):
    config.pluginmanager.register(_SpecCheckPlugin(), "cangrejo-spec-check")


@pytest.fixture
def spec_check_state():
    """The spec check's live state (for test_spec.py): ports, checked count, take()."""
    return _SC

# END spec check
# ---------------------------------------------------------------------------------------------
