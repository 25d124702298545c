"""Authentication and tenancy, black box, on GET/PUT /v1/merchants/{merchant_id}: bearer
tokens (RFC 8725 checks: algorithm allow-list, no `none`, exp/nbf with 30 s leeway, size
limit), scopes, the merchants claim, and that 401/403 are decided without the database.
"""

import base64
import hashlib
import hmac
import json
import time

import pytest
import requests

from helpers import TEST_SECRET, headers, make_token as raw_token, wait_for_http

PROBLEM_BASE = "https://cangrejo.dev/problems/"
OTHER_SECRET = "another-secret-that-is-long-enough-for-hs256-0123456789"


# ---------------------------------------------------------------------------------------------
# helpers


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_made(header, claims, signature=b""):
    """A compact JWS built by hand (no library), signature given as raw bytes."""
    return ".".join([_b64url(json.dumps(header).encode()), _b64url(json.dumps(claims).encode()),
                     _b64url(signature)])


def _hand_signed(claims):
    """HS256 over hand-made JSON (lets a claim be JSON null)."""
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64url(json.dumps(claims).encode())
    mac = hmac.new(TEST_SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64url(mac)}"


def _problem(response, status):
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].split(";")[0].strip() == "application/problem+json"
    body = response.json()
    assert body["type"].startswith(PROBLEM_BASE) and body["title"]
    assert body["status"] == status
    assert body["instance"] == response.headers["X-Request-Id"]
    return body


def assert_401(response):
    body = _problem(response, 401)
    challenge = response.headers.get("WWW-Authenticate", "")
    assert challenge.startswith("Bearer"), challenge
    assert 'error="invalid_token"' in challenge, challenge
    return body


def assert_403(response):
    body = _problem(response, 403)
    return body


def _get(server, merchant_id, token=None, auth_header=None):
    h = {}
    if token is not None:
        h = headers(token)
    if auth_header is not None:
        h = {"Authorization": auth_header}
    return requests.get(f"{server.url}/v1/merchants/{merchant_id}", headers=h, timeout=10)


def _put(server, merchant_id, token=None, name="Auth Test"):
    h = {"Content-Type": "application/json"}
    if token is not None:
        h.update(headers(token))
    return requests.put(f"{server.url}/v1/merchants/{merchant_id}", headers=h, timeout=10,
                        json={"name": name, "timezone": "Europe/Madrid", "currency": "EUR"})


@pytest.fixture
def merchant(server, make_token, merchant_ids):
    """A freshly created merchant's id."""
    mid = merchant_ids()
    r = _put(server, mid, make_token(scope="merchants:admin", merchants=[mid]))
    assert r.status_code == 201, r.text
    return mid


def _now():
    return int(time.time())


# ---------------------------------------------------------------------------------------------
# 401: no or invalid token


def test_valid_token_is_accepted(server, make_token, merchant):
    r = _get(server, merchant, make_token(scope="merchants:admin", merchants=[merchant]))
    assert r.status_code == 200, r.text
    assert r.json()["merchant_id"] == merchant


def test_no_token_is_401(server, merchant):
    assert_401(_get(server, merchant))


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc",
                                   "bearer-but-not-really", "Bearer not.a.jwt",
                                   "Bearer a.b", "Bearer ...", "Bearer a.b.c.d"])
def test_malformed_authorization_is_401(server, merchant, value):
    assert_401(_get(server, merchant, auth_header=value))


def test_bad_signature_is_401(server, merchant):
    token = raw_token(scope="merchants:admin", merchants=[merchant], key=OTHER_SECRET)
    assert_401(_get(server, merchant, token))


def test_tampered_payload_is_401(server, make_token, merchant):
    token = make_token(scope="metrics:read", merchants=[merchant])
    header, _, signature = token.split(".")
    claims = {"sub": "test", "scope": "merchants:admin", "merchants": "*",
              "exp": _now() + 300}
    forged = ".".join([header, _b64url(json.dumps(claims).encode()), signature])
    assert_401(_get(server, merchant, forged))


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_401(server, merchant, alg):
    claims = {"sub": "test", "scope": "merchants:admin", "merchants": [merchant],
              "iat": _now(), "exp": _now() + 300}
    assert_401(_get(server, merchant, _hand_made({"alg": alg, "typ": "JWT"}, claims)))


def test_hs512_with_the_right_secret_is_401(server, merchant):
    token = raw_token(scope="merchants:admin", merchants=[merchant], algorithm="HS512")
    assert_401(_get(server, merchant, token))


def test_hs384_with_the_right_secret_is_401(server, merchant):
    token = raw_token(scope="merchants:admin", merchants=[merchant], algorithm="HS384")
    assert_401(_get(server, merchant, token))


def test_expired_token_is_401(server, make_token, merchant):
    token = make_token(scope="merchants:admin", merchants=[merchant], exp_in=-120,
                       iat=_now() - 600)
    assert_401(_get(server, merchant, token))


def test_token_expired_within_leeway_is_accepted(server, make_token, merchant):
    token = make_token(scope="merchants:admin", merchants=[merchant], exp_in=-10,
                       iat=_now() - 600)
    assert _get(server, merchant, token).status_code == 200


def test_nbf_10_minutes_ahead_is_401(server, make_token, merchant):
    token = make_token(scope="merchants:admin", merchants=[merchant], nbf=_now() + 600)
    assert_401(_get(server, merchant, token))


def test_nbf_10_seconds_ahead_is_accepted_within_leeway(server, make_token, merchant):
    token = make_token(scope="merchants:admin", merchants=[merchant], nbf=_now() + 10)
    r = _get(server, merchant, token)
    assert r.status_code == 200, r.text


def test_iat_10_minutes_ahead_is_401(server, make_token, merchant):
    token = make_token(scope="merchants:admin", merchants=[merchant], iat=_now() + 600,
                       exp_in=3600)
    assert_401(_get(server, merchant, token))


def test_missing_exp_is_401(server, make_token, merchant):
    token = make_token(scope="merchants:admin", merchants=[merchant], exp=None)
    assert_401(_get(server, merchant, token))


@pytest.mark.parametrize("exp", ["string", "null", "bool", "object"])
def test_exp_of_wrong_type_is_401(server, make_token, merchant, exp):
    value = {"string": str(_now() + 300), "null": None, "bool": True,
             "object": {"t": _now() + 300}}[exp]
    if value is None:
        token = _hand_signed({"sub": "t", "scope": "merchants:admin", "merchants": [merchant],
                              "exp": None})
    else:
        token = make_token(scope="merchants:admin", merchants=[merchant], exp=value)
    assert_401(_get(server, merchant, token))


def test_duplicate_claims_are_401(server, merchant):
    """A payload naming `merchants` twice must not be read as either one."""
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = ('{"sub":"t","scope":"merchants:admin","merchants":[1],"merchants":"*",'
               f'"exp":{_now() + 300}}}').encode()
    body = _b64url(payload)
    mac = hmac.new(TEST_SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert_401(_get(server, merchant, f"{head}.{body}.{_b64url(mac)}"))


def test_oversized_token_is_401(server, make_token, merchant):
    token = make_token(scope="merchants:admin", merchants=[merchant], pad="x" * 7000)
    assert len(token) > 8192
    body = assert_401(_get(server, merchant, token))
    assert body["status"] == 401


def test_token_just_under_the_size_limit_is_accepted(server, make_token, merchant):
    token = make_token(scope="merchants:admin", merchants=[merchant], pad="x" * 5800)
    assert 7000 < len(token) <= 8192
    assert _get(server, merchant, token).status_code == 200


def test_put_without_token_is_401(server, merchant_id):
    assert_401(_put(server, merchant_id))


# ---------------------------------------------------------------------------------------------
# 403: valid token, wrong tenant or scope


def test_token_for_another_merchant_is_403_revealing_nothing(server, make_token, merchant,
                                                            merchant_ids):
    other_existing = merchant_ids()
    r = _put(server, other_existing,
             make_token(scope="merchants:admin", merchants=[other_existing]))
    assert r.status_code == 201
    never_created = merchant_ids()
    token = make_token(scope="merchants:admin", merchants=[merchant])

    existing = assert_403(_get(server, other_existing, token))
    missing = assert_403(_get(server, never_created, token))
    for key in ("type", "title", "status", "detail"):
        assert existing.get(key) == missing.get(key), (key, existing, missing)
    assert set(existing) == set(missing)


def test_put_for_another_merchant_is_403_and_creates_nothing(server, make_token, merchant,
                                                             merchant_ids):
    target = merchant_ids()
    token = make_token(scope="merchants:admin", merchants=[merchant])
    assert_403(_put(server, target, token))
    check = _get(server, target, make_token(scope="merchants:admin", merchants=[target]))
    assert check.status_code == 404, check.text


def test_token_with_several_merchants(server, make_token, merchant, merchant_ids):
    token = make_token(scope="merchants:admin", merchants=[merchant_ids(), merchant,
                                                            merchant_ids()])
    assert _get(server, merchant, token).status_code == 200


@pytest.mark.parametrize("claim", [[], None, "all", ["1"], [0], [-5], [1.5], {"id": 1}])
def test_bad_or_missing_merchants_claim_never_grants_access(server, make_token, merchant,
                                                            claim):
    token = make_token(scope="merchants:admin", merchants=claim)
    r = _get(server, merchant, token)
    assert r.status_code in (401, 403), r.text
    if r.status_code == 401:
        assert_401(r)
    else:
        assert_403(r)


def test_right_merchant_missing_scope_is_403(server, make_token, merchant):
    token = make_token(scope="orders:read orders:write deliveries:write", merchants=[merchant])
    assert_403(_get(server, merchant, token))


def test_empty_scope_is_403(server, make_token, merchant):
    assert_403(_get(server, merchant, make_token(scope="", merchants=[merchant])))


def test_scope_names_are_exact(server, make_token, merchant):
    for scope in ("merchants:ADMIN", "merchants:admin2", "merchants", "merchants:adminx",
                  "merchants:admin,metrics:read"):
        r = _get(server, merchant, make_token(scope=scope, merchants=[merchant]))
        assert_403(r)


def test_all_merchants_token_is_allowed(server, make_token, merchant):
    r = _get(server, merchant, make_token(scope="merchants:admin", merchants="*"))
    assert r.status_code == 200, r.text
    assert r.json()["merchant_id"] == merchant


# ---------------------------------------------------------------------------------------------
# 401 and 403 never touch the database


def test_401_and_403_are_decided_without_the_database(server, stack, make_token, merchant):
    bad = raw_token(scope="merchants:admin", merchants=[merchant], key=OTHER_SECRET)
    other_tenant = make_token(scope="merchants:admin", merchants=[merchant + 1])
    no_scope = make_token(scope="orders:read", merchants=[merchant])
    stack.stop_primary()
    try:
        # Control: a request that needs the primary does fail now (reads go to the replica).
        down = _put(server, merchant, make_token(scope="merchants:admin", merchants=[merchant]))
        assert down.status_code == 503, down.text
        assert_401(_get(server, merchant, bad))
        assert_401(_get(server, merchant))
        assert_401(_put(server, merchant, bad))
        assert_403(_get(server, merchant, other_tenant))
        assert_403(_get(server, merchant, no_scope))
        assert_403(_put(server, merchant, other_tenant))
    finally:
        stack.start_primary()
    assert wait_for_http(server.url + "/readyz", 15), "server not ready after primary restart"
