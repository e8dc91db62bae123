"""What an API key may do. A plain module (no models) so the authentication code, every app's views
and the OpenAPI generator can import it before the app registry is ready."""

from __future__ import annotations

from django.db import models


class Scope(models.TextChoices):
    """What an API key may do. Sessions and Auth0 tokens (the person) always have every scope."""

    READ = "read", "Read (Clockchain, credit balance, history and costs, usage)"
    GENERATE = "generate", "Generate (spends credits)"
    PUBLISH = "publish", "Publish (timepoint visibility, deletion)"
    KEYS = "keys", "Manage keys and sessions"
    BILLING = "billing", "Billing (checkout, billing portal, App Store receipts)"


ALL_SCOPES: tuple[str, ...] = tuple(Scope.values)
# A new key's scopes unless the owner picks others: a leaked key cannot mint keys or open billing.
DEFAULT_KEY_SCOPES: tuple[str, ...] = (Scope.READ.value, Scope.GENERATE.value, Scope.PUBLISH.value)
