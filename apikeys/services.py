"""State changes for developer API keys."""

from __future__ import annotations

from accounts.authentication import Caller
from timepoint_billing.errors import Unauthenticated


def caller_from_api_key(raw: str) -> Caller:
    # Replaced by the key lookup (issue 6).
    raise Unauthenticated("API keys are not accepted yet.", code="invalid_api_key")
