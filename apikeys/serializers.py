"""Input and output shapes of the key endpoints."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apikeys.limits import key_limits
from apikeys.models import APIKey, KeyMode
from apikeys.services import MAX_ROLL_GRACE_SECONDS
from metering.serializers import UsageCountsSerializer


class StrictSerializer(serializers.Serializer):
    """Rejects fields it does not declare: a `tier` or `user` in a body is an error, not ignored."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {name: ["This field is not allowed."] for name in unknown}
            )
        return attrs


class KeyCreateInputSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100, trim_whitespace=True)
    mode = serializers.ChoiceField(choices=KeyMode.choices, default=KeyMode.LIVE)


class KeyRollInputSerializer(StrictSerializer):
    grace_seconds = serializers.IntegerField(
        min_value=0,
        max_value=MAX_ROLL_GRACE_SECONDS,
        help_text="How long the old key keeps working (0 … 604800 seconds = 7 days).",
    )


class LimitsSerializer(serializers.Serializer):
    per_minute = serializers.IntegerField()
    per_day = serializers.IntegerField()
    concurrency = serializers.IntegerField()


class KeyOutputSerializer(serializers.ModelSerializer):
    status = serializers.SerializerMethodField()
    limits = serializers.SerializerMethodField()
    request_count = serializers.SerializerMethodField()
    replaced_by = serializers.IntegerField(source="replaced_by_id", read_only=True, allow_null=True)

    class Meta:
        model = APIKey
        fields = [
            "id",
            "prefix",
            "name",
            "mode",
            "tier",
            "status",
            "limits",
            "created_at",
            "last_used_at",
            "expires_at",
            "revoked_at",
            "replaced_by",
            "request_count",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=["active", "expired", "revoked"]))
    def get_status(self, key: APIKey) -> str:
        if key.revoked_at is not None or not key.is_active:
            return "revoked"
        if key.is_expired():
            return "expired"
        return "active"

    @extend_schema_field(LimitsSerializer)
    def get_limits(self, key: APIKey) -> dict[str, int]:
        limits = key_limits(key)
        return {
            "per_minute": limits.per_minute,
            "per_day": limits.per_day,
            "concurrency": limits.concurrency,
        }

    @extend_schema_field(serializers.IntegerField())
    def get_request_count(self, key: APIKey) -> int:
        return int(getattr(key, "request_count", 0) or 0)


class KeyCreatedOutputSerializer(KeyOutputSerializer):
    key = serializers.SerializerMethodField(help_text="The secret key. Shown once: store it now.")

    class Meta(KeyOutputSerializer.Meta):
        fields = ["key", *KeyOutputSerializer.Meta.fields]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField())
    def get_key(self, key: APIKey) -> str:
        return self.context["raw_key"]


class KeyUsageRowSerializer(UsageCountsSerializer):
    period = serializers.DateField(help_text="The day, or the first day of the month (UTC).")
    endpoint = serializers.CharField(help_text="The route pattern.")
    method = serializers.CharField()
    p50_ms = serializers.FloatField()
    p95_ms = serializers.FloatField()


KeyUsageOutputSerializer = type(
    "KeyUsageOutputSerializer",
    (serializers.Serializer,),
    {
        "__doc__": "One key's usage per period and endpoint, from the daily/monthly roll-ups.",
        "key_id": serializers.IntegerField(),
        "prefix": serializers.CharField(),
        "granularity": serializers.CharField(),
        "from": serializers.DateField(),
        "to": serializers.DateField(),
        "totals": UsageCountsSerializer(),
        "rows": KeyUsageRowSerializer(many=True),
    },
)
