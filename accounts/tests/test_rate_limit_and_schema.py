"""Auth-failure limit per client address; the OpenAPI document; staff browser login."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

ME = "/api/v1/auth/me"


def test_repeated_auth_failures_slow_the_failing_caller_never_a_valid_credential(
    db: Any, client: Any, settings: Any, user: Any, session_token: str, bearer: Any
) -> None:
    settings.AUTH_FAILURE_LIMIT_PER_MINUTE = 5
    for _ in range(5):
        response = client.get(ME, **bearer("tps_wrong"), REMOTE_ADDR="10.0.0.9")
        assert response.status_code == 401
    blocked = client.get(ME, **bearer("tps_wrong"), REMOTE_ADDR="10.0.0.9")
    assert blocked.status_code == 429
    assert blocked.json()["code"] == "too_many_auth_failures"
    assert 1 <= int(blocked["Retry-After"]) <= 60
    # The failing credential is refused from any address (without another lookup) ...
    assert client.get(ME, **bearer("tps_wrong"), REMOTE_ADDR="10.0.0.77").status_code == 429
    # ... and the failing address's further failures too, whatever the credential ...
    assert client.get(ME, **bearer("tps_other"), REMOTE_ADDR="10.0.0.9").status_code == 429
    # ... but a valid credential is never refused for other callers' failures, even from the
    # same address (behind a proxy every client may share one).
    for _ in range(10):
        assert client.get(ME, **bearer(session_token), REMOTE_ADDR="10.0.0.9").status_code == 200
        assert client.get(ME, **bearer(session_token), REMOTE_ADDR="10.0.0.10").status_code == 200


def test_an_over_long_credential_is_refused_before_any_parsing(
    db: Any, client: Any, bearer: Any
) -> None:
    response = client.get(ME, **bearer("e" + "x" * 16_384))
    assert response.status_code == 401
    assert response.json()["code"] == "credential_too_long"


def test_api_key_failures_count_too(db: Any, client: Any, settings: Any) -> None:
    settings.AUTH_FAILURE_LIMIT_PER_MINUTE = 2
    statuses = [
        client.get(ME, HTTP_X_API_KEY="tp_live_nope", REMOTE_ADDR="10.0.0.11").status_code
        for _ in range(3)
    ]
    assert statuses == [401, 401, 429]


def test_openapi_documents_the_routes_errors_and_security_schemes(db: Any, client: Any) -> None:
    response = client.get("/api/schema")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    paths = schema["paths"]
    for path, method in [
        ("/api/v1/auth/login", "post"),
        ("/api/v1/auth/me", "get"),
        ("/api/v1/auth/me", "delete"),
        ("/api/v1/auth/logout", "post"),
        ("/api/v1/users/me/export", "get"),
    ]:
        operation = paths[path][method]
        assert {"401", "429", "503"} <= set(operation["responses"]), (path, method)
        error = operation["responses"]["401"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/Error"}
        assert {"auth0Jwt": []} in operation["security"]
        assert {"sessionToken": []} in operation["security"]
        assert {"apiKey": []} in operation["security"]
    assert set(schema["components"]["schemas"]["Error"]["required"]) == {"detail", "code"}
    schemes = schema["components"]["securitySchemes"]
    assert schemes["auth0Jwt"]["scheme"] == "bearer"
    assert schemes["sessionToken"]["scheme"] == "bearer"
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header"}
    assert schemes["apiKey"]["name"] == "X-API-Key"
    logout_params = {p["name"] for p in paths["/api/v1/auth/logout"]["post"]["parameters"]}
    assert "all" in logout_params


@pytest.mark.django_db
def test_superuser_password_login_to_admin_still_works(client: Any) -> None:
    from accounts.models import User

    User.objects.create_superuser("root", "root@example.com", "a-long-password-123")
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": "root", "password": "a-long-password-123", "next": "/admin/"},
    )
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


@pytest.mark.django_db
def test_oidc_backend_matches_by_sub_never_by_email(settings: Any) -> None:
    from accounts.models import User
    from accounts.oidc import Auth0OIDCBackend

    settings.OIDC_OP_TOKEN_ENDPOINT = "http://127.0.0.1:9/token"
    settings.OIDC_OP_USER_ENDPOINT = "http://127.0.0.1:9/userinfo"
    settings.OIDC_RP_CLIENT_ID = "client"
    settings.OIDC_RP_CLIENT_SECRET = "secret"
    settings.OIDC_OP_JWKS_ENDPOINT = "http://127.0.0.1:9/jwks"
    owner = User.objects.create_user("auth0|owner", email="shared@example.com", auth0_sub="a|1")
    backend = Auth0OIDCBackend()

    assert list(backend.filter_users_by_claims({"sub": "a|1", "email": "x@y.z"})) == [owner]
    same_email = backend.filter_users_by_claims({"sub": "a|2", "email": "shared@example.com"})
    assert list(same_email) == []
    assert backend.verify_claims({"sub": "a|2"}) is True  # email is not required
    assert backend.verify_claims({"email": "shared@example.com"}) is False

    created = backend.create_user({"sub": "a|2", "email": "shared@example.com", "name": "Two"})
    assert created.auth0_sub == "a|2" and created.is_staff is False
    owner.deleted_at = owner.date_joined
    owner.is_active = False
    owner.save()
    assert backend.update_user(owner, {"sub": "a|1"}) is None
    assert backend.get_user(owner.pk) is None
    assert settings.OIDC_TIMEOUT > 0
