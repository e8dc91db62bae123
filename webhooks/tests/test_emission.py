"""Events come from where things happen: a key revoked (API, admin, a roll without grace), a key
entering its last week (the worker), a grant landing in Flash (the outbox, once however it was
confirmed), a refund recorded from Stripe. The worker (`run_grants --once`) sends them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from apikeys.services import key_roll, keys_expiring_announce
from devpeers.webhook_receiver import WebhookReceiver, verify
from payments.models import CreditGrant
from payments.services import grant_manual, grants_deliver_due
from webhooks.models import EventType, WebhookDelivery, WebhookEvent

pytestmark = pytest.mark.django_db


def _events(type: str) -> list[WebhookEvent]:
    return list(WebhookEvent.objects.filter(type=type).order_by("id"))


def test_revoking_a_key_sends_key_revoked_once(
    client: Client,
    user: Any,
    auth_headers: dict[str, Any],
    make_key: Any,
    endpoint: tuple[Any, str],
    receiver: WebhookReceiver,
) -> None:
    key, _ = make_key(user, name="ci server")
    for _ in range(2):  # revoking is idempotent, and so is the event
        response = client.delete(f"/api/v1/keys/{key.pk}", **auth_headers)
        assert response.status_code == 204
    [event] = _events(EventType.KEY_REVOKED)
    call_command("run_grants", "--once")
    [request] = receiver.wait_for(1)
    assert verify(endpoint[1], request.headers["timepoint-signature"], request.body)
    body = request.json()
    assert body["id"] == event.public_id and body["type"] == "key.revoked"
    assert body["data"]["key"] == {
        "id": key.pk,
        "name": "ci server",
        "prefix": key.prefix,
        "mode": "live",
    }
    assert body["data"]["revoked_at"].endswith("Z")


def test_a_roll_without_grace_revokes_and_one_with_grace_does_not(
    user: Any, make_key: Any, endpoint: tuple[Any, str]
) -> None:
    graceful, _ = make_key(user)
    key_roll(user=user, key_id=graceful.pk, grace_seconds=3600)
    assert _events(EventType.KEY_REVOKED) == []
    abrupt, _ = make_key(user)
    key_roll(user=user, key_id=abrupt.pk, grace_seconds=0)
    [event] = _events(EventType.KEY_REVOKED)
    assert event.data["key"]["id"] == abrupt.pk


def test_keys_entering_their_last_week_are_announced_once(
    user: Any, make_key: Any, endpoint: tuple[Any, str]
) -> None:
    now = timezone.now()
    soon, _ = make_key(user, expires_at=now + timedelta(days=3))
    make_key(user, expires_at=now + timedelta(days=30))  # not yet
    make_key(user)  # never expires
    rolled, _ = make_key(user, expires_at=now + timedelta(days=2))
    key_roll(user=user, key_id=rolled.pk, grace_seconds=3600)  # its owner already replaced it

    assert keys_expiring_announce() == 1
    assert keys_expiring_announce() == 0  # every pass of the worker: still one
    [event] = _events(EventType.KEY_EXPIRING)
    assert event.data["key"]["id"] == soon.pk
    assert event.data["expires_at"].startswith((now + timedelta(days=3)).date().isoformat())
    # A new expiry is a new announcement.
    soon.expires_at = now + timedelta(days=5)
    soon.save()
    assert keys_expiring_announce() == 1
    assert len(_events(EventType.KEY_EXPIRING)) == 2
    assert WebhookDelivery.objects.count() == 2


def test_a_grant_landing_in_flash_sends_credits_granted_once(
    user: Any, other_user: Any, flash_peer: Any, endpoint: tuple[Any, str], receiver: Any
) -> None:
    grant = grant_manual(user=user, amount=25, reason="goodwill", staff_user=other_user)
    assert _events(EventType.CREDITS_GRANTED) == []  # recorded, not landed yet
    assert grants_deliver_due() == 1
    # A second worker reconciling the same grant (its answer looked lost) finds it in Flash's
    # ledger and marks it sent again: still one event.
    CreditGrant.objects.filter(pk=grant.pk).update(
        state="failed", outcome_unknown=True, next_attempt_at=timezone.now()
    )
    grants_deliver_due()
    assert len([r for r in flash_peer.ledger_for(user.flash_user_id) if r["amount"] == 25]) == 1
    [event] = _events(EventType.CREDITS_GRANTED)
    assert event.data == {
        "reference": grant.key,
        "amount": 25,
        "source": "manual",
        "balance_after": 75,
    }
    call_command("run_grants", "--once")
    assert [r.json()["type"] for r in receiver.wait_for(1)] == ["credits.granted"]
    assert len(receiver.received) == 1


def test_a_stripe_refund_sends_payment_refunded_per_new_total(
    client: Client, user: Any, flash_peer: Any, catalogue: Any, settings: Any, endpoint: Any
) -> None:
    from payments import stripe_client
    from payments.tests import factories as f

    settings.STRIPE_WEBHOOK_SECRETS = [f.WEBHOOK_SECRET]
    settings.GRANT_RETRY_BASE_SECONDS = 0
    customer_id = stripe_client.customer_for_user(user)
    session = f.pack_session(customer_id, user.pk)
    assert f.post_webhook(client, f.event("checkout.session.completed", session)).status_code == 200
    charge = f.charge(customer_id, session["payment_intent"], 499)
    for cents in (100, 300, 100, 300):  # a late first refund and a repeated second change nothing
        body = f.event("charge.refunded", f.refunded(charge, cents))
        assert f.post_webhook(client, body).status_code == 200
    events = _events(EventType.PAYMENT_REFUNDED)
    assert [e.data["payment"]["amount_refunded_cents"] for e in events] == [100, 300]
    assert events[-1].data["payment"] == {
        "reference": f"stripe:{session['payment_intent']}",
        "provider": "stripe",
        "product": "100_credits",
        "amount_cents": 499,
        "amount_refunded_cents": 300,
        "currency": "usd",
        "status": "partially_refunded",
    }
    assert all(e.user_id == user.pk for e in events)
