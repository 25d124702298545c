"""`cangrejo migrate`: every migration once, in order, under an advisory lock, so several pods
may run it at the same time; a database newer than the binary is refused."""

import concurrent.futures
import subprocess
import uuid

import psycopg2


def _url(stack, db):
    return stack.primary_url.rsplit("/", 1)[0] + "/" + db


def _admin(stack, sql):
    conn = stack.primary()  # autocommit: CREATE/DROP DATABASE cannot run in a transaction
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


def _migrate(server, url):
    env = dict(server.env, DATABASE_URL=url)
    return subprocess.run([server.binary, "migrate"], env=env, capture_output=True, text=True,
                          timeout=120)


def test_concurrent_migrations_apply_each_version_once(server, stack):
    db = "migrate_" + uuid.uuid4().hex[:8]
    _admin(stack, f"CREATE DATABASE {db}")
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            runs = list(pool.map(lambda _: _migrate(server, _url(stack, db)), range(6)))
        assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
        with psycopg2.connect(_url(stack, db)) as conn, conn.cursor() as cur:
            cur.execute("SELECT version, count(*) FROM schema_migrations GROUP BY version "
                        "ORDER BY version")
            rows = cur.fetchall()
            cur.execute("SELECT count(*) FROM pg_class WHERE relname = 'sales_rollup_15m'")
            assert cur.fetchone()[0] == 1
        versions = [v for v, _ in rows]
        assert versions == list(range(1, len(versions) + 1)) and len(versions) >= 4
        assert all(n == 1 for _, n in rows)
        again = _migrate(server, _url(stack, db))
        assert again.returncode == 0 and "(0 migration(s) applied)" in again.stdout

        with psycopg2.connect(_url(stack, db)) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')")
        newer = _migrate(server, _url(stack, db))
        assert newer.returncode != 0 and "newer than this binary" in newer.stderr
    finally:
        _admin(stack, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
