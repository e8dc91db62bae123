"""Webhook state changes other than sending: endpoints (create, change, rotate the secret,
delete), events (recorded once, with their deliveries, in the transaction of their cause).

Emitting is one call from where the thing happens, inside that code's transaction:

    webhooks.services.event_emit(user_id=…, type=EventType.X, data={…}, dedupe_key="x:<cause id>")

or one of the typed helpers below (`credits_granted`, `key_revoked`, …). The event and one
delivery per subscribed endpoint commit with the cause or not at all; a cause recorded again
(same `dedupe_key`) finds the event it made. The delivery outbox the worker sends from is
`webhooks.outbox`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from timepoint_billing.errors import BadRequest, Conflict, NotFound
from webhooks import sender, signing
from webhooks.models import (
    EventType,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from webhooks.outbox import worker_nudge

logger = logging.getLogger("timepoint.webhooks")

MAX_ROTATION_OVERLAP_SECONDS = 7 * 24 * 3600


# --- Endpoints


def _clean_events(events: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(events))
    unknown = [name for name in chosen if name not in EventType.values]
    if unknown:
        raise BadRequest(
            f"Unknown event type {unknown[0]!r}; known: {', '.join(EventType.values)}.",
            code="invalid_event_type",
        )
    if not chosen:
        raise BadRequest("Pick at least one event type.", code="invalid_event_type")
    return chosen


def _clean_url(url: str) -> str:
    problem = sender.url_problem(url.strip())
    if problem is not None:
        raise BadRequest(problem, code="webhook_url_not_allowed")
    return sender.url_normalize(url)


def _owned(user: User, endpoint_id: str) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(user=user, public_id=endpoint_id).first()
    if endpoint is None:
        raise NotFound("No such webhook endpoint.", code="webhook_endpoint_not_found")
    return endpoint


def endpoint_create(
    *, user: User, url: str, events: Iterable[str], description: str = ""
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint. Returns it and its signing secret, which is shown this once."""
    clean_url, chosen = _clean_url(url), _clean_events(events)
    with transaction.atomic():
        # The user's row is the lock, so two requests at once cannot both pass the cap.
        User.objects.select_for_update().filter(pk=user.pk).first()
        if WebhookEndpoint.objects.filter(user=user).count() >= settings.MAX_WEBHOOK_ENDPOINTS:
            raise Conflict(
                f"At most {settings.MAX_WEBHOOK_ENDPOINTS} webhook endpoints; delete one first.",
                code="webhook_endpoint_limit",
            )
        secret = signing.secret_generate()
        endpoint = WebhookEndpoint.objects.create(
            user=user,
            url=clean_url,
            events=chosen,
            description=description.strip(),
            secret_encrypted=signing.secret_encrypt(secret),
            secret_prefix=signing.secret_display_prefix(secret),
        )
    logger.info({"event": "webhook_endpoint_created", "endpoint": endpoint.public_id})
    return endpoint, secret


def endpoint_update(*, user: User, endpoint_id: str, **changes: Any) -> WebhookEndpoint:
    """Change an endpoint's url, events, description or `is_enabled`; only what is given.

    Deliveries already queued keep their event; a disabled endpoint's queue waits (and its
    retry window keeps running) until it is enabled again."""
    endpoint = _owned(user, endpoint_id)
    fields = []
    if "url" in changes:
        endpoint.url = _clean_url(changes["url"])
        fields.append("url")
    if "events" in changes:
        endpoint.events = _clean_events(changes["events"])
        fields.append("events")
    if "description" in changes:
        endpoint.description = str(changes["description"]).strip()
        fields.append("description")
    if "is_enabled" in changes:
        endpoint.is_enabled = bool(changes["is_enabled"])
        fields.append("is_enabled")
    if fields:
        endpoint.save(update_fields=[*fields, "updated_at"])
        if endpoint.is_enabled:
            transaction.on_commit(worker_nudge)
    return endpoint


def endpoint_delete(*, user: User, endpoint_id: str) -> None:
    """Delete an endpoint and its deliveries (nothing more is sent to it)."""
    _owned(user, endpoint_id).delete()


def endpoint_secret_rotate(
    *, user: User, endpoint_id: str, overlap_seconds: int
) -> tuple[WebhookEndpoint, str]:
    """A new signing secret, shown this once. For `overlap_seconds` (0 … 7 days) every delivery
    is signed with both the new and the old secret, so the receiver can switch in its own time;
    a rotation during an overlap ends the earlier one (only the newest two secrets sign)."""
    if not 0 <= overlap_seconds <= MAX_ROTATION_OVERLAP_SECONDS:
        raise BadRequest(
            f"overlap_seconds must be between 0 and {MAX_ROTATION_OVERLAP_SECONDS}.",
            code="invalid_request",
        )
    with transaction.atomic():
        endpoint = (
            WebhookEndpoint.objects.select_for_update()
            .filter(user=user, public_id=endpoint_id)
            .first()
        )
        if endpoint is None:
            raise NotFound("No such webhook endpoint.", code="webhook_endpoint_not_found")
        secret = signing.secret_generate()
        now = timezone.now()
        if overlap_seconds:
            endpoint.previous_secret_encrypted = endpoint.secret_encrypted
            endpoint.previous_secret_expires_at = now + timedelta(seconds=overlap_seconds)
        else:
            endpoint.previous_secret_encrypted = ""
            endpoint.previous_secret_expires_at = None
        endpoint.secret_encrypted = signing.secret_encrypt(secret)
        endpoint.secret_prefix = signing.secret_display_prefix(secret)
        endpoint.save(
            update_fields=[
                "previous_secret_encrypted",
                "previous_secret_expires_at",
                "secret_encrypted",
                "secret_prefix",
                "updated_at",
            ]
        )
    logger.info({"event": "webhook_secret_rotated", "endpoint": endpoint.public_id})
    return endpoint, secret


# --- Events


def event_emit(*, user_id: int, type: str, data: dict[str, Any], dedupe_key: str) -> WebhookEvent:
    """Record an event once (by `dedupe_key`) with a delivery for each enabled endpoint of the
    user subscribed to `type`, in the caller's transaction (a savepoint when it has one).
    The worker is nudged once it commits. Returns the event (the existing one for a repeat)."""
    if type not in EventType.values:
        raise ValueError(f"unknown webhook event type {type!r}")
    with transaction.atomic():
        event, created = WebhookEvent.objects.get_or_create(
            dedupe_key=dedupe_key[:255], defaults={"user_id": user_id, "type": type, "data": data}
        )
        if not created:
            return event
        # A user has a handful of endpoints: filter the JSON list here, portably.
        endpoints = [
            endpoint
            for endpoint in WebhookEndpoint.objects.filter(user_id=user_id, is_enabled=True)
            if type in endpoint.events
        ]
        retry_until = event.created_at + timedelta(seconds=settings.WEBHOOK_RETRY_WINDOW_SECONDS)
        WebhookDelivery.objects.bulk_create(
            [
                WebhookDelivery(
                    event=event,
                    endpoint=endpoint,
                    next_attempt_at=event.created_at,
                    retry_until=retry_until,
                )
                for endpoint in endpoints
            ]
        )
    logger.info(
        {"event": "webhook_event", "type": type, "id": event.public_id, "endpoints": len(endpoints)}
    )
    if endpoints:
        transaction.on_commit(worker_nudge)
    return event


class KeyFacts(Protocol):
    """What an event says about an API key (apikeys.models.APIKey has these)."""

    pk: Any
    user_id: Any
    name: str
    prefix: str
    mode: str
    revoked_at: datetime | None
    expires_at: datetime | None


class GrantFacts(Protocol):
    """What credits.granted says about a grant (payments.models.CreditGrant has these)."""

    key: str
    user_id: Any
    amount: int
    source: str
    flash_balance_after: int | None


class PaymentFacts(Protocol):
    """What payment.refunded says about a payment (payments.models.Payment has these)."""

    reference: str
    user_id: Any
    provider: str
    product: str
    amount_cents: int
    amount_refunded_cents: int
    currency: str

    @property
    def status(self) -> str: ...


def _key_data(key: KeyFacts) -> dict[str, Any]:
    return {"id": key.pk, "name": key.name, "prefix": key.prefix, "mode": key.mode}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def credits_granted(*, grant: GrantFacts) -> WebhookEvent:
    """A credit grant landed in Flash (a purchase, a renewal, an App Store purchase, a staff
    grant, a refund of a failed generation). Once per grant, however it was confirmed."""
    return event_emit(
        user_id=grant.user_id,
        type=EventType.CREDITS_GRANTED,
        data={
            "reference": grant.key,
            "amount": grant.amount,
            "source": grant.source,
            "balance_after": grant.flash_balance_after,
        },
        dedupe_key=f"credits.granted:{grant.key}",
    )


def key_revoked(*, key: KeyFacts) -> WebhookEvent:
    return event_emit(
        user_id=key.user_id,
        type=EventType.KEY_REVOKED,
        data={"key": _key_data(key), "revoked_at": _iso(key.revoked_at)},
        dedupe_key=f"key.revoked:{key.pk}",
    )


def keys_expiring(*, keys: Iterable[KeyFacts]) -> int:
    """key.expiring once for each key and expiry moment (a key whose expiry moves, e.g. by a
    roll, is announced again for the new moment). Returns how many events this call made."""
    candidates = {
        f"key.expiring:{key.pk}:{int(key.expires_at.timestamp())}": key
        for key in keys
        if key.expires_at is not None
    }
    known = set(
        WebhookEvent.objects.filter(dedupe_key__in=list(candidates)).values_list(
            "dedupe_key", flat=True
        )
    )
    made = 0
    for dedupe_key, key in candidates.items():
        if dedupe_key in known:
            continue
        event_emit(
            user_id=key.user_id,
            type=EventType.KEY_EXPIRING,
            data={"key": _key_data(key), "expires_at": _iso(key.expires_at)},
            dedupe_key=dedupe_key,
        )
        made += 1
    return made


def payment_refunded(*, payment: PaymentFacts) -> WebhookEvent | None:
    """Stripe or Apple reported a refund (Stripe's amount is cumulative): one event per new
    refunded total, so a repeated or reordered notification adds none. Credits are not taken
    back automatically (staff review refunds)."""
    if payment.user_id is None:
        return None
    return event_emit(
        user_id=payment.user_id,
        type=EventType.PAYMENT_REFUNDED,
        data={
            "payment": {
                "reference": payment.reference,
                "provider": payment.provider,
                "product": payment.product,
                "amount_cents": payment.amount_cents,
                "amount_refunded_cents": payment.amount_refunded_cents,
                "currency": payment.currency,
                "status": payment.status,
            }
        },
        dedupe_key=f"payment.refunded:{payment.reference}:{payment.amount_refunded_cents}",
    )
