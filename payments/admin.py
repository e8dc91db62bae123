"""The staff view of payments: grants with their states (and a retry), events, payments."""

from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from accounts.models import User
from payments import services
from payments.models import AppleNotification, CreditGrant, Payment, StripeWebhookEvent
from timepoint_billing.errors import ApiError


class ManualGrantForm(forms.Form):
    """A staff grant. `request_key` is fixed when the form is drawn, so a double submit or a
    browser resend is the same grant (services.grant_manual keys the outbox row by it)."""

    user = forms.CharField(help_text="Email, Auth0 subject (auth0|…) or user id.")
    amount = forms.IntegerField(min_value=1, max_value=100_000, help_text="Credits to add.")
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), help_text="Recorded with the grant and in Flash."
    )
    request_key = forms.UUIDField(widget=forms.HiddenInput)

    def clean_user(self) -> User:
        value = self.cleaned_data["user"].strip()
        match = Q(email__iexact=value) | Q(auth0_sub=value) | Q(username=value)
        if value.isdigit():
            match |= Q(pk=int(value))
        users = list(User.objects.filter(match, deleted_at__isnull=True)[:2])
        if len(users) != 1:
            raise forms.ValidationError("No single active user matches this.")
        if not users[0].flash_user_id:
            raise forms.ValidationError("This user has no Flash account yet.")
        return users[0]


@admin.register(CreditGrant)
class CreditGrantAdmin(admin.ModelAdmin):
    list_display = ["key", "user", "amount", "transaction_type", "state", "attempts", "created_at"]
    list_filter = ["state", "source", "transaction_type"]
    search_fields = ["key", "user__username", "user__email", "flash_user_id"]
    readonly_fields = [f.name for f in CreditGrant._meta.fields]
    actions = ["retry", "mark_resolved"]
    change_list_template = "admin/payments/creditgrant/change_list.html"

    @admin.action(
        description="Retry selected failed / needs-attention grants", permissions=["change"]
    )
    def retry(self, request: HttpRequest, queryset: QuerySet[CreditGrant]) -> None:
        count = 0
        for grant in queryset:
            if services.grant_retry(grant_id=grant.pk):
                count += 1
                self.log_change(request, grant, "Retried (queued again).")
        self.message_user(request, f"{count} grant(s) queued again.", messages.SUCCESS)

    @admin.action(
        description="Mark selected failed / needs-attention grants resolved (never sent)",
        permissions=["change"],
    )
    def mark_resolved(self, request: HttpRequest, queryset: QuerySet[CreditGrant]) -> None:
        count = 0
        for grant in queryset:
            note = "settled by hand in the admin"
            if services.grant_resolve(grant_id=grant.pk, staff_user=request.user, note=note):  # type: ignore[arg-type]
                count += 1
                self.log_change(request, grant, "Marked resolved (will not be sent).")
        self.message_user(request, f"{count} grant(s) marked resolved.", messages.SUCCESS)

    def get_urls(self) -> list[URLPattern]:
        manual = path(
            "manual/",
            self.admin_site.admin_view(self.manual_grant_view),
            name="payments_creditgrant_manual",
        )
        return [manual, *super().get_urls()]

    def manual_grant_view(self, request: HttpRequest) -> HttpResponse:
        """Grant credits by hand through the same exactly-once outbox, with a reason."""
        if not request.user.has_perm("payments.add_creditgrant"):
            raise PermissionDenied
        form = ManualGrantForm(request.POST or None, initial={"request_key": uuid.uuid4()})
        if request.method == "POST" and form.is_valid():
            try:
                grant = services.grant_manual(
                    user=form.cleaned_data["user"],
                    amount=form.cleaned_data["amount"],
                    reason=form.cleaned_data["reason"],
                    staff_user=request.user,  # type: ignore[arg-type]
                    request_key=str(form.cleaned_data["request_key"]),
                )
            except ApiError as exc:
                form.add_error(None, exc.detail_text)
            else:
                self.log_addition(request, grant, f"Manual grant: {grant.reason}")
                self.message_user(
                    request,
                    f"{grant.amount} credits for {grant.user} recorded ({grant.key}); "
                    "they reach Flash exactly once.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(
                    reverse("admin:payments_creditgrant_change", args=[grant.pk])
                )
        context = {
            **self.admin_site.each_context(request),
            "title": "Manual credit grant",
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/payments/creditgrant/manual_grant.html", context)

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
    actions = ["mark_reviewed"]

    @admin.action(
        description="Mark selected refunds / disputes as reviewed", permissions=["change"]
    )
    def mark_reviewed(self, request: HttpRequest, queryset: QuerySet[Payment]) -> None:
        count = 0
        for payment in queryset.filter(needs_review=True):
            payment.needs_review = False
            payment.save(update_fields=["needs_review", "updated_at"])
            self.log_change(request, payment, "Marked reviewed.")
            count += 1
        self.message_user(request, f"{count} payment(s) marked reviewed.", messages.SUCCESS)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(AppleNotification)
class AppleNotificationAdmin(admin.ModelAdmin):
    list_display = ["notification_uuid", "type", "subtype", "transaction_id", "received_at"]
    list_filter = ["type"]
    search_fields = ["notification_uuid", "transaction_id"]
    readonly_fields = [f.name for f in AppleNotification._meta.fields]
