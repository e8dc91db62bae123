"""The staff view of pricing: the catalogue as read from Stripe (refused prices with the reasons,
a sync button) and what each subscriber bought (who is on which price, grandfathered or not, and
their plan changes). Nothing here edits prices: billing people do that in Stripe."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse

from payments import selectors, services
from payments.models import CatalogueItem, PlanChange, PlanSubscription
from timepoint_billing.errors import ApiError


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _money(cents: int | None, currency: str) -> str:
    return "—" if cents is None else f"{cents / 100:.2f} {currency.upper()}"


class RefusedFilter(admin.SimpleListFilter):
    title = "metadata"
    parameter_name = "metadata"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("refused", "Refused (missing or invalid)"), ("valid", "Valid")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "refused":
            return queryset.exclude(problems=[])
        if self.value() == "valid":
            return queryset.filter(problems=[])
        return queryset


@admin.register(CatalogueItem)
class CatalogueItemAdmin(ReadOnlyAdmin):
    list_display = [
        "stripe_price_id",
        "kind",
        "key",
        "name",
        "price",
        "credits",
        "hd_access",
        "key_tier",
        "display_order",
        "state",
        "problem_list",
    ]
    list_filter = [RefusedFilter, "kind", "current", "active", "visible"]
    search_fields = ["stripe_price_id", "stripe_product_id", "key", "name"]
    readonly_fields = [f.name for f in CatalogueItem._meta.fields] + ["problem_list"]
    change_list_template = "admin/payments/catalogueitem/change_list.html"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The sync button: billing staff may re-read Stripe (prices are still edited there).
        return obj is None and super(ReadOnlyAdmin, self).has_change_permission(request, obj)

    @admin.display(description="Price")
    def price(self, item: CatalogueItem) -> str:
        return _money(item.unit_amount, item.currency)

    @admin.display(description="State")
    def state(self, item: CatalogueItem) -> str:
        if item.problems:
            return "REFUSED"
        if item.on_sale:
            return "on sale"
        if not item.active:
            return "archived in Stripe"
        if not item.visible:
            return "hidden (tp_visible)"
        return "superseded by a newer price"

    @admin.display(description="Why refused")
    def problem_list(self, item: CatalogueItem) -> str:
        return "; ".join(item.problems)

    def get_urls(self) -> list[URLPattern]:
        sync = path(
            "sync/", self.admin_site.admin_view(self.sync_view), name="payments_catalogueitem_sync"
        )
        return [sync, *super().get_urls()]

    def sync_view(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST" or not self.has_change_permission(request):
            raise PermissionDenied
        try:
            valid = services.catalogue_sync()
        except ApiError as exc:
            self.message_user(request, f"Stripe: {exc.detail_text}", messages.ERROR)
        else:
            refused = selectors.catalogue_refused().count()
            level = messages.WARNING if refused else messages.SUCCESS
            self.message_user(request, f"{valid} valid prices, {refused} refused.", level)
        return HttpResponseRedirect(reverse("admin:payments_catalogueitem_changelist"))


CHANGE_FIELDS = (
    "kind",
    "state",
    "from_plan",
    "from_price",
    "from_monthly_credits",
    "to_plan",
    "to_price",
    "to_monthly_credits",
    "effective_at",
    "applied_at",
)


class PlanChangeInline(admin.TabularInline):
    model = PlanChange
    fields = readonly_fields = CHANGE_FIELDS
    extra = 0
    can_delete = False
    ordering = ["-created_at"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(PlanSubscription)
class PlanSubscriptionAdmin(ReadOnlyAdmin):
    """Who is on which price: each subscriber's plan, the price they pay and the terms they
    keep; `grandfathered` when the plan sells on other terms now."""

    list_display = [
        "stripe_subscription_id",
        "user",
        "plan",
        "stripe_price_id",
        "price",
        "monthly_credits",
        "hd_access",
        "key_tier",
        "grandfathered",
        "status",
        "cancel_at_period_end",
        "current_period_end",
    ]
    list_filter = ["plan", "stripe_price_id", "status", "cancel_at_period_end"]
    search_fields = ["stripe_subscription_id", "user__email", "user__username", "plan"]
    readonly_fields = [f.name for f in PlanSubscription._meta.fields] + ["grandfathered"]
    list_select_related = ["user"]
    inlines = [PlanChangeInline]

    @admin.display(description="Price")
    def price(self, row: PlanSubscription) -> str:
        return _money(row.unit_amount, row.currency)

    @admin.display(description="Grandfathered", boolean=True)
    def grandfathered(self, row: PlanSubscription) -> bool:
        return selectors.is_grandfathered(row)
