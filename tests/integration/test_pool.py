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
    server.env.update(DB_POOL_SIZE="1", DB_POOL_WAIT_MS="150", WRITER_THREADS="1")
    blocker = None
    try:
        server.start()
        assert _put(server, token, locked, "locked").status_code == 201
        blocker = stack.primary()
        blocker.autocommit = False
        blocker.cursor().execute("SELECT 1 FROM merchants WHERE merchant_id = %s FOR UPDATE",
                                 (locked,))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            # One request holds the only primary connection, blocked on the row lock. (One: a
            # second could queue behind it on the same HTTP thread instead of on the pool.)
            waiting = [pool.submit(_put, server, token, locked, "wait")]
            time.sleep(0.5)
            started = time.monotonic()
            r = _put(server, token, free, "free")
            elapsed = time.monotonic() - started
            blocker.rollback()
            answers = [f.result() for f in waiting] + [r]
        # The server's own background work (the reprocess job watcher) may hold the connection
        # for a moment, and then the waiter is the one turned away: either way exactly one
        # request finds the pool full, and is answered 503 within the wait.
        refused = [a for a in answers if a.status_code == 503]
        assert len(refused) == 1, [a.status_code for a in answers]
        assert refused[0].headers.get("Retry-After")
        assert refused[0].headers["Content-Type"] == "application/problem+json"
        assert all(a.status_code in (200, 201) for a in answers if a is not refused[0])
        if r is refused[0]:
            assert elapsed < 2.0
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
