"""The billing dashboard in the admin: staff only, every panel fed from the apps' selectors."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone


@pytest.fixture
def staff_client(db: Any) -> Client:
    from accounts.models import User

    staff = User.objects.create_user(username="ops", password="pw-for-tests-only", is_staff=True)
    staff.groups.add(Group.objects.get(name="support"))  # read-only staff see the dashboard too
    client = Client()
    client.force_login(staff, backend="django.contrib.auth.backends.ModelBackend")
    return client


def _seed(user: Any) -> None:
    from apikeys.services import key_create
    from metering import services as metering
    from payments.models import CreditGrant, GrantState, Payment

    now = timezone.now()
    Payment.objects.create(
        provider="stripe", reference="stripe:in_dash", user=user, amount_cents=1999, currency="usd"
    )
    Payment.objects.create(
        provider="stripe",
        reference="stripe:in_disputed",
        user=user,
        amount_cents=499,
        currency="usd",
        disputed=True,
        dispute_reason="fraudulent",
        needs_review=True,
    )
    for grant_key, state in (
        ("stripe:in_dash", GrantState.SENT),
        ("apple:2000001", "needs_attention"),
    ):
        CreditGrant.objects.create(
            key=grant_key,
            user=user,
            flash_user_id=user.flash_user_id,
            amount=500,
            transaction_type="stripe_purchase",
            description="500 credits",
            source="stripe",
            state=state,
            sent_at=now if state == GrantState.SENT else None,
            last_error="Flash answered 500" if state != GrantState.SENT else "",
        )
    key, _ = key_create(user=user, name="dashboard key", mode="live")
    metering.usage_buffer_discard()
    for index in range(3):
        metering.record_usage(
            request_id=f"dash-{index}",
            user_id=user.pk,
            api_key_id=key.pk,
            endpoint="/api/v1/generate",
            method="POST",
            status=200,
            credits_spent=5,
            response_time_ms=9.0,
        )
    metering.flush_usage()
    metering.usage_rollup(days=[timezone.localdate()])


def test_dashboard_is_for_staff_only(user: Any) -> None:
    anonymous = Client().get("/admin/dashboard/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/admin/login/")
    member = Client()
    member.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    assert member.get("/admin/dashboard/").status_code == 302


def test_dashboard_shows_every_panel_with_data(
    staff_client: Client, user: Any, settings: Any
) -> None:
    settings.METERING_BACKGROUND_FLUSH = False
    _seed(user)
    page = staff_client.get("/admin/dashboard/").content.decode()
    assert '<span class="dash-value" id="revenue-total">$24.98</span>' in page
    assert 'Credits granted</span><span class="dash-value">500</span>' in page
    assert 'Credits spent</span><span class="dash-value">15</span>' in page
    assert 'id="attention-count">1</span>' in page
    assert "apple:2000001" in page and "Flash answered 500" in page
    assert "stripe:in_disputed" in page and "disputed" in page
    assert "dashboard key" in page  # top keys
    label = timezone.localdate().strftime("%b %-d")
    assert f"<title>{label}: 2498 revenue (cents)</title>" in page


def test_admin_index_links_to_the_dashboard(staff_client: Client) -> None:
    page = staff_client.get("/admin/").content.decode()
    assert 'href="/admin/dashboard/"' in page
