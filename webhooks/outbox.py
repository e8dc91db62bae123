"""The webhook delivery outbox: the background worker claims each due delivery, signs it, POSTs it
and records the attempt.

The worker (`deliveries_send_due`, run by `manage.py run_grants`) claims each due delivery (one
worker per delivery), signs it, POSTs it and records the attempt; it retries with exponential
backoff until the endpoint answers 2xx or WEBHOOK_RETRY_WINDOW_SECONDS (3 days) have passed.
Delivery is at least once: a worker killed after sending and before recording sends again, with
the same `Timepoint-Delivery-Id`.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import User
from timepoint_billing.errors import Conflict, NotFound
from timepoint_billing.wake import wait_for_wake, wake
from webhooks import sender, signing
from webhooks.models import DeliveryState, WebhookAttempt, WebhookDelivery, WebhookEndpoint

logger = logging.getLogger("timepoint.webhooks")

DUE_STATES = (DeliveryState.PENDING, DeliveryState.RETRYING)
# The cache key `worker_nudge` changes; the worker's delivery loop watches it between passes.
WAKE_KEY = "webhooks:worker:wake"


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
