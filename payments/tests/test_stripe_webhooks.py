"""Stripe webhooks: signatures, storing once, and exactly one grant per payment."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from payments.models import CreditGrant, GrantState, Payment, StripeWebhookEvent
from payments.tests import factories as f


def _flash_grants(flash_peer: Any, user: Any) -> list[dict[str, Any]]:
    return [row for row in flash_peer.ledger_for(user.flash_user_id) if row["amount"] > 0]


@pytest.mark.django_db(transaction=True)
def test_the_web_process_records_the_grant_and_only_the_worker_sends_it(
    user: Any, customer_id: str, flash_peer: Any
):
    """One delivery path: the webhook's process commits the grant and nudges the worker; it
    never calls Flash itself (no thread of its own racing `run_grants`)."""
    from payments.services import WORKER_WAKE_KEY

    body = f.event("checkout.session.completed", f.pack_session(customer_id, user.pk))
    before = cache.get(WORKER_WAKE_KEY)

    assert f.post_webhook(Client(), body).status_code == 200

    time.sleep(1.0)  # what a background thread would have needed to reach Flash
    assert _flash_grants(flash_peer, user) == []
    assert CreditGrant.objects.get().state == GrantState.PENDING
    assert cache.get(WORKER_WAKE_KEY) not in (None, before)  # the worker was nudged

    call_command("run_grants", "--once")
    assert CreditGrant.objects.get().state == GrantState.SENT
    assert len(_flash_grants(flash_peer, user)) == 1
    assert flash_peer.user_balance(user.flash_user_id) == 150


def test_a_sleeping_worker_wakes_when_nudged(settings: Any) -> None:
    from payments.services import worker_nudge, worker_wait

    settings.GRANT_WORKER_NUDGE_POLL_SECONDS = 0.05
    seen = worker_wait(seconds=0, seen=None)
    assert worker_wait(seconds=0.2, seen=seen) == seen  # nothing new: it slept its time
    nudger = threading.Timer(0.3, worker_nudge)
    started = time.monotonic()
    nudger.start()
    woke = worker_wait(seconds=60, seen=seen)
    nudger.join()
    assert woke != seen
    assert time.monotonic() - started < 10  # far sooner than its 60 s


def test_pack_purchase_grants_once(client: Client, user: Any, customer_id: str, flash_peer: Any):
    body = f.event("checkout.session.completed", f.pack_session(customer_id, user.pk))

    response = f.post_webhook(client, body)
    assert response.status_code == 200
    grant = CreditGrant.objects.get()
    assert grant.state == GrantState.PENDING
    assert grant.amount == 100 and grant.transaction_type == "stripe_purchase"

    call_command("run_grants", "--once")

    grant.refresh_from_db()
    assert grant.state == GrantState.SENT
    assert flash_peer.user_balance(user.flash_user_id) == 150
    rows = _flash_grants(flash_peer, user)
    assert len(rows) == 1
    assert rows[0]["type"] == "stripe_purchase"
    assert f"[grant:{grant.key}]" in rows[0]["description"]
    assert Payment.objects.get().grant == grant


def test_same_event_twice_and_after_two_days_grants_once(
    client: Client, user: Any, customer_id: str, flash_peer: Any
):
    body = f.event("checkout.session.completed", f.pack_session(customer_id, user.pk))
    assert f.post_webhook(client, body).status_code == 200
    call_command("run_grants", "--once")
    assert f.post_webhook(client, body).json()["duplicate"] is True

    # Two days later Stripe redelivers it (a fresh signature: the body is the same event).
    StripeWebhookEvent.objects.update(received_at=timezone.now() - timedelta(days=2))
    CreditGrant.objects.update(created_at=timezone.now() - timedelta(days=2))
    assert f.post_webhook(client, body).status_code == 200
    call_command("run_grants", "--once")

    assert StripeWebhookEvent.objects.count() == 1
    assert CreditGrant.objects.count() == 1
    assert len(_flash_grants(flash_peer, user)) == 1
    assert flash_peer.user_balance(user.flash_user_id) == 150


def test_async_payment_succeeded_after_completed_grants_once(
    client: Client, user: Any, customer_id: str, flash_peer: Any
):
    session = f.pack_session(customer_id, user.pk)
    session["payment_status"] = "unpaid"  # e.g. a bank debit: not paid yet
    f.post_webhook(client, f.event("checkout.session.completed", session))
    assert CreditGrant.objects.count() == 0

    session["payment_status"] = "paid"
    f.post_webhook(client, f.event("checkout.session.async_payment_succeeded", session))
    f.post_webhook(client, f.event("checkout.session.async_payment_succeeded", session))
    call_command("run_grants", "--once")

    assert CreditGrant.objects.count() == 1
    assert len(_flash_grants(flash_peer, user)) == 1


def test_checkout_and_invoice_for_first_subscription_payment_grant_once(
    client: Client, user: Any, customer_id: str, flash_peer: Any
):
    sub = f.subscription(customer_id, "historian")
    inv = f.invoice(customer_id, sub, "historian")
    session = f.subscription_session(customer_id, user.pk, "historian", inv["id"], sub["id"])

    f.post_webhook(client, f.event("checkout.session.completed", session))
    f.post_webhook(client, f.event("invoice.paid", inv))
    call_command("run_grants", "--once")

    grant = CreditGrant.objects.get()
    assert grant.key == f"stripe:{inv['id']}"
    assert grant.amount == 200 and grant.transaction_type == "subscription_grant"
    assert len(_flash_grants(flash_peer, user)) == 1
    assert flash_peer.user_balance(user.flash_user_id) == 250

    # The next month's invoice is a new payment: a second grant.
    renewal = f.invoice(customer_id, sub, "historian", billing_reason="subscription_cycle")
    f.post_webhook(client, f.event("invoice.paid", renewal))
    call_command("run_grants", "--once")
    assert CreditGrant.objects.count() == 2
    assert flash_peer.user_balance(user.flash_user_id) == 450


@pytest.mark.parametrize(
    "mangle",
    ["tampered", "wrong_secret", "stale", "no_header", "not_json", "not_event"],
)
def test_bad_webhooks_are_rejected_and_nothing_is_stored(
    client: Client, user: Any, customer_id: str, mangle: str
):
    body = f.event("checkout.session.completed", f.pack_session(customer_id, user.pk))
    kwargs: dict[str, Any] = {"content_type": "application/json"}
    if mangle == "tampered":
        header = f.signature(body)
        body = body.replace(b'"100_credits"', b'"500_credits"')
    elif mangle == "wrong_secret":
        header = f.signature(body, secret="whsec_someone_else")
    elif mangle == "stale":
        header = f.signature(body, timestamp=int(time.time()) - 301)
    elif mangle == "no_header":
        header = ""
    elif mangle == "not_json":
        body = b"{not json"
        header = f.signature(body)
    else:
        body = b'{"id": "evt_1", "type": "invoice.paid"}'
        header = f.signature(body)
    if header:
        kwargs["HTTP_STRIPE_SIGNATURE"] = header

    response = client.post("/api/v1/billing/webhooks/stripe", data=body, **kwargs)

    assert response.status_code == 400
    assert response.json()["code"] in ("invalid_signature", "malformed_event")
    assert StripeWebhookEvent.objects.count() == 0
    assert CreditGrant.objects.count() == 0


def test_old_secret_is_accepted_during_rotation(client: Client, user: Any, customer_id: str):
    body = f.event("checkout.session.completed", f.pack_session(customer_id, user.pk))
    assert f.post_webhook(client, body, secret=f.OLD_WEBHOOK_SECRET).status_code == 200
    assert StripeWebhookEvent.objects.count() == 1


def test_signature_300s_old_is_still_accepted(client: Client, user: Any, customer_id: str):
    body = f.event("checkout.session.completed", f.pack_session(customer_id, user.pk))
    assert f.post_webhook(client, body, timestamp=int(time.time()) - 295).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicate_deliveries_grant_once(
    user: Any, customer_id: str, flash_peer: Any, settings: Any
):
    body = f.event("checkout.session.completed", f.pack_session(customer_id, user.pk))
    statuses: list[int] = []
    barrier = threading.Barrier(4)

    def deliver() -> None:
        from django.db import connections

        try:
            barrier.wait()
            # Like Stripe: a non-2xx answer is delivered again (SQLite's in-memory test database
            # may answer "table is locked" to a concurrent writer; PostgreSQL never needs this).
            for _ in range(20):
                status = f.post_webhook(Client(), body).status_code
                if status == 200:
                    break
                time.sleep(0.05)
            statuses.append(status)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert statuses == [200] * 4
    call_command("run_grants", "--once")
    call_command("run_grants", "--once")
    assert StripeWebhookEvent.objects.count() == 1
    assert CreditGrant.objects.count() == 1
    assert len(_flash_grants(flash_peer, user)) == 1
    assert flash_peer.user_balance(user.flash_user_id) == 150


def test_refunds_are_cumulative_and_disputes_recorded_without_touching_credits(
    client: Client, user: Any, customer_id: str, flash_peer: Any
):
    session = f.pack_session(customer_id, user.pk)
    f.post_webhook(client, f.event("checkout.session.completed", session))
    call_command("run_grants", "--once")
    charge = f.charge(customer_id, session["payment_intent"], 499)

    f.post_webhook(client, f.event("charge.refunded", f.refunded(charge, 100)))
    f.post_webhook(client, f.event("charge.refunded", f.refunded(charge, 300)))
    # A late, out-of-order delivery of the first partial refund changes nothing.
    f.post_webhook(client, f.event("charge.refunded", f.refunded(charge, 100)))

    payment = Payment.objects.get()
    assert payment.amount_refunded_cents == 300
    assert payment.status == "partially_refunded" and payment.needs_review

    f.post_webhook(client, f.event("charge.dispute.created", f.dispute(charge)))
    payment.refresh_from_db()
    assert payment.disputed and payment.dispute_reason == "fraudulent"
    assert payment.user == user and payment.product == "100_credits"
    assert Payment.objects.count() == 1
    # No credits were silently taken back.
    assert flash_peer.user_balance(user.flash_user_id) == 150


def test_paid_event_kept_for_attention_grants_once_when_retried_after_linking(
    client: Client, user: Any, customer_id: str, flash_peer: Any
):
    from djstripe.models import Customer

    from payments import services

    # The Stripe customer is mirrored but not linked to anyone yet (made in the Dashboard, say),
    # and the session carries no user id of ours.
    Customer.objects.filter(id=customer_id).update(subscriber=None)
    session = f.pack_session(customer_id, user.pk)
    del session["metadata"]["user_id"]
    assert f.post_webhook(client, f.event("checkout.session.completed", session)).status_code == 200
    event = StripeWebhookEvent.objects.get()
    assert event.state == "needs_attention" and "No user" in event.last_error
    assert CreditGrant.objects.count() == 0

    Customer.objects.filter(id=customer_id).update(subscriber=user)  # staff link the customer
    assert services.stripe_event_retry(event_id=event.pk) is True
    assert services.stripe_event_retry(event_id=event.pk) is True  # a double click
    call_command("run_grants", "--once")
    assert services.stripe_event_retry(event_id=event.pk) is False  # processed: nothing to redo

    event.refresh_from_db()
    assert event.state == "processed"
    grant = CreditGrant.objects.get()
    assert grant.key == f"stripe:{session['payment_intent']}" and grant.state == GrantState.SENT
    assert Payment.objects.get().grant == grant
    assert len(_flash_grants(flash_peer, user)) == 1
    assert flash_peer.user_balance(user.flash_user_id) == 150


def test_retrying_an_event_whose_grant_exists_does_not_grant_again(
    client: Client, user: Any, customer_id: str, flash_peer: Any
):
    from payments import services

    body = f.event("checkout.session.completed", f.pack_session(customer_id, user.pk))
    f.post_webhook(client, body)
    event = StripeWebhookEvent.objects.get()
    # The grant was recorded, then the mirror work gave up: staff retry the event.
    StripeWebhookEvent.objects.filter(pk=event.pk).update(state="needs_attention")

    assert services.stripe_event_retry(event_id=event.pk) is True
    call_command("run_grants", "--once")

    assert CreditGrant.objects.count() == 1 and Payment.objects.count() == 1
    assert len(_flash_grants(flash_peer, user)) == 1
    assert flash_peer.user_balance(user.flash_user_id) == 150
