"""Staff view of usage (minimal; the billing admin panel builds on it). Records are read-only."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from metering.models import UsageDaily, UsageMonthly, UsageRecord


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
        "method",
        "endpoint",
        "status",
        "credits_spent",
    )
    list_filter = ("status", "upstream", "partial")
    search_fields = ("request_id", "endpoint", "user__email")
    date_hierarchy = "created_at"


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin):
    list_display = ("day", "user", "api_key", "method", "endpoint", "requests", "errors")
    list_filter = ("method", "endpoint")
    search_fields = ("api_key__prefix", "user__email", "endpoint")
    date_hierarchy = "day"


@admin.register(UsageMonthly)
class UsageMonthlyAdmin(ReadOnlyAdmin):
    list_display = ("month", "user", "api_key", "method", "endpoint", "requests", "errors")
