"""Webhooks to developers: the endpoints they register, the events the gateway records for them,
and one delivery per event and endpoint (the outbox the background worker sends from).

An event is committed in the same transaction as its cause (a grant landing, a key revoked, a
refund recorded), together with one delivery row per endpoint subscribed at that moment; the
worker sends each delivery until the endpoint answers 2xx or the retry window (3 days) ends.
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone


def _public_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(18)}"


def endpoint_public_id() -> str:
    return _public_id("we")


def event_public_id() -> str:
    return _public_id("evt")


def delivery_public_id() -> str:
    return _public_id("whd")


class EventType(models.TextChoices):
    CREDITS_LOW = "credits.low", "Balance fell below your alert threshold"
    CREDITS_GRANTED = "credits.granted", "Credits were added to your balance"
    CREDITS_RECHARGE_FAILED = "credits.recharge_failed", "An automatic recharge failed"
    KEY_REVOKED = "key.revoked", "An API key was revoked"
    KEY_EXPIRING = "key.expiring", "An API key stops working within 7 days"
    PAYMENT_REFUNDED = "payment.refunded", "A payment was refunded"


class WebhookEndpoint(models.Model):
    """An HTTPS URL a developer registered, and the event types it receives.

    The signing secret is kept encrypted (`webhooks.signing`), never as plain text: the gateway
    must be able to sign with it, so a digest will not do. During a rotation the previous
    secret also signs every delivery until `previous_secret_expires_at`."""

    public_id = models.CharField(max_length=40, unique=True, default=endpoint_public_id)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField(max_length=2048)
    description = models.CharField(max_length=200, blank=True, default="")
    # Event type values (EventType); an endpoint receives only these.
    events = models.JSONField(default=list)
    is_enabled = models.BooleanField(default=True)
    secret_encrypted = models.TextField()
    # Shown in lists so a developer can tell which secret is current (`whsec_AbCd…`).
    secret_prefix = models.CharField(max_length=16)
    previous_secret_encrypted = models.TextField(blank=True, default="")
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "webhook endpoint"

    def __str__(self) -> str:
        return f"{self.public_id} → {self.url}"

    def previous_secret_active(self, now: object = None) -> bool:
        moment = now or timezone.now()
        return bool(self.previous_secret_encrypted) and (
            self.previous_secret_expires_at is not None and self.previous_secret_expires_at > moment  # type: ignore[operator]
        )


class WebhookEvent(models.Model):
    """Something that happened to a user's account, recorded once.

    `dedupe_key` names the cause (`credits.granted:stripe:pi_…`, `key.revoked:42`), so a cause
    recorded twice (a retried Stripe event, a grant reconciled by two workers) is one event."""

    public_id = models.CharField(max_length=40, unique=True, default=event_public_id)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_events"
    )
    type = models.CharField(max_length=40, choices=EventType.choices, db_index=True)
    dedupe_key = models.CharField(max_length=255, unique=True)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "webhook event"

    def __str__(self) -> str:
        return f"{self.type} {self.public_id}"

    def payload(self) -> dict[str, object]:
        """The JSON body every delivery of this event carries (the same on every attempt)."""
        return {
            "id": self.public_id,
            "object": "event",
            "type": self.type,
            "created": int(self.created_at.timestamp()),
            "data": self.data,
        }


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"  # not tried yet, or queued again by a resend
    SENDING = "sending", "Sending"  # claimed by one worker
    SUCCEEDED = "succeeded", "Succeeded"  # the endpoint answered 2xx
    RETRYING = "retrying", "Retrying"  # the last attempt failed; tried again at next_attempt_at
    FAILED = "failed", "Failed"  # the retry window ended without a 2xx


class WebhookDelivery(models.Model):
    """One event for one endpoint: its id (`Timepoint-Delivery-Id`, the same on every attempt and
    resend, so a receiver can drop repeats) and where its attempts stand."""

    public_id = models.CharField(max_length=40, unique=True, default=delivery_public_id)
    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    state = models.CharField(
        max_length=16, choices=DeliveryState.choices, default=DeliveryState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # Retries stop after this (created + WEBHOOK_RETRY_WINDOW_SECONDS; a resend moves it).
    retry_until = models.DateTimeField()
    claimed_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "webhook delivery"
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["event", "endpoint"], name="one_delivery_per_endpoint")
        ]
        indexes = [models.Index(fields=["state", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.state})"


class WebhookAttempt(models.Model):
    """One HTTP request of a delivery, as the endpoint answered it (or why it could not)."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    duration_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    # A transport failure, a refused address, a redirect: why no 2xx came back.
    error = models.CharField(max_length=500, blank=True, default="")
    # The first bytes of the endpoint's answer, for the developer debugging their receiver.
    response_excerpt = models.CharField(max_length=1000, blank=True, default="")

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.delivery_id} #{self.number}: {self.status_code or self.error}"

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
