"""Delivery events from 3rd-party logistics (API.md "Deliveries"): idempotent per provider
event_id, applied by occurred_at whatever order they arrive in, terminal states never replaced by
an earlier event, only for delivery orders; the state and history show in GET order."""

import datetime as dt
import random

import pytest
import requests

from helpers import headers

SCOPE = "merchants:admin orders:write orders:read deliveries:write"
T0 = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.timezone.utc)
TERMINAL = {"delivered", "failed", "cancelled"}


def _ts(minutes):
    return (T0 + dt.timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


@pytest.fixture
def shop(server, make_token, merchant_id):
    token = make_token(scope=SCOPE, merchants=[merchant_id])
    r = requests.put(f"{server.url}/v1/merchants/{merchant_id}", headers=headers(token),
                     json={"name": "Deliveries", "timezone": "Europe/Madrid", "currency": "EUR"},
                     timeout=10)
    assert r.status_code == 201, r.text
    return server, token, merchant_id


def _order(shop, order_id, fulfillment="delivery"):
    server, token, merchant_id = shop
    r = requests.post(f"{server.url}/v1/merchants/{merchant_id}/orders", headers=headers(token),
                      json={"order_id": order_id, "store_id": 1, "channel": "online",
                            "fulfillment": fulfillment, "placed_at": _ts(0), "currency": "EUR",
                            "items": [{"sku": "S", "name": "N", "quantity": 1,
                                       "unit_price_cents": 900}]}, timeout=10)
    assert r.status_code == 201, r.text


def _event(shop, order_id, event_id, status, minutes, provider="glovo", **extra):
    server, token, merchant_id = shop
    body = {"event_id": event_id, "provider": provider, "status": status,
            "occurred_at": _ts(minutes), **extra}
    return requests.post(
        f"{server.url}/v1/merchants/{merchant_id}/orders/{order_id}/delivery-events",
        headers=headers(token), json=body, timeout=10)


def _delivery(shop, order_id):
    server, token, merchant_id = shop
    r = requests.get(f"{server.url}/v1/merchants/{merchant_id}/orders/{order_id}",
                     headers=headers(token), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["delivery"]


def test_first_event_201_replay_200_and_state_in_the_order(shop):
    _order(shop, "d-1")
    assert _delivery(shop, "d-1") is None
    r = _event(shop, "d-1", "ev-1", "assigned", 5, eta=_ts(40), courier_ref="c-7")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "assigned" and body["provider"] == "glovo"
    assert body["eta"] == _ts(40) and body["courier_ref"] == "c-7"
    assert [e["event_id"] for e in body["events"]] == ["ev-1"]
    again = _event(shop, "d-1", "ev-1", "assigned", 5, eta=_ts(40), courier_ref="c-7")
    assert again.status_code == 200 and again.json() == body
    d = _delivery(shop, "d-1")
    assert d == body
    assert set(d) == {"status", "provider", "occurred_at", "eta", "courier_ref", "events"}
    assert set(d["events"][0]) == {"event_id", "provider", "status", "occurred_at", "eta",
                                   "courier_ref"}


def test_shuffled_events_end_in_the_latest_state(shop):
    events = [("a", "assigned", 1), ("p", "picked_up", 10), ("t", "in_transit", 15),
              ("d", "delivered", 30)]
    rng = random.Random(7)
    for k in range(6):
        order_id = f"d-shuffle-{k}"
        _order(shop, order_id)
        shuffled = events[:]
        rng.shuffle(shuffled)
        for event_id, status, minutes in shuffled:
            assert _event(shop, order_id, f"{order_id}-{event_id}", status, minutes).status_code \
                == 201
        d = _delivery(shop, order_id)
        assert d["status"] == "delivered" and d["occurred_at"] == _ts(30)
        # history oldest occurred_at first, whatever the arrival order
        assert [e["status"] for e in d["events"]] == [s for _, s, _ in events]


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_a_terminal_state_is_never_replaced_by_an_earlier_event(shop, terminal):
    order_id = f"d-term-{terminal}"
    _order(shop, order_id)
    assert _event(shop, order_id, "t1", terminal, 30).status_code == 201
    assert _event(shop, order_id, "t2", "in_transit", 20).status_code == 201
    assert _event(shop, order_id, "t3", "picked_up", 29).status_code == 201
    d = _delivery(shop, order_id)
    assert d["status"] == terminal and d["occurred_at"] == _ts(30)
    assert len(d["events"]) == 3


def test_a_later_event_moves_the_state_and_ties_go_to_the_terminal_state(shop):
    _order(shop, "d-tie")
    assert _event(shop, "d-tie", "x1", "delivered", 30).status_code == 201
    assert _event(shop, "d-tie", "x2", "in_transit", 30).status_code == 201  # same instant
    assert _delivery(shop, "d-tie")["status"] == "delivered"
    assert _event(shop, "d-tie", "x3", "failed", 31).status_code == 201  # later: it wins
    assert _delivery(shop, "d-tie")["status"] == "failed"


def test_event_ids_are_unique_per_provider(shop):
    _order(shop, "d-prov")
    assert _event(shop, "d-prov", "same", "assigned", 1, provider="glovo").status_code == 201
    assert _event(shop, "d-prov", "same", "picked_up", 2, provider="ubereats").status_code == 201
    assert _event(shop, "d-prov", "same", "picked_up", 2, provider="glovo").status_code == 200
    assert len(_delivery(shop, "d-prov")["events"]) == 2


def test_only_delivery_orders_take_events(shop):
    _order(shop, "d-pickup", fulfillment="pickup")
    r = _event(shop, "d-pickup", "p1", "assigned", 1)
    assert r.status_code == 409 and r.headers["Content-Type"] == "application/problem+json"
    assert _event(shop, "no-such-order", "p2", "assigned", 1).status_code == 404


@pytest.mark.parametrize("change,field", [
    ({"status": "lost"}, "status"),
    ({"status": None}, "status"),
    ({"occurred_at": "2026-11-20T12:00:00"}, "occurred_at"),
    ({"occurred_at": (dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10)).isoformat()},
     "occurred_at"),
    ({"eta": "tomorrow"}, "eta"),
    ({"event_id": ""}, "event_id"),
    ({"provider": "x" * 65}, "provider"),
    ({"courier_ref": 5}, "courier_ref"),
    ({"colour": "red"}, "colour"),
])
def test_event_validation(shop, change, field):
    _order(shop, "d-valid")
    server, token, merchant_id = shop
    body = {"event_id": "v1", "provider": "glovo", "status": "assigned",
            "occurred_at": _ts(1), **change}
    body = {k: v for k, v in body.items() if v is not None}
    r = requests.post(
        f"{server.url}/v1/merchants/{merchant_id}/orders/d-valid/delivery-events",
        headers=headers(token), json=body, timeout=10)
    assert r.status_code == 400, r.text
    assert field in [e["field"] for e in r.json()["errors"]]


def test_deliveries_write_scope_is_required(shop, make_token):
    server, _, merchant_id = shop
    _order(shop, "d-scope")
    token = make_token(scope="orders:write orders:read", merchants=[merchant_id])
    r = requests.post(
        f"{server.url}/v1/merchants/{merchant_id}/orders/d-scope/delivery-events",
        headers=headers(token), json={"event_id": "s1", "provider": "glovo",
                                      "status": "assigned", "occurred_at": _ts(1)}, timeout=10)
    assert r.status_code == 403
