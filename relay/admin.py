"""Relay admin: the gateway's records of streamed timepoints (read-only for staff)."""

from django.contrib import admin
from django.http import HttpRequest

from relay.models import StreamedTimepoint


@admin.register(StreamedTimepoint)
class StreamedTimepointAdmin(admin.ModelAdmin):
    list_display = ("timepoint_id", "user", "visibility", "status", "created_at", "deleted_at")
    list_filter = ("visibility", "status")
    search_fields = ("timepoint_id", "user__email", "slug")
    raw_id_fields = ("user",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # the record is what keeps a private streamed timepoint private
