"""Keys and usage follow the account: deleted with it (keys), exported with it (both)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from metering.services import flush_usage, record_usage

pytestmark = pytest.mark.django_db


def test_deleting_the_account_revokes_every_key(
    client: Client, user: Any, auth_headers: dict[str, Any], make_key: Any
) -> None:
    _, raw = make_key(user)
    assert client.get("/api/v1/keys", HTTP_X_API_KEY=raw).status_code == 200

    assert client.delete("/api/v1/auth/me", **auth_headers).status_code == 204

    response = client.get("/api/v1/keys", HTTP_X_API_KEY=raw)
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_api_key"
    assert user.api_keys.filter(revoked_at__isnull=True).count() == 0


def test_export_lists_keys_and_usage_without_secrets(
    client: Client, user: Any, auth_headers: dict[str, Any], make_key: Any
) -> None:
    key, raw = make_key(user, name="export me")
    record_usage(
        request_id="req-export-1",
        user_id=user.pk,
        api_key_id=key.pk,
        endpoint="/api/v1/credits/balance",
        method="GET",
        status=200,
        credits_spent=0,
        response_time_ms=3.0,
        upstream="flash",
    )
    flush_usage()

    response = client.get("/api/v1/users/me/export", **auth_headers)
    assert response.status_code == 200
    body = response.json()
    assert [k["name"] for k in body["api_keys"]] == ["export me"]
    assert body["api_keys"][0]["prefix"] == key.prefix
    assert body["usage"]["total_records"] >= 1
    assert "req-export-1" in {r["request_id"] for r in body["usage"]["records"]}
    text = response.content.decode()
    assert raw not in text
    assert key.key_digest not in text
