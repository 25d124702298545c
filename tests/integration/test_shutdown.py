"""Graceful shutdown, black box: on SIGTERM /readyz turns 503 (or the listener is gone) at
once, a request in flight still gets its answer (and its write is committed), and the process
exits 0 within the grace period. Each test starts the server again afterwards (the fixture
would too), so later tests find one running.
"""

import json
import signal
import socket
import subprocess
import time

import requests

from helpers import headers

GRACE_SECONDS = 25  # CANGREJO_SHUTDOWN_GRACE_SECONDS default


# ---------------------------------------------------------------------------------------------
# helpers


def _read_response(sock, timeout=10):
    """One Content-Length-framed response: (status, {lower name: value}, body bytes)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    header_map = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        header_map[name.strip().lower()] = value.strip()
    length = int(header_map.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, header_map, body


def _readyz_state(server):
    """'200', '503', or 'refused'/'reset'/'closed' when no HTTP answer comes on a new
    connection, or another status as a string."""
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            status, _, _ = _read_response(sock, timeout=2)
            return str(status)
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    except (ConnectionError, socket.timeout, OSError):
        return "closed"


def _send_sigterm(server):
    server.expect_running = False  # its exit is expected: no "server died" report
    server.proc.send_signal(signal.SIGTERM)


def _wait_exit(server, timeout):
    try:
        return server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def _restore(server):
    """Leaves a running server behind, whatever happened."""
    if server.proc is not None and server.proc.poll() is None:
        server.stop(signal.SIGKILL)
    server.start()


# ---------------------------------------------------------------------------------------------
# tests


def test_sigterm_lets_the_request_in_flight_finish(server, make_token, merchant_id):
    token = make_token(scope="merchants:admin", merchants=[merchant_id])
    body = json.dumps({"name": "Last Order", "timezone": "Europe/Madrid",
                       "currency": "EUR"}).encode()
    head = (f"PUT /v1/merchants/{merchant_id} HTTP/1.1\r\nHost: t\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        slow.sendall(head + body[:10])  # the headers and part of the body: in flight
        time.sleep(0.3)
        signalled = time.monotonic()
        _send_sigterm(server)

        # Readiness goes at once: a new connection gets 503 or no connection at all.
        states = []
        while time.monotonic() - signalled < 1.0:
            states.append((round(time.monotonic() - signalled, 3), _readyz_state(server)))
            time.sleep(0.02)
        not_ready = [t for t, s in states if s != "200"]
        assert not_ready and not_ready[0] < 0.5, \
            f"/readyz still ready after SIGTERM: {states[:10]}"
        after_first = [s for t, s in states if t >= not_ready[0]]
        assert "200" not in after_first, f"/readyz was ready again during shutdown: {states}"
        assert server.running, "the server exited with a request in flight"

        # The slow client finishes its body: it still gets its full answer.
        slow.sendall(body[10:])
        status, header_map, answer = _read_response(slow)
        assert status == 201, answer
        assert json.loads(answer)["name"] == "Last Order"
        assert header_map.get("x-request-id")
    finally:
        slow.close()

    try:
        code = _wait_exit(server, GRACE_SECONDS)
        assert code is not None, f"the server had not exited {GRACE_SECONDS} s after SIGTERM"
        assert code == 0, f"the server exited with {code}"
        assert time.monotonic() - signalled < 10, "exit took over 10 s with nothing in flight"
    finally:
        _restore(server)

    # The write answered during the drain was committed.
    r = requests.get(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(token),
                     timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "Last Order"


def test_sigterm_when_idle_exits_0_quickly(server):
    assert requests.get(server.url + "/livez", timeout=10).status_code == 200
    started = time.monotonic()
    _send_sigterm(server)
    try:
        code = _wait_exit(server, GRACE_SECONDS)
        elapsed = time.monotonic() - started
        assert code == 0, f"exit code {code} (None: still running after {GRACE_SECONDS} s)"
        assert elapsed < 3, f"an idle server took {elapsed:.1f} s to exit"
    finally:
        _restore(server)


def test_sigterm_with_idle_keepalive_connections_exits_0_quickly(server):
    sessions = [requests.Session() for _ in range(3)]
    try:
        for s in sessions:  # each keeps one idle keep-alive connection open
            assert s.get(server.url + "/livez", timeout=10).status_code == 200
        started = time.monotonic()
        _send_sigterm(server)
        try:
            code = _wait_exit(server, GRACE_SECONDS)
            elapsed = time.monotonic() - started
            assert code == 0, f"exit code {code} (None: still running after {GRACE_SECONDS} s)"
            assert elapsed < 3, f"idle keep-alive connections held the exit for {elapsed:.1f} s"
        finally:
            _restore(server)
    finally:
        for s in sessions:
            s.close()


def test_sigint_also_drains_and_exits_0(server):
    started = time.monotonic()
    server.expect_running = False
    server.proc.send_signal(signal.SIGINT)
    try:
        code = _wait_exit(server, GRACE_SECONDS)
        assert code == 0, f"exit code {code}"
        assert time.monotonic() - started < 3
    finally:
        _restore(server)
