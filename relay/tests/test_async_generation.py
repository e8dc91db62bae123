"""POST /generate/async against the Flash contract peer: started, polled by id, and settled
exactly once (charged when it completes, refunded once when it fails, by Flash or the gateway)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

pytestmark = pytest.mark.django_db(transaction=True)

ASYNC = "/api/v1/generate/async"


def _poll(gateway: Any, auth: Any, timepoint_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = gateway.get(f"/api/v1/timepoints/{timepoint_id}", headers=auth)
        assert response.status_code == 200, response.text
        body = dict(response.json())
        if body["status"] in ("completed", "failed"):
            return body
        assert time.monotonic() < deadline, "the generation did not finish in time"
        time.sleep(0.05)


def _refund_grants(user: Any) -> list[Any]:
    from payments.models import CreditGrant

    return list(CreditGrant.objects.filter(user=user, transaction_type="refund"))


def _state(timepoint_id: str) -> str:
    from relay.models import AsyncGeneration

    return str(AsyncGeneration.objects.get(timepoint_id=timepoint_id).state)


def test_started_polled_and_charged_once(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, usage: Any
) -> None:
    flash_peer.generation_delay = 0.3
    started = gateway.post(
        ASYNC,
        json={"query": "The fall of Rome", "visibility": "private", "request_context": {"a": 1}},
        headers={**auth, "X-Gateway-Metered": "true"},
    )
    assert started.status_code == 202, started.text
    body = started.json()
    timepoint_id = body["id"]
    assert body["status"] == "processing" and body["request_context"] == {"a": 1}
    assert started.headers["Location"] == body["poll_url"] == f"/api/v1/timepoints/{timepoint_id}"
    sent = flash_peer.requests_to("/api/v1/timepoints/generate")[-1]
    assert (sent.path, sent.headers["x-user-id"]) == (
        "/api/v1/timepoints/generate",
        user.flash_user_id,
    )
    assert "x-gateway-metered" not in sent.headers
    assert json.loads(sent.body)["visibility"] == "private"
    assert flash_peer.user_balance(user.flash_user_id) == 45
    assert _state(timepoint_id) == "running"

    done = _poll(gateway, auth, timepoint_id)
    assert done["status"] == "completed" and done["visibility"] == "private"
    assert flash_peer.timepoint(timepoint_id)["owner"] == user.flash_user_id
    assert _state(timepoint_id) == "completed"
    assert [
        i["id"] for i in gateway.get("/api/v1/timepoints/mine", headers=auth).json()["items"]
    ] == [timepoint_id]
    assert _refund_grants(user) == []
    assert flash_peer.user_balance(user.flash_user_id) == 45

    (row,) = [r for r in usage() if r.endpoint == ASYNC]
    assert (row.status, row.credits_spent, row.preset, row.upstream) == (
        202,
        5,
        "balanced",
        "flash",
    )


def test_a_failed_run_is_refunded_by_the_gateway_exactly_once(
    gateway: Any, auth: Any, flash_peer: Any, user: Any
) -> None:
    """Flash charges a run that ends `failed` (the judge rejected it) and does not refund it."""
    from relay.async_generation import async_generations_settle_due

    flash_peer.generation_outcome = "failed"
    started = gateway.post(ASYNC, json={"query": "Nonsense query"}, headers=auth)
    timepoint_id = started.json()["id"]
    assert _poll(gateway, auth, timepoint_id)["status"] == "failed"
    _poll(gateway, auth, timepoint_id)  # polled again
    (grant,) = _refund_grants(user)
    assert (grant.key, grant.amount) == (f"refund:tp:{timepoint_id}", 5)
    assert _state(timepoint_id) == "refunded"
    assert async_generations_settle_due() == 0
    assert len(_refund_grants(user)) == 1
    ledger = flash_peer.ledger_for(user.flash_user_id)
    assert [row["type"] for row in ledger] == ["generation"]  # the grant worker delivers it


def test_a_run_that_raised_is_refunded_by_flash_and_not_again(
    gateway: Any, auth: Any, flash_peer: Any, user: Any
) -> None:
    flash_peer.generation_outcome = "error"
    first = gateway.post(ASYNC, json={"query": "Apollo 11"}, headers=auth).json()["id"]
    assert _poll(gateway, auth, first)["status"] == "failed"
    assert _state(first) == "refunded_by_flash"
    assert flash_peer.user_balance(user.flash_user_id) == 50
    # The same query again, now failing without an exception: Flash's one refund is already
    # credited to the first run, so this one is the gateway's to refund.
    flash_peer.generation_outcome = "failed"
    second = gateway.post(ASYNC, json={"query": "Apollo 11"}, headers=auth).json()["id"]
    assert _poll(gateway, auth, second)["status"] == "failed"
    assert _state(second) == "refunded"
    assert [g.key for g in _refund_grants(user)] == [f"refund:tp:{second}"]


def test_the_worker_settles_what_nobody_polls(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, settings: Any
) -> None:
    from relay import async_generation
    from relay.models import AsyncGeneration

    flash_peer.generation_outcome = "failed"
    failed = gateway.post(ASYNC, json={"query": "Nonsense query"}, headers=auth).json()["id"]
    flash_peer.generation_outcome = "completed"
    flash_peer.generation_delay = 60  # still processing when the worker looks
    stuck = gateway.post(ASYNC, json={"query": "A long one"}, headers=auth).json()["id"]
    # Both old enough for the worker (it leaves the first seconds to pollers), the stuck one
    # not yet given up on.
    AsyncGeneration.objects.update(created_at=timezone.now() - timedelta(seconds=30))
    deadline = time.monotonic() + 10
    while flash_peer.timepoint(failed)["status"] != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.05)

    assert async_generation.async_generations_settle_due() == 1
    assert (_state(failed), _state(stuck)) == ("refunded", "running")
    settings.ASYNC_GENERATION_STALE_SECONDS = 20
    # Flash never finished it (its task died with its process): settled as failed, refunded.
    assert async_generation.async_generations_settle_due() == 1
    assert _state(stuck) == "refunded"
    assert sorted(g.key for g in _refund_grants(user)) == sorted(
        [f"refund:tp:{failed}", f"refund:tp:{stuck}"]
    )
    assert async_generation.async_generations_settle_due() == 0


def test_async_is_validated_priced_and_admitted_like_sync(
    gateway: Any, auth: Any, flash_peer: Any, user: Any
) -> None:
    for body in ({"query": "ab"}, {"query": "Apollo 11", "visibility": "Private"}):
        refused = gateway.post(ASYNC, json=body, headers=auth)
        assert (refused.status_code, refused.json()["code"]) == (400, "invalid_request")
    hd = gateway.post(ASYNC, json={"query": "Apollo 11", "preset": "hd"}, headers=auth)
    assert (hd.status_code, hd.json()["code"]) == (403, "preset_not_allowed")
    flash_peer.set_balance(user.flash_user_id, 4)
    poor = gateway.post(ASYNC, json={"query": "Apollo 11"}, headers=auth)
    assert (poor.status_code, poor.json()["code"]) == (402, "insufficient_credits")
    assert gateway.post(ASYNC, json={"query": "Apollo 11"}).status_code == 401
    assert flash_peer.requests_to("/api/v1/timepoints/generate") == []
    assert gateway.get(ASYNC, headers=auth).status_code == 405


def test_a_test_key_is_simulated(gateway: Any, flash_peer: Any, user: Any) -> None:
    from apikeys.services import key_create

    _, raw = key_create(user=user, name="ci", mode="test")
    response = gateway.post(
        ASYNC, json={"query": "Apollo 11"}, headers={"Authorization": f"Bearer {raw}"}
    )
    assert response.status_code == 200 and response.json()["test_mode"] is True
    assert flash_peer.requests_to("/api/v1/timepoints/generate") == []
    assert flash_peer.user_balance(user.flash_user_id) == 50


def test_a_key_budget_is_settled_and_refunds_give_it_back_once(
    gateway: Any, auth: Any, make_key: Any, flash_peer: Any, user: Any
) -> None:
    """Async generations settle through `relay.refunds` like sync ones: what Flash kept counts
    against the key's month, a refund (the gateway's or Flash's own) gives the budget back."""
    from apikeys.models import KeySpend
    from relay.async_generation import async_generations_settle_due
    from relay.models import ForwardedGeneration

    key, raw = make_key(user, monthly_credit_budget=10)
    headers = {"X-API-Key": raw}
    started: dict[str, str] = {}
    # Failed (refunded by the gateway), raised (refunded by Flash), completed (charged): 5 of
    # the 10 credits spent, so two more fit only because both refunds gave the budget back.
    for outcome in ("failed", "error", "completed"):
        flash_peer.generation_outcome = outcome
        response = gateway.post(ASYNC, json={"query": f"Apollo 11 {outcome}"}, headers=headers)
        assert response.status_code == 202, response.text
        started[outcome] = response.json()["id"]
        _poll(gateway, auth, started[outcome])
    assert async_generations_settle_due() == 0
    spends = list(KeySpend.objects.filter(api_key=key).order_by("id"))
    assert [(s.amount, s.settled_at is not None, s.refunded_at is not None) for s in spends] == [
        (5, True, True),
        (0, True, False),
        (5, True, False),
    ]
    records = {r.flash_timepoint_id: r for r in ForwardedGeneration.objects.all()}
    assert {tp: (records[tp].route, records[tp].outcome) for tp in started.values()} == {
        started["failed"]: ("async", "failed"),
        started["error"]: ("async", "not_charged"),
        started["completed"]: ("async", "completed"),
    }
    assert [g.key for g in _refund_grants(user)] == [f"refund:tp:{started['failed']}"]
    assert (_state(started["failed"]), _state(started["error"])) == (
        "refunded",
        "refunded_by_flash",
    )
    assert gateway.get(f"/api/v1/keys/{key.pk}", headers=auth).json()["budget"]["spent"] == 5

    assert gateway.post(ASYNC, json={"query": "Apollo 12"}, headers=headers).status_code == 202
    refused = gateway.post(ASYNC, json={"query": "Apollo 13"}, headers=headers)
    assert (refused.status_code, refused.json()["code"]) == (402, "budget_exhausted")
