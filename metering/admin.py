"""Staff view of usage: read-only records and roll-ups; the daily roll-up list carries a chart of
requests, errors and credits per day for whatever the filters select (user, key, endpoint, date)."""

from typing import Any

from django.contrib import admin
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from metering.models import UsageDaily, UsageMonthly, UsageRecord
from timepoint_billing.charts import Series, bar_chart


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "user",
        "api_key",
        "service",
        "method",
        "endpoint",
        "status",
        "credits_spent",
    )
    list_filter = ("status", "upstream", "partial", "service")
    search_fields = ("request_id", "endpoint", "user__email", "service")
    date_hierarchy = "created_at"


CHART_DAYS = 31  # the chart shows the latest month of the filtered rows


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin):
    list_display = (
        "day",
        "user",
        "api_key",
        "method",
        "endpoint",
        "requests",
        "errors",
        "credits_spent",
    )
    list_filter = ("method", "endpoint")
    search_fields = ("api_key__prefix", "user__email", "endpoint")
    date_hierarchy = "day"
    change_list_template = "admin/metering/usagedaily/change_list.html"

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        if isinstance(response, TemplateResponse) and response.context_data is not None:
            filtered = response.context_data["cl"].queryset
            per_day = list(
                filtered.order_by()
                .values("day")
                .annotate(
                    requests=Sum("requests"), errors=Sum("errors"), credits=Sum("credits_spent")
                )
                .order_by("-day")[:CHART_DAYS]
            )[::-1]
            labels = [row["day"].strftime("%b %-d") for row in per_day]
            response.context_data["usage_chart"] = bar_chart(
                labels,
                [
                    Series("Requests", [row["requests"] for row in per_day], "bar-requests"),
                    Series("Errors", [row["errors"] for row in per_day], "bar-errors"),
                    Series("Credits", [row["credits"] for row in per_day], "bar-credits"),
                ],
            )
        return response


@admin.register(UsageMonthly)
class UsageMonthlyAdmin(ReadOnlyAdmin):
    list_display = ("month", "user", "api_key", "method", "endpoint", "requests", "errors")
