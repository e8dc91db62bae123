"""Developer API keys: only a digest of the secret is stored, next to a display prefix."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Tier


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
