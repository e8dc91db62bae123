"""Generations whose answer is lost between Flash and the gateway (issue 14, point 1).

A fault proxy sits between the gateway and the Flash contract peer, which charges when a
generation starts and keeps the charge when it fails (upstreams.md A4, pitfall 9). Each fault
loses the answer after Flash received the request; the client is told `upstream_outcome_unknown`
with its request id, and the background worker (`relay.refunds`, run by `manage.py run_grants`)
finds the outcome from Flash and refunds exactly once. Every test ends with the user's exact
balance in Flash, at most one refund in Flash's ledger, and a second worker pass changing
nothing. The last test does it on the production server with real worker processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import ROOT, assert_json_error, subprocess_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

GENERATE = "/api/v1/generate"
STREAM = "/api/v1/generate/stream"
START = 50  # the peer's signup credits
COST = 5


@pytest.fixture(autouse=True)
def _reconcile_now(settings: Any) -> None:
    settings.GENERATION_RECONCILE_DELAY_SECONDS = 0
    settings.GENERATION_RECONCILE_RETRY_SECONDS = 0
    settings.RELAY_STREAM_SETTLE_SECONDS = 0.1
    settings.GRANT_BUSY_WAIT_SECONDS = 2


def _refund_rows(flash_peer: Any, user: Any) -> list[dict[str, Any]]:
    return [
        row
        for row in flash_peer.ledger_for(user.flash_user_id)
        if row["type"] == "refund" and "[grant:refund" in str(row["description"])
    ]


def _settle_with_two_workers() -> None:
    """Two workers reconcile at once (threads: each claim is its own transaction), then the
    grant outbox delivers the refunds; every step is run twice, as a restarted worker would."""
    from metering.services import flush_usage
    from payments.services import grants_deliver_due
    from relay.reconcile import generations_reconcile_due

    flush_usage()  # the web process writes its usage records within a second

    claimed: list[int] = []
    workers = [
        threading.Thread(target=lambda: claimed.append(generations_reconcile_due()))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert sorted(claimed) == [0, 1], claimed
    assert generations_reconcile_due() == 0  # a restarted worker finds nothing left to do
    grants_deliver_due()
    grants_deliver_due()


def _record() -> Any:
    from relay.models import ForwardedGeneration

    (record,) = ForwardedGeneration.objects.all()
    return record


def _unknown_answer(response: httpx.Response, status: int) -> None:
    assert_json_error(response, status, "upstream_outcome_unknown")
    assert response.json()["request_id"] == response.headers["X-Request-ID"]
    assert "could not be reached" not in response.text  # it was reached: say so


@pytest.mark.parametrize(
    ("outcome", "balance_after"), [("failed", START), ("completed", START - COST)]
)
def test_cut_after_the_request_was_sent(
    gateway: Any,
    auth: Any,
    flash_peer: Any,
    flash_proxy: Any,
    user: Any,
    usage: Any,
    outcome: str,
    balance_after: int,
) -> None:
    """Flash ran the generation and charged it; the connection was cut before its answer."""
    flash_peer.generation_outcome = outcome
    flash_proxy.mode = "drop_after_request"
    flash_proxy.arm_on = b"/generate/sync"  # only the generation's answer is lost
    response = gateway.post(GENERATE, json={"query": "Apollo 11"}, headers=auth)
    _unknown_answer(response, 502)
    assert flash_peer.user_balance(user.flash_user_id) == START - COST  # Flash charged it
    assert _record().state == "unknown"
    flash_proxy.mode = "pass"
    _settle_with_two_workers()
    assert flash_peer.user_balance(user.flash_user_id) == balance_after
    record = _record()
    assert record.state == "settled" and record.flash_timepoint_id
    if outcome == "failed":
        (refund,) = _refund_rows(flash_peer, user)
        assert refund["amount"] == COST
        assert record.refund_key == f"refund:tp:{record.flash_timepoint_id}"
    else:
        assert _refund_rows(flash_peer, user) == []
    # The usage record says what was finally charged.
    (row,) = [r for r in usage() if r.endpoint == GENERATE]
    assert (row.status, row.credits_spent) == (502, START - balance_after)


def test_cut_in_the_middle_of_the_body(
    gateway: Any, auth: Any, flash_peer: Any, flash_proxy: Any, user: Any, usage: Any
) -> None:
    flash_peer.generation_outcome = "failed"
    flash_proxy.mode = "cut"
    flash_proxy.arm_on = b"/generate/sync"
    flash_proxy.cut_after_marker = b'"query"'  # inside the TimepointResponse body
    response = gateway.post(GENERATE, json={"query": "Apollo 11"}, headers=auth)
    _unknown_answer(response, 502)
    assert flash_peer.user_balance(user.flash_user_id) == START - COST
    flash_proxy.mode = "pass"
    _settle_with_two_workers()
    assert flash_peer.user_balance(user.flash_user_id) == START
    assert len(_refund_rows(flash_peer, user)) == 1
    (row,) = [r for r in usage() if r.endpoint == GENERATE]
    assert row.credits_spent == 0


def test_timeout_after_the_request_was_sent(
    gateway: Any, auth: Any, flash_peer: Any, user: Any, settings: Any, usage: Any
) -> None:
    """The gateway gives up while Flash still runs the generation: the worker waits for it."""
    from relay.reconcile import generations_reconcile_due

    settings.UPSTREAM_GENERATE_TIMEOUT = 0.5
    flash_peer.generation_outcome = "failed"
    flash_peer.generation_delay = 4.0
    response = gateway.post(GENERATE, json={"query": "Apollo 11"}, headers=auth)
    _unknown_answer(response, 504)
    # Still running in Flash (it writes the charge at the end): the worker looks, finds it
    # processing, and settles nothing. (On a machine slow enough for Flash to finish first,
    # the worker settles it at once, which the end of the test checks as well.)
    assert generations_reconcile_due() == 1
    if flash_peer.user_balance(user.flash_user_id) == START:
        record = _record()
        assert record.state == "unknown" and "still be running" in record.last_error
    wait_for(lambda: flash_peer.user_balance(user.flash_user_id) != START, timeout=20)
    if _record().state != "settled":
        _settle_with_two_workers()
    else:
        from payments.services import grants_deliver_due

        grants_deliver_due()
    assert flash_peer.user_balance(user.flash_user_id) == START
    assert len(_refund_rows(flash_peer, user)) == 1


def test_pipeline_exception_behind_a_lost_answer_is_not_refunded_twice(
    gateway: Any, auth: Any, flash_peer: Any, flash_proxy: Any, user: Any
) -> None:
    """Flash refunded its own exception (500): its ledger shows it, the gateway adds nothing."""
    flash_peer.generation_outcome = "error"
    flash_proxy.mode = "drop_after_request"
    flash_proxy.arm_on = b"/generate/sync"
    _unknown_answer(gateway.post(GENERATE, json={"query": "Apollo 11"}, headers=auth), 502)
    flash_proxy.mode = "pass"
    _settle_with_two_workers()
    assert flash_peer.user_balance(user.flash_user_id) == START
    assert _refund_rows(flash_peer, user) == []
    assert _record().outcome == "not_charged"


def _stream(gateway: Any, auth: Any) -> list[dict[str, Any]]:
    with gateway.stream("POST", STREAM, json={"query": "Apollo 11"}, headers=auth) as response:
        assert response.status_code == 200
        try:
            raw = b"".join(response.iter_raw())
        except httpx.HTTPError:
            raw = b""
    return [
        json.loads(block[len("data: ") :])
        for block in raw.decode(errors="replace").split("\n\n")
        if block.startswith("data: ")
    ]


@pytest.mark.parametrize(
    ("marker", "balance_after"),
    [
        # Cut after the first event: Flash stops, keeps the charge (its refund is overwritten).
        (b"\n\n", START),
        # Cut inside the `done` event: Flash completed and saved the timepoint; it is charged.
        (b'"done"', START - COST),
    ],
)
def test_stream_cut_before_its_final_event(
    gateway: Any,
    auth: Any,
    flash_peer: Any,
    flash_proxy: Any,
    user: Any,
    usage: Any,
    marker: bytes,
    balance_after: int,
) -> None:
    flash_peer.stream_step_delay = 0.05
    flash_proxy.mode = "cut"
    flash_proxy.cut_after_marker = marker
    events = _stream(gateway, auth)
    last = events[-1]
    assert last["event"] == "error" and last["data"]["code"] == "upstream_outcome_unknown"
    request_id = last["data"]["request_id"]
    wait_for(lambda: _record().state == "unknown", timeout=5)
    wait_for(lambda: flash_peer.active_streams == 0, timeout=5)
    flash_proxy.mode = "pass"
    _settle_with_two_workers()
    assert flash_peer.user_balance(user.flash_user_id) == balance_after
    assert len(_refund_rows(flash_peer, user)) == (1 if balance_after == START else 0)
    wait_for(lambda: len(usage()) == 1)
    (row,) = usage()
    assert (row.request_id, row.partial) == (request_id, True)
    assert row.credits_spent == START - balance_after


@pytest.mark.slow
def test_lost_answer_on_the_production_server_with_real_workers(
    production_gateway: Any,
    auth: Any,
    flash_peer: Any,
    flash_proxy: Any,
    user: Any,
    tmp_path: Any,
) -> None:
    """gunicorn + the project's worker class (2 workers) forwards; two `run_grants` processes
    at once, then a third (a restart), settle it: one refund, the exact balance."""
    flash_peer.generation_outcome = "failed"
    server = production_gateway(
        {"GENERATION_RECONCILE_DELAY_SECONDS": "0", "GRANTS_DELIVER_IMMEDIATELY": "false"}
    )
    with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as client:
        flash_proxy.mode = "drop_after_request"
        flash_proxy.arm_on = b"/generate/sync"
        response = client.post(GENERATE, json={"query": "Apollo 11"}, headers=auth)
    _unknown_answer(response, 502)
    assert flash_peer.user_balance(user.flash_user_id) == START - COST
    flash_proxy.mode = "pass"
    env = subprocess_env(
        DATABASE_URL=server.database_url,
        FLASH_URL=flash_proxy.url,
        FLASH_SERVICE_KEY=flash_peer.service_key,
        FLASH_ADMIN_KEY=flash_peer.admin_key,
        FLASH_GATEWAY_SIGNING_SECRET=flash_peer.signing_secret,
        GENERATION_RECONCILE_RETRY_SECONDS="0",
        GRANTS_DELIVER_IMMEDIATELY="false",
        GRANT_BUSY_WAIT_SECONDS="2",
        METERING_BACKGROUND_FLUSH="false",
    )
    command = [sys.executable, "manage.py", "run_grants", "--once"]
    workers = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=90)
        assert worker.returncode == 0, err.decode()[-2000:]
    subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=90, capture_output=True)
    assert flash_peer.user_balance(user.flash_user_id) == START
    assert len(_refund_rows(flash_peer, user)) == 1
    assert server.stop() == 0


@pytest.mark.parametrize(
    ("route", "path", "arm_on"),
    [
        ("sync", GENERATE, b"/generate/sync"),
        # The start of an asynchronous generation: Flash accepted (and charged) it, the answer
        # naming its timepoint was lost, then the run failed.
        ("async", "/api/v1/generate/async", b"/timepoints/generate HTTP"),
    ],
)
def test_a_key_budget_held_by_a_lost_answer_is_given_back_once_by_the_worker(
    gateway: Any,
    auth: Any,
    make_key: Any,
    flash_peer: Any,
    flash_proxy: Any,
    user: Any,
    route: str,
    path: str,
    arm_on: bytes,
) -> None:
    """The key's budget hold stays counted while the outcome is unknown (Flash probably charged
    it); the reconcile worker learns from Flash that the generation failed and, in the same
    settlement as the refund, gives the budget back: once, however many passes run."""
    from apikeys.models import KeySpend
    from apikeys.selectors import key_month_spent
    from relay.reconcile import generations_reconcile_due

    key, raw = make_key(user, monthly_credit_budget=COST)
    headers = {"X-API-Key": raw}
    flash_peer.generation_outcome = "failed"
    flash_proxy.mode = "drop_after_request"
    flash_proxy.arm_on = arm_on
    _unknown_answer(gateway.post(path, json={"query": "Apollo 11"}, headers=headers), 502)
    assert key_month_spent(key_id=key.pk) == COST  # held while nobody knows
    budget_refused = gateway.post(GENERATE, json={"query": "Apollo 12"}, headers=headers)
    assert_json_error(budget_refused, 402, "budget_exhausted")
    flash_proxy.mode = "pass"
    wait_for(
        lambda: all(tp.status == "failed" for tp in flash_peer.timepoints.values()), timeout=10
    )

    _settle_with_two_workers()
    assert flash_peer.user_balance(user.flash_user_id) == START
    assert len(_refund_rows(flash_peer, user)) == 1
    record = _record()
    assert (record.route, record.outcome) == (route, "failed")
    (spend,) = KeySpend.objects.filter(api_key=key)
    assert spend.amount == COST and spend.settled_at and spend.refunded_at
    given_back_at = spend.refunded_at
    assert key_month_spent(key_id=key.pk) == 0

    assert generations_reconcile_due() == 0  # another pass: nothing given back twice
    spend.refresh_from_db()
    assert spend.refunded_at == given_back_at
    # The whole budget is there again, and no more than it.
    flash_peer.generation_outcome = "completed"
    assert gateway.post(GENERATE, json={"query": "Apollo 13"}, headers=headers).status_code == 200
    again = gateway.post(GENERATE, json={"query": "Apollo 14"}, headers=headers)
    assert_json_error(again, 402, "budget_exhausted")
