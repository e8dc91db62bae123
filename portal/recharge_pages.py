"""Portal: the auto-recharge rule (a form on the billing page)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from payments import selectors, services
from payments.models import CatalogueKind
from portal.forms import AutoRechargeForm
from portal.views import PortalPage
from timepoint_billing.errors import ApiError


class AutoRechargePage(PortalPage):
    def post(self, request: HttpRequest) -> HttpResponse:
        form = AutoRechargeForm(request.POST)
        if not form.is_valid():
            field, errors = next(iter(form.errors.items()))
            messages.error(request, f"Auto-recharge: {field.replace('_', ' ')}: {errors[0]}")
            return redirect("/portal/billing/#auto-recharge")
        try:
            rule = services.recharge_rule_set(
                user=request.user,  # type: ignore[arg-type]
                enabled=form.cleaned_data["enabled"],
                threshold=form.cleaned_data["threshold"],
                pack=form.cleaned_data["pack"],
                daily_cap=form.cleaned_data["daily_cap"],
            )
        except ApiError as exc:
            messages.error(request, exc.detail_text)
            return redirect("/portal/billing/#auto-recharge")
        if rule.enabled:
            pack = selectors.item_on_sale(kind=CatalogueKind.PACK, key=rule.pack)
            messages.success(
                request,
                f"Auto-recharge is on: below {rule.threshold} credits, "
                f"{pack.name if pack else rule.pack} is bought with your "
                f"{rule.card_brand.capitalize()} card "
                f"ending {rule.card_last4}.",
            )
        else:
            messages.success(request, "Auto-recharge is off.")
        return redirect("/portal/billing/#auto-recharge")
