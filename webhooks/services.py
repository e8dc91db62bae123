"""Everything in webhooks that changes state: endpoints (create, change, rotate the secret,
delete), events (recorded once, with their deliveries, in the transaction of their cause) and the
delivery outbox the background worker sends from.

Emitting is one call from where the thing happens, inside that code's transaction:

    webhooks.services.event_emit(user_id=…, type=EventType.X, data={…}, dedupe_key="x:<cause id>")

or one of the typed helpers below (`credits_granted`, `key_revoked`, …). The event and one
delivery per subscribed endpoint commit with the cause or not at all; a cause recorded again
(same `dedupe_key`) finds the event it made. The worker (`deliveries_send_due`, run by
`manage.py run_grants`) claims each due delivery (one worker per delivery), signs it, POSTs it and
records the attempt; it retries with exponential backoff until the endpoint answers 2xx or
WEBHOOK_RETRY_WINDOW_SECONDS (3 days) have passed. Delivery is at least once: a worker killed
after sending and before recording sends again, with the same `Timepoint-Delivery-Id`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import User
from timepoint_billing.errors import BadRequest, Conflict, NotFound
from timepoint_billing.wake import wait_for_wake, wake
from webhooks import sender, signing
from webhooks.models import (
    DeliveryState,
    EventType,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

logger = logging.getLogger("timepoint.webhooks")

MAX_ROTATION_OVERLAP_SECONDS = 7 * 24 * 3600
DUE_STATES = (DeliveryState.PENDING, DeliveryState.RETRYING)
# The cache key `worker_nudge` changes; the worker's delivery loop watches it between passes.
WAKE_KEY = "webhooks:worker:wake"


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


# --- Deliveries: the outbox


def worker_nudge() -> None:
    """Wake the worker's delivery loop now rather than at its next pass (best effort: without
    a shared cache the loop finds the delivery within WEBHOOK_WORKER_SLEEP_SECONDS)."""
    wake(WAKE_KEY)


def worker_wait(*, seconds: float, seen: Any) -> Any:
    """The delivery loop's pause: up to `seconds`, shorter once an event is committed."""
    return wait_for_wake(WAKE_KEY, seconds=seconds, seen=seen)


def sending_lease_seconds() -> float:
    """How long a claim is trusted: one attempt's deadline and then some."""
    return float(settings.WEBHOOK_TIMEOUT_SECONDS) + 30.0


def _due_q(now: datetime) -> Q:
    stale = now - timedelta(seconds=sending_lease_seconds())
    return Q(endpoint__is_enabled=True) & (
        Q(state__in=DUE_STATES, next_attempt_at__lte=now)
        | Q(state=DeliveryState.SENDING, claimed_at__lt=stale)
    )


def _claim(delivery_id: int) -> WebhookDelivery | None:
    """Take the delivery for this worker, or None when it is not due or another worker has it
    (the conditional UPDATE lets exactly one claimer win; PostgreSQL's SKIP LOCKED lets parallel
    workers pass each other by)."""
    now = timezone.now()
    with transaction.atomic():
        rows = WebhookDelivery.objects.filter(pk=delivery_id).filter(_due_q(now))
        if connection.features.has_select_for_update_skip_locked:
            if rows.select_for_update(skip_locked=True, of=("self",)).first() is None:
                return None
        claimed = WebhookDelivery.objects.filter(
            pk__in=list(rows.values_list("pk", flat=True))
        ).update(state=DeliveryState.SENDING, claimed_at=now, attempts=F("attempts") + 1)
    if not claimed:
        return None
    return WebhookDelivery.objects.select_related("event", "endpoint").get(pk=delivery_id)


def retry_delay_seconds(attempts: int) -> float:
    """Exponential: base, twice that, four times … capped (60 s doubling to 12 h: ~15 attempts in 3
    days)."""
    base = settings.WEBHOOK_RETRY_BASE_SECONDS * (2 ** max(0, attempts - 1))
    return float(min(settings.WEBHOOK_RETRY_MAX_SECONDS, base))


def _signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    found = [signing.secret_decrypt(endpoint.secret_encrypted)]
    if endpoint.previous_secret_active(now):
        found.append(signing.secret_decrypt(endpoint.previous_secret_encrypted))
    return found


def _request(delivery: WebhookDelivery) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(delivery.event.payload(), separators=(",", ":")).encode()
    timestamp = int(time.time())
    header = signing.signature_header(
        _signing_secrets(delivery.endpoint, timezone.now()), timestamp, body
    )
    headers = {
        signing.SIGNATURE_HEADER: header,
        "Timepoint-Event-Id": delivery.event.public_id,
        "Timepoint-Event-Type": delivery.event.type,
        "Timepoint-Delivery-Id": delivery.public_id,
        "Timepoint-Delivery-Attempt": str(delivery.attempts),
    }
    return body, headers


def delivery_attempt(delivery_id: int) -> WebhookDelivery | None:
    """Send one delivery if it is due and no other worker has it; record the attempt. Safe to
    call any time from any number of processes. Returns the delivery as left, or None when not
    claimed."""
    delivery = _claim(delivery_id)
    if delivery is None:
        return None
    now = timezone.now()
    if delivery.attempts > 1 and now > delivery.retry_until:
        # Waited past its window (the endpoint was disabled, or the worker was down).
        return _record(delivery, sender.Answer(None, "retry window ended", "", 0), now)
    try:
        body, headers = _request(delivery)
    except signing.SecretUnreadable as exc:
        return _record(delivery, sender.Answer(None, f"{exc} Rotate it.", "", 0), now)
    answer = sender.post(url=delivery.endpoint.url, body=body, headers=headers)
    return _record(delivery, answer, now)


def _record(delivery: WebhookDelivery, answer: sender.Answer, started: datetime) -> WebhookDelivery:
    now = timezone.now()
    fields: dict[str, Any] = {
        "claimed_at": None,
        "last_attempt_at": started,
        "last_status_code": answer.status_code,
        "last_error": answer.error,
    }
    if answer.succeeded:
        fields.update(state=DeliveryState.SUCCEEDED, delivered_at=now)
    elif now >= delivery.retry_until:
        fields.update(state=DeliveryState.FAILED)
    else:
        delay = timedelta(seconds=retry_delay_seconds(delivery.attempts))
        fields.update(
            state=DeliveryState.RETRYING,
            next_attempt_at=min(now + delay, delivery.retry_until),
        )
    with transaction.atomic():
        # Only while the claim is ours: past the lease another worker may have taken it over.
        held = WebhookDelivery.objects.filter(
            pk=delivery.pk, state=DeliveryState.SENDING, claimed_at=delivery.claimed_at
        ).update(**fields)
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=delivery.attempts,
            started_at=started,
            duration_ms=answer.duration_ms,
            status_code=answer.status_code,
            error=answer.error,
            response_excerpt=answer.excerpt,
        )
    for name, value in fields.items():
        setattr(delivery, name, value)
    log = {
        "event": "webhook_attempt",
        "delivery": delivery.public_id,
        "endpoint": delivery.endpoint.public_id,
        "attempt": delivery.attempts,
        "status": answer.status_code,
        "state": fields["state"],
    }
    if answer.error:
        log["error"] = answer.error
    if not held:
        logger.error({**log, "event": "webhook_claim_lost"})
    elif answer.succeeded:
        logger.info(log)
    else:
        logger.warning(log)
    return delivery


def deliveries_due(*, limit: int = 50) -> list[int]:
    """Ids of deliveries due now, oldest first."""
    return list(
        WebhookDelivery.objects.filter(_due_q(timezone.now()))
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )


def deliveries_send_due(*, limit: int = 50) -> int:
    """Attempt every due delivery, one after another. Returns how many this call claimed."""
    return sum(1 for delivery_id in deliveries_due(limit=limit) if delivery_attempt(delivery_id))


def delivery_resend(*, delivery_id: str, user: User | None = None) -> WebhookDelivery:
    """Queue a delivery again now, with a new retry window and the same delivery id (a receiver
    that already has it can drop it). `user` None: staff (any delivery). A delivery being sent
    right now is left to finish."""
    deliveries = WebhookDelivery.objects.filter(public_id=delivery_id)
    if user is not None:
        deliveries = deliveries.filter(endpoint__user=user)
    with transaction.atomic():
        delivery = deliveries.select_for_update(of=("self",)).first()
        if delivery is None:
            raise NotFound("No such webhook delivery.", code="webhook_delivery_not_found")
        if delivery.state == DeliveryState.SENDING:
            raise Conflict("This delivery is being sent right now.", code="delivery_in_flight")
        now = timezone.now()
        delivery.state = DeliveryState.PENDING
        delivery.next_attempt_at = now
        delivery.retry_until = now + timedelta(seconds=settings.WEBHOOK_RETRY_WINDOW_SECONDS)
        delivery.save(update_fields=["state", "next_attempt_at", "retry_until"])
        transaction.on_commit(worker_nudge)
    logger.info({"event": "webhook_resend", "delivery": delivery.public_id, "staff": user is None})
    return delivery
