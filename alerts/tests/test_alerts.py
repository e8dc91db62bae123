"""Low-balance alerts against the Flash peer and a real SMTP server: a generation that takes the
balance below the threshold sends one email (checked as received), one `credits.low` event and
shows the portal banner; further generations below it send nothing until a top-up re-arms it;
racing workers record one crossing; an SMTP outage delays the email, never doubles it."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
from django.db import connection
from django.test import Client

from accounts.models import User
from alerts.models import EmailState, LowBalanceAlert, LowBalanceCrossing
from alerts.services import (
    alert_threshold_set,
    balance_seen,
    low_balance_checks_due,
    low_balance_emails_send_due,
)
from devpeers.smtp_sink import SmtpSink
from payments.services import grant_manual, grants_deliver_due
from webhooks.models import EventType, WebhookEvent

pytestmark = pytest.mark.django_db(transaction=True)


def _generate(gateway: httpx.Client, auth: dict[str, str]) -> None:
    response = gateway.post("/api/v1/generate", json={"query": "The fall of Rome"}, headers=auth)
    assert response.status_code == 200, response.text


def _worker_pass() -> None:
    low_balance_checks_due()
    low_balance_emails_send_due()


def test_a_generation_below_the_threshold_alerts_once_until_a_top_up(
    gateway: httpx.Client,
    auth: dict[str, str],
    user: Any,
    other_user: Any,
    flash_peer: Any,
    smtp: SmtpSink,
) -> None:
    alert_threshold_set(user=user, threshold=48)  # 50 signup credits: armed
    _generate(gateway, auth)  # 50 → 45
    _worker_pass()
    [message] = smtp.wait_for(1)
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Your TIMEPOINT balance is below 48 credits"
    body = message.get_content()
    assert "45 credits, below the alert threshold of 48" in body
    assert "http://127.0.0.1:8000/portal/billing/" in body
    crossing = LowBalanceCrossing.objects.get()
    assert message["Message-ID"] == crossing.message_id
    assert crossing.email_state == EmailState.SENT
    [event] = WebhookEvent.objects.filter(type=EventType.CREDITS_LOW)
    assert event.data == {"balance": 45, "threshold": 48}

    portal = Client()
    portal.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    page = portal.get("/portal/keys/").content.decode()
    assert 'id="low-balance-banner"' in page and "45 credits" in page

    _generate(gateway, auth)  # 45 → 40: still below, no new alert
    _worker_pass()
    assert LowBalanceCrossing.objects.count() == 1 and len(smtp.messages) == 1
    assert LowBalanceAlert.objects.get().last_balance == 40

    grant_manual(user=user, amount=10, reason="top-up", staff_user=other_user)
    grants_deliver_due()  # 40 → 50: the grant's balance re-arms the alert
    assert LowBalanceAlert.objects.get().armed
    assert 'id="low-balance-banner"' not in portal.get("/portal/keys/").content.decode()
    _generate(gateway, auth)  # 50 → 45: a new fall
    _worker_pass()
    assert len(smtp.wait_for(2)) == 2
    assert LowBalanceCrossing.objects.count() == 2
    assert WebhookEvent.objects.filter(type=EventType.CREDITS_LOW).count() == 2


def test_set_while_already_below_waits_for_a_top_up(
    gateway: httpx.Client, auth: dict[str, str], user: Any, flash_peer: Any, smtp: SmtpSink
) -> None:
    alert = alert_threshold_set(user=user, threshold=100)
    assert alert is not None and not alert.armed  # 50 < 100 already
    _generate(gateway, auth)
    _worker_pass()
    assert LowBalanceCrossing.objects.count() == 0 and smtp.messages == []


def test_racing_workers_record_one_crossing(user: Any, flash_peer: Any, smtp: SmtpSink) -> None:
    alert_threshold_set(user=user, threshold=48)
    barrier = threading.Barrier(4)
    made: list[Any] = []

    def see() -> None:
        try:
            barrier.wait()
            made.extend(balance_seen(user_id=user.pk, balance=45))
        finally:
            connection.close()

    threads = [threading.Thread(target=see) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(made) == 1
    assert LowBalanceCrossing.objects.count() == 1
    assert WebhookEvent.objects.filter(type=EventType.CREDITS_LOW).count() == 1
    low_balance_emails_send_due()
    low_balance_emails_send_due()
    assert len(smtp.wait_for(1)) == 1


def test_an_older_reading_never_undoes_a_newer_one(user: Any, flash_peer: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    alert_threshold_set(user=user, threshold=48)
    now = timezone.now()
    balance_seen(user_id=user.pk, balance=60, seen_at=now)  # a grant, just now
    late = balance_seen(user_id=user.pk, balance=45, seen_at=now - timedelta(seconds=5))
    assert late == [] and LowBalanceAlert.objects.get().last_balance == 60


def test_an_smtp_outage_delays_the_email_and_never_doubles_it(
    user: Any, flash_peer: Any, settings: Any
) -> None:
    sink = SmtpSink()  # not started: nothing listens on its port yet
    for name, value in sink.settings().items():
        setattr(settings, name, value)
    settings.EMAIL_TIMEOUT = 2
    settings.ALERT_EMAIL_RETRY_SECONDS = 0
    alert_threshold_set(user=user, threshold=48)
    balance_seen(user_id=user.pk, balance=45)
    assert low_balance_emails_send_due() == 0
    crossing = LowBalanceCrossing.objects.get()
    assert crossing.email_state == EmailState.PENDING and crossing.email_attempts == 1
    assert "ConnectionRefusedError" in crossing.email_last_error
    sink.start()
    try:
        assert low_balance_emails_send_due() == 1
        assert low_balance_emails_send_due() == 0
        [message] = sink.wait_for(1)
        assert message["Message-ID"] == crossing.message_id
    finally:
        sink.stop()
    crossing.refresh_from_db()
    assert crossing.email_state == EmailState.SENT and crossing.email_attempts == 2


def test_no_email_address_still_alerts_by_webhook_and_banner(flash_peer: Any) -> None:
    quiet = User.objects.create_user(username="auth0|quiet", email="", flash_user_id="f-quiet")
    LowBalanceAlert.objects.create(user=quiet, threshold=10)
    [crossing] = balance_seen(user_id=quiet.pk, balance=3)
    assert crossing.email_state == EmailState.NONE
    assert low_balance_emails_send_due() == 0
    assert WebhookEvent.objects.filter(type=EventType.CREDITS_LOW, user=quiet).exists()


def test_the_api_sets_reads_and_clears_the_threshold(
    user: Any, auth_headers: dict[str, Any], flash_peer: Any, make_key: Any
) -> None:
    client = Client()
    url = "/api/v1/billing/low-balance-alert"
    assert client.get(url, **auth_headers).json() == {
        "threshold": None,
        "below": False,
        "last_balance": None,
        "last_alert_at": None,
    }
    put = client.put(url, {"threshold": 20}, content_type="application/json", **auth_headers)
    assert put.status_code == 200, put.content
    assert put.json()["threshold"] == 20 and put.json()["last_balance"] == 50
    for bad in ({"threshold": 0}, {"threshold": "many"}, {}, {"threshold": 5, "email": "x"}):
        response = client.put(url, bad, content_type="application/json", **auth_headers)
        assert response.status_code == 400 and response.json()["code"], bad
    cleared = client.put(url, {"threshold": None}, content_type="application/json", **auth_headers)
    assert cleared.json()["threshold"] is None and not LowBalanceAlert.objects.exists()
    _, raw = make_key(user, scopes=["read", "generate"])
    refused = client.get(url, HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert refused.status_code == 403 and refused.json()["code"] == "scope_required"


def test_the_portal_form_sets_and_clears_it(user: Any, flash_peer: Any) -> None:
    portal = Client()
    portal.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    assert portal.post("/portal/billing/alert/", {"threshold": "30"}).status_code == 302
    assert LowBalanceAlert.objects.get(user=user).threshold == 30
    assert b'value="30"' in portal.get("/portal/billing/").content
    portal.post("/portal/billing/alert/", {"threshold": "lots"})
    assert LowBalanceAlert.objects.get(user=user).threshold == 30
    portal.post("/portal/billing/alert/", {"threshold": ""})
    assert not LowBalanceAlert.objects.exists()
