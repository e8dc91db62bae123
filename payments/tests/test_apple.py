"""Apple in-app purchases: transactions signed by a test-made chain with Apple's OIDs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from accounts.models import User
from accounts.services import session_create
from payments.models import AppleNotification, CreditGrant, GrantState, Payment
from payments.tests.apple import AppleChain

PRODUCT = "com.timepointai.credits100"


@pytest.fixture(scope="module")
def chain() -> AppleChain:
    return AppleChain()


@pytest.fixture(autouse=True)
def apple_settings(settings: Any, tmp_path: Path, chain: AppleChain) -> None:
    root = tmp_path / "AppleRootCA-test.cer"
    root.write_bytes(chain.root_der())
    settings.APPLE_ROOT_CERT_PATHS = [str(root)]
    settings.APPLE_BUNDLE_ID = "com.timepointai.app"
    settings.APPLE_ENVIRONMENT = "Sandbox"
    settings.APPLE_APP_APPLE_ID = 0
    settings.APPLE_PRODUCT_CREDITS = {PRODUCT: 100}


def _verify(client: Client, headers: dict, signed: str) -> Any:
    return client.post(
        "/api/v1/billing/verify-receipt",
        {"signed_transaction": signed},
        content_type="application/json",
        **headers,
    )


def test_signed_transaction_grants_once(
    client: Client, auth_headers: dict, user: Any, flash_peer: Any, chain: AppleChain
):
    signed = chain.transaction()

    first = _verify(client, auth_headers, signed)
    second = _verify(client, auth_headers, signed)

    assert first.status_code == 200, first.content
    assert second.status_code == 200
    assert first.json()["credits"] == 100
    assert first.json()["transaction_key"].startswith("apple:")
    call_command("run_grants", "--once")
    grant = CreditGrant.objects.get()
    assert grant.state == GrantState.SENT and grant.transaction_type == "apple_iap"
    rows = [r for r in flash_peer.ledger_for(user.flash_user_id) if r["amount"] > 0]
    assert len(rows) == 1 and rows[0]["type"] == "apple_iap"
    assert flash_peer.user_balance(user.flash_user_id) == 150


def test_transaction_from_another_user_is_409(
    client: Client, auth_headers: dict, user: Any, flash_peer: Any, chain: AppleChain
):
    signed = chain.transaction()
    assert _verify(client, auth_headers, signed).status_code == 200
    sub = "auth0|someone-else"
    other = User.objects.create_user(
        username=sub, auth0_sub=sub, flash_user_id=flash_peer.add_user(sub)
    )
    _, token = session_create(user=other)

    response = _verify(client, {"HTTP_AUTHORIZATION": f"Bearer {token}"}, signed)

    assert response.status_code == 409
    assert response.json()["code"] == "transaction_already_claimed"
    assert CreditGrant.objects.count() == 1 and CreditGrant.objects.get().user == user


@pytest.mark.parametrize(
    "case", ["wrong_root", "wrong_bundle", "wrong_environment", "expired", "garbage"]
)
def test_bad_transactions_are_400(
    client: Client, auth_headers: dict, user: Any, chain: AppleChain, case: str
):
    if case == "wrong_root":
        signed = AppleChain().transaction()
    elif case == "wrong_bundle":
        signed = chain.transaction(bundleId="com.example.other")
    elif case == "wrong_environment":
        signed = chain.transaction(environment="Production")
    elif case == "expired":
        signed = AppleChain(leaf_expired=True).transaction()
    else:
        signed = "not.a.jws"
    response = _verify(client, auth_headers, signed)

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_apple_signature"
    assert CreditGrant.objects.count() == 0


def test_expired_leaf_is_400_even_with_a_trusted_root(
    client: Client, auth_headers: dict, user: Any, settings: Any, tmp_path: Path
):
    expired = AppleChain(leaf_expired=True)
    root = tmp_path / "expired-root.cer"
    root.write_bytes(expired.root_der())
    settings.APPLE_ROOT_CERT_PATHS = [str(root)]

    response = _verify(client, auth_headers, expired.transaction())

    assert response.status_code == 400
    assert CreditGrant.objects.count() == 0


def test_unknown_product_is_400(client: Client, auth_headers: dict, user: Any, chain: AppleChain):
    response = _verify(client, auth_headers, chain.transaction(productId="com.example.gems"))
    assert response.status_code == 400 and response.json()["code"] == "unknown_product"


@pytest.mark.parametrize("environment", ["Xcode", "LocalTesting"])
def test_unsigned_environments_are_refused(
    client: Client, auth_headers: dict, user: Any, chain: AppleChain, settings: Any, environment
):
    settings.APPLE_ENVIRONMENT = environment
    response = _verify(client, auth_headers, chain.transaction(environment=environment))
    assert response.status_code == 503
    assert response.json()["code"] == "apple_unconfigured"
    assert CreditGrant.objects.count() == 0


def test_refund_notification_is_recorded_once(
    client: Client, auth_headers: dict, user: Any, flash_peer: Any, chain: AppleChain
):
    signed = chain.transaction()
    assert _verify(client, auth_headers, signed).status_code == 200
    notification = chain.notification("REFUND", signed)

    for _ in range(2):
        response = client.post(
            "/api/v1/billing/webhooks/apple",
            {"signedPayload": notification},
            content_type="application/json",
        )
        assert response.status_code == 200

    assert AppleNotification.objects.count() == 1
    payment = Payment.objects.get()
    assert payment.status == "refunded" and payment.needs_review
    # Credits are never taken back silently: the grant stands until staff decide.
    assert CreditGrant.objects.get().amount == 100


def test_forged_notification_is_400(client: Client, db: Any, chain: AppleChain):
    forger = AppleChain()
    response = client.post(
        "/api/v1/billing/webhooks/apple",
        {"signedPayload": forger.notification("REFUND", forger.transaction())},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert AppleNotification.objects.count() == 0


@pytest.mark.parametrize("app_apple_id", [0, None])
def test_production_without_an_app_apple_id_is_503_not_500(
    client: Client, auth_headers: dict, user: Any, chain: AppleChain, settings: Any, app_apple_id
):
    settings.APPLE_ENVIRONMENT = "Production"
    settings.APPLE_APP_APPLE_ID = app_apple_id  # Apple's verifier refuses Production without it
    signed = chain.transaction(environment="Production")

    response = _verify(client, auth_headers, signed)
    webhook = client.post(
        "/api/v1/billing/webhooks/apple",
        {"signedPayload": chain.notification("REFUND", signed)},
        content_type="application/json",
    )

    for answer in (response, webhook):
        assert answer.status_code == 503, answer.content
        assert answer.json() == {
            "detail": "In-app purchases are not configured.",
            "code": "apple_unconfigured",
        }
        assert answer["Retry-After"]
    assert CreditGrant.objects.count() == 0 and AppleNotification.objects.count() == 0


def test_unreadable_root_certificate_is_503(
    client: Client, auth_headers: dict, user: Any, chain: AppleChain, settings: Any, tmp_path
):
    settings.APPLE_ROOT_CERT_PATHS = [str(tmp_path / "missing.cer")]
    response = _verify(client, auth_headers, chain.transaction())
    assert response.status_code == 503 and response.json()["code"] == "apple_unconfigured"


# --- appAccountToken: a purchase belongs to the account the app bound it to (issue 14)


def _token(client: Client, headers: dict) -> str:
    response = client.get("/api/v1/billing/apple/account-token", **headers)
    assert response.status_code == 200, response.content
    return str(response.json()["app_account_token"])


def _someone_else(flash_peer: Any) -> tuple[Any, dict]:
    sub = "auth0|someone-else"
    other = User.objects.create_user(
        username=sub, auth0_sub=sub, flash_user_id=flash_peer.add_user(sub)
    )
    _, token = session_create(user=other)
    return other, {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def test_account_token_is_stable_and_per_user(
    client: Client, auth_headers: dict, user: Any, flash_peer: Any
):
    import uuid

    mine = _token(client, auth_headers)
    assert _token(client, auth_headers) == mine
    assert uuid.UUID(mine).version == 4
    _, other_headers = _someone_else(flash_peer)
    assert _token(client, other_headers) != mine
    assert client.get("/api/v1/billing/apple/account-token").status_code == 401


def test_transaction_bound_to_the_presenting_user_is_credited(
    client: Client, auth_headers: dict, user: Any, flash_peer: Any, chain: AppleChain
):
    signed = chain.transaction(appAccountToken=_token(client, auth_headers))
    response = _verify(client, auth_headers, signed)
    assert response.status_code == 200, response.content
    assert CreditGrant.objects.get().user == user


def test_transaction_bound_to_another_user_is_409_whoever_presents_it_first(
    client: Client,
    auth_headers: dict,
    user: Any,
    flash_peer: Any,
    chain: AppleChain,
):
    """Bob's purchase, leaked to Ada: Ada presenting it first gets 409 and staff see a log
    line; Bob is still credited when he presents it."""
    bob, bob_headers = _someone_else(flash_peer)
    signed = chain.transaction(appAccountToken=_token(client, bob_headers))

    import logging

    seen: list[Any] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.msg)

    handler = Keep(logging.WARNING)
    logging.getLogger("timepoint.payments").addHandler(handler)
    try:
        stolen = _verify(client, auth_headers, signed)
    finally:
        logging.getLogger("timepoint.payments").removeHandler(handler)

    assert stolen.status_code == 409 and stolen.json()["code"] == "apple_account_mismatch"
    assert CreditGrant.objects.count() == 0 and Payment.objects.count() == 0
    (line,) = [m for m in seen if "apple_transaction_wrong_account" in str(m)]
    assert line["presented_by"] == user.pk and line["token_owner"] == bob.pk

    assert _verify(client, bob_headers, signed).status_code == 200
    assert CreditGrant.objects.get().user == bob


def test_transaction_with_an_unknown_token_is_409(
    client: Client, auth_headers: dict, user: Any, chain: AppleChain
):
    import uuid

    signed = chain.transaction(appAccountToken=str(uuid.uuid4()))
    response = _verify(client, auth_headers, signed)
    assert response.status_code == 409 and response.json()["code"] == "apple_account_mismatch"
    assert CreditGrant.objects.count() == 0


def test_duplicate_bound_transaction_is_credited_once(
    client: Client, auth_headers: dict, user: Any, flash_peer: Any, chain: AppleChain
):
    signed = chain.transaction(appAccountToken=_token(client, auth_headers))
    for _ in range(3):
        assert _verify(client, auth_headers, signed).status_code == 200
    call_command("run_grants", "--once")
    call_command("run_grants", "--once")
    rows = [r for r in flash_peer.ledger_for(user.flash_user_id) if r["type"] == "apple_iap"]
    assert len(rows) == 1 and flash_peer.user_balance(user.flash_user_id) == 150


@pytest.mark.parametrize("case", ["wrong_bundle", "wrong_environment"])
def test_bound_transaction_for_another_app_or_environment_is_400(
    client: Client, auth_headers: dict, user: Any, chain: AppleChain, case: str
):
    token = _token(client, auth_headers)
    overrides = (
        {"bundleId": "com.example.other"}
        if case == "wrong_bundle"
        else {"environment": "Production"}
    )
    response = _verify(client, auth_headers, chain.transaction(appAccountToken=token, **overrides))
    assert response.status_code == 400 and response.json()["code"] == "invalid_apple_signature"
    assert CreditGrant.objects.count() == 0


def test_revoke_notification_is_recorded_for_staff_once(
    client: Client, auth_headers: dict, user: Any, chain: AppleChain
):
    signed = chain.transaction(appAccountToken=_token(client, auth_headers))
    assert _verify(client, auth_headers, signed).status_code == 200
    notification = chain.notification("REVOKE", signed)
    for _ in range(2):
        response = client.post(
            "/api/v1/billing/webhooks/apple",
            {"signedPayload": notification},
            content_type="application/json",
        )
        assert response.status_code == 200
    assert AppleNotification.objects.get().type == "REVOKE"
    payment = Payment.objects.get()
    assert payment.needs_review and payment.status == "refunded"
    assert CreditGrant.objects.get().amount == 100  # never clawed back silently
