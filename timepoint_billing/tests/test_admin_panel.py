"""The billing panel's staff actions, through the admin as staff use it (and the admin log)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry

from accounts.models import User
from accounts.tests.staff import staff_signed_in


@pytest.fixture(autouse=True)
def _quiet_worker(settings: Any) -> None:
    settings.METERING_BACKGROUND_FLUSH = False


def _needs_attention_grant(user: User) -> Any:
    from payments.models import CreditGrant

    return CreditGrant.objects.create(
        key="apple:stuck-1",
        user=user,
        flash_user_id=user.flash_user_id,
        amount=40,
        transaction_type="apple_iap",
        description="[grant:apple:stuck-1] 40 credits",
        source="apple",
        state="needs_attention",
        last_error="Flash answered 500",
    )


@pytest.mark.django_db
def test_manual_grant_goes_through_once_even_when_posted_twice(user: User, flash_peer: Any) -> None:
    from payments.models import CreditGrant
    from payments.services import grants_deliver_due

    client, staff = staff_signed_in("billing")
    form = client.get("/admin/payments/creditgrant/manual/")
    assert form.status_code == 200
    data = {
        "user": user.email,
        "amount": "25",
        "reason": "Goodwill after an outage",
        "request_key": str(uuid.uuid4()),
    }
    first = client.post("/admin/payments/creditgrant/manual/", data)
    second = client.post("/admin/payments/creditgrant/manual/", data)  # a double click
    assert first.status_code == second.status_code == 302
    grant = CreditGrant.objects.get(source="manual")
    assert grant.created_by == staff and grant.reason == "Goodwill after an outage"
    grants_deliver_due()
    grants_deliver_due()
    assert flash_peer.user_balance(user.flash_user_id) == 75  # 50 signup + 25, once
    assert LogEntry.objects.filter(user=staff, object_id=str(grant.pk)).exists()


@pytest.mark.django_db
def test_support_staff_cannot_grant_or_retry(user: User) -> None:
    client, _ = staff_signed_in("support")
    assert client.get("/admin/payments/creditgrant/manual/").status_code == 403
    listing = client.get("/admin/payments/creditgrant/")
    assert listing.status_code == 200
    assert b"Manual grant" not in listing.content
    assert b'value="retry"' not in listing.content


@pytest.mark.django_db
def test_retry_puts_a_stuck_grant_through(user: User, flash_peer: Any) -> None:
    from payments.services import grants_deliver_due

    grant = _needs_attention_grant(user)
    client, staff = staff_signed_in("billing")
    response = client.post(
        "/admin/payments/creditgrant/",
        {"action": "retry", "_selected_action": [grant.pk]},
        follow=True,
    )
    assert b"1 grant(s) queued again" in response.content
    grants_deliver_due()
    grant.refresh_from_db()
    assert grant.state == "sent"
    assert flash_peer.user_balance(user.flash_user_id) == 90
    assert LogEntry.objects.filter(user=staff, change_message__contains="Retried").exists()


@pytest.mark.django_db
def test_mark_resolved_takes_a_grant_out_of_the_queue_for_good(user: User, flash_peer: Any) -> None:
    from payments.services import grants_deliver_due

    grant = _needs_attention_grant(user)
    client, staff = staff_signed_in("billing")
    response = client.post(
        "/admin/payments/creditgrant/",
        {"action": "mark_resolved", "_selected_action": [grant.pk]},
        follow=True,
    )
    assert b"1 grant(s) marked resolved" in response.content
    grants_deliver_due()
    grant.refresh_from_db()
    assert grant.state == "resolved"
    assert staff.username in grant.last_error
    assert flash_peer.requests_to("/api/v1/credits/admin/grant") == []
    assert LogEntry.objects.filter(user=staff, change_message__contains="resolved").exists()


@pytest.mark.django_db
def test_user_page_shows_the_live_flash_balance(user: User, flash_peer: Any) -> None:
    client, _ = staff_signed_in("support")
    page = client.get(f"/admin/accounts/user/{user.pk}/change/").content.decode()
    assert "50 credits (earned 50, spent 0)" in page
    assert f"/admin/apikeys/apikey/?user__id__exact={user.pk}" in page
    keys = client.get(f"/admin/apikeys/apikey/?user__id__exact={user.pk}")
    assert keys.status_code == 200


@pytest.mark.django_db
def test_staff_revoke_a_key_and_review_a_dispute(user: User) -> None:
    from apikeys.models import APIKey
    from apikeys.services import key_create
    from payments.models import Payment

    key, _ = key_create(user=user, name="leaked", mode="live")
    payment = Payment.objects.create(
        provider="stripe", reference="stripe:pi_d", user=user, amount_cents=499, needs_review=True
    )
    client, _ = staff_signed_in("billing")
    client.post("/admin/apikeys/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    assert APIKey.objects.get(pk=key.pk).revoked_at is not None
    client.post(
        "/admin/payments/payment/", {"action": "mark_reviewed", "_selected_action": [payment.pk]}
    )
    payment.refresh_from_db()
    assert payment.needs_review is False


@pytest.mark.django_db
def test_usage_list_charts_requests_errors_and_credits_for_the_filter(user: User) -> None:
    from datetime import date

    from metering.models import UsageDaily

    for day, requests, errors in ((date(2026, 11, 20), 7, 1), (date(2026, 11, 21), 3, 0)):
        UsageDaily.objects.create(
            day=day,
            user=user,
            endpoint="/api/v1/browse",
            method="GET",
            requests=requests,
            errors=errors,
            credits_spent=5,
            p50_ms=1,
            p95_ms=2,
        )
    client, _ = staff_signed_in("support")
    page = client.get(f"/admin/metering/usagedaily/?user__id__exact={user.pk}")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="usage-chart"' in html
    assert "Nov 20: 7 requests" in html and "Nov 20: 1 errors" in html
    assert "Nov 21: 3 requests" in html and "Nov 21: 5 credits" in html
