"""Staff view of API keys (the billing admin panel builds on it). Digests stay hidden.

Staff see and change what the owner controls (scopes, monthly credit budget, expiry, origins,
networks), with the same checks as the keys API, and see the key's spend this UTC month; a
change reaches every gateway process at once (`save_model`)."""

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apikeys import forms as key_forms
from apikeys import selectors, services
from apikeys.models import APIKey


class APIKeyAdminForm(forms.ModelForm):
    scopes = key_forms.ScopesField()
    allowed_origins = key_forms.origins_field()
    allowed_cidrs = key_forms.cidrs_field()

    class Meta:
        model = APIKey
        exclude = ("key_digest",)
        help_texts = {
            "monthly_credit_budget": key_forms.BUDGET_HELP,
            "expires_at": "The key stops working at this moment (on every server at once). "
            "Empty: never. A rolled key's grace period ends here too.",
        }


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    form = APIKeyAdminForm
    list_display = (
        "prefix",
        "name",
        "user",
        "mode",
        "tier",
        "scope_list",
        "month_spend",
        "is_active",
        "expires_at",
        "revoked_at",
        "created_at",
    )
    list_filter = ("mode", "tier", "is_active")
    search_fields = ("prefix", "name", "user__email", "user__username")
    readonly_fields = (
        "prefix",
        "mode",
        "created_at",
        "last_used_at",
        "replaced_by",
        "month_spend",
    )
    raw_id_fields = ("user",)
    actions = ["revoke"]
    fieldsets = (
        (None, {"fields": ("prefix", "name", "user", "mode", "tier")}),
        (
            "Owner's controls",
            {
                "fields": (
                    "scopes",
                    "monthly_credit_budget",
                    "month_spend",
                    "expires_at",
                    "allowed_origins",
                    "allowed_cidrs",
                )
            },
        ),
        (
            "Limits (staff overrides of the tier)",
            {"fields": ("rate_limit_per_minute", "rate_limit_per_day", "concurrency_limit")},
        ),
        (
            "Lifecycle",
            {"fields": ("is_active", "revoked_at", "replaced_by", "created_at", "last_used_at")},
        ),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[APIKey]:
        return selectors.keys_with_month_spent(super().get_queryset(request))

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A key is made by its owner (portal or keys API), who alone is shown the secret once;
        # a row made here would have no secret anyone could use.
        return False

    @admin.display(description="Scopes")
    def scope_list(self, key: APIKey) -> str:
        return ", ".join(key.scopes or ())

    @admin.display(description="Spent this month (UTC)")
    def month_spend(self, key: APIKey) -> str:
        budget = selectors.key_budget(key)
        month = f"{budget['month']:%B %Y}"
        if budget["budget"] is None:
            return f"{budget['spent']} credits in {month} (no budget)"
        return (
            f"{budget['spent']} of {budget['budget']} credits in {month} "
            f"({budget['remaining']} left)"
        )

    @admin.action(
        description="Revoke selected keys (they stop working at once)", permissions=["change"]
    )
    def revoke(self, request: HttpRequest, queryset: QuerySet[APIKey]) -> None:
        count = 0
        for key in queryset.filter(revoked_at__isnull=True).select_related("user"):
            services.key_revoke(user=key.user, key_id=key.pk)
            self.log_change(request, key, "Revoked by staff.")
            count += 1
        self.message_user(request, f"{count} key(s) revoked.", messages.SUCCESS)

    def save_model(self, request: HttpRequest, obj: APIKey, form: object, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # Revoked, deactivated, given an expiry, new scopes or lists: every process honours
        # the expiry at once, and this one forgets its cached copy of the key.
        services.key_publish_lifetime(obj)
