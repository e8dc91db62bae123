"""The webhook endpoints API: register (secret shown once), list, change, rotate, delete,
deliveries with their attempts, resend; owner only; every error is `{"detail", "code"}`."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from devpeers.webhook_receiver import WebhookReceiver, verify
from webhooks.models import DeliveryState, EventType, WebhookDelivery, WebhookEndpoint
from webhooks.outbox import deliveries_send_due
from webhooks.services import event_emit

pytestmark = pytest.mark.django_db

BASE = "/api/v1/webhooks/endpoints"


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code and body["detail"], body
    return dict(body)


def _create(client: Client, auth: dict[str, Any], **body: Any) -> Any:
    return client.post(BASE, body, content_type="application/json", **auth)


def test_register_list_change_rotate_delete(
    client: Client, auth_headers: dict[str, Any], receiver: WebhookReceiver
) -> None:
    url = f"{receiver.url}/hooks"
    created = _create(
        client, auth_headers, url=url, events=["credits.granted", "key.revoked"], description="ci"
    )
    assert created.status_code == 201, created.content
    body = created.json()
    secret = body["secret"]
    assert secret.startswith("whsec_") and body["secret_prefix"] == secret[:10]
    assert body["id"].startswith("we_") and body["url"] == url and body["enabled"] is True
    assert body["events"] == ["credits.granted", "key.revoked"]
    assert created["Cache-Control"] == "no-store"

    listed = client.get(BASE, **auth_headers).json()
    assert [row["id"] for row in listed] == [body["id"]]
    assert "secret" not in listed[0] and secret not in str(listed)  # shown once only

    detail = f"{BASE}/{body['id']}"
    changed = client.patch(
        detail,
        {"events": ["key.expiring"], "enabled": False},
        content_type="application/json",
        **auth_headers,
    )
    assert changed.status_code == 200, changed.content
    assert changed.json()["events"] == ["key.expiring"] and changed.json()["enabled"] is False

    rotated = client.post(
        f"{detail}/rotate-secret",
        {"overlap_seconds": 600},
        content_type="application/json",
        **auth_headers,
    )
    assert rotated.status_code == 200, rotated.content
    assert rotated["Cache-Control"] == "no-store"
    assert rotated.json()["secret"] != secret and rotated.json()["previous_secret_expires_at"]
    assert client.get(detail, **auth_headers).json()["previous_secret_expires_at"]

    assert client.delete(detail, **auth_headers).status_code == 204
    _error(client.get(detail, **auth_headers), 404, "webhook_endpoint_not_found")
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "ftp://example.com/x", "events": ["key.revoked"]}, "webhook_url_not_allowed"),
        (
            {"url": "https://user:pw@example.com/", "events": ["key.revoked"]},
            "webhook_url_not_allowed",
        ),
        ({"url": "https://example.com/x", "events": ["key.nope"]}, "invalid_request"),
        ({"url": "https://example.com/x", "events": []}, "invalid_request"),
        ({"url": "https://example.com/x"}, "invalid_request"),
        (
            {"url": "https://example.com/x", "events": ["key.revoked"], "secret": "mine"},
            "invalid_request",
        ),
    ],
)
def test_bad_registrations_are_400(
    client: Client, auth_headers: dict[str, Any], body: dict[str, Any], code: str
) -> None:
    response = _create(client, auth_headers, **body)
    assert response.status_code == 400, response.content
    assert response.json()["code"] in (code, "invalid_request")
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hooks",
        "https://localhost/hooks",
        "https://api.localhost/hooks",
        "https://10.1.2.3/hooks",
        "https://192.168.0.10/hooks",
        "https://169.254.169.254/latest/meta-data",  # cloud metadata (link-local)
        "https://[::1]/hooks",
        "https://[::ffff:127.0.0.1]/hooks",  # loopback wrapped in IPv6
        "https://[fe80::1]/hooks",
        "https://100.64.0.1/hooks",  # carrier-grade NAT
        "http://example.com/hooks",  # not https
    ],
)
def test_production_refuses_private_addresses_and_plain_http(
    client: Client, auth_headers: dict[str, Any], settings: Any, url: str
) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE_URLS = False
    settings.WEBHOOKS_REQUIRE_HTTPS = True
    response = _create(client, auth_headers, url=url, events=["key.revoked"])
    _error(response, 400, "webhook_url_not_allowed")


def test_production_accepts_a_public_address(
    client: Client, auth_headers: dict[str, Any], settings: Any
) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE_URLS = False
    settings.WEBHOOKS_REQUIRE_HTTPS = True
    for url in ("https://93.184.215.14/hooks", "https://hooks.example.com/tp"):
        assert _create(client, auth_headers, url=url, events=["key.revoked"]).status_code == 201


def test_an_internationalised_host_is_stored_in_ascii(
    client: Client, auth_headers: dict[str, Any]
) -> None:
    response = _create(
        client, auth_headers, url="https://bücher.example/hook", events=["key.revoked"]
    )
    assert response.status_code == 201, response.content
    assert response.json()["url"] == "https://xn--bcher-kva.example/hook"


def test_endpoints_are_capped_per_user(
    client: Client, auth_headers: dict[str, Any], settings: Any
) -> None:
    settings.MAX_WEBHOOK_ENDPOINTS = 2
    for _ in range(2):
        assert (
            _create(
                client, auth_headers, url="https://a.example/", events=["key.revoked"]
            ).status_code
            == 201
        )
    _error(
        _create(client, auth_headers, url="https://a.example/", events=["key.revoked"]),
        409,
        "webhook_endpoint_limit",
    )


def test_another_users_endpoint_and_deliveries_are_404(
    client: Client, auth_headers: dict[str, Any], other_user: Any
) -> None:
    from webhooks.services import endpoint_create

    theirs, _ = endpoint_create(user=other_user, url="https://b.example/", events=["key.revoked"])
    event_emit(user_id=other_user.pk, type="key.revoked", data={}, dedupe_key="theirs")
    delivery = WebhookDelivery.objects.get()
    detail = f"{BASE}/{theirs.public_id}"
    _error(client.get(detail, **auth_headers), 404, "webhook_endpoint_not_found")
    _error(client.delete(detail, **auth_headers), 404, "webhook_endpoint_not_found")
    _error(client.get(f"{detail}/deliveries", **auth_headers), 404, "webhook_endpoint_not_found")
    _error(
        client.post(f"/api/v1/webhooks/deliveries/{delivery.public_id}/resend", **auth_headers),
        404,
        "webhook_delivery_not_found",
    )
    assert client.get(BASE, **auth_headers).json() == []


def test_deliveries_show_attempts_and_resend_keeps_the_delivery_id(
    client: Client, auth_headers: dict[str, Any], user: Any, receiver: WebhookReceiver
) -> None:
    created = _create(client, auth_headers, url=f"{receiver.url}/h", events=EventType.values).json()
    receiver.plan = [500]
    event_emit(user_id=user.pk, type="credits.granted", data={"amount": 5}, dedupe_key="g1")
    deliveries_send_due()
    deliveries_send_due()
    listed = client.get(f"{BASE}/{created['id']}/deliveries", **auth_headers)
    assert listed.status_code == 200, listed.content
    [row] = listed.json()
    assert row["state"] == "succeeded" and row["attempts"] == 2 and row["next_attempt_at"] is None
    assert [a["status_code"] for a in row["attempts_recent"]] == [200, 500]
    assert row["event_type"] == "credits.granted"

    resent = client.post(f"/api/v1/webhooks/deliveries/{row['id']}/resend", **auth_headers)
    assert resent.status_code == 202, resent.content
    assert resent.json()["state"] == "pending" and resent.json()["id"] == row["id"]
    deliveries_send_due()
    requests = receiver.wait_for(3)
    assert {r.delivery_id for r in requests} == {row["id"]}
    assert verify(created["secret"], requests[-1].headers["timepoint-signature"], requests[-1].body)
    assert WebhookDelivery.objects.get().state == DeliveryState.SUCCEEDED
    only_failed = client.get(f"{BASE}/{created['id']}/deliveries?state=failed", **auth_headers)
    assert only_failed.json() == []
    _error(
        client.get(f"{BASE}/{created['id']}/deliveries?state=nope", **auth_headers),
        400,
        "invalid_request",
    )


def test_a_key_without_the_keys_scope_is_403(client: Client, user: Any, make_key: Any) -> None:
    _, raw = make_key(user, scopes=["read", "generate"])
    response = client.get(BASE, HTTP_AUTHORIZATION=f"Bearer {raw}")
    _error(response, 403, "scope_required")
    _, raw = make_key(user, scopes=["keys"])
    assert client.get(BASE, HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200


def test_openapi_documents_the_routes_and_every_payload(client: Client) -> None:
    schema = client.get("/api/schema", {"format": "json"}).json()
    create = schema["paths"][BASE]["post"]
    assert create["x-required-scope"] == "keys"
    callbacks = create["callbacks"]
    assert set(callbacks) == set(EventType.values)
    granted = callbacks["credits.granted"]["{$request.body#/url}"]["post"]
    headers = {p["name"] for p in granted["parameters"] if p["in"] == "header"}
    assert {"Timepoint-Signature", "Timepoint-Delivery-Id", "Timepoint-Event-Id"} <= headers
    ref = granted["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    component = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(component["properties"]) == {"id", "object", "type", "created", "data"}
    for route in (
        f"{BASE}/{{endpoint_id}}",
        f"{BASE}/{{endpoint_id}}/rotate-secret",
        f"{BASE}/{{endpoint_id}}/deliveries",
        "/api/v1/webhooks/deliveries/{delivery_id}/resend",
    ):
        assert route in schema["paths"], route
