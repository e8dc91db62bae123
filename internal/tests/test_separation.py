"""Internal callers and public callers never meet: each kind of credential works only on its own
side, and the internal API exists only where the settings say."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from internal.services import service_credential_create, service_credential_revoke
from internal.tests.conftest import MCP_SECRET

INTERNAL_ROUTES = [
    ("get", "/internal/billing/status"),
    ("post", "/internal/keys/verify"),
    ("get", "/internal/credits/check?user_id=1&cost=5"),
    ("get", "/internal/schema"),
]
PUBLIC_ROUTES = [
    ("get", "/api/v1/keys"),
    ("get", "/api/v1/auth/me"),
    ("get", "/api/v1/usage"),
    ("get", "/api/v1/billing/plans"),  # needs no credential at all: still refused
]


def _call(client: Client, method: str, path: str, **headers: Any) -> Any:
    if method == "post":
        return client.post(path, data=b"{}", content_type="application/json", **headers)
    return client.get(path, **headers)


def _assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code and body["detail"], body


def test_public_credentials_are_refused_on_every_internal_route(
    client: Client, user: Any, make_key: Any, session_token: str
):
    _, raw_key = make_key(user)
    public = {
        "session": {"HTTP_AUTHORIZATION": f"Bearer {session_token}"},
        "key as bearer": {"HTTP_AUTHORIZATION": f"Bearer {raw_key}"},
        "key as X-API-Key": {"HTTP_X_API_KEY": raw_key},
        "a JWT-shaped bearer": {"HTTP_AUTHORIZATION": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"},
    }
    for method, path in INTERNAL_ROUTES:
        for name, headers in public.items():
            alone = _call(client, method, path, HTTP_X_USER_ID=str(user.pk), **headers)
            _assert_error(alone, 401, "public_credential_refused")
            # Next to a valid service key too: an internal route never acts for a public caller.
            both = _call(
                client, method, path, HTTP_X_SERVICE_KEY=MCP_SECRET, HTTP_X_USER_ID="1", **headers
            )
            _assert_error(both, 401, "public_credential_refused")
            assert "subscription_tier" not in both.json(), name


def test_internal_routes_need_a_valid_service_key_and_ignore_x_user_id_without_one(
    client: Client, user: Any
):
    for method, path in INTERNAL_ROUTES:
        missing = _call(client, method, path, HTTP_X_USER_ID=str(user.pk))
        _assert_error(missing, 401, "service_key_required")
        wrong = _call(client, method, path, HTTP_X_SERVICE_KEY="guess", HTTP_X_USER_ID="1")
        _assert_error(wrong, 401, "invalid_service_key")
        assert "subscription_tier" not in wrong.json()
    ok = client.get(
        "/internal/billing/status", HTTP_X_SERVICE_KEY=MCP_SECRET, HTTP_X_USER_ID=str(user.pk)
    )
    assert ok.status_code == 200 and ok.json()["user_id"] == str(user.pk)


def test_internal_credentials_are_refused_on_public_routes(
    client: Client, user: Any, session_token: str
):
    _, admin_secret = service_credential_create(name="clockchain")
    internal = {
        "env key as X-Service-Key": {"HTTP_X_SERVICE_KEY": MCP_SECRET},
        "admin key as X-Service-Key": {"HTTP_X_SERVICE_KEY": admin_secret},
        "admin key as bearer": {"HTTP_AUTHORIZATION": f"Bearer {admin_secret}"},
        "admin key as X-API-Key": {"HTTP_X_API_KEY": admin_secret},
        # Refused even next to a valid session: the service secret must not travel here.
        "env key beside a session": {
            "HTTP_X_SERVICE_KEY": MCP_SECRET,
            "HTTP_AUTHORIZATION": f"Bearer {session_token}",
        },
    }
    for method, path in PUBLIC_ROUTES:
        for headers in internal.values():
            response = _call(client, method, path, HTTP_X_USER_ID=str(user.pk), **headers)
            _assert_error(response, 401, "internal_credential_refused")
    # An env secret sent as a bearer token is no public credential either (an invalid JWT).
    response = client.get("/api/v1/keys", HTTP_AUTHORIZATION=f"Bearer {MCP_SECRET}")
    assert response.status_code == 401
    # A header value that is no service credential is ignored, as before.
    fine = client.get(
        "/api/v1/keys", HTTP_X_SERVICE_KEY="guess", HTTP_AUTHORIZATION=f"Bearer {session_token}"
    )
    assert fine.status_code == 200


def test_a_revoked_service_credential_is_refused_at_once(client: Client, user: Any):
    credential, secret = service_credential_create(name="clockchain")
    headers: dict[str, Any] = {"HTTP_X_SERVICE_KEY": secret, "HTTP_X_USER_ID": str(user.pk)}
    assert client.get("/internal/billing/status", **headers).status_code == 200

    service_credential_revoke(credential=credential)

    _assert_error(client.get("/internal/billing/status", **headers), 401, "invalid_service_key")


@pytest.mark.parametrize(
    "change",
    [
        {"INTERNAL_API_ENABLED": False},
        {"INTERNAL_API_ALLOWED_NETWORKS": ["10.0.0.0/8", "fd00::/8"]},
        {"INTERNAL_API_PORT": 8081},  # the test client's requests arrive on port 80
    ],
)
def test_the_internal_api_can_be_switched_off_or_confined(
    client: Client, user: Any, settings: Any, change: dict[str, Any]
):
    headers: dict[str, Any] = {"HTTP_X_SERVICE_KEY": MCP_SECRET, "HTTP_X_USER_ID": str(user.pk)}
    assert client.get("/internal/billing/status", **headers).status_code == 200
    for name, value in change.items():
        setattr(settings, name, value)
    for method, path in INTERNAL_ROUTES:
        _assert_error(_call(client, method, path, **headers), 404, "not_found")


def test_the_private_listener_serves_only_the_internal_api_and_health(
    client: Client, user: Any, session_token: str, settings: Any
):
    settings.INTERNAL_API_PORT = 8081
    settings.INTERNAL_API_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    on_private: dict[str, Any] = {"SERVER_PORT": "8081", "REMOTE_ADDR": "127.0.0.1"}
    status = client.get(
        "/internal/billing/status",
        HTTP_X_SERVICE_KEY=MCP_SECRET,
        HTTP_X_USER_ID=str(user.pk),
        **on_private,
    )
    assert status.status_code == 200
    assert client.get("/health", **on_private).status_code == 200
    public = client.get("/api/v1/keys", HTTP_AUTHORIZATION=f"Bearer {session_token}", **on_private)
    _assert_error(public, 404, "not_found")
    from_elsewhere = client.get(
        "/internal/billing/status",
        HTTP_X_SERVICE_KEY=MCP_SECRET,
        HTTP_X_USER_ID=str(user.pk),
        SERVER_PORT="8081",
        REMOTE_ADDR="203.0.113.9",
    )
    _assert_error(from_elsewhere, 404, "not_found")


def test_each_service_has_its_own_rate_limit_and_usage_records_name_it(client: Client, user: Any):
    from metering.models import UsageRecord
    from metering.services import flush_usage

    _, tight = service_credential_create(name="clockchain", rate_limit_per_minute=2)
    as_clockchain: dict[str, Any] = {"HTTP_X_SERVICE_KEY": tight, "HTTP_X_USER_ID": str(user.pk)}
    as_mcp: dict[str, Any] = {"HTTP_X_SERVICE_KEY": MCP_SECRET, "HTTP_X_USER_ID": str(user.pk)}

    first = client.get("/internal/billing/status", **as_clockchain)
    assert first.status_code == 200 and first["X-RateLimit-Limit"] == "2"
    assert client.get("/internal/billing/status", **as_clockchain).status_code == 200
    _assert_error(client.get("/internal/billing/status", **as_clockchain), 429, "rate_limited")
    # The other service's windows are its own.
    mcp = client.get("/internal/billing/status", **as_mcp)
    assert mcp.status_code == 200 and int(mcp["X-RateLimit-Limit"]) > 2

    flush_usage()
    rows = list(UsageRecord.objects.order_by("id").values_list("service", "endpoint", "status"))
    assert rows == [
        ("clockchain", "/internal/billing/status", 200),
        ("clockchain", "/internal/billing/status", 200),
        ("clockchain", "/internal/billing/status", 429),
        ("mcp", "/internal/billing/status", 200),
    ]
    assert not UsageRecord.objects.filter(user__isnull=False).exists()


def test_internal_routes_are_documented_apart_from_the_public_ones(client: Client, db: Any):
    public = client.get("/api/schema?format=json")
    assert public.status_code == 200
    public_paths = json.loads(public.content)["paths"]
    assert public_paths and not [p for p in public_paths if p.startswith("/internal")]

    _assert_error(client.get("/internal/schema"), 401, "service_key_required")
    internal = client.get("/internal/schema?format=json", HTTP_X_SERVICE_KEY=MCP_SECRET)
    assert internal.status_code == 200
    document = json.loads(internal.content)
    assert set(document["paths"]) == {
        "/internal/billing/status",
        "/internal/keys/verify",
        "/internal/credits/check",
    }
    schemes = document["components"]["securitySchemes"]
    assert schemes["serviceKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-Service-Key",
        "description": schemes["serviceKey"]["description"],
    }
    status_op = document["paths"]["/internal/billing/status"]["get"]
    assert status_op["security"] == [{"serviceKey": []}]
    assert {"subscription_tier", "status"} <= set(
        document["components"]["schemas"]["BillingStatusOutput"]["properties"]
    )


def test_the_https_redirect_spares_the_private_network_calls(
    client: Client, user: Any, session_token: str, settings: Any
):
    settings.SECURE_SSL_REDIRECT = True  # production's default
    internal = client.get(
        "/internal/billing/status", HTTP_X_SERVICE_KEY=MCP_SECRET, HTTP_X_USER_ID=str(user.pk)
    )
    assert internal.status_code == 200
    public = client.get("/api/v1/keys", HTTP_AUTHORIZATION=f"Bearer {session_token}")
    assert public.status_code == 301 and public["Location"].startswith("https://")
