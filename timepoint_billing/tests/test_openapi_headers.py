"""The OpenAPI document describes the headers every client relies on: the rate-limit fields on
every answer to an authenticated caller, `Retry-After` on 429/503, `X-Request-ID` everywhere —
and the gateway really sends what it documents."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from timepoint_billing.openapi import RATE_LIMIT_HEADERS

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(client: Client) -> dict[str, Any]:
    response = client.get("/api/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return dict(json.loads(response.content))


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if isinstance(operation, dict) and "responses" in operation
    ]


def test_every_authenticated_operation_documents_the_rate_limit_headers(
    schema: dict[str, Any],
) -> None:
    authenticated = [
        (path, method, operation)
        for path, method, operation in _operations(schema)
        if path.startswith("/api/v1/") and any(operation.get("security", []))
    ]
    assert len(authenticated) > 25
    for path, method, operation in authenticated:
        for status, response in operation["responses"].items():
            headers = response.get("headers", {})
            assert "X-Request-ID" in headers, (method, path, status)
            if status != "401":
                assert set(RATE_LIMIT_HEADERS) <= set(headers), (method, path, status)
            else:
                assert "X-RateLimit-Limit" not in headers  # refused before the limiter


def test_retry_after_on_every_429_and_503(schema: dict[str, Any]) -> None:
    seen = 0
    for path, method, operation in _operations(schema):
        for status in ("429", "503"):
            if status in operation["responses"]:
                seen += 1
                assert "Retry-After" in operation["responses"][status]["headers"], (method, path)
    assert seen > 20


def test_public_operations_document_no_rate_limit_headers(schema: dict[str, Any]) -> None:
    plans = schema["paths"]["/api/v1/billing/plans"]["get"]["responses"]["200"]
    assert "X-RateLimit-Limit" not in plans.get("headers", {})


def test_a_limited_answer_carries_the_documented_headers(
    client: Client, make_key: Any, user: Any
) -> None:
    _, raw = make_key(user)
    response = client.get("/api/v1/keys", HTTP_X_API_KEY=raw)
    assert response.status_code == 200
    for name in [*RATE_LIMIT_HEADERS, "X-Request-ID"]:
        assert response.has_header(name), name
    assert int(response["X-RateLimit-Remaining"]) < int(response["X-RateLimit-Limit"])
