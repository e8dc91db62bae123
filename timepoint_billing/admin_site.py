"""The billing dashboard: one staff page inside the Django admin (`/admin/dashboard/`).

It is an extra admin URL on the stock `admin.site` rather than an AdminSite subclass, so every
app keeps registering its ModelAdmins on `admin.site` as usual; the admin index links here
(`templates/admin/index.html`). Each panel reads through the owning app's selectors.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from metering import selectors as usage
from payments import selectors as billing
from timepoint_billing.charts import Series, bar_chart

DASHBOARD_DAYS = 30


def _days(count: int) -> list[date]:
    today = timezone.localdate()
    return [today - timedelta(days=offset) for offset in range(count - 1, -1, -1)]


def _by_day(rows: dict[date, int], days: list[date]) -> list[int]:
    return [int(rows.get(day, 0)) for day in days]


def dashboard_context(*, days: int = DASHBOARD_DAYS) -> dict[str, Any]:
    """Everything the dashboard shows, from payments' and metering's selectors."""
    span = _days(days)
    since = span[0]
    revenue = billing.revenue_by_day(since=since)
    granted = billing.credits_granted_by_day(since=since)
    spent = usage.credits_spent_by_day(since=since)
    labels = [day.strftime("%b %-d") for day in span]
    revenue_total = sum(revenue.values())
    return {
        "days": days,
        "revenue_total_dollars": f"{revenue_total / 100:,.2f}",
        "revenue_chart": bar_chart(
            labels, [Series("Revenue (cents)", _by_day(revenue, span), "bar-revenue")]
        ),
        "credits_granted_total": sum(granted.values()),
        "credits_spent_total": sum(spent.values()),
        "credits_chart": bar_chart(
            labels,
            [
                Series("Credits granted", _by_day(granted, span), "bar-granted"),
                Series("Credits spent", _by_day(spent, span), "bar-spent"),
            ],
        ),
        "subscriptions_by_plan": billing.active_subscriptions_by_plan(),
        "top_keys": usage.top_keys(since=since, limit=10),
        "grants_needing_attention": billing.grants_needing_attention()[:20],
        "payments_needing_review": billing.payments_needing_review()[:20],
        "catalogue_refused": billing.catalogue_refused()[:20],
    }


def dashboard_view(request: HttpRequest) -> HttpResponse:
    admin.autodiscover()  # the admin's app list (timepoint_billing/admin_apps.py)
    context = {
        **admin.site.each_context(request),
        "title": "Billing dashboard",
        **dashboard_context(),
    }
    return TemplateResponse(request, "admin/billing_dashboard.html", context)


# Staff only (is_active and is_staff), with the admin's login redirect and no caching.
dashboard = admin.site.admin_view(dashboard_view)
