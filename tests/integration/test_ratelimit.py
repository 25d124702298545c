"""Rate limiting, black box: quotas per token subject and per merchant, per scope, shared by
every server instance through Redis, answered with 429 + Retry-After + the IETF RateLimit
headers, and failing open when Redis is down."""
import os
import re
import subprocess
import time
import uuid

import pytest
import requests

from helpers import free_port, headers, make_token

SUBJECT_RULES = "metrics:read=5/10s,*=100/1s"
MERCHANT_RULES = "orders:write=3/30s"
FROM, TO = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"


@pytest.fixture
def limited(start_server):
    return start_server("ratelimited", RATE_LIMIT_SUBJECT=SUBJECT_RULES,
                        RATE_LIMIT_MERCHANT=MERCHANT_RULES)


def _merchant(srv, merchant_id):
    admin = make_token(scope="merchants:admin", merchants=[merchant_id], sub=uuid.uuid4().hex)
    r = requests.put(f"{srv.url}/v1/merchants/{merchant_id}", headers=headers(admin),
                     json={"name": "Quota test", "timezone": "UTC", "currency": "EUR"},
                     timeout=10)
    assert r.status_code == 201, r.text
    return merchant_id


def _sales(srv, merchant_id, token):
    return requests.get(f"{srv.url}/v1/merchants/{merchant_id}/metrics/sales",
                        params={"from": FROM, "to": TO}, headers=headers(token), timeout=10)


def _put_order(srv, merchant_id, token):
    body = {"order_id": uuid.uuid4().hex, "store_id": 1, "channel": "pos",
            "fulfillment": "pickup", "placed_at": "2026-01-01T12:00:00Z", "currency": "EUR",
            "items": [{"sku": "A", "name": "A", "quantity": 1, "unit_price_cents": 100}]}
    return requests.post(f"{srv.url}/v1/merchants/{merchant_id}/orders",
                         headers=headers(token), json=body, timeout=10)


def _state(r):
    """The RateLimit header as {policy: (remaining, reset seconds)}."""
    items = re.findall(r'"(\w+)";r=(\d+);t=(\d+)', r.headers.get("RateLimit", ""))
    return {name: (int(left), int(reset)) for name, left, reset in items}


def test_subject_quota_counts_down_then_429(limited, merchant_ids):
    merchant = _merchant(limited, merchant_ids())
    token = make_token(merchants=[merchant], sub=uuid.uuid4().hex)
    left = []
    for _ in range(5):
        r = _sales(limited, merchant, token)
        assert r.status_code == 200, r.text
        assert r.headers["RateLimit-Policy"] == '"subject";q=5;w=10'
        left.append(_state(r)["subject"][0])
    assert left == [4, 3, 2, 1, 0]
    r = _sales(limited, merchant, token)
    assert r.status_code == 429
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.json()["type"].endswith("/rate-limited")
    assert 1 <= int(r.headers["Retry-After"]) <= 2  # one request per 2 s comes back
    assert _state(r)["subject"][0] == 0


def test_retry_after_is_honest(limited, merchant_ids):
    merchant = _merchant(limited, merchant_ids())
    token = make_token(merchants=[merchant], sub=uuid.uuid4().hex)
    while (r := _sales(limited, merchant, token)).status_code == 200:
        pass
    assert r.status_code == 429
    time.sleep(int(r.headers["Retry-After"]))
    assert _sales(limited, merchant, token).status_code == 200


def test_quota_is_per_subject(limited, merchant_ids):
    merchant = _merchant(limited, merchant_ids())
    greedy = make_token(merchants=[merchant], sub=uuid.uuid4().hex)
    while _sales(limited, merchant, greedy).status_code == 200:
        pass
    other = make_token(merchants=[merchant], sub=uuid.uuid4().hex)
    assert _sales(limited, merchant, other).status_code == 200


def test_each_scope_has_its_own_rule(limited, merchant_ids):
    merchant = _merchant(limited, merchant_ids())
    token = make_token(merchants=[merchant], sub=uuid.uuid4().hex)
    while _sales(limited, merchant, token).status_code == 200:
        pass
    r = _put_order(limited, merchant, token)  # orders:write: the "*" rule and the merchant rule
    assert r.status_code == 201, r.text
    assert r.headers["RateLimit-Policy"] == '"subject";q=100;w=1, "merchant";q=3;w=30'
    assert set(_state(r)) == {"subject", "merchant"}


def test_merchant_quota_is_shared_by_every_subject(limited, merchant_ids):
    merchant, other_merchant = _merchant(limited, merchant_ids()), merchant_ids()
    _merchant(limited, other_merchant)
    subjects = [make_token(merchants=[merchant, other_merchant], sub=uuid.uuid4().hex)
                for _ in range(4)]
    codes = [_put_order(limited, merchant, t).status_code for t in subjects]
    assert codes == [201, 201, 201, 429]
    assert _put_order(limited, other_merchant, subjects[3]).status_code == 201


def test_quota_is_shared_by_server_instances(limited, start_server, merchant_ids):
    second = start_server("ratelimited2", RATE_LIMIT_SUBJECT=SUBJECT_RULES,
                          RATE_LIMIT_MERCHANT=MERCHANT_RULES)
    merchant = _merchant(limited, merchant_ids())
    token = make_token(merchants=[merchant], sub=uuid.uuid4().hex)
    codes = [_sales(srv, merchant, token).status_code for srv in [limited, second] * 3]
    assert codes == [200] * 5 + [429]


def test_refused_tokens_use_no_quota(limited, merchant_ids):
    merchant = _merchant(limited, merchant_ids())
    sub = uuid.uuid4().hex
    wrong = make_token(merchants=[merchant], sub=sub, key="x" * 48)
    for _ in range(10):
        assert _sales(limited, merchant, wrong).status_code == 401
    assert _sales(limited, merchant, make_token(merchants=[merchant], sub=sub)).status_code == 200


def test_redis_down_fails_open(limited, stack, merchant_ids):
    merchant = _merchant(limited, merchant_ids())
    token = make_token(merchants=[merchant], sub=uuid.uuid4().hex)
    stack.stop_redis()
    try:
        for _ in range(8):  # more than the quota of 5
            r = _sales(limited, merchant, token)
            assert r.status_code == 200, r.text
            assert "RateLimit" not in r.headers
    finally:
        stack.start_redis()


def test_no_rules_no_headers(server, merchant_ids):
    merchant = _merchant(server, merchant_ids())
    r = _sales(server, merchant, make_token(merchants=[merchant]))
    assert r.status_code == 200
    assert "RateLimit-Policy" not in r.headers and "RateLimit" not in r.headers


@pytest.mark.parametrize("rules", ["metrics:read", "metrics:read=5", "metrics:read=5/0s",
                                   "nosuchscope=5/1s", "metrics:read=0/1s", "*=5/2d",
                                   "metrics:read=5/1s,,*=1/1s"])
def test_bad_rules_stop_the_server_with_a_clear_message(server, stack, rules):
    env = dict(server.env, RATE_LIMIT_SUBJECT=rules, CANGREJO_LISTEN=f"127.0.0.1:{free_port()}")
    done = subprocess.run([server.binary, "serve"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode != 0
    assert "RATE_LIMIT_SUBJECT" in done.stderr
    assert os.environ.get("JWT_HS256_SECRET", "§") not in done.stderr
