"""Usage records (one per API call that reached an authenticated caller) and their roll-ups."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class UsageRecord(models.Model):
    # Records outlive the account and the key: billing history must not vanish with them.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="usage_records",
    )
    api_key = models.ForeignKey(
        "apikeys.APIKey",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="usage_records",
    )
    endpoint = models.CharField(max_length=200)  # the route pattern, never the raw path
    method = models.CharField(max_length=8)
    status = models.PositiveSmallIntegerField()
    credits_spent = models.IntegerField(default=0)
    response_time_ms = models.FloatField()
    preset = models.CharField(max_length=32, blank=True, default="")
    upstream = models.CharField(max_length=16, blank=True, default="")
    partial = models.BooleanField(default=False)
    # The internal service (`mcp`, `clockchain`, …) that made the call, for calls to /internal/;
    # empty for public callers (issue 20).
    service = models.CharField(max_length=32, blank=True, default="", db_index=True)
    # Unique: a flush retried after a crash inserts nothing twice (bulk_create ignore_conflicts).
    request_id = models.CharField(max_length=128, unique=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        indexes = [
            models.Index(fields=["user", "created_at"]),
            models.Index(fields=["api_key", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.endpoint} {self.status} ({self.request_id})"


class UsageAggregate(models.Model):
    """Shared shape of the daily and monthly roll-ups: one row per user, key, endpoint, method."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    api_key = models.ForeignKey(
        "apikeys.APIKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    endpoint = models.CharField(max_length=200)
    method = models.CharField(max_length=8)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)  # status >= 400
    credits_spent = models.IntegerField(default=0)
    p50_ms = models.FloatField(default=0)
    p95_ms = models.FloatField(default=0)

    class Meta:
        abstract = True


class UsageDaily(UsageAggregate):
    day = models.DateField(db_index=True)

    class Meta:
        indexes = [
            models.Index(fields=["user", "day"]),
            models.Index(fields=["api_key", "day"]),
        ]
        verbose_name_plural = "usage (daily)"


class UsageMonthly(UsageAggregate):
    month = models.DateField(db_index=True)  # the first day of the month

    class Meta:
        indexes = [
            models.Index(fields=["user", "month"]),
            models.Index(fields=["api_key", "month"]),
        ]
        verbose_name_plural = "usage (monthly)"
