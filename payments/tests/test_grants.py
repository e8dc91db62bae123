"""The grant outbox against the Flash contract peer: outages, 500s, lost answers, crashes."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.utils import timezone

from accounts.models import User
from payments import services
from payments.models import CreditGrant, GrantSource, GrantState
from upstreams.flash_credit_lock import flash_user_busy_key


def _grant(user: Any, key: str = "stripe:pi_test_1", amount: int = 100) -> CreditGrant:
    grant, created = services.grant_create(
        key=key,
        user=user,
        amount=amount,
        transaction_type="stripe_purchase",
        label="100 credits",
        source=GrantSource.STRIPE,
    )
    assert created
    return grant


def _ledger_grants(flash_peer: Any, user: Any) -> list[dict[str, Any]]:
    return [row for row in flash_peer.ledger_for(user.flash_user_id) if row["amount"] > 0]


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_flash_down_keeps_the_grant_until_flash_is_back(user: Any, flash_peer: Any, settings):
    grant = _grant(user)
    flash_url = settings.FLASH_URL
    settings.FLASH_URL = _closed_port_url()  # Flash is down

    for _ in range(3):
        call_command("run_grants", "--once")
    grant.refresh_from_db()
    assert grant.state == GrantState.FAILED
    assert grant.attempts == 3 and grant.outcome_unknown
    assert "could not be reached" in grant.last_error

    settings.FLASH_URL = flash_url  # back
    call_command("run_grants", "--once")
    call_command("run_grants", "--once")

    grant.refresh_from_db()
    assert grant.state == GrantState.SENT
    assert len(_ledger_grants(flash_peer, user)) == 1
    assert flash_peer.user_balance(user.flash_user_id) == 150


def test_backoff_waits_between_attempts(user: Any, flash_peer: Any, settings):
    settings.GRANT_RETRY_BASE_SECONDS = 5
    grant = _grant(user)
    flash_peer.fail_next = 1

    call_command("run_grants", "--once")
    call_command("run_grants", "--once")  # not due yet

    grant.refresh_from_db()
    assert grant.state == GrantState.FAILED and grant.attempts == 1
    assert grant.next_attempt_at > timezone.now() + timedelta(seconds=3)
    assert _ledger_grants(flash_peer, user) == []


def test_flash_500_is_retried_and_applied_once(user: Any, flash_peer: Any):
    grant = _grant(user)
    flash_peer.fail_next = 2

    call_command("run_grants", "--once")
    grant.refresh_from_db()
    assert grant.state == GrantState.FAILED and "500" in grant.last_error
    call_command("run_grants", "--once")  # the ledger read before resending also gets a 500
    call_command("run_grants", "--once")

    grant.refresh_from_db()
    assert grant.state == GrantState.SENT and grant.attempts == 3
    assert len(_ledger_grants(flash_peer, user)) == 1


def test_answer_lost_after_flash_applied_it_is_reconciled_not_resent(user: Any, flash_peer: Any):
    grant = _grant(user)
    flash_peer.grant_then_drop = 1  # Flash applies the grant, then the connection drops

    call_command("run_grants", "--once")
    grant.refresh_from_db()
    assert grant.state == GrantState.FAILED and grant.outcome_unknown
    assert len(_ledger_grants(flash_peer, user)) == 1

    call_command("run_grants", "--once")

    grant.refresh_from_db()
    assert grant.state == GrantState.SENT
    assert "reconciled" in grant.last_error
    assert len(_ledger_grants(flash_peer, user)) == 1
    assert flash_peer.user_balance(user.flash_user_id) == 150
    assert len(flash_peer.requests_to("/api/v1/credits/admin/grant")) == 1


def test_timeout_then_reconcile_finds_nothing_and_sends(user: Any, flash_peer: Any, settings):
    settings.UPSTREAM_READ_TIMEOUT = 0.2
    grant = _grant(user)
    flash_peer.fail_next = 1  # Flash answers 500 before applying anything
    call_command("run_grants", "--once")
    call_command("run_grants", "--once")

    grant.refresh_from_db()
    assert grant.state == GrantState.SENT
    assert len(flash_peer.requests_to("/api/v1/credits/history")) == 1  # looked before resending
    assert len(_ledger_grants(flash_peer, user)) == 1


def test_gateway_killed_between_commit_and_call(user: Any, flash_peer: Any):
    # The webhook committed the grant and the process died before any attempt.
    grant = _grant(user)
    assert grant.state == GrantState.PENDING

    call_command("run_grants", "--once")
    call_command("run_grants", "--once")

    grant.refresh_from_db()
    assert grant.state == GrantState.SENT
    assert len(_ledger_grants(flash_peer, user)) == 1


@pytest.mark.parametrize("flash_applied", [True, False])
def test_gateway_killed_while_sending(user: Any, flash_peer: Any, flash_applied: bool):
    """A worker claimed the grant and died mid-send: after the lease another worker reconciles."""
    grant = _grant(user)
    if flash_applied:
        flash_peer.grant_then_drop = 0
        from upstreams import flash

        flash.admin_grant(
            flash_user_id=user.flash_user_id,
            amount=grant.amount,
            transaction_type=grant.transaction_type,
            description=grant.description,
        )
    CreditGrant.objects.filter(pk=grant.pk).update(
        state=GrantState.SENDING,
        attempts=1,
        claimed_at=timezone.now() - timedelta(minutes=10),
    )

    call_command("run_grants", "--once")

    grant.refresh_from_db()
    assert grant.state == GrantState.SENT
    assert len(_ledger_grants(flash_peer, user)) == 1
    assert len(flash_peer.requests_to("/api/v1/credits/history")) == 1


def test_a_fresh_sending_claim_is_left_alone(user: Any, flash_peer: Any):
    grant = _grant(user)
    CreditGrant.objects.filter(pk=grant.pk).update(
        state=GrantState.SENDING, claimed_at=timezone.now()
    )
    call_command("run_grants", "--once")
    assert _ledger_grants(flash_peer, user) == []


def test_flash_rejection_needs_attention_and_staff_retry(user: Any, flash_peer: Any):
    grant = _grant(user)
    CreditGrant.objects.filter(pk=grant.pk).update(flash_user_id="no-such-flash-user")

    call_command("run_grants", "--once")
    grant.refresh_from_db()
    assert grant.state == GrantState.NEEDS_ATTENTION and "404" in grant.last_error
    call_command("run_grants", "--once")  # no automatic retry
    grant.refresh_from_db()
    assert grant.attempts == 1 and grant.state == GrantState.NEEDS_ATTENTION

    CreditGrant.objects.filter(pk=grant.pk).update(flash_user_id=user.flash_user_id)
    assert services.grant_retry(grant_id=grant.pk)
    call_command("run_grants", "--once")
    grant.refresh_from_db()
    assert grant.state == GrantState.SENT
    assert len(_ledger_grants(flash_peer, user)) == 1


def test_grant_waits_for_a_generation_in_flight(user: Any, flash_peer: Any):
    grant = _grant(user)
    cache.set(flash_user_busy_key(user.flash_user_id), "1", 60)

    call_command("run_grants", "--once")

    grant.refresh_from_db()
    assert grant.state == GrantState.PENDING
    assert grant.attempts == 0  # not counted as a failure
    assert grant.next_attempt_at > timezone.now()
    assert _ledger_grants(flash_peer, user) == []

    cache.delete(flash_user_busy_key(user.flash_user_id))
    CreditGrant.objects.filter(pk=grant.pk).update(next_attempt_at=timezone.now())
    call_command("run_grants", "--once")
    grant.refresh_from_db()
    assert grant.state == GrantState.SENT


def test_grant_goes_once_the_generation_ends_within_the_wait(user: Any, flash_peer: Any, settings):
    settings.GRANT_BUSY_WAIT_SECONDS = 3
    grant = _grant(user)
    key = flash_user_busy_key(user.flash_user_id)
    cache.set(key, "1", 60)
    threading.Timer(0.5, cache.delete, args=(key,)).start()

    started = time.monotonic()
    services.grant_deliver(grant.pk)

    assert time.monotonic() - started >= 0.4
    grant.refresh_from_db()
    assert grant.state == GrantState.SENT


def test_manual_grant_uses_the_same_outbox(user: Any, flash_peer: Any):
    staff = User.objects.create_user(username="staff", is_staff=True)
    grant = services.grant_manual(user=user, amount=25, reason="Goodwill", staff_user=staff)

    assert grant.key.startswith("manual:") and grant.created_by == staff
    call_command("run_grants", "--once")

    grant.refresh_from_db()
    assert grant.state == GrantState.SENT
    rows = _ledger_grants(flash_peer, user)
    assert len(rows) == 1 and rows[0]["type"] == "admin_grant"
    assert "Goodwill" in rows[0]["description"]


def test_deliver_twice_in_a_row_sends_once(user: Any, flash_peer: Any):
    grant = _grant(user)
    assert services.grant_deliver(grant.pk) is not None
    assert services.grant_deliver(grant.pk) is None
    assert len(_ledger_grants(flash_peer, user)) == 1


@pytest.mark.django_db(transaction=True)
def test_parallel_workers_send_each_grant_once(user: Any, flash_peer: Any, settings: Any):
    grants = [_grant(user, key=f"stripe:pi_parallel_{i}", amount=10) for i in range(6)]
    flash_peer.grant_delay = 0.05
    # Grants to one user are sent one at a time (Flash loses concurrent balance writes): a worker
    # that finds the user's credits held by another worker's grant puts its grant back for later.
    settings.GRANT_BUSY_WAIT_SECONDS = 0.3
    errors: list[BaseException] = []

    def worker() -> None:
        from django.db import connections

        try:
            for _ in range(4):
                services.grants_deliver_due()
        except BaseException as exc:  # SQLite's in-memory test db may refuse a concurrent write
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for _ in range(len(grants)):  # whatever a refused or put-back worker left, made due now
        CreditGrant.objects.exclude(state=GrantState.SENT).update(next_attempt_at=timezone.now())
        services.grants_deliver_due()

    assert CreditGrant.objects.filter(state=GrantState.SENT).count() == len(grants)
    assert len(_ledger_grants(flash_peer, user)) == len(grants)
    assert flash_peer.user_balance(user.flash_user_id) == 50 + 10 * len(grants)
