"""The staff view of payments: grants with their states (and a retry), events, payments."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from payments import services
from payments.models import AppleNotification, CreditGrant, Payment, StripeWebhookEvent


@admin.register(CreditGrant)
class CreditGrantAdmin(admin.ModelAdmin):
    list_display = ["key", "user", "amount", "transaction_type", "state", "attempts", "created_at"]
    list_filter = ["state", "source", "transaction_type"]
    search_fields = ["key", "user__username", "user__email", "flash_user_id"]
    readonly_fields = [f.name for f in CreditGrant._meta.fields]
    actions = ["retry"]

    @admin.action(description="Retry selected failed / needs-attention grants")
    def retry(self, request: HttpRequest, queryset: QuerySet[CreditGrant]) -> None:
        count = sum(services.grant_retry(grant_id=grant.pk) for grant in queryset)
        self.message_user(request, f"{count} grant(s) queued again.", messages.SUCCESS)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # manual grants go through services.grant_manual (the same outbox)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(StripeWebhookEvent)
class StripeWebhookEventAdmin(admin.ModelAdmin):
    list_display = ["stripe_id", "type", "state", "attempts", "received_at", "processed_at"]
    list_filter = ["state", "type"]
    search_fields = ["stripe_id"]
    readonly_fields = [f.name for f in StripeWebhookEvent._meta.fields]
    actions = ["retry"]

    @admin.action(description="Retry processing of selected events")
    def retry(self, request: HttpRequest, queryset: QuerySet[StripeWebhookEvent]) -> None:
        count = sum(services.stripe_event_retry(event_id=event.pk) for event in queryset)
        self.message_user(request, f"{count} event(s) queued again.", messages.SUCCESS)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = [
        "reference",
        "user",
        "provider",
        "product",
        "amount_cents",
        "amount_refunded_cents",
        "disputed",
        "needs_review",
        "created_at",
    ]
    list_filter = ["provider", "needs_review", "disputed"]
    search_fields = ["reference", "stripe_payment_intent", "stripe_invoice", "stripe_charge"]
    readonly_fields = [f.name for f in Payment._meta.fields if f.name != "needs_review"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(AppleNotification)
class AppleNotificationAdmin(admin.ModelAdmin):
    list_display = ["notification_uuid", "type", "subtype", "transaction_id", "received_at"]
    list_filter = ["type"]
    search_fields = ["notification_uuid", "transaction_id"]
    readonly_fields = [f.name for f in AppleNotification._meta.fields]
