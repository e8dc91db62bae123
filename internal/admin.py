"""Staff view of service credentials: add one (its secret is shown once), revoke. Digests stay
hidden; credentials from INTERNAL_SERVICE_KEYS live in the environment and are not listed."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from internal import services
from internal.models import ServiceCredential


class ServiceCredentialAddForm(forms.ModelForm):
    class Meta:
        model = ServiceCredential
        fields = (
            "name",
            "note",
            "rate_limit_per_minute",
            "rate_limit_per_day",
            "concurrency_limit",
        )


@admin.register(ServiceCredential)
class ServiceCredentialAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "note", "rate_limit_per_minute", "created_at", "revoked_at")
    list_filter = ("name",)
    search_fields = ("name", "prefix", "note")
    exclude = ("key_digest",)
    readonly_fields = ("prefix", "created_at", "revoked_at")
    actions = ["revoke"]

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = ServiceCredentialAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ()
        return ("name", *self.readonly_fields)

    def save_model(
        self, request: HttpRequest, obj: ServiceCredential, form: Any, change: bool
    ) -> None:
        if change:
            super().save_model(request, obj, form, change)
            services.registry_forget()  # new limits apply in this process at once
            return
        credential, raw = services.service_credential_create(
            name=obj.name,
            note=obj.note,
            rate_limit_per_minute=obj.rate_limit_per_minute,
            rate_limit_per_day=obj.rate_limit_per_day,
            concurrency_limit=obj.concurrency_limit,
        )
        obj.pk = credential.pk
        obj.key_digest = credential.key_digest
        obj.prefix = credential.prefix
        obj.created_at = credential.created_at
        self.message_user(
            request,
            f"Service key for {credential.name!r} (shown once, copy it now): {raw}",
            messages.WARNING,
        )

    @admin.action(description="Revoke selected service keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ServiceCredential]) -> None:
        count = 0
        for credential in queryset.filter(revoked_at__isnull=True):
            services.service_credential_revoke(credential=credential)
            self.log_change(request, credential, "Revoked by staff.")
            count += 1
        self.message_user(request, f"{count} service key(s) revoked.", messages.SUCCESS)
