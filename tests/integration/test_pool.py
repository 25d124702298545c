"""The primary pool is bounded: a request waits DB_POOL_WAIT_MS for a connection, then gets
503 with Retry-After (never a hang); connections come back once the blockers finish."""

import concurrent.futures
import time

import requests

from helpers import headers

SCOPE = "merchants:admin"


def _put(server, token, merchant_id, name):
    return requests.put(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(token),
                        json={"name": name, "timezone": "UTC", "currency": "EUR"}, timeout=20)


def test_a_full_pool_answers_503_after_the_bounded_wait(server, stack, make_token, merchant_ids):
    locked, free = next(merchant_ids), next(merchant_ids)
    token = make_token(scope=SCOPE, merchants=[locked, free])
    server.stop()
    saved = dict(server.env)
    server.env.update(DB_POOL_SIZE="2", DB_POOL_WAIT_MS="150", WRITER_THREADS="1")
    blocker = None
    try:
        server.start()
        assert _put(server, token, locked, "locked").status_code == 201
        blocker = stack.primary()
        blocker.autocommit = False
        blocker.cursor().execute("SELECT 1 FROM merchants WHERE merchant_id = %s FOR UPDATE",
                                 (locked,))
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(_put, server, token, locked, f"wait-{i}") for i in range(2)]
            time.sleep(0.5)  # both hold a primary connection, blocked on the row lock
            started = time.monotonic()
            r = _put(server, token, free, "free")
            elapsed = time.monotonic() - started
            assert r.status_code == 503, r.text
            assert r.headers.get("Retry-After") and elapsed < 2.0
            assert r.headers["Content-Type"] == "application/problem+json"
            blocker.rollback()
            assert [f.result().status_code for f in waiting] == [200, 200]
        assert _put(server, token, free, "free").status_code == 201
        metrics = requests.get(f"{server.url}/metrics", timeout=10).text
        assert 'cangrejo_db_pool_wait_timeouts_total{pool="primary"} 1' in metrics
    finally:
        if blocker:
            blocker.close()
        server.stop()
        server.env.clear()
        server.env.update(saved)
        server.start()
