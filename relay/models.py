"""What the relay must remember about timepoints that Flash does not (upstreams.md pitfall 10),
and the asynchronous generations it has yet to settle (relay/async_generation.py).

Flash saves a streamed timepoint with no owner and as public, and it cannot hold a private
timepoint without an owner that anyone could still read. So the gateway keeps the owner and the
requested visibility of each streamed timepoint here and enforces them on every timepoint route.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Visibility(models.TextChoices):
    PUBLIC = "public"
    PRIVATE = "private"


class StreamedTimepoint(models.Model):
    """A timepoint made through `POST /generate/stream`: who it belongs to and who may see it.

    Written from the stream's `done` event before that event reaches the client. The user is
    PROTECTed: a user row is anonymised on account deletion, never removed, and removing it
    would make a private streamed timepoint readable by everyone."""

    timepoint_id = models.CharField(max_length=36, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="streamed_timepoints"
    )
    visibility = models.CharField(max_length=8, choices=Visibility.choices)
    # From the `done` event, for "my timepoints" without a call per item.
    query = models.CharField(max_length=500)
    slug = models.CharField(max_length=255, blank=True, default="")
    status = models.CharField(max_length=16)
    year = models.IntegerField(null=True, blank=True)
    location = models.CharField(max_length=255, null=True, blank=True)
    has_image = models.BooleanField(default=False)
    request_id = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "deleted_at", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.timepoint_id} ({self.visibility}, user {self.user_id})"


class AsyncGenerationState(models.TextChoices):
    RUNNING = "running"
    COMPLETED = "completed"  # charged, nothing to give back
    REFUNDED_BY_FLASH = "refunded_by_flash"  # the background run raised: Flash refunded it
    REFUNDED = "refunded"  # failed without Flash's refund: the gateway recorded one


class AsyncGeneration(models.Model):
    """A generation started with `POST /generate/async`, until it is settled."""

    timepoint_id = models.CharField(max_length=36, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="async_generations"
    )
    flash_user_id = models.CharField(max_length=64)
    query = models.CharField(max_length=500)
    preset = models.CharField(max_length=32)
    cost = models.PositiveIntegerField()
    request_id = models.CharField(max_length=64)
    state = models.CharField(
        max_length=20, choices=AsyncGenerationState.choices, default=AsyncGenerationState.RUNNING
    )
    created_at = models.DateTimeField(default=timezone.now)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "created_at"])]

    def __str__(self) -> str:
        return f"{self.timepoint_id} ({self.state})"


class OutcomeState(models.TextChoices):
    IN_FLIGHT = "in_flight", "In flight"  # committed before Flash was called; no answer yet
    UNKNOWN = "unknown", "Outcome unknown"  # the answer was lost: the worker asks Flash
    SETTLED = "settled", "Settled"  # charged or refunded, for good
    NEEDS_ATTENTION = "needs_attention", "Needs attention"  # Flash never told; staff decide


class Outcome(models.TextChoices):
    COMPLETED = "completed", "Completed (charged)"
    FAILED = "failed", "Failed (refunded)"
    NOT_CHARGED = "not_charged", "Not charged by Flash"
    ABANDONED = "abandoned", "Client left (charged)"


class ForwardedGeneration(models.Model):
    """One generation the gateway forwarded to Flash, committed *before* the call.

    Flash charges when a generation starts and charges failed runs (upstreams.md A4, pitfall 9).
    When the gateway loses Flash's answer (a cut connection, a timeout after the request was
    sent, a truncated body, a stream cut before its final event, or a gateway worker killed
    mid-call), this row is how the background worker finds out from Flash what happened and
    refunds exactly once (`relay.refunds`). `flash_timepoint_id` is unique: one timepoint settles
    one generation, and the refund is keyed on it (`refund:tp:<id>`)."""

    request_id = models.CharField(max_length=128, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="forwarded_generations"
    )
    flash_user_id = models.CharField(max_length=64)
    route = models.CharField(max_length=16)  # sync | stream | async
    query = models.TextField()
    preset = models.CharField(max_length=32)
    cost = models.PositiveIntegerField()
    forwarded_at = models.DateTimeField(default=timezone.now)
    state = models.CharField(
        max_length=16,
        choices=OutcomeState.choices,
        default=OutcomeState.IN_FLIGHT,
        db_index=True,
    )
    outcome = models.CharField(max_length=16, choices=Outcome.choices, blank=True, default="")
    flash_timepoint_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    credits_charged = models.IntegerField(null=True, blank=True)  # what the user finally paid
    refund_key = models.CharField(max_length=255, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    next_check_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-forwarded_at"]
        indexes = [models.Index(fields=["state", "next_check_at"])]

    def __str__(self) -> str:
        return f"{self.route} {self.request_id} ({self.state})"
