"""Identity: one local user per Auth0 subject, and gateway session tokens (stored as digests)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone

# Plans are data: a plan is a catalogue key from Stripe's products and prices (payments.catalogue),
# so a plan added in Stripe needs no migration. Free (no subscription) is the only built-in one.
FREE_PLAN = "free"


class Tier(models.TextChoices):
    FREE = "free", "Free"
    PRO = "pro", "Pro"
    ENTERPRISE = "enterprise", "Enterprise"


class User(AbstractUser):
    # Apple, Google, GitHub and email logins all arrive as Auth0 subjects; this is the identity.
    auth0_sub = models.CharField(max_length=255, unique=True, null=True, blank=True)
    # Set once by Flash's /users/resolve and never changed: credits live under this id in Flash.
    flash_user_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    # The catalogue key of the plan in force, and what it gives, as it was when it took effect
    # (payments keeps them; a subscriber keeps them however the catalogue changes later).
    plan = models.CharField(max_length=64, default=FREE_PLAN, db_index=True)
    plan_hd_access = models.BooleanField(default=False)
    plan_key_tier = models.CharField(max_length=16, choices=Tier.choices, default=Tier.FREE)
    # Follows the plan's key tier; staff may set pro or enterprise in the admin.
    tier = models.CharField(max_length=16, choices=Tier.choices, default=Tier.FREE)
    deleted_at = models.DateTimeField(null=True, blank=True)

    @property
    def has_hd_access(self) -> bool:
        return self.plan_hd_access or self.tier in (Tier.PRO, Tier.ENTERPRISE)


class GatewaySession(models.Model):
    """A session token (`tps_…`) issued by POST /auth/login; only its digest is stored."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="gateway_sessions")
    token_digest = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=16)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "revoked_at"])]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user_id})"

    def is_active(self) -> bool:
        return self.revoked_at is None and self.expires_at > timezone.now()
