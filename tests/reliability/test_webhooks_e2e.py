"""Webhooks to developers end to end on the production server (gunicorn + the project's worker
class, 2 workers) and two background workers (`manage.py run_grants`), sharing the test's
database (PostgreSQL + Redis in CI): an endpoint registered over HTTP, a key revoked through the
gateway (four times at once), a staff grant landing in Flash; the receiver answers 500, then
hangs past the deadline, then 200. Each event reaches it with one delivery id, signed, retried
until it lands, and never delivered again once it has."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

import httpx
import pytest
import stripe

from devpeers.webhook_receiver import WebhookReceiver, verify
from tests.reliability.conftest import ProductionGateway, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_events_reach_the_receiver_signed_once_each_through_retries(
    production_stack: tuple[ProductionGateway, list[subprocess.Popen[bytes]]],
    webhook_receiver: WebhookReceiver,
    user: Any,
    other_user: Any,
    session_token: str,
    flash_peer: Any,
) -> None:
    from payments.services import grant_manual
    from webhooks.models import DeliveryState, WebhookDelivery, WebhookEvent

    server, workers = production_stack
    auth = {"Authorization": f"Bearer {session_token}"}
    web = httpx.Client(base_url=server.url, timeout=20, trust_env=False, headers=auth)

    created = web.post(
        "/api/v1/webhooks/endpoints",
        json={"url": f"{webhook_receiver.url}/hooks", "events": ["key.revoked", "credits.granted"]},
    )
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    key = web.post("/api/v1/keys", json={"name": "ci"}).json()

    # 500, then a hang past the 1 s deadline, then 200.
    webhook_receiver.plan = [500, ("hang", 5)]
    statuses: list[int] = []

    def revoke() -> None:
        statuses.append(web.delete(f"/api/v1/keys/{key['id']}").status_code)

    threads = [threading.Thread(target=revoke) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [204] * 4

    requests = webhook_receiver.wait_for(3, timeout=60)
    assert all(r.json()["type"] == "key.revoked" for r in requests)
    assert len({r.delivery_id for r in requests}) == 1  # one delivery, retried
    assert len({r.json()["id"] for r in requests}) == 1  # one event, however many revokes
    assert [r.headers["timepoint-delivery-attempt"] for r in requests] == ["1", "2", "3"]
    for request in requests:
        assert verify(secret, request.headers["timepoint-signature"], request.body)
        stripe.WebhookSignature.verify_header(
            request.body.decode(), request.headers["timepoint-signature"], secret
        )
    assert requests[-1].json()["data"]["key"]["prefix"] == key["prefix"]
    wait_for(
        lambda: WebhookDelivery.objects.filter(state=DeliveryState.SUCCEEDED).count() == 1,
        timeout=20,
    )

    # A staff grant: recorded here, delivered to Flash by a worker, announced once.
    grant = grant_manual(user=user, amount=40, reason="reliability", staff_user=other_user)
    requests = webhook_receiver.wait_for(4, timeout=60)
    granted = requests[-1].json()
    assert granted["type"] == "credits.granted"
    assert granted["data"] == {
        "reference": grant.key,
        "amount": 40,
        "source": "manual",
        "balance_after": 90,
    }
    assert verify(secret, requests[-1].headers["timepoint-signature"], requests[-1].body)

    # Nothing more arrives: each delivery landed exactly once after its retries.
    time.sleep(3)
    assert len(webhook_receiver.received) == 4
    assert WebhookEvent.objects.count() == 2
    deliveries = list(WebhookDelivery.objects.order_by("id"))
    assert [d.state for d in deliveries] == [DeliveryState.SUCCEEDED] * 2
    assert [d.attempts for d in deliveries] == [3, 1]
    assert len({r.delivery_id for r in webhook_receiver.received}) == 2
    assert all(worker.poll() is None for worker in workers), "a worker died"
