"""The outbox against a real receiver on loopback: signatures verify (ours and Stripe's own
verifier), retries after a 500 and after a timeout, exactly one delivery id per event and
endpoint, redirects not followed, rotation with overlap, the 3-day window."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import pytest
import stripe
from django.db import connection
from django.utils import timezone

from devpeers import netguard
from devpeers.webhook_receiver import WebhookReceiver, verify
from webhooks.models import (
    DeliveryState,
    EventType,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
)
from webhooks.outbox import deliveries_send_due, delivery_attempt, retry_delay_seconds
from webhooks.services import (
    endpoint_create,
    endpoint_secret_rotate,
    endpoint_update,
    event_emit,
)

pytestmark = pytest.mark.django_db


def _emit(user: Any, cause: str = "1", type: str = EventType.KEY_REVOKED) -> WebhookEvent:
    return event_emit(user_id=user.pk, type=type, data={"cause": cause}, dedupe_key=f"t:{cause}")


def test_a_delivery_is_signed_like_stripe_and_carries_the_event(
    user: Any, endpoint: tuple[Any, str], receiver: WebhookReceiver
) -> None:
    _, secret = endpoint
    event = _emit(user)
    assert deliveries_send_due() == 1
    [request] = receiver.wait_for(1)
    assert request.path == "/hooks"
    header = request.headers["timepoint-signature"]
    assert verify(secret, header, request.body)
    # Stripe's own verifier accepts it: the same scheme (t=…,v1=…), the same signed string.
    stripe.WebhookSignature.verify_header(request.body.decode(), header, secret, tolerance=300)
    assert not verify(secret, header, request.body + b" ")  # any change breaks it
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(request.body.decode(), header, "whsec_other")
    body = request.json()
    assert body == {
        "id": event.public_id,
        "object": "event",
        "type": "key.revoked",
        "created": int(event.created_at.timestamp()),
        "data": {"cause": "1"},
    }
    delivery = WebhookDelivery.objects.get()
    assert request.headers["timepoint-event-id"] == event.public_id
    assert request.headers["timepoint-event-type"] == "key.revoked"
    assert request.headers["timepoint-delivery-id"] == delivery.public_id
    assert request.headers["timepoint-delivery-attempt"] == "1"
    assert request.headers["content-type"] == "application/json"
    assert delivery.state == DeliveryState.SUCCEEDED and delivery.delivered_at is not None
    attempt = WebhookAttempt.objects.get()
    assert attempt.status_code == 200 and attempt.error == ""
    assert json.loads(attempt.response_excerpt) == {"received": True, "status": 200}


def test_a_500_is_retried_with_the_same_delivery_id_until_a_2xx(
    user: Any, endpoint: tuple[Any, str], receiver: WebhookReceiver
) -> None:
    receiver.plan = [500, 503]
    _emit(user)
    for _ in range(3):
        deliveries_send_due()
    requests = receiver.wait_for(3)
    assert len({r.delivery_id for r in requests}) == 1
    assert len({r.json()["id"] for r in requests}) == 1
    assert [r.headers["timepoint-delivery-attempt"] for r in requests] == ["1", "2", "3"]
    assert all(verify(endpoint[1], r.headers["timepoint-signature"], r.body) for r in requests)
    delivery = WebhookDelivery.objects.get()
    assert delivery.state == DeliveryState.SUCCEEDED and delivery.attempts == 3
    statuses = list(WebhookAttempt.objects.order_by("number").values_list("status_code", flat=True))
    assert statuses == [500, 503, 200]
    assert deliveries_send_due() == 0  # nothing more is sent
    assert len(receiver.received) == 3


def test_a_timeout_is_retried(
    user: Any, endpoint: tuple[Any, str], receiver: WebhookReceiver, settings: Any
) -> None:
    settings.WEBHOOK_TIMEOUT_SECONDS = 0.5
    receiver.plan = [("hang", 5)]
    _emit(user)
    deliveries_send_due()
    delivery = WebhookDelivery.objects.get()
    assert delivery.state == DeliveryState.RETRYING
    assert delivery.last_status_code is None and "timed out" in delivery.last_error
    deliveries_send_due()
    requests = receiver.wait_for(2)
    assert requests[0].delivery_id == requests[1].delivery_id
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.SUCCEEDED and delivery.attempts == 2


def test_backoff_doubles_up_to_the_cap_and_stops_after_the_window(
    user: Any, endpoint: tuple[Any, str], receiver: WebhookReceiver, settings: Any
) -> None:
    settings.WEBHOOK_RETRY_BASE_SECONDS = 60
    settings.WEBHOOK_RETRY_MAX_SECONDS = 12 * 3600
    delays = [retry_delay_seconds(n) for n in range(1, 16)]
    assert delays[:4] == [60, 120, 240, 480] and delays[-1] == 12 * 3600
    # The default schedule tries for 3 days: ~15 attempts, then stops.
    elapsed, attempts = 0.0, 1
    while elapsed + retry_delay_seconds(attempts) < 3 * 24 * 3600:
        elapsed += retry_delay_seconds(attempts)
        attempts += 1
    assert 12 <= attempts <= 16

    receiver.default = 500
    _emit(user)
    deliveries_send_due()
    delivery = WebhookDelivery.objects.get()
    assert delivery.state == DeliveryState.RETRYING
    wait = (delivery.next_attempt_at - timezone.now()).total_seconds()
    assert 50 < wait <= 60  # the first retry: a minute later
    assert deliveries_send_due() == 0  # not due yet
    # The window ends: the next failure is the last.
    WebhookDelivery.objects.update(
        next_attempt_at=timezone.now(), retry_until=timezone.now() + timedelta(seconds=1)
    )
    deliveries_send_due()
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.RETRYING
    assert delivery.next_attempt_at <= delivery.retry_until  # never scheduled past the window
    WebhookDelivery.objects.update(
        next_attempt_at=timezone.now(), retry_until=timezone.now() - timedelta(seconds=1)
    )
    assert deliveries_send_due() == 1
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.FAILED
    assert deliveries_send_due() == 0
    assert len(receiver.received) == 2  # the one past its window was not sent


@pytest.mark.django_db(transaction=True)
def test_one_event_and_one_delivery_id_per_cause_and_endpoint(
    user: Any, endpoint: tuple[Any, str], receiver: WebhookReceiver
) -> None:
    endpoint_create(user=user, url=f"{receiver.url}/second", events=["key.revoked"])
    endpoint_create(user=user, url=f"{receiver.url}/grants", events=["credits.granted"])
    first = _emit(user)
    again = _emit(user)  # the same cause recorded twice (a retried Stripe event, two workers)
    assert first.pk == again.pk and WebhookEvent.objects.count() == 1
    assert WebhookDelivery.objects.count() == 2  # the two subscribed endpoints, not the third
    # Two workers racing for the same deliveries: each is claimed and sent once.
    ids = list(WebhookDelivery.objects.values_list("pk", flat=True))
    results: list[Any] = []

    def work() -> None:
        try:
            results.extend(delivery_attempt(delivery_id) for delivery_id in ids)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(1 for result in results if result is not None) == 2
    requests = receiver.wait_for(2)
    assert sorted(r.path for r in requests) == ["/hooks", "/second"]
    assert len({r.delivery_id for r in requests}) == 2
    assert {r.json()["id"] for r in requests} == {first.public_id}
    assert not any(r.path == "/grants" for r in receiver.received)


def test_a_disabled_endpoint_gets_no_new_events_and_its_queue_waits(
    user: Any, endpoint: tuple[Any, str], receiver: WebhookReceiver
) -> None:
    hook, _ = endpoint
    _emit(user, "queued")
    endpoint_update(user=user, endpoint_id=hook.public_id, is_enabled=False)
    _emit(user, "while-off")
    assert WebhookDelivery.objects.count() == 1  # none for the event while it was off
    assert deliveries_send_due() == 0
    endpoint_update(user=user, endpoint_id=hook.public_id, is_enabled=True)
    assert deliveries_send_due() == 1
    assert [r.json()["data"]["cause"] for r in receiver.wait_for(1)] == ["queued"]


def test_redirects_are_not_followed(
    user: Any, endpoint: tuple[Any, str], receiver: WebhookReceiver
) -> None:
    target = WebhookReceiver().start()
    try:
        receiver.plan = [("redirect", f"{target.url}/elsewhere")]
        _emit(user)
        deliveries_send_due()
        delivery = WebhookDelivery.objects.get()
        assert delivery.state == DeliveryState.RETRYING
        assert delivery.last_status_code == 302
        assert delivery.last_error == "redirects are not followed"
        assert target.received == []
    finally:
        target.stop()


def test_rotation_signs_with_both_secrets_during_the_overlap(
    user: Any, endpoint: tuple[Any, str], receiver: WebhookReceiver
) -> None:
    hook, old = endpoint
    hook, new = endpoint_secret_rotate(user=user, endpoint_id=hook.public_id, overlap_seconds=3600)
    assert new != old and new.startswith("whsec_") and hook.secret_prefix == new[:10]
    _emit(user, "during")
    deliveries_send_due()
    [request] = receiver.wait_for(1)
    header = request.headers["timepoint-signature"]
    assert header.count("v1=") == 2
    assert verify(new, header, request.body) and verify(old, header, request.body)
    for secret in (new, old):
        stripe.WebhookSignature.verify_header(request.body.decode(), header, secret)
    # The overlap ends: only the new secret signs.
    hook.previous_secret_expires_at = timezone.now() - timedelta(seconds=1)
    hook.save()
    _emit(user, "after")
    deliveries_send_due()
    request = receiver.wait_for(2)[1]
    header = request.headers["timepoint-signature"]
    assert header.count("v1=") == 1
    assert verify(new, header, request.body) and not verify(old, header, request.body)
    # No overlap: the old secret stops at once.
    hook, newest = endpoint_secret_rotate(user=user, endpoint_id=hook.public_id, overlap_seconds=0)
    _emit(user, "no-overlap")
    deliveries_send_due()
    request = receiver.wait_for(3)[2]
    assert verify(newest, request.headers["timepoint-signature"], request.body)
    assert not verify(new, request.headers["timepoint-signature"], request.body)


def test_secrets_are_stored_encrypted(user: Any, endpoint: tuple[Any, str]) -> None:
    hook, secret = endpoint
    hook.refresh_from_db()
    assert secret not in hook.secret_encrypted and secret[6:] not in hook.secret_encrypted
    assert hook.secret_prefix == secret[:10]


def test_private_addresses_are_refused_at_send_time(
    user: Any, endpoint: tuple[Any, str], receiver: WebhookReceiver, settings: Any
) -> None:
    """Production's rule: the host is resolved at every send and a loopback, private or
    link-local answer refuses the delivery before any connection is made."""
    hook, _ = endpoint
    endpoint_update(user=user, endpoint_id=hook.public_id, url=f"{receiver.url}/hooks")
    hook.url = receiver.url.replace("127.0.0.1", "localhost") + "/hooks"  # a name, not a literal
    hook.save()
    settings.WEBHOOKS_ALLOW_PRIVATE_URLS = False
    netguard.refused.clear()
    _emit(user)
    deliveries_send_due()
    delivery = WebhookDelivery.objects.get()
    assert delivery.state == DeliveryState.RETRYING
    assert delivery.last_error.startswith("refused: localhost resolves to a non-public address")
    assert receiver.received == [] and netguard.refused == []  # not even a connection attempt
