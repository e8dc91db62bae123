"""The admin's password login is throttled (django-axes) without letting anyone else's failures
lock a staff member out: failures lock one username from one address."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

LOGIN = "/admin/login/?next=/admin/"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def staff(db: Any) -> Any:
    from accounts.models import User

    return User.objects.create_user(
        username="ops", email="ops@example.com", password=PASSWORD, is_staff=True
    )


def _login(password: str, address: str, username: str = "ops") -> Any:
    return Client(REMOTE_ADDR=address).post(
        LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address
    )


def test_guessing_a_staff_password_is_stopped_but_the_staff_member_is_not(
    staff: Any, settings: Any
) -> None:
    attacker, office = "203.0.113.9", "198.51.100.7"
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        refused = _login(f"guess-{attempt}", attacker)
        assert refused.status_code in (200, 429)  # the form again, then the lockout
    # Locked: even the right password from the guessing address is refused now.
    locked = _login(PASSWORD, attacker)
    assert locked.status_code == 429
    assert "_auth_user_id" not in locked.wsgi_request.session
    # The staff member, from their own address, signs in as usual.
    signed_in = _login(PASSWORD, office)
    assert signed_in.status_code == 302 and signed_in["Location"] == "/admin/"
    # And the guessing address is locked for that username only.
    from accounts.models import User

    User.objects.create_user(username="other", password=PASSWORD, is_staff=True)
    assert _login(PASSWORD, attacker, username="other").status_code == 302
