"""The development-only local sign-in: a real user, resolved in Flash, signed into the portal;
absent (404 JSON, no button, refused at start-up) in production."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from accounts.models import User
from timepoint_billing.tests.test_foundation import _manage_check, _production_env


def _signin(client: Client, **data: str) -> Any:
    page = client.get("/portal/login/")
    assert b"Local sign-in (development)" in page.content
    token = page.cookies["csrftoken"].value
    return client.post("/portal/login/local/", {"csrfmiddlewaretoken": token, **data})


@pytest.mark.django_db
def test_local_signin_creates_a_user_with_a_flash_account(flash_peer: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    done = _signin(client, email="Grace@Example.com", name="Grace", next="/portal/keys/")
    assert done.status_code == 302
    assert done["Location"] == "/portal/keys/"

    user = User.objects.get(auth0_sub="local|grace@example.com")
    assert user.email == "grace@example.com"
    assert user.flash_user_id
    assert flash_peer.users[user.flash_user_id].email == "grace@example.com"
    keys = client.get("/portal/keys/")
    assert keys.status_code == 200
    assert b"grace@example.com" in keys.content

    # The same email again finds the same user (and the same Flash account).
    again = _signin(Client(enforce_csrf_checks=True), email="grace@example.com", name="G")
    assert again.status_code == 302 and again["Location"] == "/portal/"
    assert User.objects.filter(auth0_sub__startswith="local|").count() == 1
    assert len(flash_peer.users) == 1


@pytest.mark.django_db
def test_local_signin_is_post_only_csrf_checked_and_validated(flash_peer: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    no_token = client.post("/portal/login/local/", {"email": "a@example.com", "name": "A"})
    assert no_token.status_code == 403
    got = client.get("/portal/login/local/")
    assert got.status_code == 405
    assert got.json()["code"] == "method_not_allowed"
    bad = _signin(client, email="not-an-email", name="A")
    assert bad.status_code == 400
    assert not User.objects.exists()


@pytest.mark.django_db
def test_local_signin_with_flash_down_signs_nobody_in(flash_peer: Any, settings: Any) -> None:
    settings.FLASH_URL = "http://127.0.0.1:9"  # nothing listens
    client = Client(enforce_csrf_checks=True)
    answer = _signin(client, email="h@example.com", name="H")
    assert answer.status_code == 503
    assert not User.objects.exists()
    assert client.get("/portal/keys/").status_code == 302


@pytest.mark.django_db
def test_without_local_signin_the_route_is_404_json_and_the_button_absent(
    settings: Any, flash_peer: Any
) -> None:
    settings.LOCAL_SIGNIN = False
    client = Client()
    assert b"Local sign-in" not in client.get("/portal/login/").content
    answer = client.post("/portal/login/local/", {"email": "a@example.com", "name": "A"})
    assert answer.status_code == 404
    assert answer.json() == {"detail": "Not found.", "code": "not_found"}
    assert not User.objects.exists()


def test_production_refuses_to_start_with_local_signin_on(tmp_path: Path) -> None:
    assert _manage_check(_production_env(tmp_path)).returncode == 0
    result = _manage_check(_production_env(tmp_path, LOCAL_SIGNIN="1"))
    assert result.returncode != 0
    assert "LOCAL_SIGNIN must be off in production" in result.stderr
