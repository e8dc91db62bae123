"""Stripe webhooks: verify and store each event once, record what it means (`stripe_records`) in
the same transaction, then let the worker mirror it through dj-stripe and move plans; staff retry
what could not be acted on."""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from payments import stripe_client
from payments.catalogue import catalogue_refresh, catalogue_sync
from payments.models import EventState, StripeWebhookEvent
from payments.plans import plan_sync_for_customer
from payments.stripe_records import RECORDERS, NeedsAttention, RecordLater
from payments.stripe_shapes import object_id
from payments.worker import backoff_seconds, worker_nudge
from timepoint_billing.errors import BadRequest
from timepoint_billing.metrics import WEBHOOK_LAG

logger = logging.getLogger("timepoint.payments")

SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    }
)
PLAN_EVENTS = SUBSCRIPTION_EVENTS | {"checkout.session.completed", "invoice.paid"}
# Products and prices: the catalogue is rebuilt from the mirror after each (payments.catalogue).
CATALOGUE_EVENTS = frozenset(
    f"{kind}.{verb}" for kind in ("product", "price") for verb in ("created", "updated", "deleted")
)
# What the webhook endpoint must send: what is recorded, what moves plans, what prices things.
STRIPE_WEBHOOK_EVENTS = sorted({*RECORDERS, *SUBSCRIPTION_EVENTS, *CATALOGUE_EVENTS})


def _parse_stripe_event(payload: bytes) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The event body is not JSON.", code="malformed_event")
    ok = (
        isinstance(data, dict)
        and isinstance(data.get("id"), str)
        and data["id"].startswith("evt_")
        and isinstance(data.get("type"), str)
        and isinstance(data.get("data"), dict)
        and isinstance(data["data"].get("object"), dict)
    )
    if not ok:
        raise BadRequest("The body is not a Stripe event.", code="malformed_event")
    return dict(data)


def stripe_webhook_receive(*, payload: bytes, signature_header: str) -> tuple[int, bool]:
    """Verify, store once, and record what the event means, in one transaction.

    Returns (stored event id, created). The mirror and plan work is the worker's, nudged after
    the commit."""
    if not stripe_client.webhook_verify(payload=payload, signature_header=signature_header):
        raise BadRequest("Invalid Stripe signature.", code="invalid_signature")
    data = _parse_stripe_event(payload)
    with transaction.atomic():
        event, created = StripeWebhookEvent.objects.get_or_create(
            stripe_id=data["id"],
            defaults={
                "type": data["type"],
                "livemode": bool(data.get("livemode")),
                "payload": data,
            },
        )
        if not created:
            return event.pk, False
        if isinstance(data.get("created"), int | float):
            WEBHOOK_LAG.labels("stripe", "received").observe(
                max(0.0, time.time() - float(data["created"]))
            )
        if not _stripe_event_record(event):
            return event.pk, True
        transaction.on_commit(worker_nudge)
    return event.pk, True


def _stripe_event_record(event: StripeWebhookEvent) -> bool:
    """Record what a stored event means (grants, payments, refunds) in a savepoint of the caller's
    transaction. Every recorder is idempotent by its grant/payment key, so running it again (a
    staff retry) finds what an earlier run made. An event the gateway cannot act on alone is kept
    as needs-attention; returns False then. One naming a price the catalogue does not hold yet
    is left to the worker (`recorded` False), which syncs the catalogue and records it again."""
    recorder = RECORDERS.get(event.type)
    if recorder is None:
        return True
    try:
        with transaction.atomic():
            recorder(event, event.payload["data"]["object"])
    except RecordLater as exc:
        event.recorded = False
        event.last_error = str(exc)[:1000]
        event.save(update_fields=["recorded", "last_error"])
    except (NeedsAttention, KeyError, TypeError, ValueError) as exc:
        logger.error({"event": "stripe_event_unusable", "id": event.stripe_id})
        event.state = EventState.NEEDS_ATTENTION
        event.last_error = str(exc)[:1000] or type(exc).__name__
        event.save(update_fields=["state", "last_error"])
        return False
    return True


def _record_after_sync(event: StripeWebhookEvent) -> None:
    """The worker's second try at an event whose price was unknown: sync the catalogue from
    Stripe, then record it; still unknown → raise, and the event is retried later."""
    catalogue_sync()
    with transaction.atomic():
        RECORDERS[event.type](event, event.payload["data"]["object"])
        StripeWebhookEvent.objects.filter(pk=event.pk).update(recorded=True)


def stripe_event_process(event_id: int) -> bool:
    """The work after the commit: dj-stripe mirrors the event (it re-fetches objects from the
    Stripe API) and plans follow the mirrored subscriptions. A failure keeps the event for a
    later retry; nothing is lost. Returns True when processed now."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.GRANT_SENDING_LEASE_SECONDS)
    claimed = StripeWebhookEvent.objects.filter(
        pk=event_id, state=EventState.RECEIVED, next_attempt_at__lte=now
    ).update(next_attempt_at=lease, attempts=F("attempts") + 1)
    if not claimed:
        return False
    event = StripeWebhookEvent.objects.get(pk=event_id)
    try:
        stripe_client.event_mirror(event.payload)
        if not event.recorded:
            _record_after_sync(event)
        if event.type in CATALOGUE_EVENTS:
            catalogue_refresh()
        if event.type in PLAN_EVENTS:
            customer_id = object_id(event.payload["data"]["object"].get("customer"))
            if customer_id:
                plan_sync_for_customer(customer_id=customer_id)
    except Exception as exc:
        give_up = event.attempts >= settings.GRANT_MAX_ATTEMPTS
        StripeWebhookEvent.objects.filter(pk=event_id).update(
            state=EventState.NEEDS_ATTENTION if give_up else EventState.RECEIVED,
            last_error=f"{type(exc).__name__}: {exc}"[:1000],
            next_attempt_at=timezone.now() + timedelta(seconds=backoff_seconds(event.attempts)),
        )
        logger.warning({"event": "stripe_event_retry", "id": event.stripe_id, "error": str(exc)})
        return False
    processed_at = timezone.now()
    StripeWebhookEvent.objects.filter(pk=event_id).update(
        state=EventState.PROCESSED, processed_at=processed_at, last_error=""
    )
    WEBHOOK_LAG.labels("stripe", "processed").observe(
        max(0.0, (processed_at - event.received_at).total_seconds())
    )
    return True


def stripe_events_process_due(*, limit: int = 100) -> int:
    ids = list(
        StripeWebhookEvent.objects.filter(
            state=EventState.RECEIVED, next_attempt_at__lte=timezone.now()
        )
        .order_by("received_at")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(1 for event_id in ids if stripe_event_process(event_id))


@transaction.atomic
def stripe_event_retry(*, event_id: int) -> bool:
    """Staff retry of a stored, unprocessed event: record what it means again (an event kept as
    needs-attention never made its grant; the user may be linked now), then queue the mirror/plan
    work. The event row is locked, so two retries at once record it once. Returns False when the
    event is already processed or still cannot be acted on."""
    event = (
        StripeWebhookEvent.objects.select_for_update()
        .filter(pk=event_id)
        .exclude(state=EventState.PROCESSED)
        .first()
    )
    if event is None or not _stripe_event_record(event):
        return False
    StripeWebhookEvent.objects.filter(pk=event.pk).update(
        state=EventState.RECEIVED, next_attempt_at=timezone.now(), attempts=0, last_error=""
    )
    transaction.on_commit(worker_nudge)
    return True
