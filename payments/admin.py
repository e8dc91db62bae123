"""The staff view of payments: grants with their states (and a retry), events, payments, and
the permission guard on dj-stripe's admin actions. (Just past 400 lines: one admin class per
payments model, nothing else.)"""

from __future__ import annotations

import uuid
from typing import Any

import stripe
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.db.models import Model, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from djstripe import utils as djstripe_utils
from djstripe.admin import actions as djstripe_actions
from djstripe.admin import admin as djstripe_admin
from djstripe.admin import views as djstripe_views
from djstripe.models import Subscription

from accounts.models import User
from payments import services
from payments.models import (
    AppleNotification,
    AutoRecharge,
    CreditGrant,
    Payment,
    Recharge,
    StripeWebhookEvent,
)
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

    @admin.action(
        description="Retry selected events (record their payment and grant, then process)",
        permissions=["retry"],
    )
    def retry(self, request: HttpRequest, queryset: QuerySet[StripeWebhookEvent]) -> None:
        count = 0
        for event in queryset:
            try:
                retried = services.stripe_event_retry(event_id=event.pk)
            except ApiError as exc:
                # Recording it asked Stripe (an invoice's lines, a charge) and Stripe failed: the
                # event stays as it was, for another retry.
                self.message_user(request, f"{event}: {exc.detail_text}", messages.ERROR)
                continue
            if retried:
                count += 1
                self.log_change(request, event, "Retried (recorded again, queued).")
        self.message_user(request, f"{count} event(s) queued again.", messages.SUCCESS)

    def has_retry_permission(self, request: HttpRequest) -> bool:
        # A retry records the event's payment and credit grant: the billing group's right to
        # re-drive grants, not something the read-only support group may do.
        return bool(request.user.has_perm("payments.change_creditgrant"))

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


@admin.register(AutoRecharge)
class AutoRechargeAdmin(admin.ModelAdmin):
    """Users' auto-recharge rules; a rule the gateway turned off says why (the failed
    recharge's code and reason)."""

    list_display = [
        "user",
        "enabled",
        "threshold",
        "pack",
        "daily_cap",
        "card",
        "failure_code",
        "failed_at",
    ]
    list_filter = ["enabled", "failure_code"]
    search_fields = ["user__email", "user__username", "user__auth0_sub"]
    readonly_fields = [f.name for f in AutoRecharge._meta.fields]
    actions = ["turn_off"]

    @admin.display(description="card")
    def card(self, rule: AutoRecharge) -> str:
        return f"{rule.card_brand} ••{rule.card_last4}" if rule.card_last4 else "—"

    @admin.action(description="Turn auto-recharge off", permissions=["change"])
    def turn_off(self, request: HttpRequest, queryset: QuerySet[AutoRecharge]) -> None:
        count = 0
        for rule in queryset:
            if services.recharge_rule_turn_off(user_id=rule.user_id):
                self.log_change(request, rule, "Turned auto-recharge off.")
                count += 1
        self.message_user(request, f"{count} auto-recharge(s) turned off.", messages.SUCCESS)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Recharge)
class RechargeAdmin(admin.ModelAdmin):
    """Every automatic recharge: its PaymentIntent, its state and why it failed; a paid one
    links its grant."""

    list_display = [
        "created_at",
        "user",
        "pack",
        "credits",
        "amount_cents",
        "state",
        "failure_code",
        "stripe_payment_intent",
        "attempts",
    ]
    list_filter = ["state", "failure_code"]
    search_fields = ["key", "public_id", "stripe_payment_intent", "user__email", "user__username"]
    readonly_fields = [f.name for f in Recharge._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AppleNotification)
class AppleNotificationAdmin(admin.ModelAdmin):
    list_display = ["notification_uuid", "type", "subtype", "transaction_id", "received_at"]
    list_filter = ["type"]
    search_fields = ["notification_uuid", "transaction_id"]
    readonly_fields = [f.name for f in AppleNotification._meta.fields]


# --- dj-stripe's mirror admins
#
# dj-stripe's admin actions (cancel subscriptions, release/cancel schedules, re-sync from Stripe)
# render a confirm page that posts to its own `djstripe_custom_action` view, mounted under every
# dj-stripe model admin, which checks only `is_staff` and runs any of them on any model named in
# the URL. Here every dj-stripe admin gets a guarded copy of that view: the action must be one of
# dj-stripe's, the user needs the change permission on the model it runs on, and what it does is
# recorded in the admin log. Users without it are not offered the actions at all.

STRIPE_ACTIONS = frozenset(
    {
        "_resync_instances",
        "_sync_all_instances",
        "_cancel",
        "_release_subscription_schedule",
        "_cancel_subscription_schedule",
    }
)


def _may_change(request: HttpRequest, model: type[Model]) -> bool:
    codename = get_permission_codename("change", model._meta)
    return bool(request.user.has_perm(f"{model._meta.app_label}.{codename}"))


def _log_change(request: HttpRequest, obj: Model, message: str) -> None:
    model_admin = admin.site._registry.get(type(obj))
    if model_admin is not None:
        model_admin.log_change(request, obj, message)


class StripeActionConfirmView(djstripe_views.ConfirmCustomAction):
    """dj-stripe's confirm view, refused without the change permission, and logged."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            model = djstripe_utils.get_model(str(kwargs.get("model_name", "")))
        except LookupError:
            raise Http404 from None
        if kwargs.get("action_name") not in STRIPE_ACTIONS or not _may_change(request, model):
            raise PermissionDenied
        response: HttpResponse = super().dispatch(request, *args, **kwargs)
        return response

    def form_valid(self, form: forms.Form) -> HttpResponse:
        action = str(self.kwargs["action_name"])
        if action not in ("_cancel", "_sync_all_instances"):
            # Re-syncs and schedule changes: record who asked (the outcome shows as a message).
            pks = form.cleaned_data.get(ACTION_CHECKBOX_NAME) or []
            model_name = str(self.kwargs["model_name"])
            for obj in djstripe_utils.get_queryset(pks, model_name):
                _log_change(self.request, obj, f"Ran dj-stripe action {action}.")
        response: HttpResponse = super().form_valid(form)
        return response

    def _cancel(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        for subscription in queryset:
            try:
                subscription.cancel()
            except stripe.InvalidRequestError as error:
                messages.warning(request, str(error), fail_silently=True)
                continue
            _log_change(request, subscription, "Cancelled at Stripe (immediately).")
            messages.success(request, f"Cancelled: {subscription}", fail_silently=True)


class StripeActionsGuard:
    """Mixed into every dj-stripe admin: the guarded confirm view replaces dj-stripe's, and the
    actions are offered only to users who may change the model."""

    model: type[Model]
    admin_site: admin.AdminSite

    def get_urls(self) -> list[URLPattern]:
        urls: list[URLPattern] = super().get_urls()  # type: ignore[misc]
        guarded = path(
            "action/<str:action_name>/<str:model_name>/",
            self.admin_site.admin_view(StripeActionConfirmView.as_view()),
            name="djstripe_custom_action",
        )
        return [guarded, *(url for url in urls if url.name != "djstripe_custom_action")]

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions: dict[str, Any] = super().get_actions(request)  # type: ignore[misc]
        if not _may_change(request, self.model):
            for name in STRIPE_ACTIONS:
                actions.pop(name, None)
        return actions


admin.site.unregister(Subscription)


@admin.register(Subscription)
class StripeSubscriptionAdmin(StripeActionsGuard, djstripe_admin.SubscriptionAdmin):
    """dj-stripe's subscription admin; "Cancel selected subscriptions" needs
    `djstripe.change_subscription` and is logged."""


def _guard_djstripe_admins() -> None:
    for model, model_admin in list(admin.site._registry.items()):
        if isinstance(model_admin, StripeActionsGuard) or not isinstance(
            model_admin, djstripe_actions.CustomActionMixin
        ):
            continue
        base = type(model_admin)
        name = f"Guarded{base.__name__}"
        guarded = type(name, (StripeActionsGuard, base), {"__module__": __name__})
        admin.site.unregister(model)
        admin.site.register(model, guarded)


_guard_djstripe_admins()


# The catalogue and subscribers' plans: their own module (registered when this one loads).
from payments import admin_plans  # noqa: E402, F401
