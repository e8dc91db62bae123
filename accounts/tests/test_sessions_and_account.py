"""Login, profile, logout, logout-all, account deletion and export, as a client sees them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import GatewaySession, User
from accounts.signals import user_deleted, user_export

ME = "/api/v1/auth/me"


@pytest.fixture
def logged_in(db: Any, client: Any, auth0: Any, flash_peer: Any, bearer: Any) -> dict[str, Any]:
    jwt_token = auth0.token("auth0|gina", email="gina@example.com", name="Gina")
    response = client.post("/api/v1/auth/login", **bearer(jwt_token))
    assert response.status_code == 200, response.content
    return {"jwt": jwt_token, **response.json()}


def test_login_returns_a_session_that_works_as_bearer(
    client: Any, logged_in: dict[str, Any], bearer: Any
) -> None:
    assert logged_in["session_token"].startswith("tps_")
    assert logged_in["user"]["email"] == "gina@example.com"
    assert set(logged_in["user"]) == {
        "id",
        "email",
        "name",
        "plan",
        "tier",
        "flash_user_id",
        "has_hd_access",
    }
    session = GatewaySession.objects.get()
    assert logged_in["session_token"] not in session.token_digest  # only a digest is stored
    response = client.get(ME, **bearer(logged_in["session_token"]))
    assert response.status_code == 200
    assert response.json()["email"] == "gina@example.com"


def test_login_needs_an_auth0_token(client: Any, auth_headers: dict[str, str]) -> None:
    response = client.post("/api/v1/auth/login", **auth_headers)
    assert response.status_code == 401
    assert response.json()["code"] == "auth0_token_required"


def test_me_reports_the_balance_and_survives_flash_being_down(
    client: Any, user: Any, auth_headers: dict[str, str], flash_peer: Any
) -> None:
    body = client.get(ME, **auth_headers).json()
    assert body["balance"] == 50 and body["balance_available"] is True
    assert body["flash_user_id"] == user.flash_user_id
    assert body["has_hd_access"] is False and body["plan"] == "free"

    flash_peer.fail_next = 1
    response = client.get(ME, **auth_headers)
    assert response.status_code == 200
    assert response.json()["balance"] is None
    assert response.json()["balance_available"] is False


def test_me_writes_one_usage_record_and_sends_the_limit_headers(
    client: Any, user: Any, auth_headers: dict[str, str]
) -> None:
    from metering.models import UsageRecord
    from metering.services import flush_usage

    response = client.get(ME, **auth_headers)
    assert response.status_code == 200
    assert response["X-RateLimit-Limit"]
    flush_usage()
    record = UsageRecord.objects.get()
    assert (record.user_id, record.api_key_id) == (user.pk, None)
    assert (record.endpoint, record.method, record.status) == ("/api/v1/auth/me", "GET", 200)
    assert record.credits_spent == 0


def test_expired_session_token_is_401_json(client: Any, user: Any, bearer: Any) -> None:
    from accounts.services import session_create

    session, raw = session_create(user=user)
    assert client.get(ME, **bearer(raw)).status_code == 200
    GatewaySession.objects.filter(pk=session.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = client.get(ME, **bearer(raw))
    assert response.status_code == 401
    assert response["Content-Type"].startswith("application/json")
    assert response.json() == {
        "detail": "The session token is invalid, expired or revoked.",
        "code": "invalid_session",
    }
    assert client.post("/api/v1/auth/logout", **bearer(raw)).status_code == 401


def test_logout_revokes_only_the_presented_session(
    client: Any, user: Any, session_token: str, bearer: Any
) -> None:
    from accounts.services import session_create

    _, other = session_create(user=user)
    response = client.post("/api/v1/auth/logout", **bearer(session_token))
    assert response.status_code == 200 and response.json() == {"revoked": 1}
    revoked = client.get(ME, **bearer(session_token))
    assert revoked.status_code == 401 and revoked.json()["code"] == "invalid_session"
    assert client.get(ME, **bearer(other)).status_code == 200


def test_logout_all_revokes_every_session_and_is_idempotent(
    client: Any, user: Any, session_token: str, bearer: Any, logged_in: dict[str, Any]
) -> None:
    from accounts.services import session_create

    tokens = [session_create(user=user)[1] for _ in range(3)]
    response = client.post("/api/v1/auth/logout?all=true", **bearer(tokens[0]))
    assert response.json() == {"revoked": 4}  # the fixture's session and these three
    assert GatewaySession.objects.filter(user=user, revoked_at__isnull=True).count() == 0
    for token in tokens:
        assert client.get(ME, **bearer(token)).status_code == 401
    # Another user, holding an Auth0 token: logout-all ends her session, and repeating it is fine.
    first = client.post("/api/v1/auth/logout?all=true", **bearer(logged_in["jwt"]))
    assert first.status_code == 200 and first.json() == {"revoked": 1}
    again = client.post("/api/v1/auth/logout?all=true", **bearer(logged_in["jwt"]))
    assert again.status_code == 200 and again.json() == {"revoked": 0}
    assert client.get(ME, **bearer(logged_in["session_token"])).status_code == 401


def test_delete_me_revokes_everything_anonymises_and_tells_other_apps(
    client: Any, logged_in: dict[str, Any], bearer: Any
) -> None:
    gina = User.objects.get(auth0_sub="auth0|gina")
    told: list[int] = []

    def on_deleted(sender: Any, user: User, **kwargs: Any) -> None:
        told.append(user.pk)

    user_deleted.connect(on_deleted, dispatch_uid="test.on_deleted")
    try:
        response = client.delete(ME, **bearer(logged_in["session_token"]))
    finally:
        user_deleted.disconnect(dispatch_uid="test.on_deleted")

    assert response.status_code == 204
    assert told == [gina.pk]
    gina.refresh_from_db()
    assert gina.deleted_at is not None and gina.is_active is False
    assert (gina.email, gina.first_name, gina.last_name) == ("", "", "")
    assert gina.username == f"deleted-{gina.pk}" and not gina.has_usable_password()
    assert GatewaySession.objects.filter(user=gina, revoked_at__isnull=True).count() == 0

    assert gina.auth0_sub is None
    session = client.get(ME, **bearer(logged_in["session_token"]))
    assert session.status_code == 401 and session.json()["code"] == "invalid_session"


def test_delete_me_keeps_billing_records_on_the_anonymised_row_and_frees_the_subject(
    client: Any, logged_in: dict[str, Any], bearer: Any, auth0: Any, make_key: Any
) -> None:
    from metering.models import UsageRecord
    from metering.services import flush_usage
    from payments.models import CreditGrant, GrantSource, Payment, PaymentProvider

    gina = User.objects.get(auth0_sub="auth0|gina")
    flash_user_id = gina.flash_user_id
    _, raw_key = make_key(gina)
    assert client.get("/api/v1/keys", HTTP_X_API_KEY=raw_key).status_code == 200
    payment = Payment.objects.create(
        provider=PaymentProvider.STRIPE,
        reference="stripe:pi_gina",
        user=gina,
        amount_cents=499,
        currency="usd",
    )
    grant = CreditGrant.objects.create(
        key="stripe:pi_gina",
        user=gina,
        flash_user_id=flash_user_id,
        amount=100,
        transaction_type="stripe_purchase",
        description="[grant:stripe:pi_gina] 100 credits",
        source=GrantSource.STRIPE,
    )
    flush_usage()
    usage_before = set(UsageRecord.objects.filter(user=gina).values_list("pk", flat=True))
    assert len(usage_before) == 2  # the login and the key call

    assert client.delete(ME, **bearer(logged_in["session_token"])).status_code == 204

    gina.refresh_from_db()
    assert gina.auth0_sub is None and gina.username == f"deleted-{gina.pk}"
    assert (gina.email, gina.first_name, gina.last_name) == ("", "", "")
    assert gina.flash_user_id == flash_user_id  # kept for staff reconciliation
    flush_usage()
    assert usage_before <= set(UsageRecord.objects.filter(user=gina).values_list("pk", flat=True))
    assert Payment.objects.get(pk=payment.pk).user_id == gina.pk
    assert CreditGrant.objects.get(pk=grant.pk).user_id == gina.pk

    old_session = client.get(ME, **bearer(logged_in["session_token"]))
    assert old_session.status_code == 401 and old_session.json()["code"] == "invalid_session"
    old_key = client.get("/api/v1/keys", HTTP_X_API_KEY=raw_key)
    assert old_key.status_code == 401 and old_key.json()["code"] == "invalid_api_key"

    # The same Auth0 subject signs up afresh: a new, empty account, not the anonymised row.
    again = client.post(
        "/api/v1/auth/login",
        **bearer(auth0.token("auth0|gina", email="gina@example.com", name="Gina")),
    )
    assert again.status_code == 200, again.content
    fresh = User.objects.get(auth0_sub="auth0|gina")
    assert fresh.pk != gina.pk and again.json()["user"]["id"] == fresh.pk
    assert fresh.email == "gina@example.com" and fresh.deleted_at is None
    assert client.get(ME, **bearer(again.json()["session_token"])).status_code == 200
    keys = client.get("/api/v1/keys", **bearer(again.json()["session_token"])).json()
    assert keys == []
    assert not Payment.objects.filter(user=fresh).exists()
    assert not CreditGrant.objects.filter(user=fresh).exists()
    assert Payment.objects.get(pk=payment.pk).user_id == gina.pk


def test_a_failing_receiver_rolls_the_deletion_back(logged_in: dict[str, Any], bearer: Any) -> None:
    def broken(sender: Any, user: User, **kwargs: Any) -> None:
        from timepoint_billing.errors import ServiceUnavailable

        raise ServiceUnavailable("payments is down", code="payments_unavailable")

    user_deleted.connect(broken, dispatch_uid="test.broken")
    try:
        response = Client().delete(ME, **bearer(logged_in["session_token"]))
    finally:
        user_deleted.disconnect(dispatch_uid="test.broken")
    assert response.status_code == 503
    gina = User.objects.get(auth0_sub="auth0|gina")
    assert gina.deleted_at is None and gina.email == "gina@example.com"
    assert Client().get(ME, **bearer(logged_in["session_token"])).status_code == 200


def test_export_has_profile_sessions_and_other_apps_sections(
    client: Any, logged_in: dict[str, Any], bearer: Any
) -> None:
    def keys_section(sender: Any, user: User, **kwargs: Any) -> dict[str, Any]:
        return {"test_section": [{"owner": user.pk}]}

    user_export.connect(keys_section, dispatch_uid="test.keys_section")
    try:
        response = client.get("/api/v1/users/me/export", **bearer(logged_in["session_token"]))
    finally:
        user_export.disconnect(dispatch_uid="test.keys_section")

    assert response.status_code == 200
    body = response.json()
    gina = User.objects.get(auth0_sub="auth0|gina")
    assert body["profile"]["email"] == "gina@example.com"
    assert body["profile"]["auth0_sub"] == "auth0|gina"
    assert body["profile"]["flash_user_id"] == gina.flash_user_id
    assert [s["prefix"] for s in body["sessions"]] == [logged_in["session_token"][:10]]
    assert body["test_section"] == [{"owner": gina.pk}]
    assert logged_in["session_token"] not in response.content.decode()
    assert GatewaySession.objects.get().token_digest not in response.content.decode()


def test_deleted_user_sessions_are_refused(
    client: Any, user: Any, auth_headers: dict[str, str]
) -> None:
    from accounts.services import account_delete

    account_delete(user=user)
    response = client.get(ME, **auth_headers)
    assert response.status_code == 401


@pytest.mark.django_db
def test_session_tokens_are_stored_as_a_digest_keyed_with_the_server_secret(
    client: Any, user: Any, settings: Any, bearer: Any
) -> None:
    """A copy of the sessions table is not enough to check guessed tokens: the digest needs the
    server secret, so the same token under another secret does not authenticate."""
    import hashlib

    from accounts.services import session_create

    session, raw = session_create(user=user)
    assert session.token_digest != hashlib.sha256(raw.encode()).hexdigest()
    assert client.get(ME, **bearer(raw)).status_code == 200
    settings.API_KEY_DIGEST_SECRET = "another-server-secret-0123456789abcdef"
    refused = client.get(ME, **bearer(raw))
    assert refused.status_code == 401 and refused.json()["code"] == "invalid_session"


@pytest.mark.django_db
def test_a_session_stored_before_keyed_digests_still_works_and_is_rekeyed(
    client: Any, user: Any, bearer: Any
) -> None:
    import hashlib

    from accounts.services import token_digest

    raw = "tps_" + "legacy-session-token-0123456789abcdefghij"
    legacy = GatewaySession.objects.create(
        user=user,
        token_digest=hashlib.sha256(raw.encode()).hexdigest(),
        prefix=raw[:10],
        expires_at=timezone.now() + timedelta(days=1),
    )
    assert client.get(ME, **bearer(raw)).status_code == 200
    legacy.refresh_from_db()
    assert legacy.token_digest == token_digest(raw)  # re-keyed on first use
    assert client.get(ME, **bearer(raw)).status_code == 200
