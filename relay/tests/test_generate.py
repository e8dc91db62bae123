"""POST /generate: validation, pricing, HD access, the balance pre-check, the shared reservation,
refunds of failed runs and test keys, against the Flash contract peer."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytestmark = pytest.mark.django_db(transaction=True)

GENERATE = "/api/v1/generate"


def _generations(flash_peer: Any) -> list[Any]:
    return flash_peer.requests_to("/api/v1/timepoints/generate")


def test_sync_generation_charges_once_and_meters(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, usage: Any
) -> None:
    response = gateway.post(
        GENERATE,
        json={"query": "The fall of Rome", "preset": "Hyper", "visibility": "private"},
        headers={**auth, "X-Gateway-Metered": "true"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "completed" and body["visibility"] == "private"
    assert body["preset_used"] == "hyper"
    assert not any(key.startswith("blob_") for key in body)
    assert flash_peer.user_balance(user.flash_user_id) == 45
    assert flash_peer.timepoint(body["id"])["owner"] == user.flash_user_id

    sent = _generations(flash_peer)[-1]
    assert sent.path == "/api/v1/timepoints/generate/sync"
    assert sent.headers["x-user-id"] == user.flash_user_id
    assert "x-gateway-metered" not in sent.headers
    import json

    assert json.loads(sent.body) == {
        "query": "The fall of Rome",
        "preset": "hyper",
        "visibility": "private",
        "generate_image": False,
    }
    (row,) = usage()
    assert (row.endpoint, row.status, row.credits_spent, row.preset, row.upstream) == (
        GENERATE,
        200,
        5,
        "hyper",
        "flash",
    )


@pytest.mark.parametrize(
    "body",
    [
        {"query": "ab"},
        {"query": "x" * 501},
        {"query": "A fine query", "preset": "ultra"},
        {"query": "A fine query", "visibility": "Private"},
        {"query": "A fine query", "visibility": "unlisted"},
        {"query": "A fine query", "text_model": "anthropic/claude-opus"},
        {"query": "A fine query", "write_blob": True},
        {"query": "A fine query", "llm_params": {"temperature": 5}},
        {"preset": "balanced"},
    ],
)
def test_invalid_bodies_never_reach_flash(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, body: Any, usage: Any
) -> None:
    response = gateway.post(GENERATE, json=body, headers=auth)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_request"
    assert _generations(flash_peer) == []
    assert [(r.status, r.credits_spent) for r in usage()] == [(400, 0)]


def test_not_json_is_400(gateway: Any, auth: Any, flash_peer: Any, user: Any) -> None:
    response = gateway.post(GENERATE, content=b"{nope", headers=auth)
    assert response.status_code == 400 and response.json()["code"] == "invalid_json"


def test_hd_needs_hd_access(gateway: Any, auth: Any, flash_peer: Any, user: Any) -> None:
    for preset in ("hd", "HD", "frontier"):
        refused = gateway.post(
            GENERATE, json={"query": "Apollo 11", "preset": preset}, headers=auth
        )
        assert refused.status_code == 403 and refused.json()["code"] == "preset_not_allowed"
    assert _generations(flash_peer) == []

    user.plan, user.plan_hd_access = "historian", True  # what the Historian plan gives
    user.save()
    allowed = gateway.post(GENERATE, json={"query": "Apollo 11", "preset": "HD"}, headers=auth)
    assert allowed.status_code == 200
    assert flash_peer.user_balance(user.flash_user_id) == 40  # hd costs 10


def test_hd_follows_a_key_tier_set_by_staff(
    gateway: Any, flash_peer: Any, user: Any, make_key: Any
) -> None:
    """A free-plan user's key that staff raised to enterprise has HD through that key only."""
    _, free_raw = make_key(user, name="free key")
    _, enterprise_raw = make_key(user, name="enterprise key", tier="enterprise")
    body = {"query": "Apollo 11", "preset": "hd"}
    refused = gateway.post(GENERATE, json=body, headers={"X-API-Key": free_raw})
    assert refused.status_code == 403 and refused.json()["code"] == "preset_not_allowed"
    allowed = gateway.post(GENERATE, json=body, headers={"X-API-Key": enterprise_raw})
    assert allowed.status_code == 200, allowed.text
    assert flash_peer.user_balance(user.flash_user_id) == 40


def test_insufficient_credits_is_402_before_flash(
    gateway: Any, auth: Any, flash_peer: Any, user: Any
) -> None:
    flash_peer.set_balance(user.flash_user_id, 4)
    response = gateway.post(GENERATE, json={"query": "Apollo 11"}, headers=auth)
    assert response.status_code == 402
    assert response.json()["code"] == "insufficient_credits"
    assert (response.json()["balance"], response.json()["cost"]) == (4, 5)
    assert _generations(flash_peer) == []
    assert flash_peer.user_balance(user.flash_user_id) == 4


def test_parallel_generations_admit_only_what_the_balance_covers(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, usage: Any
) -> None:
    flash_peer.set_balance(user.flash_user_id, 5)
    flash_peer.generation_delay = 0.5
    barrier = threading.Barrier(5)

    def one(_: int) -> int:
        barrier.wait()
        return gateway.post(GENERATE, json={"query": "Apollo 11"}, headers=auth).status_code

    with ThreadPoolExecutor(5) as pool:
        statuses = sorted(pool.map(one, range(5)))
    assert statuses == [200, 402, 402, 402, 402]
    assert len(flash_peer.requests_to("/api/v1/timepoints/generate/sync")) == 1
    assert flash_peer.user_balance(user.flash_user_id) == 0
    assert sorted(r.credits_spent for r in usage()) == [0, 0, 0, 0, 5]

    from relay.services import reservation_total

    assert reservation_total(user.flash_user_id) == 0  # released


def test_user_is_marked_busy_while_flash_generates(
    gateway: Any, auth: Any, flash_peer: Any, user: Any
) -> None:
    from django.core.cache import cache

    from upstreams.flash_credit_lock import flash_user_busy_key

    flash_peer.generation_delay = 0.6
    key = flash_user_busy_key(user.flash_user_id)
    seen: list[Any] = []
    thread = threading.Thread(
        target=lambda: seen.append(gateway.post(GENERATE, json={"query": "Apollo"}, headers=auth))
    )
    thread.start()
    time.sleep(0.3)
    assert cache.get(key)
    thread.join()
    assert seen[0].status_code == 200
    assert not cache.get(key)


def test_a_generation_waits_while_a_grant_changes_the_users_credits(
    gateway: Any, auth: Any, flash_peer: Any, user: Any
) -> None:
    """Flash writes balances back without a lock (pitfall 11): a generation started while a
    grant is being applied must not start until the grant is done, and is then priced against
    the new balance. Neither update is lost."""
    from payments.models import GrantSource
    from payments.services import grant_create, grant_deliver

    flash_peer.grant_delay = 0.8
    grant, _ = grant_create(
        key="stripe:pi_race_1",
        user=user,
        amount=100,
        transaction_type="stripe_purchase",
        label="100 credits",
        source=GrantSource.STRIPE,
    )
    sender = threading.Thread(target=grant_deliver, args=(grant.pk,))
    sender.start()
    time.sleep(0.3)  # the worker now holds the user's credits and waits on Flash
    response = gateway.post(GENERATE, json={"query": "Apollo 11"}, headers=auth)
    sender.join(10)
    assert response.status_code == 200, response.text
    assert [row["type"] for row in flash_peer.ledger_for(user.flash_user_id)] == [
        "stripe_purchase",
        "generation",
    ]
    assert flash_peer.user_balance(user.flash_user_id) == 50 + 100 - 5


def test_a_grant_that_holds_the_credits_too_long_is_a_503_and_nothing_reaches_flash(
    gateway: Any, auth: Any, flash_peer: Any, user: Any
) -> None:
    from upstreams.flash_credit_lock import user_credits_give_back, user_credits_take_for_grant

    token = user_credits_take_for_grant(user.flash_user_id)
    assert token is not None
    try:
        started = time.monotonic()
        response = gateway.post(GENERATE, json={"query": "Apollo 11"}, headers=auth)
        elapsed = time.monotonic() - started
    finally:
        user_credits_give_back(user.flash_user_id, token)
    assert response.status_code == 503 and response.json()["code"] == "credits_busy"
    assert response.headers["Retry-After"] == "1"
    assert 2.5 < elapsed < 6, elapsed
    assert _generations(flash_peer) == []
    again = gateway.post(GENERATE, json={"query": "Apollo 11"}, headers=auth)
    assert again.status_code == 200


def test_failed_generation_is_refunded_through_the_grant_outbox(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, usage: Any
) -> None:
    from payments.models import CreditGrant
    from payments.services import grant_deliver

    flash_peer.generation_outcome = "failed"
    response = gateway.post(GENERATE, json={"query": "Apollo 11"}, headers=auth)
    assert response.status_code == 200 and response.json()["status"] == "failed"
    assert flash_peer.user_balance(user.flash_user_id) == 45  # Flash charged it (pitfall 9)

    (grant,) = CreditGrant.objects.all()
    # Keyed on what Flash identifies: the reconcile path would use the same key (issue 14).
    assert grant.key == f"refund:tp:{response.json()['id']}"
    assert (grant.amount, grant.transaction_type, grant.user_id) == (5, "refund", user.pk)
    grant_deliver(grant.pk)
    grant_deliver(grant.pk)  # exactly once
    assert flash_peer.user_balance(user.flash_user_id) == 50
    assert [row["type"] for row in flash_peer.ledger_for(user.flash_user_id)] == [
        "generation",
        "refund",
    ]
    (row,) = usage()
    assert (row.status, row.credits_spent) == (200, 0)


def test_a_reused_client_request_id_loses_no_record_and_no_refund(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, usage: Any
) -> None:
    """The client's X-Request-ID is only a correlation id: sent twice, it must not make the
    second call's usage record a "duplicate" or skip the second failed generation's refund."""
    from payments.models import CreditGrant

    flash_peer.generation_outcome = "failed"
    headers = {**auth, "X-Request-ID": "client-fixed-id-0001"}
    for _ in range(2):
        response = gateway.post(GENERATE, json={"query": "Apollo 11"}, headers=headers)
        assert response.status_code == 200 and response.json()["status"] == "failed"
        assert response.headers["X-Request-ID"] == "client-fixed-id-0001"
    grants = list(CreditGrant.objects.order_by("id"))
    assert [(g.amount, g.transaction_type) for g in grants] == [(5, "refund"), (5, "refund")]
    assert len({g.key for g in grants}) == 2
    rows = usage()
    assert len(rows) == 2 and len({row.request_id for row in rows}) == 2
    assert all("client-fixed-id-0001" not in row.request_id for row in rows)


def test_pipeline_exception_is_502_and_refunded_by_flash(
    gateway: Any, auth: Any, flash_peer: Any, user: Any
) -> None:
    from payments.models import CreditGrant

    flash_peer.generation_outcome = "error"
    response = gateway.post(GENERATE, json={"query": "Apollo 11"}, headers=auth)
    assert response.status_code == 502 and response.json()["code"] == "upstream_error"
    assert "simulated failure" not in response.text
    assert flash_peer.user_balance(user.flash_user_id) == 50
    assert not CreditGrant.objects.exists()


def test_generation_timeout_is_504_json(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, settings: Any
) -> None:
    settings.UPSTREAM_GENERATE_TIMEOUT = 0.3
    flash_peer.generation_delay = 2
    started = time.monotonic()
    response = gateway.post(GENERATE, json={"query": "Apollo 11"}, headers=auth)
    # Flash received it and may still run it: the client is told so, with the id to quote.
    assert response.status_code == 504
    assert response.json()["code"] == "upstream_outcome_unknown"
    assert response.json()["request_id"] == response.headers["X-Request-ID"]
    assert time.monotonic() - started < 1.5

    from relay.services import reservation_total

    assert reservation_total(user.flash_user_id) == 0


def test_test_key_gets_a_simulated_answer(
    gateway: Any, flash_peer: Any, user: Any, usage: Any
) -> None:
    from apikeys.services import key_create

    key, raw = key_create(user=user, name="ci", mode="test")
    headers = {"Authorization": f"Bearer {raw}"}
    response = gateway.post(GENERATE, json={"query": "Apollo 11"}, headers=headers)
    assert response.status_code == 200
    assert response.json()["test_mode"] is True
    assert response.headers["X-Test-Mode"] == "simulated"
    assert _generations(flash_peer) == []
    assert flash_peer.user_balance(user.flash_user_id) == 50
    invalid = gateway.post(GENERATE, json={"query": "A", "preset": "x"}, headers=headers)
    assert invalid.status_code == 400
    (row, _) = usage()
    assert (row.api_key_id, row.credits_spent, row.status) == (key.pk, 0, 200)


def test_reconcile_for_staff_only(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, usage: Any
) -> None:
    assert gateway.post(GENERATE, json={"query": "Apollo 11"}, headers=auth).status_code == 200
    usage()
    url = f"/api/v1/staff/credits/reconcile/{user.pk}"
    assert gateway.get(url, headers=auth).status_code == 403
    user.is_staff = True
    user.save()
    report = gateway.get(url, headers=auth)
    assert report.status_code == 200, report.text
    body = report.json()
    assert (body["metered_credits"], body["flash_charged"], body["difference"]) == (5, 5, 0)
    assert body["flash_balance"] == 45
