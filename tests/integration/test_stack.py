"""Tests of the test stack itself (deploy/local/stack.sh through the `stack` fixture).

They need no server binary. The stop/start cycles leave the stack running as they found it.
"""

import contextlib
import os
import uuid

import psycopg2
import pytest
import redis

from helpers import wait_until


def _alive(pid):
    """True if pid is a live process (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _processes_in(directory):
    """Live pids whose working directory or command line lies in `directory` (postgres
    children work in their data dir, redis in its --dir)."""
    found = []
    directory = os.path.realpath(directory)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not _alive(int(entry)):
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if cwd == directory or cwd.startswith(directory + "/") or directory in cmdline:
            found.append((int(entry), cmdline.strip()))
    return found


def _query_one(conn_factory, sql, *args):
    with contextlib.closing(conn_factory()) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        row = cur.fetchone()
        return row[0] if row else None


@pytest.fixture
def probe_table(stack):
    """A fresh table on the primary, dropped afterwards."""
    name = f"stack_probe_{uuid.uuid4().hex[:12]}"
    with contextlib.closing(stack.primary()) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (v text PRIMARY KEY)")
    yield name
    with contextlib.closing(stack.primary()) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}")


def _insert(stack, table, value):
    with contextlib.closing(stack.primary()) as conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} (v) VALUES (%s)", (value,))


def _visible_on_replica(stack, table, value, timeout):
    return wait_until(
        lambda: _query_one(stack.replica, f"SELECT count(*) FROM {table} WHERE v = %s", value) == 1,
        timeout=timeout)


def test_replica_streams_from_primary(stack, probe_table):
    assert _query_one(stack.primary, "SELECT pg_is_in_recovery()") is False
    assert _query_one(stack.replica, "SELECT pg_is_in_recovery()") is True
    assert _query_one(stack.primary, "SELECT current_database()") == "cangrejo"
    assert _query_one(stack.replica, "SELECT current_database()") == "cangrejo"
    states = _query_one(stack.primary,
                        "SELECT array_agg(state) FROM pg_stat_replication")
    assert states == ["streaming"]

    value = uuid.uuid4().hex
    _insert(stack, probe_table, value)
    assert _visible_on_replica(stack, probe_table, value, timeout=5), \
        "row inserted on the primary not visible on the replica within 5 s"


def test_replica_is_read_only(stack):
    with contextlib.closing(stack.replica()) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            cur.execute("CREATE TABLE must_fail (x int)")


def test_redis_answers_ping(stack):
    assert stack.redis().ping() is True


def test_start_is_idempotent(stack):
    before = stack.pids()
    assert set(before) == {"primary", "replica", "redis"}
    stack.start()
    assert stack.pids() == before


def test_replica_stop_start_round_trip(stack, probe_table):
    pid = stack.pids()["replica"]
    stack.stop_replica()
    stack.stop_replica()  # idempotent
    try:
        assert "replica" not in stack.pids()
        assert not _alive(pid)
        with pytest.raises(psycopg2.OperationalError):
            stack.replica().close()
        # The primary goes on; the replica catches up after its restart.
        value = uuid.uuid4().hex
        _insert(stack, probe_table, value)
    finally:
        stack.start_replica()
    stack.start_replica()  # idempotent
    assert _query_one(stack.replica, "SELECT pg_is_in_recovery()") is True
    assert _visible_on_replica(stack, probe_table, value, timeout=10), \
        "the restarted replica did not catch up with a row written while it was down"


def test_primary_stop_start_round_trip(stack, probe_table):
    value = uuid.uuid4().hex
    _insert(stack, probe_table, value)
    assert _visible_on_replica(stack, probe_table, value, timeout=5)
    stack.stop_primary()
    stack.stop_primary()  # idempotent
    try:
        with pytest.raises(psycopg2.OperationalError):
            stack.primary().close()
        # Reads go on on the replica while the primary is down.
        assert _query_one(stack.replica, f"SELECT count(*) FROM {probe_table} WHERE v = %s",
                          value) == 1
    finally:
        stack.start_primary()
    stack.start_primary()  # idempotent
    value2 = uuid.uuid4().hex
    _insert(stack, probe_table, value2)
    assert _visible_on_replica(stack, probe_table, value2, timeout=15), \
        "the replica did not resume streaming after the primary restarted"


def test_redis_stop_start_round_trip(stack):
    stack.stop_redis()
    stack.stop_redis()  # idempotent
    try:
        assert "redis" not in stack.pids()
        with pytest.raises(redis.exceptions.ConnectionError):
            stack.redis().ping()
    finally:
        stack.start_redis()
    stack.start_redis()  # idempotent
    assert stack.redis().ping() is True


def test_stop_leaves_nothing_behind(stack):
    before = stack.pids()
    assert set(before) == {"primary", "replica", "redis"}
    try:
        stack.stop()
        for name, pid in before.items():
            assert not _alive(pid), f"{name} (pid {pid}) still runs after stack.sh stop"
            assert not os.path.exists(stack.pid_files[name]), f"{name} pid file left behind"
        assert _processes_in(stack.dir) == []
        stack.stop()  # stopping a stopped stack succeeds
        status = stack.run("status", check=False)
        assert status.returncode == 3
        assert "running" not in status.stdout
    finally:
        stack.start()
    after = stack.pids()
    assert set(after) == {"primary", "replica", "redis"}
    assert all(after[name] != before[name] for name in after)
    assert stack.run("status").returncode == 0
    assert _query_one(stack.replica, "SELECT pg_is_in_recovery()") is True
    assert stack.redis().ping() is True
