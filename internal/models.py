"""Service credentials: how a sibling TIMEPOINT service (the MCP server, Clockchain, …) proves it
is one. A kind of caller of its own, never a user: it may act for any user it names, so it is
accepted only on `/internal/` routes and refused on every public one."""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

SERVICE_NAME_VALIDATOR = RegexValidator(
    r"^[a-z][a-z0-9_-]{0,31}$", "Lower-case letters, digits, '-' and '_' (at most 32)."
)


class ServiceCredential(models.Model):
    """One secret of one service. Several may share a name (a rotation: old and new both work
    until the old one is revoked); they share the service's rate-limit windows."""

    name = models.CharField(max_length=32, validators=[SERVICE_NAME_VALIDATOR], db_index=True)
    # HMAC-SHA256(API_KEY_DIGEST_SECRET, secret), hex, exactly as API keys are kept.
    key_digest = models.CharField(max_length=64, unique=True)
    # "tp_svc_AbCd1234": enough to recognise it in the admin, useless to an attacker.
    prefix = models.CharField(max_length=24)
    # Null: the INTERNAL_SERVICE_* settings' value.
    rate_limit_per_minute = models.PositiveIntegerField(null=True, blank=True)
    rate_limit_per_day = models.PositiveIntegerField(null=True, blank=True)
    concurrency_limit = models.PositiveIntegerField(null=True, blank=True)
    note = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name", "-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def is_usable(self) -> bool:
        return self.revoked_at is None
