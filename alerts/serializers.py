"""Input and output shapes of the low-balance alert endpoint."""

from __future__ import annotations

from rest_framework import serializers

from alerts.services import MAX_THRESHOLD
from timepoint_billing.serializers import StrictSerializer


class AlertInputSerializer(StrictSerializer):
    threshold = serializers.IntegerField(
        min_value=1,
        max_value=MAX_THRESHOLD,
        allow_null=True,
        help_text="Credits. When a generation takes your balance from this or more to below it, "
        "you get one email, a portal banner and a `credits.low` webhook. null: no alert.",
    )


class AlertOutputSerializer(serializers.Serializer):
    threshold = serializers.IntegerField(allow_null=True)
    below = serializers.BooleanField(
        help_text="Your balance fell below the threshold and has not been seen above it since."
    )
    last_balance = serializers.IntegerField(
        allow_null=True, help_text="The balance last seen after a generation or a grant."
    )
    last_alert_at = serializers.DateTimeField(allow_null=True)
