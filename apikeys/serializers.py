"""Input and output shapes of the key endpoints."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.scopes import DEFAULT_KEY_SCOPES, Scope
from apikeys.limits import key_limits
from apikeys.models import APIKey, KeyMode
from apikeys.selectors import key_budget
from apikeys.services import MAX_ALLOWED_ENTRIES, MAX_ROLL_GRACE_SECONDS
from metering.serializers import UsageCountsSerializer
from timepoint_billing.serializers import StrictSerializer

SCOPES_HELP = (
    "What the key may do: `read` (Clockchain, credit balance/history/costs, usage), `generate` "
    "(spends credits), `publish` (timepoint visibility), `keys` (manage keys and sessions), "
    "`billing` (checkout, billing portal, App Store receipts)."
)
BUDGET_HELP = (
    "Credits the key may spend per UTC calendar month; a generation that would pass it is 402 "
    "`budget_exhausted` before Flash is called. null: no budget (up to your balance)."
)
ORIGINS_HELP = (
    "Browser origins (`https://app.example.com`) the key may be used from; a request with "
    "another or no `Origin` is 403 `key_not_allowed_here`. Empty: any. A speed bump, not a secret."
)
CIDRS_HELP = (
    "Client networks (`203.0.113.0/24`, `2001:db8::/32`) the key may be used from; other "
    "addresses are 403 `key_not_allowed_here`. Empty: any."
)


def _scopes_field(**kwargs: Any) -> serializers.ListField:
    return serializers.ListField(
        child=serializers.ChoiceField(choices=Scope.choices), help_text=SCOPES_HELP, **kwargs
    )


def _budget_field(**kwargs: Any) -> serializers.IntegerField:
    return serializers.IntegerField(
        min_value=0, max_value=100_000_000, allow_null=True, help_text=BUDGET_HELP, **kwargs
    )


def _list_field(help_text: str, **kwargs: Any) -> serializers.ListField:
    return serializers.ListField(
        child=serializers.CharField(max_length=200),
        max_length=MAX_ALLOWED_ENTRIES,
        help_text=help_text,
        **kwargs,
    )


class KeyCreateInputSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100, trim_whitespace=True)
    mode = serializers.ChoiceField(choices=KeyMode.choices, default=KeyMode.LIVE)
    scopes = _scopes_field(
        default=list(DEFAULT_KEY_SCOPES), min_length=1
    )  # default: read, generate, publish
    monthly_credit_budget = _budget_field(default=None)
    expires_at = serializers.DateTimeField(
        default=None,
        allow_null=True,
        help_text="When the key stops working (ISO 8601, in the future). null: never.",
    )
    allowed_origins = _list_field(ORIGINS_HELP, default=list)
    allowed_cidrs = _list_field(CIDRS_HELP, default=list)


class KeyUpdateInputSerializer(StrictSerializer):
    """Only the fields sent change."""

    name = serializers.CharField(max_length=100, trim_whitespace=True, required=False)
    scopes = _scopes_field(required=False, min_length=1)
    monthly_credit_budget = _budget_field(required=False)
    expires_at = serializers.DateTimeField(
        required=False,
        allow_null=True,
        help_text="When the key stops working (ISO 8601, in the future). null: never. A revoked, "
        "expired or rolled key's expiry cannot change (409 `key_not_active`).",
    )
    allowed_origins = _list_field(ORIGINS_HELP, required=False)
    allowed_cidrs = _list_field(CIDRS_HELP, required=False)


class KeyListQuerySerializer(StrictSerializer):
    expiring = serializers.ChoiceField(
        choices=["soon"],
        required=False,
        help_text="`soon`: only usable keys that stop working within the next 7 days.",
    )


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


class BudgetSerializer(serializers.Serializer):
    month = serializers.DateField(help_text="First day of the UTC calendar month.")
    spent = serializers.IntegerField(help_text="Credits held or charged this month, less refunds.")
    budget = serializers.IntegerField(allow_null=True, help_text="null: no budget.")
    remaining = serializers.IntegerField(allow_null=True)


class KeyOutputSerializer(serializers.ModelSerializer):
    status = serializers.SerializerMethodField()
    expires_soon = serializers.SerializerMethodField()
    budget = serializers.SerializerMethodField()
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
            "expires_soon",
            "revoked_at",
            "replaced_by",
            "request_count",
            "scopes",
            "monthly_credit_budget",
            "budget",
            "allowed_origins",
            "allowed_cidrs",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=["active", "expired", "revoked"]))
    def get_status(self, key: APIKey) -> str:
        if key.revoked_at is not None or not key.is_active:
            return "revoked"
        if key.is_expired():
            return "expired"
        return "active"

    @extend_schema_field(
        serializers.BooleanField(help_text="Usable and stops working within the next 7 days.")
    )
    def get_expires_soon(self, key: APIKey) -> bool:
        return key.expires_soon()

    @extend_schema_field(BudgetSerializer)
    def get_budget(self, key: APIKey) -> dict[str, Any]:
        return key_budget(key)

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
        "budget": BudgetSerializer(help_text="This UTC month's spend against the key's budget."),
    },
)
