"""Portal: set or clear the low-balance alert threshold (a form on the billing page)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from alerts import services
from portal.views import PortalPage
from timepoint_billing.errors import ApiError


class LowBalanceAlertPage(PortalPage):
    def post(self, request: HttpRequest) -> HttpResponse:
        raw = request.POST.get("threshold", "").strip()
        if raw and not raw.isdigit():
            messages.error(request, "The threshold is a whole number of credits.")
            return redirect("portal:billing")
        try:
            alert = services.alert_threshold_set(
                user=request.user,  # type: ignore[arg-type]
                threshold=int(raw) if raw else None,
            )
        except ApiError as exc:
            messages.error(request, exc.detail_text)
            return redirect("portal:billing")
        if alert is None:
            messages.success(request, "Low-balance alert turned off.")
        else:
            messages.success(
                request, f"We will email you when your balance falls below {alert.threshold}."
            )
        return redirect("portal:billing")
