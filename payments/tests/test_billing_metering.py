"""The caller's billing calls are rate limited and metered like any other client call; the
public catalogue and the providers' webhooks are not."""

from __future__ import annotations

from typing import Any

from django.test import Client

from metering.models import UsageRecord
from metering.services import flush_usage
from payments.tests import factories as f


def _checkout(client: Client, headers: dict) -> Any:
    return client.post(
        "/api/v1/billing/checkout",
        {"package": "100_credits"},
        content_type="application/json",
        **headers,
    )


def test_checkout_writes_one_usage_record_and_carries_limit_headers(
    client: Client, user: Any, auth_headers: dict, settings: Any
):
    settings.USER_RATE_LIMIT_PER_MINUTE = 7
    response = _checkout(client, auth_headers)

    assert response.status_code == 200, response.content
    assert response["X-RateLimit-Limit"] == "7"
    assert response["X-RateLimit-Remaining"] == "6"
    assert int(response["X-RateLimit-Reset"]) > 0
    flush_usage()
    record = UsageRecord.objects.get()
    assert record.user == user and record.api_key is None
    assert record.endpoint == "/api/v1/billing/checkout" and record.method == "POST"
    assert record.status == 200 and record.credits_spent == 0


def test_billing_calls_over_the_limit_are_429_and_still_metered(
    client: Client, user: Any, auth_headers: dict, customer_id: str, settings: Any
):
    settings.USER_RATE_LIMIT_PER_MINUTE = 3
    assert client.get("/api/v1/billing/history", **auth_headers).status_code == 200
    assert client.post("/api/v1/billing/portal", **auth_headers).status_code == 200
    assert _checkout(client, auth_headers).status_code == 200

    refused = client.post(
        "/api/v1/billing/verify-receipt",
        {"signed_transaction": "x.y.z"},
        content_type="application/json",
        **auth_headers,
    )

    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited" and refused["Retry-After"]
    flush_usage()
    assert sorted(UsageRecord.objects.values_list("endpoint", "status")) == [
        ("/api/v1/billing/checkout", 200),
        ("/api/v1/billing/history", 200),
        ("/api/v1/billing/portal", 200),
        ("/api/v1/billing/verify-receipt", 429),
    ]


def test_catalogue_and_webhooks_are_neither_limited_nor_metered(
    client: Client, user: Any, customer_id: str, settings: Any
):
    settings.USER_RATE_LIMIT_PER_MINUTE = 1
    plans = client.get("/api/v1/billing/plans")
    body = f.event("checkout.session.completed", f.pack_session(customer_id, user.pk))
    webhook = f.post_webhook(client, body)

    assert plans.status_code == 200 and webhook.status_code == 200
    assert "X-RateLimit-Limit" not in plans and "X-RateLimit-Limit" not in webhook
    flush_usage()
    assert not UsageRecord.objects.exists()
