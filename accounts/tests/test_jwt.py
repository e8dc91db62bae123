"""Auth0 access tokens: every rejection is a 401 with a specific code and WWW-Authenticate."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from accounts.models import User

ME = "/api/v1/auth/me"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _assert_rejected(response: Any, code: str) -> None:
    assert response.status_code == 401, response.content
    assert response.json()["code"] == code
    assert set(response.json()) == {"detail", "code"}
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
def test_valid_token_creates_the_user_and_resolves_it_in_flash(
    client: Any, auth0: Any, flash_peer: Any, bearer: Any
) -> None:
    token = auth0.token("auth0|alice", email="alice@example.com", name="Alice Liddell")

    response = client.get(ME, **bearer(token))

    assert response.status_code == 200, response.content
    body = response.json()
    user = User.objects.get(auth0_sub="auth0|alice")
    assert body["email"] == "alice@example.com"
    assert body["name"] == "Alice Liddell"
    assert body["flash_user_id"] == user.flash_user_id != ""
    assert body["balance"] == 50 and body["balance_available"] is True
    assert len(flash_peer.requests_to("/api/v1/users/resolve")) == 1
    assert auth0.userinfo_requests == []  # the token carried the profile


def test_alg_none_is_rejected(client: Any, auth0: Any, bearer: Any) -> None:
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': auth0.keys[0].kid})}."
    unsigned += f"{_b64(auth0.claims())}."
    _assert_rejected(client.get(ME, **bearer(unsigned)), "invalid_algorithm")


def test_hs256_signed_with_the_public_key_is_rejected(client: Any, auth0: Any, bearer: Any) -> None:
    public_pem = (
        auth0.keys[0]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = _b64({"alg": "HS256", "typ": "JWT", "kid": auth0.keys[0].kid})
    payload = _b64(auth0.claims())
    import hashlib
    import hmac

    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    _assert_rejected(client.get(ME, **bearer(forged)), "invalid_algorithm")


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"exp": int(time.time()) - 60}, "token_expired"),
        # Far ahead: the claims are built at collection, and a long run must not reach them.
        ({"nbf": int(time.time()) + 10 * 365 * 86400}, "token_not_yet_valid"),
        ({"aud": "https://someone-else.example"}, "invalid_audience"),
        ({"iss": "https://evil.example/"}, "invalid_issuer"),
        ({"exp": None}, "missing_claim"),
        ({"iat": None}, "missing_claim"),
        ({"sub": None}, "missing_claim"),
        ({"aud": None}, "missing_claim"),
        ({"iss": None}, "missing_claim"),
        ({"sub": ""}, "missing_claim"),
    ],
)
def test_invalid_claims_are_rejected(
    client: Any, auth0: Any, bearer: Any, claims: dict[str, Any], code: str
) -> None:
    _assert_rejected(client.get(ME, **bearer(auth0.token(**claims))), code)


def test_a_small_clock_skew_is_tolerated_but_not_more(
    db: Any, client: Any, auth0: Any, flash_peer: Any, bearer: Any
) -> None:
    slightly_expired = auth0.token(exp=int(time.time()) - 2, email="a@example.com", name="A")
    assert client.get(ME, **bearer(slightly_expired)).status_code == 200
    expired = auth0.token(exp=int(time.time()) - 30)
    _assert_rejected(client.get(ME, **bearer(expired)), "token_expired")


def test_unknown_kid_and_foreign_key_are_rejected(client: Any, auth0: Any, bearer: Any) -> None:
    from accounts.tests.auth0_server import SigningKey

    stranger = SigningKey(slot=7)  # never published
    _assert_rejected(client.get(ME, **bearer(auth0.token(key=stranger))), "unknown_key")
    impostor = SigningKey(kid=auth0.keys[0].kid, slot=8)  # a published kid, the wrong key
    _assert_rejected(client.get(ME, **bearer(auth0.token(key=impostor))), "invalid_signature")


def test_garbage_and_missing_kid_are_rejected(client: Any, auth0: Any, bearer: Any) -> None:
    _assert_rejected(client.get(ME, **bearer("not-a-jwt")), "malformed_token")
    no_kid = jwt.encode(auth0.claims(), auth0.keys[0].private, algorithm="RS256")
    _assert_rejected(client.get(ME, **bearer(no_kid)), "unknown_key")


def test_no_credentials_is_401_with_www_authenticate(db: Any, client: Any) -> None:
    response = client.get(ME)
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
def test_missing_profile_comes_from_userinfo_and_its_failure_is_not_fatal(
    client: Any, auth0: Any, flash_peer: Any, bearer: Any
) -> None:
    auth0.userinfo = {"sub": "auth0|bob", "email": "bob@example.com", "name": "Bob"}
    token = auth0.token("auth0|bob")
    assert client.get(ME, **bearer(token)).status_code == 200
    assert auth0.userinfo_requests == [f"Bearer {token}"]
    bob = User.objects.get(auth0_sub="auth0|bob")
    assert (bob.email, bob.first_name) == ("bob@example.com", "Bob")

    auth0.userinfo = None  # /userinfo answers 500
    assert client.get(ME, **bearer(auth0.token("auth0|carol"))).status_code == 200
    assert User.objects.get(auth0_sub="auth0|carol").email == ""


@pytest.mark.django_db
def test_the_hot_path_costs_one_query_and_no_jwks_fetch(
    client: Any, auth0: Any, flash_peer: Any, bearer: Any, django_assert_max_num_queries: Any
) -> None:
    from django.test import RequestFactory

    from accounts.authentication import authenticate

    token = auth0.token(email="a@example.com", name="A")
    assert client.get(ME, **bearer(token)).status_code == 200
    fetches = auth0.jwks_requests
    request = RequestFactory().get(ME, **bearer(token))
    with django_assert_max_num_queries(1):
        caller = authenticate(request)
    assert caller.kind == "jwt" and caller.user.auth0_sub == "auth0|alice"
    assert auth0.jwks_requests == fetches


@pytest.mark.django_db
def test_a_validly_signed_token_over_8_kb_is_refused_unparsed(
    client: Any, auth0: Any, flash_peer: Any, bearer: Any
) -> None:
    """No Auth0 token is that long; refusing it costs no base64, JSON or signature work."""
    token = auth0.token("auth0|alice", email="alice@example.com", padding="x" * 16_000)
    assert len(token) > 16_000
    response = client.get(ME, **bearer(token))
    assert response.status_code == 401, response.content
    assert response.json()["code"] == "credential_too_long"
    assert not User.objects.filter(auth0_sub="auth0|alice").exists()
    assert auth0.jwks_requests == 0  # not even the signing key was fetched
