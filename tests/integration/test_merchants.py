"""Merchants, black box: PUT (create 201 / update 200) and GET /v1/merchants/{merchant_id},
validation of name, timezone and currency, path ids, and the scopes each method needs.
"""

import datetime
import json
import re

import pytest
import requests

from helpers import headers

PROBLEM_BASE = "https://cangrejo.dev/problems/"
MERCHANT_KEYS = {"merchant_id", "name", "timezone", "currency", "created_at", "updated_at"}
UTC_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


# ---------------------------------------------------------------------------------------------
# helpers


def _admin(make_token, merchant_id):
    return make_token(scope="merchants:admin", merchants=[merchant_id])


def _put(server, merchant_id, token, body):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.put(f"{server.url}/v1/merchants/{merchant_id}", data=data, timeout=10,
                        headers=headers(token, {"Content-Type": "application/json"}))


def _get(server, merchant_id, token):
    return requests.get(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(token),
                        timeout=10)


def _body(name="Pizzeria Napoli", timezone="Europe/Madrid", currency="EUR"):
    return {"name": name, "timezone": timezone, "currency": currency}


def _parse_utc(text):
    assert UTC_TIMESTAMP.match(text), f"{text!r} is not an RFC 3339 UTC timestamp with Z"
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _assert_merchant(r, status, merchant_id, body):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].split(";")[0].strip() == "application/json"
    got = r.json()
    assert set(got) == MERCHANT_KEYS, got
    assert type(got["merchant_id"]) is int and got["merchant_id"] == merchant_id
    assert got["name"] == body["name"]
    assert got["timezone"] == body["timezone"]
    assert got["currency"] == body["currency"]
    created = _parse_utc(got["created_at"])
    updated = _parse_utc(got["updated_at"])
    assert updated >= created, got
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((now - created).total_seconds()) < 300, (got, now)
    return got


def _assert_validation(r, field):
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"].split(";")[0].strip() == "application/problem+json"
    problem = r.json()
    assert problem["type"] == PROBLEM_BASE + "validation-error", problem
    assert problem["status"] == 400
    assert problem["instance"] == r.headers["X-Request-Id"]
    fields = [e["field"] for e in problem.get("errors", [])]
    assert field in fields, f"errors {problem.get('errors')} do not name {field!r}"
    for error in problem["errors"]:
        assert isinstance(error["message"], str) and error["message"]
    return problem


def _assert_problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].split(";")[0].strip() == "application/problem+json"
    problem = r.json()
    assert problem["type"].startswith(PROBLEM_BASE) and problem["status"] == status
    assert problem["instance"] == r.headers["X-Request-Id"]
    return problem


# ---------------------------------------------------------------------------------------------
# create, update, read


def test_put_new_merchant_is_201_with_location(server, make_token, merchant_id):
    body = _body()
    r = _put(server, merchant_id, _admin(make_token, merchant_id), body)
    got = _assert_merchant(r, 201, merchant_id, body)
    assert r.headers.get("Location") == f"/v1/merchants/{merchant_id}"
    assert got["created_at"] == got["updated_at"]


def test_put_existing_merchant_is_200_with_new_values(server, make_token, merchant_id):
    token = _admin(make_token, merchant_id)
    first = _assert_merchant(_put(server, merchant_id, token, _body()), 201, merchant_id,
                             _body())
    changed = _body(name="Pizzeria Roma", timezone="America/New_York", currency="USD")
    r = _put(server, merchant_id, token, changed)
    second = _assert_merchant(r, 200, merchant_id, changed)
    assert second["created_at"] == first["created_at"]
    assert _parse_utc(second["updated_at"]) >= _parse_utc(first["updated_at"])
    # Same content again: still an update, still 200.
    third = _assert_merchant(_put(server, merchant_id, token, changed), 200, merchant_id,
                             changed)
    assert third["created_at"] == first["created_at"]


def test_get_round_trips_the_put(server, make_token, merchant_id):
    token = _admin(make_token, merchant_id)
    body = _body(name="Café «Ñandú» 北京 🍕", timezone="Asia/Tokyo", currency="JPY")
    put = _put(server, merchant_id, token, body)
    assert put.status_code == 201, put.text
    get = _get(server, merchant_id, token)
    _assert_merchant(get, 200, merchant_id, body)
    assert get.json() == put.json()

    updated = _body(name="Café 2", timezone="Europe/Lisbon", currency="EUR")
    put2 = _put(server, merchant_id, token, updated)
    assert put2.status_code == 200, put2.text
    assert _get(server, merchant_id, token).json() == put2.json()


def test_get_unknown_merchant_is_404(server, make_token, merchant_id):
    r = _get(server, merchant_id, _admin(make_token, merchant_id))
    problem = _assert_problem(r, 404)
    assert problem["type"] == PROBLEM_BASE + "not-found"


@pytest.mark.parametrize("timezone", ["Asia/Kathmandu", "America/St_Johns", "Asia/Kolkata",
                                      "UTC", "America/Argentina/Buenos_Aires", "Etc/GMT+5"])
def test_real_timezones_are_accepted(server, make_token, merchant_id, timezone):
    body = _body(timezone=timezone)
    r = _put(server, merchant_id, _admin(make_token, merchant_id), body)
    _assert_merchant(r, 201, merchant_id, body)


def test_name_of_200_characters_is_accepted(server, make_token, merchant_id):
    body = _body(name="ñ" * 200)  # 200 characters, 400 bytes
    r = _put(server, merchant_id, _admin(make_token, merchant_id), body)
    _assert_merchant(r, 201, merchant_id, body)


# ---------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("body,field", [
    ({"timezone": "Europe/Madrid", "currency": "EUR"}, "name"),
    (_body(name=""), "name"),
    (_body(name="x" * 201), "name"),
    (_body(name="ñ" * 201), "name"),
    (_body(name=None), "name"),
    (_body(name=42), "name"),
    (_body(name="tab\there"), "name"),
    ({"name": "A", "currency": "EUR"}, "timezone"),
    (_body(timezone="Europe/Atlantis"), "timezone"),
    (_body(timezone="../../etc/passwd"), "timezone"),
    (_body(timezone="/etc/passwd"), "timezone"),
    (_body(timezone="Europe/../Europe/Madrid"), "timezone"),
    (_body(timezone="europe/madrid"), "timezone"),
    (_body(timezone="Europe"), "timezone"),
    (_body(timezone=""), "timezone"),
    (_body(timezone="+01:00"), "timezone"),
    (_body(timezone="posixrules"), "timezone"),
    (_body(timezone="zone.tab"), "timezone"),
    ({"name": "A", "timezone": "Europe/Madrid"}, "currency"),
    (_body(currency="EURO"), "currency"),
    (_body(currency="eur"), "currency"),
    (_body(currency="XAU"), "currency"),
    (_body(currency="XXX"), "currency"),
    (_body(currency="ABC"), "currency"),
    (_body(currency=""), "currency"),
    (_body(currency=978), "currency"),
    ({"nmae": "A", "timezone": "Europe/Madrid", "currency": "EUR"}, "nmae"),
    (dict(_body(), merchant_id=5), "merchant_id"),
    (dict(_body(), created_at="2026-01-01T00:00:00Z"), "created_at"),
], ids=lambda v: json.dumps(v, ensure_ascii=True)[:60] if isinstance(v, dict) else v)
def test_invalid_body_is_400_naming_the_field(server, make_token, merchant_id, body, field):
    token = _admin(make_token, merchant_id)
    _assert_validation(_put(server, merchant_id, token, body), field)
    assert _get(server, merchant_id, token).status_code == 404, "an invalid PUT stored it"


def test_invalid_update_leaves_the_merchant_unchanged(server, make_token, merchant_id):
    token = _admin(make_token, merchant_id)
    created = _put(server, merchant_id, token, _body())
    assert created.status_code == 201
    _assert_validation(_put(server, merchant_id, token, _body(currency="eur")), "currency")
    assert _get(server, merchant_id, token).json() == created.json()


def test_several_errors_are_all_listed(server, make_token, merchant_id):
    r = _put(server, merchant_id, _admin(make_token, merchant_id),
             {"name": "", "timezone": "Mars/Olympus", "currency": "eur", "extra": 1})
    problem = _assert_validation(r, "name")
    fields = {e["field"] for e in problem["errors"]}
    assert {"name", "timezone", "currency", "extra"} <= fields, problem["errors"]


# ---------------------------------------------------------------------------------------------
# path ids


@pytest.mark.parametrize("raw_id", ["0", "-1", "abc", "01", "1.0", "1e3", "+1", " 1",
                                    "9223372036854775808", "99999999999999999999"])
def test_invalid_merchant_id_is_404(server, make_token, raw_id):
    token = make_token(scope="merchants:admin metrics:read", merchants="*")
    get = requests.get(f"{server.url}/v1/merchants/{raw_id}", headers=headers(token),
                       timeout=10)
    _assert_problem(get, 404)
    put = requests.put(f"{server.url}/v1/merchants/{raw_id}", json=_body(), timeout=10,
                       headers=headers(token))
    _assert_problem(put, 404)


# ---------------------------------------------------------------------------------------------
# scopes


def test_get_with_only_metrics_read_is_allowed(server, make_token, merchant_id):
    created = _put(server, merchant_id, _admin(make_token, merchant_id), _body())
    assert created.status_code == 201
    r = _get(server, merchant_id, make_token(scope="metrics:read", merchants=[merchant_id]))
    assert r.status_code == 200, r.text
    assert r.json() == created.json()


def test_get_with_only_orders_read_is_403(server, make_token, merchant_id):
    assert _put(server, merchant_id, _admin(make_token, merchant_id), _body()).status_code == 201
    r = _get(server, merchant_id, make_token(scope="orders:read", merchants=[merchant_id]))
    _assert_problem(r, 403)


def test_put_with_only_metrics_read_is_403(server, make_token, merchant_id):
    token = make_token(scope="metrics:read", merchants=[merchant_id])
    _assert_problem(_put(server, merchant_id, token, _body()), 403)
    assert _get(server, merchant_id, token).status_code == 404, "a 403 PUT stored it"


def test_put_with_metrics_read_does_not_update(server, make_token, merchant_id):
    admin = _admin(make_token, merchant_id)
    created = _put(server, merchant_id, admin, _body())
    assert created.status_code == 201
    reader = make_token(scope="metrics:read orders:read orders:write", merchants=[merchant_id])
    _assert_problem(_put(server, merchant_id, reader, _body(name="Hijacked")), 403)
    assert _get(server, merchant_id, admin).json() == created.json()
