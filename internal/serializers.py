"""Input and output shapes of the internal API (documented in /internal/schema)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from internal.selectors import CONTRACT_STATUS, MAX_IDENTIFIER_LENGTH
from timepoint_billing.serializers import StrictSerializer

STATUSES = sorted(set(CONTRACT_STATUS.values()))


class BillingStatusOutputSerializer(serializers.Serializer):
    user_id = serializers.CharField(help_text="The gateway's user id.")
    subscription_tier = serializers.CharField(
        help_text="The plan the user holds now: free, explorer, historian or api_pro."
    )
    status = serializers.ChoiceField(
        choices=STATUSES,
        help_text="active | trialing | past_due | canceled | none (no subscription). "
        "Treat anything but active/trialing as not paying.",
    )
    status_source = serializers.ChoiceField(
        choices=["stripe", "staff", "none"], help_text="Where the status comes from."
    )
    hd_access = serializers.BooleanField()
    key_tier = serializers.CharField(help_text="The tier the user's developer keys carry.")
    monthly_credits = serializers.IntegerField(help_text="Credits the plan grants each month.")
    current_period_end = serializers.DateTimeField(allow_null=True)
    cancel_at_period_end = serializers.BooleanField()
    stripe_status = serializers.CharField(
        allow_null=True, help_text="Stripe's own status of the subscription used, if any."
    )


class StringField(serializers.CharField):
    """A JSON string only: DRF's CharField would take `5` or `true` as "5" and "True"."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("Must be a string.", code="invalid")
        return str(super().to_internal_value(data))


class KeyVerifyInputSerializer(StrictSerializer):
    key = StringField(
        max_length=128, trim_whitespace=True, help_text="The developer key the service received."
    )
    scope = StringField(
        max_length=64,
        required=False,
        default="",
        help_text="The scope the service is about to serve (read, generate, publish, keys).",
    )
    route = StringField(
        max_length=200,
        required=False,
        default="",
        help_text="The route the service is about to serve (for the limiter's records).",
    )
    charge = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Count this use against the key's minute and day windows.",
    )


class WindowSerializer(serializers.Serializer):
    limit = serializers.IntegerField()
    used = serializers.IntegerField(allow_null=True, help_text="Null while the limiter is down.")
    remaining = serializers.IntegerField(allow_null=True)
    reset = serializers.IntegerField(help_text="Unix time the window resets.")


class RateLimitStateSerializer(serializers.Serializer):
    charged = serializers.BooleanField()
    minute = WindowSerializer()
    day = WindowSerializer()
    concurrency_limit = serializers.IntegerField()


class VerifiedKeySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    prefix = serializers.CharField()
    name = serializers.CharField()
    mode = serializers.CharField()
    tier = serializers.CharField()
    expires_at = serializers.DateTimeField(allow_null=True)


class KeyOwnerSerializer(serializers.Serializer):
    user_id = serializers.CharField()
    auth0_sub = serializers.CharField(allow_null=True)
    flash_user_id = serializers.CharField(allow_null=True)
    plan = serializers.CharField()


class KeyVerifyOutputSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    code = serializers.ChoiceField(
        choices=["valid", "invalid_api_key", "scope_required", "rate_limited"]
    )
    key = VerifiedKeySerializer(required=False)
    owner = KeyOwnerSerializer(required=False)
    tier = serializers.CharField(required=False)
    scopes = serializers.ListField(child=serializers.CharField(), required=False)
    rate_limit = RateLimitStateSerializer(required=False)
    retry_after = serializers.IntegerField(required=False)


class CreditsCheckInputSerializer(serializers.Serializer):
    user_id = serializers.CharField(max_length=MAX_IDENTIFIER_LENGTH)
    cost = serializers.IntegerField(min_value=0, max_value=1_000_000)


class CreditsCheckOutputSerializer(serializers.Serializer):
    sufficient = serializers.BooleanField(help_text="available >= cost")
    balance = serializers.IntegerField(help_text="Flash's balance.")
    reserved = serializers.IntegerField(help_text="Held by generations running through the relay.")
    available = serializers.IntegerField(help_text="balance - reserved")
    cost = serializers.IntegerField()
    user_id = serializers.CharField(help_text="The gateway's user id.")
