"""The staff view of low-balance watches (alerts and auto-recharges): thresholds and every
crossing with its email's fate."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from alerts.models import LowBalanceAlert, LowBalanceCrossing


@admin.register(LowBalanceAlert)
class LowBalanceAlertAdmin(admin.ModelAdmin):
    list_display = ["user", "purpose", "threshold", "armed", "last_balance", "last_checked_at"]
    list_filter = ["purpose", "armed"]
    search_fields = ["user__email", "user__username"]
    readonly_fields = [
        "user",
        "purpose",
        "threshold",
        "armed",
        "check_due",
        "last_balance",
        "last_checked_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(LowBalanceCrossing)
class LowBalanceCrossingAdmin(admin.ModelAdmin):
    list_display = [
        "user",
        "purpose",
        "balance",
        "threshold",
        "email_state",
        "email_attempts",
        "created_at",
    ]
    list_filter = ["purpose", "email_state"]
    search_fields = ["user__email", "user__username", "email_to"]
    readonly_fields = [
        "user",
        "purpose",
        "threshold",
        "balance",
        "created_at",
        "email_to",
        "email_state",
        "email_attempts",
        "email_next_attempt_at",
        "email_sent_at",
        "email_last_error",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
