"""The staff view of webhooks: endpoints (never their secrets), events with their deliveries,
deliveries with every attempt, and a resend."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from timepoint_billing.errors import ApiError
from webhooks import outbox
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows the gateway writes: staff read them, and act only through the actions."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(ReadOnlyAdmin):
    list_display = ["public_id", "user", "url", "is_enabled", "secret_prefix", "created_at"]
    list_filter = ["is_enabled"]
    search_fields = ["public_id", "url", "user__email", "user__username"]
    readonly_fields = [
        "public_id",
        "user",
        "url",
        "description",
        "events",
        "secret_prefix",
        "previous_secret_expires_at",
        "created_at",
        "updated_at",
    ]
    fields = [*readonly_fields[:5], "is_enabled", *readonly_fields[5:]]


class DeliveryInline(admin.TabularInline):
    model = WebhookDelivery
    readonly_fields = [
        "public_id",
        "endpoint",
        "state",
        "attempts",
        "last_status_code",
        "last_error",
    ]
    fields = tuple(readonly_fields)
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ["public_id", "type", "user", "created_at"]
    list_filter = ["type"]
    search_fields = ["public_id", "dedupe_key", "user__email", "user__username"]
    readonly_fields = ["public_id", "user", "type", "dedupe_key", "data", "created_at"]
    inlines = [DeliveryInline]


class AttemptInline(admin.TabularInline):
    model = WebhookAttempt
    readonly_fields = [
        "number",
        "started_at",
        "duration_ms",
        "status_code",
        "error",
        "response_excerpt",
    ]
    fields = tuple(readonly_fields)
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "public_id",
        "event",
        "endpoint",
        "state",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "created_at",
    ]
    list_filter = ["state", "event__type"]
    search_fields = ["public_id", "event__public_id", "endpoint__public_id", "endpoint__url"]
    list_select_related = ["event", "endpoint"]
    readonly_fields = [
        "public_id",
        "event",
        "endpoint",
        "state",
        "attempts",
        "next_attempt_at",
        "retry_until",
        "claimed_at",
        "last_attempt_at",
        "last_status_code",
        "last_error",
        "delivered_at",
        "created_at",
    ]
    inlines = [AttemptInline]
    actions = ["resend"]

    @admin.action(description="Resend selected deliveries now", permissions=["resend"])
    def resend(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        count = 0
        for delivery in queryset:
            try:
                outbox.delivery_resend(delivery_id=delivery.public_id)
            except ApiError as exc:
                note = f"{delivery.public_id}: {exc.detail_text}"
                self.message_user(request, note, messages.WARNING)
                continue
            count += 1
            self.log_change(request, delivery, "Resent (queued again).")
        self.message_user(request, f"{count} deliveries queued again.", messages.SUCCESS)

    def has_resend_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("webhooks.change_webhookdelivery")
