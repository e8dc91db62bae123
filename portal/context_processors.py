"""What every portal page shows about the balance (only on portal pages of a signed-in user):
the low-balance banner while it is below the user's alert threshold, with the alert itself for
the billing page's form (alerts' selector); and a banner while auto-recharge stays off after the
gateway turned it off for a failed recharge (payments' selector)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from alerts.selectors import alert_status
from payments.selectors import auto_recharge_turned_off
from timepoint_billing.routes import PORTAL


def balance_notices(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not request.path.startswith("/" + PORTAL):
        return {}
    status = alert_status(user=user)  # type: ignore[arg-type]
    return {
        "low_balance_alert": status,
        "low_balance": status if status.below else None,
        "auto_recharge_off": auto_recharge_turned_off(user=user),  # type: ignore[arg-type]
    }
