"""Staff view of API keys (minimal; the billing admin panel builds on it). Digests stay hidden."""

from django.contrib import admin

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
