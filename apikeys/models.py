"""Developer API keys: only a digest of the secret is stored, next to a display prefix."""

from __future__ import annotations

import ipaddress
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Tier
from accounts.scopes import DEFAULT_KEY_SCOPES

# The portal and the keys API flag keys whose expiry falls within this window (rotation reminder).
EXPIRY_REMINDER = timedelta(days=7)


def default_key_scopes() -> list[str]:
    return list(DEFAULT_KEY_SCOPES)


def month_start(moment: datetime | None = None) -> date:
    """The first day of the UTC calendar month `moment` falls in (budgets run per such month)."""
    moment = moment or timezone.now()
    return moment.astimezone(UTC).date().replace(day=1)


class KeyMode(models.TextChoices):
    LIVE = "live", "Live"
    # Authenticates, is limited and metered like a live key, never spends real credits.
    TEST = "test", "Test"


class APIKey(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    mode = models.CharField(max_length=8, choices=KeyMode.choices, default=KeyMode.LIVE)
    # HMAC-SHA256(API_KEY_DIGEST_SECRET, raw key), hex; the only form of the secret we keep.
    key_digest = models.CharField(max_length=64, unique=True)
    # "tp_live_AbCd1234": enough to recognise a key in a list or a log line, useless to an attacker.
    prefix = models.CharField(max_length=24)
    # Follows the owner's plan (keys_set_tier_for_user); staff may set enterprise in the admin.
    tier = models.CharField(max_length=16, choices=Tier.choices, default=Tier.FREE)
    # Staff-set overrides of the tier's limits (enterprise deals); null means "the tier's value".
    rate_limit_per_minute = models.PositiveIntegerField(null=True, blank=True)
    rate_limit_per_day = models.PositiveIntegerField(null=True, blank=True)
    concurrency_limit = models.PositiveIntegerField(null=True, blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # After a roll the old key keeps working until expires_at (the grace period), then stops.
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    replaced_by = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaces"
    )
    # What the key may do (`accounts.models.Scope` values). Sessions and JWTs have every scope.
    scopes = models.JSONField(default=default_key_scopes)
    # Credits the key may spend per UTC calendar month (null: up to the owner's balance). The
    # month's spend is the sum of its KeySpend rows, held before Flash is called.
    monthly_credit_budget = models.PositiveIntegerField(null=True, blank=True)
    # Browser origins (`https://app.example.com`) and client networks (CIDR) the key may be used
    # from; empty means anywhere. A speed bump for publishable keys, not a secret (SECURITY.md).
    allowed_origins = models.JSONField(default=list, blank=True)
    allowed_cidrs = models.JSONField(default=list, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "revoked_at"])]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"

    def is_expired(self, now: object = None) -> bool:
        moment = now or timezone.now()
        return self.expires_at is not None and self.expires_at <= moment  # type: ignore[operator]

    def is_usable(self) -> bool:
        """Active, not revoked, not past its expiry or roll grace."""
        return self.is_active and self.revoked_at is None and not self.is_expired()

    def expires_soon(self, now: datetime | None = None) -> bool:
        """Usable, and stops working within EXPIRY_REMINDER: time to roll it."""
        moment = now or timezone.now()
        return (
            self.expires_at is not None
            and self.is_usable()
            and self.expires_at <= moment + EXPIRY_REMINDER
        )

    def has_scope(self, scope: str) -> bool:
        return scope in (self.scopes or ())

    def allows_origin(self, origin: str | None) -> bool:
        """With an origin list, only a request whose `Origin` header is on it (a browser on
        another site, or a client sending no `Origin`, is refused); without one, any."""
        if not self.allowed_origins:
            return True
        return origin is not None and origin.rstrip("/").lower() in self.allowed_origins

    def allows_address(self, address: str | None) -> bool:
        """With a CIDR list, only a client address inside one of them; without one, any."""
        if not self.allowed_cidrs:
            return True
        try:
            client = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(
            client in ipaddress.ip_network(cidr, strict=False) for cidr in self.allowed_cidrs
        )


class KeySpend(models.Model):
    """Credits one generation on a key holds and then spends against the key's monthly budget.

    Written before Flash is called (`amount` = the price, the hold) with the key row locked, so
    parallel generations on one key never pass the budget together; settled with what Flash
    charged (0 when it answered an error and never charged); a refund sets `refunded_at` and the
    amount no longer counts. A hold never settled (the worker died mid-generation) keeps
    counting: Flash probably charged it, and its refund, when one is recorded, gives it back."""

    api_key = models.ForeignKey(APIKey, on_delete=models.CASCADE, related_name="spends")
    # The gateway request id of the generation: one row per generation, whatever retries.
    request_id = models.CharField(max_length=128, unique=True)
    month = models.DateField(help_text="First day of the UTC calendar month it counts in.")
    amount = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    settled_at = models.DateTimeField(null=True, blank=True)
    refunded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["api_key", "month"])]

    def __str__(self) -> str:
        return f"{self.request_id}: {self.amount} credits"
