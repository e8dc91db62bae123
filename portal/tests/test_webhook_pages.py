"""The portal's webhook pages as a developer uses them: add an endpoint (its secret shown once),
see deliveries with their attempts, resend, rotate the secret, turn off, delete."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from devpeers.webhook_receiver import WebhookReceiver, verify
from webhooks.models import DeliveryState, WebhookDelivery, WebhookEndpoint
from webhooks.outbox import deliveries_send_due
from webhooks.services import endpoint_create, event_emit

pytestmark = pytest.mark.django_db

SECRET = re.compile(r'value="(whsec_[A-Za-z0-9_-]+)"')


@pytest.fixture
def receiver(settings: Any) -> Any:
    settings.WEBHOOKS_ALLOW_PRIVATE_URLS = True
    settings.WEBHOOKS_REQUIRE_HTTPS = False
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0
    running = WebhookReceiver().start()
    yield running
    running.stop()


def _add(portal_client: Client, url: str, events: list[str]) -> Any:
    return portal_client.post(
        "/portal/webhooks/", {"url": url, "events": events, "description": "staging"}
    )


def test_add_an_endpoint_see_its_secret_once_and_its_deliveries(
    portal_client: Client, user: Any, receiver: WebhookReceiver
) -> None:
    added = _add(portal_client, f"{receiver.url}/in", ["credits.granted", "key.revoked"])
    assert added.status_code == 200
    assert added["Cache-Control"] == "no-store"
    found = SECRET.search(added.content.decode())
    assert found, "the secret is not on the page"
    secret = found.group(1)
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.events == ["credits.granted", "key.revoked"]

    listing = portal_client.get("/portal/webhooks/")
    assert listing.status_code == 200
    assert endpoint.url.encode() in listing.content and secret.encode() not in listing.content

    receiver.plan = [500]
    event_emit(user_id=user.pk, type="credits.granted", data={"amount": 5}, dedupe_key="p1")
    deliveries_send_due()
    deliveries_send_due()
    request = receiver.wait_for(2)[-1]
    assert verify(secret, request.headers["timepoint-signature"], request.body)

    page = portal_client.get(f"/portal/webhooks/{endpoint.public_id}/")
    assert page.status_code == 200
    html = page.content.decode()
    delivery = WebhookDelivery.objects.get()
    assert delivery.public_id in html and "Delivered" in html
    assert "HTTP 500" in html and "HTTP 200" in html  # both attempts, newest first
    assert secret not in html

    resent = portal_client.post(f"/portal/webhooks/deliveries/{delivery.public_id}/resend/")
    assert resent.status_code == 302
    assert resent["Location"] == f"/portal/webhooks/{endpoint.public_id}/"
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.PENDING
    deliveries_send_due()
    assert receiver.wait_for(3)[-1].delivery_id == delivery.public_id


def test_a_refused_url_is_an_error_on_the_form(portal_client: Client, settings: Any) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE_URLS = False
    response = _add(portal_client, "https://169.254.169.254/latest", ["key.revoked"])
    assert response.status_code == 200
    assert b"private, loopback or link-local" in response.content
    assert not WebhookEndpoint.objects.exists()
    assert _add(portal_client, "https://hooks.example.com/x", []).status_code == 200
    assert not WebhookEndpoint.objects.exists()  # no events picked


def test_rotate_turn_off_and_delete(portal_client: Client, user: Any) -> None:
    endpoint, old = endpoint_create(
        user=user, url="https://hooks.example.com/x", events=["key.revoked"]
    )
    base = f"/portal/webhooks/{endpoint.public_id}"
    rotated = portal_client.post(f"{base}/rotate/")
    assert rotated.status_code == 200 and rotated["Cache-Control"] == "no-store"
    found = SECRET.search(rotated.content.decode())
    assert found and found.group(1) != old
    assert b"also signs until" in portal_client.get(f"{base}/").content

    assert portal_client.post(f"{base}/toggle/", {"enabled": "false"}).status_code == 302
    endpoint.refresh_from_db()
    assert not endpoint.is_enabled
    assert portal_client.post(f"{base}/toggle/", {"enabled": "true"}).status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.is_enabled

    assert portal_client.post(f"{base}/delete/").status_code == 302
    assert not WebhookEndpoint.objects.exists()


def test_another_users_endpoint_is_not_found(portal_client: Client, other_user: Any) -> None:
    theirs, _ = endpoint_create(user=other_user, url="https://b.example/", events=["key.revoked"])
    assert portal_client.get(f"/portal/webhooks/{theirs.public_id}/").status_code == 404
    portal_client.post(f"/portal/webhooks/{theirs.public_id}/delete/")
    portal_client.post(f"/portal/webhooks/{theirs.public_id}/rotate/")
    assert WebhookEndpoint.objects.filter(pk=theirs.pk, secret_prefix=theirs.secret_prefix).exists()
