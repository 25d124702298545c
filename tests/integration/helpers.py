"""Reusable helpers for the black-box integration suite (no pytest fixtures here).

Import from tests with ``from helpers import ...`` (pytest puts this directory on sys.path).
"""

import base64
import os
import random
import socket
import time

import jwt
import requests

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
STACK_SH = os.path.join(REPO_ROOT, "deploy", "local", "stack.sh")

# Fixed test keys (tests only, never used anywhere else).
TEST_SECRET = "cangrejo-integration-tests-hs256-secret-01234567"  # 48 chars
TEST_PII_MASTER_KEY = base64.b64encode(bytes(range(0x40, 0x60))).decode()  # 32 bytes
TEST_PII_MASTER_KEY_ID = "test1"
assert len(TEST_SECRET) == 48

DEFAULT_SCOPE = "merchants:admin orders:read orders:write metrics:read deliveries:write"

SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "SUMMARY: UndefinedBehaviorSanitizer",
)

_handed_out_ports = set()


def free_port():
    """A TCP port free on 127.0.0.1 now, below the ephemeral range, never 5432/6379, and never
    handed out before by this process."""
    for _ in range(1000):
        port = random.randint(20000, 32000)
        if port in _handed_out_ports or port in (5432, 6379):
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out_ports.add(port)
        return port
    raise RuntimeError("no free loopback port found")


def wait_for_http(url, timeout=30.0, status=200, proc=None, interval=0.1):
    """Poll GET url until it answers `status`. Returns True, or False after `timeout` seconds
    or as soon as `proc` (a Popen) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if requests.get(url, timeout=2).status_code == status:
                return True
        except requests.RequestException:
            pass
        time.sleep(interval)
    return False


def wait_until(predicate, timeout=5.0, interval=0.05):
    """Call predicate until it returns a truthy value (returned) or timeout (returns None).
    Exceptions from predicate count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception:  # noqa: BLE001 - "not yet"
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def tail(path, lines=60):
    """The last `lines` lines of a text file ('' if missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def sanitizer_reports(text):
    """The lines of `text` that mark an ASan/LSan/UBSan report."""
    return [line for line in text.splitlines() if any(m in line for m in SANITIZER_MARKERS)]


def make_token(scope=DEFAULT_SCOPE, merchants=(1,), sub="test", exp_in=300, *,
               key=TEST_SECRET, algorithm="HS256", jwt_headers=None, **extra_claims):
    """A signed JWT (HS256 with TEST_SECRET by default).

    merchants: a list/tuple of ids, a single int, or "*". exp = now + exp_in.
    extra_claims are added (or override); a claim given as None is removed, e.g.
    make_token(exp=None) makes a token without exp."""
    now = int(time.time())
    if isinstance(merchants, int):
        merchants = [merchants]
    elif merchants != "*" and merchants is not None:
        merchants = list(merchants)
    claims = {"sub": sub, "scope": scope, "merchants": merchants, "iat": now, "exp": now + exp_in}
    claims.update(extra_claims)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=algorithm, headers=jwt_headers)


def headers(token, extra=None):
    """Request headers carrying the bearer token, plus the `extra` dict if given."""
    h = {"Authorization": f"Bearer {token}"}
    h.update(extra or {})
    return h
