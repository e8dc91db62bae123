"""Low-balance alerts: a threshold per user, and one record per time the balance fell below it.

A crossing is "the Flash balance went from at or above the threshold to below it". The alert row
is `armed` while the last balance seen was at or above the threshold; the worker that sees a
balance below it while armed disarms it with a conditional UPDATE, so exactly one process records
the crossing (and sends its one email and its one `credits.low` webhook), whatever number of
gateway workers, background workers or replicas saw the same balance.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class LowBalanceAlert(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="low_balance_alert"
    )
    threshold = models.PositiveIntegerField(help_text="Credits.")
    # The last balance seen was at or above the threshold: the next one below it is a crossing.
    armed = models.BooleanField(default=True)
    # A charged generation settled: the background worker reads the balance from Flash.
    check_due = models.BooleanField(default=False, db_index=True)
    last_balance = models.IntegerField(null=True, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "low-balance alert"

    def __str__(self) -> str:
        return f"{self.user_id} below {self.threshold}"


class EmailState(models.TextChoices):
    PENDING = "pending", "Pending"  # to be sent (or again, after a failed attempt)
    SENDING = "sending", "Sending"  # claimed by one worker
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"  # gave up after EMAIL_MAX_ATTEMPTS
    NONE = "none", "No email address"


class LowBalanceCrossing(models.Model):
    """One fall below the threshold: one email (an outbox row), one `credits.low` event, and the
    portal's banner while the balance stays below."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="low_balance_crossings"
    )
    threshold = models.PositiveIntegerField()
    balance = models.IntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    email_to = models.EmailField(blank=True, default="")
    email_state = models.CharField(
        max_length=16, choices=EmailState.choices, default=EmailState.PENDING, db_index=True
    )
    email_attempts = models.PositiveIntegerField(default=0)
    email_next_attempt_at = models.DateTimeField(default=timezone.now)
    email_claimed_at = models.DateTimeField(null=True, blank=True)
    email_sent_at = models.DateTimeField(null=True, blank=True)
    email_last_error = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.user_id}: {self.balance} < {self.threshold}"

    @property
    def message_id(self) -> str:
        """The email's Message-ID: a retried send carries the same one, so a mail system (or a
        person) can tell a repeat from a new alert."""
        return f"<low-balance-{self.pk}@timepoint-billing>"
