"""Low-balance watches: a threshold per user and purpose, and one record per time the balance
fell below it.

A crossing is "the Flash balance went from at or above the threshold to below it". A watch is
`armed` while the last balance seen was at or above its threshold; the process that sees a
balance below it while armed disarms it with a conditional UPDATE, so exactly one process records
the crossing, whatever number of gateway workers, background workers or replicas saw the same
balance. What a crossing then does depends on the watch's purpose: the user's low-balance alert
sends its one email and its one `credits.low` webhook; their auto-recharge buys their pack
(payments, which receives `alerts.signals.balance_crossed`).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class WatchPurpose(models.TextChoices):
    ALERT = "alert", "Low-balance alert"  # an email, a credits.low webhook, the portal banner
    RECHARGE = "recharge", "Auto-recharge"  # payments buys the user's chosen credit pack


class LowBalanceAlert(models.Model):
    """A threshold the user's Flash balance is watched against, for one purpose: the user's
    low-balance alert, or their auto-recharge (kept in step with its rule by payments)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="low_balance_alerts"
    )
    purpose = models.CharField(
        max_length=16, choices=WatchPurpose.choices, default=WatchPurpose.ALERT
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
        constraints = [
            models.UniqueConstraint(
                fields=["user", "purpose"], name="one_low_balance_alert_per_purpose"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user_id} below {self.threshold} ({self.purpose})"


class EmailState(models.TextChoices):
    PENDING = "pending", "Pending"  # to be sent (or again, after a failed attempt)
    SENDING = "sending", "Sending"  # claimed by one worker
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"  # gave up after EMAIL_MAX_ATTEMPTS
    NONE = "none", "No email"  # no address, or nothing to tell


class EmailOutbox(models.Model):
    """The one email a row owes its user, sent by the worker (`alerts.services.emails_send_due`)
    once the row is committed, retried while the SMTP server fails, with one Message-ID per row
    (`message_id`, which each model defines)."""

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
        abstract = True

    @property
    def message_id(self) -> str:
        raise NotImplementedError


class LowBalanceCrossing(EmailOutbox):
    """One fall below a watch's threshold. An alert's: one email, one `credits.low` event, and
    the portal's banner while the balance stays below; an auto-recharge's: the recharge it keys
    (no email of its own)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="low_balance_crossings"
    )
    purpose = models.CharField(
        max_length=16, choices=WatchPurpose.choices, default=WatchPurpose.ALERT
    )
    threshold = models.PositiveIntegerField()
    balance = models.IntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.user_id}: {self.balance} < {self.threshold} ({self.purpose})"

    @property
    def message_id(self) -> str:
        """The email's Message-ID: a retried send carries the same one, so a mail system (or a
        person) can tell a repeat from a new alert."""
        return f"<low-balance-{self.pk}@timepoint-billing>"
