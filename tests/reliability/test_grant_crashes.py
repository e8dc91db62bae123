"""Exactly-once credit grants with real processes killed (SIGKILL) at each step of the outbox.

The worker is a real `python manage.py run_grants` (or, for the webhook side, a small script
doing what the webhook does) on the test database, reaching Flash through a fault proxy. Whatever
step the kill lands on, the next worker finishes the job and Flash's ledger holds exactly one
grant."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from django.db import connection

from payments.models import CreditGrant, GrantState
from tests.reliability.conftest import ROOT, subprocess_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

KEY = "stripe:pi_reliability_1"


def _database_url() -> str:
    """The test database itself: the worker's writes are what this test reads back."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db["USER"] or ""
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    host = db["HOST"] or "127.0.0.1"
    return f"postgres://{user}{password}@{host}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def worker_env(flash_proxy: Any, flash_peer: Any, settings: Any) -> dict[str, str]:
    connection.close()  # SQLite: let the worker take the write lock freely
    return subprocess_env(
        DATABASE_URL=_database_url(),
        FLASH_URL=flash_proxy.url,
        FLASH_SERVICE_KEY=flash_peer.service_key,
        FLASH_ADMIN_KEY=flash_peer.admin_key,
        FLASH_GATEWAY_SIGNING_SECRET=flash_peer.signing_secret,
        GRANT_RETRY_BASE_SECONDS="0",
        GRANT_RECONCILE_DELAY_SECONDS="0",
        GRANT_SENDING_LEASE_SECONDS="1",
        GRANT_BUSY_WAIT_SECONDS="0.2",
        UPSTREAM_READ_TIMEOUT="30",
        METERING_BACKGROUND_FLUSH="false",
    )


def _ledger_grants(flash_peer: Any, user: Any) -> list[dict[str, Any]]:
    return [row for row in flash_peer.ledger_for(user.flash_user_id) if row["amount"] > 0]


def _worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "manage.py", "run_grants", "--sleep", "0.1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _run_once(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "run_grants", "--once"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
    )


def _kill(process: subprocess.Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(5)


def _state() -> str:
    return CreditGrant.objects.get(key=KEY).state


WEBHOOK_SIDE = textwrap.dedent(
    """
    import sys, time
    import django
    django.setup()
    from django.db import transaction
    from accounts.models import User
    from payments.models import GrantSource
    from payments.services import grant_create

    with transaction.atomic():
        grant_create(key=sys.argv[1], user=User.objects.get(pk=int(sys.argv[2])), amount=100,
                     transaction_type="stripe_purchase", label="100 credits",
                     source=GrantSource.STRIPE)
    print("committed", flush=True)
    time.sleep(60)  # killed here: after the commit, before any call to Flash
    """
)


def test_killed_between_commit_and_call(worker_env: Any, user: Any, flash_peer: Any) -> None:
    webhook = subprocess.Popen(
        [sys.executable, "-c", WEBHOOK_SIDE, KEY, str(user.pk)],
        cwd=ROOT,
        env=worker_env,
        stdout=subprocess.PIPE,
    )
    assert webhook.stdout is not None
    assert webhook.stdout.readline().strip() == b"committed"
    _kill(webhook)
    assert _state() == GrantState.PENDING
    assert _ledger_grants(flash_peer, user) == []

    _run_once(worker_env)
    _run_once(worker_env)
    assert _state() == GrantState.SENT
    assert len(_ledger_grants(flash_peer, user)) == 1


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="the nudge crosses processes in Redis")
def test_a_sleeping_worker_is_nudged_by_the_committing_process(
    worker_env: Any, user: Any, flash_peer: Any
) -> None:
    """The web side only commits and nudges; the worker, between passes for a minute, wakes
    and delivers within seconds, once."""
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "run_grants", "--sleep", "60", "--verbosity", "2"],
        cwd=ROOT,
        env=worker_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert worker.stdout is not None
        # Its first (empty) pass is done: from now on it is waiting out its 60 s.
        assert worker.stdout.readline().startswith(b"grants claimed: 0")
        webhook = subprocess.run(
            [sys.executable, "-c", WEBHOOK_SIDE.replace("time.sleep(60)", ""), KEY, str(user.pk)],
            cwd=ROOT,
            env=worker_env,
            capture_output=True,
            timeout=60,
            check=True,
        )
        assert webhook.stdout.strip() == b"committed"
        wait_for(lambda: _ledger_grants(flash_peer, user), timeout=20)
        wait_for(lambda: _state() == GrantState.SENT, timeout=10)
    finally:
        _kill(worker)
    assert len(_ledger_grants(flash_peer, user)) == 1


def _pending_grant(user: Any) -> CreditGrant:
    from payments.models import GrantSource
    from payments.services import grant_create

    grant, _ = grant_create(
        key=KEY,
        user=user,
        amount=100,
        transaction_type="stripe_purchase",
        label="100 credits",
        source=GrantSource.STRIPE,
    )
    connection.close()
    return grant


def test_killed_during_the_call_before_flash_acted(
    worker_env: Any, user: Any, flash_peer: Any, flash_proxy: Any
) -> None:
    _pending_grant(user)
    flash_proxy.mode = "hang"  # the request never reaches Flash
    worker = _worker(worker_env)
    wait_for(lambda: _state() == GrantState.SENDING and flash_proxy.connections > 0, timeout=20)
    _kill(worker)
    assert _ledger_grants(flash_peer, user) == []

    flash_proxy.mode = "pass"
    time.sleep(1.2)  # past the sending lease: the claim counts as abandoned
    _run_once(worker_env)
    assert _state() == GrantState.SENT
    assert len(_ledger_grants(flash_peer, user)) == 1


def test_killed_during_the_call_after_flash_acted(
    worker_env: Any, user: Any, flash_peer: Any, flash_proxy: Any
) -> None:
    _pending_grant(user)
    flash_proxy.mode = "hold_answer"  # Flash applies the grant; the answer never comes back
    worker = _worker(worker_env)
    wait_for(lambda: flash_proxy.answers_held > 0, timeout=20)
    _kill(worker)
    assert len(_ledger_grants(flash_peer, user)) == 1
    assert _state() == GrantState.SENDING

    flash_proxy.mode = "pass"
    time.sleep(1.2)
    _run_once(worker_env)  # reconciles from Flash's ledger instead of sending again
    _run_once(worker_env)
    grant = CreditGrant.objects.get(key=KEY)
    assert grant.state == GrantState.SENT
    assert "reconciled" in grant.last_error
    assert len(_ledger_grants(flash_peer, user)) == 1


def test_answer_dropped_then_worker_killed(
    worker_env: Any, user: Any, flash_peer: Any, flash_proxy: Any
) -> None:
    _pending_grant(user)
    flash_proxy.mode = "drop_after_request"  # applied, then the connection drops
    worker = _worker({**worker_env, "GRANT_RETRY_BASE_SECONDS": "30"})
    wait_for(lambda: _state() == GrantState.FAILED, timeout=20)
    _kill(worker)  # dies while waiting to retry: the outcome is still unknown
    grant = CreditGrant.objects.get(key=KEY)
    assert grant.outcome_unknown is True
    assert len(_ledger_grants(flash_peer, user)) == 1

    flash_proxy.mode = "pass"
    CreditGrant.objects.filter(pk=grant.pk).update(next_attempt_at=grant.created_at)
    connection.close()
    _run_once(worker_env)
    assert _state() == GrantState.SENT
    assert len(_ledger_grants(flash_peer, user)) == 1


def test_two_workers_killed_and_restarted_in_a_loop_grant_once(
    worker_env: Any, user: Any, flash_peer: Any, flash_proxy: Any
) -> None:
    _pending_grant(user)
    flash_peer.grant_delay = 0.3
    for _ in range(3):
        workers = [_worker(worker_env), _worker(worker_env)]
        time.sleep(0.5)
        for worker in workers:
            _kill(worker)
    time.sleep(1.2)
    _run_once(worker_env)
    _run_once(worker_env)
    assert _state() == GrantState.SENT
    assert len(_ledger_grants(flash_peer, user)) == 1
