"""A user without a Flash id (made by staff, or whose first resolve failed) is resolved at the
first credit call; a refusal for good says so instead of "retry shortly"; staff can resolve from
the admin."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from accounts.models import User
from devpeers.flash import FlashPeer

pytestmark = pytest.mark.django_db(transaction=True)


class RefusingFlash(FlashPeer):
    """Flash refusing every account resolve with a validation error (final, not transient)."""

    async def _resolve(self, req: Any) -> Any:
        from devpeers.flash import _error

        return _error(422, "email rejected")


@pytest.fixture
def staff_made(db: Any) -> User:
    return User.objects.create_user(username="made-by-staff", email="sam@example.com")


def test_first_credit_call_resolves_a_user_without_a_flash_id(
    client: Client, flash_peer: Any, clockchain_peer: Any, staff_made: User, make_key: Any
) -> None:
    _, raw = make_key(staff_made)
    response = client.get("/api/v1/credits/balance", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 200, response.content
    assert response.json()["balance"] == 50  # Flash's signup credits for the new account
    staff_made.refresh_from_db()
    assert staff_made.flash_user_id
    assert len(flash_peer.requests_to("/api/v1/users/resolve")) == 1
    # Once stored, no second resolve.
    assert client.get("/api/v1/credits/balance", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code
    assert len(flash_peer.requests_to("/api/v1/users/resolve")) == 1


def test_a_refusal_for_good_is_a_clear_code_not_retry_shortly(
    client: Client,
    flash_peer: Any,
    _flash_server: Any,
    clockchain_peer: Any,
    staff_made: User,
    make_key: Any,
) -> None:
    refusing = RefusingFlash(
        service_key=flash_peer.service_key,
        admin_key=flash_peer.admin_key,
        signing_secret=flash_peer.signing_secret,
    )
    _flash_server[0].target = refusing
    _, raw = make_key(staff_made)
    for path in ("/api/v1/credits/balance",):
        response = client.get(path, HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert response.status_code == 409, response.content
        body = response.json()
        assert body["code"] == "credit_account_refused"
        assert "retry" not in body["detail"].lower() or "will not help" in body["detail"]
        assert "Retry-After" not in response
    staff_made.refresh_from_db()
    assert not staff_made.flash_user_id


def test_staff_resolve_the_flash_account_from_the_admin(flash_peer: Any, staff_made: User) -> None:
    admin = User.objects.create_superuser(username="root", email="r@example.com", password="pw")
    client = Client()
    client.force_login(admin)
    response = client.post(
        "/admin/accounts/user/",
        {"action": "resolve_flash_account", "_selected_action": [str(staff_made.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert "1 user(s) resolved in Flash" in response.content.decode()
    staff_made.refresh_from_db()
    assert staff_made.flash_user_id
