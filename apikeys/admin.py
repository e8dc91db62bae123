"""Staff view of API keys (minimal; the billing admin panel builds on it). Digests stay hidden."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apikeys import services
from apikeys.models import APIKey


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    list_display = (
        "prefix",
        "name",
        "user",
        "mode",
        "tier",
        "is_active",
        "revoked_at",
        "created_at",
    )
    list_filter = ("mode", "tier", "is_active")
    search_fields = ("prefix", "name", "user__email", "user__username")
    readonly_fields = ("prefix", "mode", "created_at", "last_used_at", "replaced_by")
    exclude = ("key_digest",)
    raw_id_fields = ("user",)
    actions = ["revoke"]

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
        # Revoked, deactivated or given an expiry here: every process honours it at once.
        services.key_publish_lifetime(obj)
