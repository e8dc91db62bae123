"""Usage query and output shapes (shared with the per-key usage endpoint)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework import serializers

MAX_RANGE_DAYS = 366


class UsageQuerySerializer(serializers.Serializer):
    """`?from=YYYY-MM-DD&to=YYYY-MM-DD&granularity=day|month` (UTC days, `to` inclusive)."""

    to = serializers.DateField(required=False, help_text="Last day, inclusive (default today).")
    granularity = serializers.ChoiceField(choices=["day", "month"], default="day")

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        # `from` is a Python keyword, so it can't be a class attribute.
        fields["from"] = serializers.DateField(
            required=False, help_text="First day (default 30 days before `to`)."
        )
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs.setdefault("to", timezone.now().date())
        attrs.setdefault("from", attrs["to"] - timedelta(days=30))
        if attrs["from"] > attrs["to"]:
            raise serializers.ValidationError({"from": ["Must not be after `to`."]})
        if (attrs["to"] - attrs["from"]).days > MAX_RANGE_DAYS:
            raise serializers.ValidationError({"from": [f"At most {MAX_RANGE_DAYS} days."]})
        return attrs


class UsageCountsSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    # A field, not Serializer.errors: DRF moves declared fields off the class.
    errors = serializers.IntegerField(help_text="Responses with status ≥ 400.")  # type: ignore[assignment]
    credits_spent = serializers.IntegerField()


class UsagePeriodSerializer(UsageCountsSerializer):
    period = serializers.DateField(help_text="The day, or the first day of the month (UTC).")


class UsageByKeySerializer(UsageCountsSerializer):
    api_key_id = serializers.IntegerField(allow_null=True, help_text="null: session/JWT calls.")
    prefix = serializers.CharField(allow_blank=True)
    name = serializers.CharField(allow_blank=True)


class UsageByEndpointSerializer(UsageCountsSerializer):
    endpoint = serializers.CharField(help_text="The route pattern.")
    method = serializers.CharField()


UsageOutputSerializer = type(
    "UsageOutputSerializer",
    (serializers.Serializer,),
    {
        "__doc__": "The caller's usage from the daily/monthly roll-ups (`rollup_usage`).",
        "granularity": serializers.CharField(),
        "from": serializers.DateField(),
        "to": serializers.DateField(),
        "totals": UsageCountsSerializer(),
        "periods": UsagePeriodSerializer(many=True),
        "by_key": UsageByKeySerializer(many=True),
        "by_endpoint": UsageByEndpointSerializer(many=True),
    },
)
