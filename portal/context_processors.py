"""What every portal page shows: the low-balance banner while the balance is below the user's
alert threshold, and the alert itself for the billing page's form (alerts' selector; only on
portal pages of a signed-in user)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from alerts.selectors import alert_status
from timepoint_billing.routes import PORTAL


def low_balance(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not request.path.startswith("/" + PORTAL):
        return {}
    status = alert_status(user=user)  # type: ignore[arg-type]
    return {"low_balance_alert": status, "low_balance": status if status.below else None}
