"""The staff view of users: plan, tier, Flash id and live balance, sessions, and links to their
keys, usage, grants and payments. Secrets (token digests) never appear."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import UserChangeForm
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from accounts.models import GatewaySession, User
from accounts.selectors import plan_terms
from accounts.services import balance_lookup, flash_account_ensure
from apikeys.services import keys_set_tier_for_user
from timepoint_billing.errors import ApiError


class GatewaySessionInline(admin.TabularInline):
    model = GatewaySession
    fields = ("prefix", "created_at", "expires_at", "revoked_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("-created_at",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class GatewayUserChangeForm(UserChangeForm):
    """A plan set by hand must be one the catalogue knows: its HD access and key tier come with
    it (staff-set plans with no subscription stay until a Stripe event about the user)."""

    def clean_plan(self) -> str:
        plan = str(self.cleaned_data["plan"]).strip()
        if "plan" in self.changed_data:
            terms = plan_terms(plan)
            if terms is None:
                raise forms.ValidationError(f"{plan!r} is not a plan in the catalogue.")
            self.instance.plan_hd_access = bool(terms["hd_access"])
            self.instance.plan_key_tier = str(terms["key_tier"])
        return plan


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = GatewayUserChangeForm
    list_display = ("username", "email", "plan", "tier", "flash_user_id", "is_staff", "date_joined")
    list_filter = ("plan", "tier", "is_staff", "is_active")
    search_fields = ("username", "email", "auth0_sub", "flash_user_id")
    readonly_fields = (
        "auth0_sub",
        "flash_user_id",
        "flash_balance",
        "plan_hd_access",
        "plan_key_tier",
        "related",
        "deleted_at",
    )
    fieldsets = (
        (
            "TIMEPOINT",
            {
                "fields": (
                    "auth0_sub",
                    "flash_user_id",
                    "flash_balance",
                    "plan",
                    "plan_hd_access",
                    "plan_key_tier",
                    "tier",
                    "related",
                )
            },
        ),
        *(DjangoUserAdmin.fieldsets or ()),
        ("Deletion", {"fields": ("deleted_at",)}),
    )
    inlines = [GatewaySessionInline]
    actions = ["resolve_flash_account"]

    @admin.action(description="Resolve the Flash account (users without a Flash id)")
    def resolve_flash_account(self, request: HttpRequest, queryset: Any) -> None:
        resolved, problems = 0, []
        for user in queryset.filter(flash_user_id__in=["", None]):
            try:
                flash_account_ensure(user=user)
                resolved += 1
            except ApiError as exc:
                problems.append(f"{user.username}: {exc.detail}")
        self.message_user(request, f"{resolved} user(s) resolved in Flash.")
        for problem in problems:
            self.message_user(request, problem, level=messages.ERROR)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # The username of an Auth0 user is its subject (`auth0|…`), which Django's username
        # validator refuses: editable, it made every such user unsavable in the admin.
        readonly = tuple(super().get_readonly_fields(request, obj))
        return (*readonly, "username") if obj is not None else readonly

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if change and {"plan", "tier"} & set(form.changed_data):
            # The user's keys carry their own tier (the limiter reads it): they follow at once.
            keys_set_tier_for_user(user=obj)

    @admin.display(description="Flash balance (live)")
    def flash_balance(self, user: User) -> str:
        balance = balance_lookup(user=user)
        if balance is None:
            return "unavailable (no Flash id, or Flash is not answering)"
        return (
            f"{balance.get('balance')} credits "
            f"(earned {balance.get('lifetime_earned')}, spent {balance.get('lifetime_spent')})"
        )

    @admin.display(description="Records")
    def related(self, user: User) -> str:
        links = [
            ("API keys", "admin:apikeys_apikey_changelist"),
            ("Usage (daily)", "admin:metering_usagedaily_changelist"),
            ("Credit grants", "admin:payments_creditgrant_changelist"),
            ("Payments", "admin:payments_payment_changelist"),
        ]
        return format_html_join(
            " · ",
            '<a href="{}?user__id__exact={}">{}</a>',
            ((reverse(name), user.pk, label) for label, name in links),
        ) or format_html("")
