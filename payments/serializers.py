"""Billing request and response shapes."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from payments.models import AutoRecharge, CreditGrant, Payment, Recharge, RechargeState
from payments.selectors import AutoRechargeStatus
from timepoint_billing.serializers import StrictSerializer


class PlanSerializer(serializers.Serializer):
    name = serializers.CharField()
    display_name = serializers.CharField()
    monthly_credits = serializers.IntegerField()
    price_cents = serializers.IntegerField()
    currency = serializers.CharField()
    hd_access = serializers.BooleanField()
    api_key_tier = serializers.CharField()
    purchasable = serializers.BooleanField()


class PackSerializer(serializers.Serializer):
    name = serializers.CharField()
    display_name = serializers.CharField()
    credits = serializers.IntegerField()
    price_cents = serializers.IntegerField()
    currency = serializers.CharField()
    purchasable = serializers.BooleanField()


class CatalogueSerializer(serializers.Serializer):
    plans = PlanSerializer(many=True)
    packs = PackSerializer(many=True)


class ScheduledChangeSerializer(serializers.Serializer):
    plan = serializers.CharField()
    display_name = serializers.CharField()
    monthly_credits = serializers.IntegerField()
    price_cents = serializers.IntegerField(allow_null=True)
    effective_at = serializers.DateTimeField(help_text="The end of the current period.")


class SubscriptionOutputSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The Stripe subscription id.")
    plan = serializers.CharField(help_text="The plan's catalogue key.")
    display_name = serializers.CharField()
    status = serializers.CharField(help_text="Stripe's status: active, trialing, past_due, …")
    price_cents = serializers.IntegerField(allow_null=True, help_text="What you pay a month.")
    currency = serializers.CharField()
    monthly_credits = serializers.IntegerField(help_text="Credits granted each paid month.")
    hd_access = serializers.BooleanField()
    api_key_tier = serializers.CharField()
    cancel_at_period_end = serializers.BooleanField()
    current_period_end = serializers.DateTimeField(allow_null=True)
    grandfathered = serializers.BooleanField(
        help_text="You keep the price and terms you subscribed at; the plan sells on other "
        "terms now. Changing plan moves you to the terms on sale."
    )
    scheduled_change = ScheduledChangeSerializer(
        allow_null=True, help_text="A downgrade that takes effect at the end of the period."
    )


class PlanChangeInputSerializer(serializers.Serializer):
    plan = serializers.CharField(
        max_length=64, help_text="The catalogue key of a plan on sale (`GET /billing/plans`)."
    )


class CheckoutInputSerializer(serializers.Serializer):
    package = serializers.CharField(required=False, allow_blank=False, max_length=64)
    plan = serializers.CharField(required=False, allow_blank=False, max_length=64)


class CheckoutOutputSerializer(serializers.Serializer):
    checkout_url = serializers.URLField()
    session_id = serializers.CharField()


class PortalOutputSerializer(serializers.Serializer):
    portal_url = serializers.URLField()


class GrantSerializer(serializers.ModelSerializer):
    class Meta:
        model = CreditGrant
        fields = ["key", "amount", "transaction_type", "source", "state", "created_at", "sent_at"]


class PaymentSerializer(serializers.ModelSerializer):
    status = serializers.CharField()

    class Meta:
        model = Payment
        fields = [
            "reference",
            "provider",
            "product",
            "amount_cents",
            "currency",
            "amount_refunded_cents",
            "status",
            "created_at",
        ]


class SubscriptionSerializer(serializers.Serializer):
    id = serializers.CharField()
    status = serializers.CharField()
    plan = serializers.CharField()
    cancel_at_period_end = serializers.BooleanField()
    current_period_end = serializers.IntegerField(allow_null=True)


class HistorySerializer(serializers.Serializer):
    payments = PaymentSerializer(many=True)
    subscriptions = SubscriptionSerializer(many=True)
    grants = GrantSerializer(many=True)


class VerifyReceiptInputSerializer(serializers.Serializer):
    signed_transaction = serializers.CharField(max_length=20000)


class VerifyReceiptOutputSerializer(serializers.Serializer):
    transaction_key = serializers.CharField(source="key")
    credits = serializers.IntegerField(source="amount")
    state = serializers.CharField()


class AppleNotificationInputSerializer(serializers.Serializer):
    signedPayload = serializers.CharField(max_length=100000)


class ReceivedSerializer(serializers.Serializer):
    received = serializers.BooleanField()


class AppleAccountTokenSerializer(serializers.Serializer):
    app_account_token = serializers.UUIDField(
        help_text="Set it as `appAccountToken` on every App Store purchase (StoreKit "
        "`Product.PurchaseOption.appAccountToken`); stable for the account."
    )


# --- Auto-recharge


class AutoRechargeInputSerializer(StrictSerializer):
    enabled = serializers.BooleanField(
        help_text="Turning it on needs a card saved at a Checkout (409 `no_saved_card` without "
        "one); it clears the last failure."
    )
    threshold = serializers.IntegerField(
        min_value=1,
        max_value=AutoRecharge.MAX_THRESHOLD,
        help_text="Credits. When a settled generation takes your balance from this or more to "
        "below it, the pack is bought.",
    )
    pack = serializers.CharField(
        max_length=64, help_text="The credit pack bought (`name` in `GET /billing/plans`)."
    )
    daily_cap = serializers.IntegerField(
        min_value=1,
        max_value=AutoRecharge.MAX_DAILY_CAP,
        default=2,
        help_text="At most this many recharges in any 24 hours; past it a fall below the "
        "threshold buys nothing (the recharge is listed as `skipped`).",
    )


class CardSerializer(serializers.Serializer):
    brand = serializers.CharField(source="card_brand")
    last4 = serializers.CharField(source="card_last4")


class TurnedOffSerializer(serializers.Serializer):
    code = serializers.CharField(
        source="failure_code",
        help_text="`card_declined`, `expired_card`, `authentication_required`, "
        "`no_saved_card`, … (Stripe's code).",
    )
    reason = serializers.CharField(source="failure_message")
    at = serializers.DateTimeField(source="failed_at")


class RechargeSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id")
    state = serializers.ChoiceField(
        choices=RechargeState.choices,
        help_text="`pending`/`charging`/`retrying`: on its way; `paid`: Stripe took the payment, "
        "the credits follow its confirmation; `succeeded`: credits granted; `failed`: declined "
        "or authentication required (auto-recharge was turned off); `skipped`: past the daily "
        "cap; `needs_attention`: Stripe gave no answer, staff check it.",
    )

    class Meta:
        model = Recharge
        fields = [
            "id",
            "state",
            "pack",
            "credits",
            "amount_cents",
            "currency",
            "balance",
            "threshold",
            "failure_code",
            "failure_message",
            "created_at",
            "finished_at",
        ]


class AutoRechargeOutputSerializer(serializers.Serializer):
    enabled = serializers.SerializerMethodField()
    threshold = serializers.IntegerField(source="rule.threshold", allow_null=True, default=None)
    pack = serializers.CharField(source="rule.pack", allow_null=True, default=None)
    daily_cap = serializers.IntegerField(source="rule.daily_cap", allow_null=True, default=None)
    card = serializers.SerializerMethodField(
        help_text="The card recharges are charged to, as last seen."
    )
    turned_off = serializers.SerializerMethodField(
        help_text="Set when the gateway turned auto-recharge off after a failed recharge."
    )
    recharges_last_24h = serializers.IntegerField(help_text="Counted against `daily_cap`.")
    recent = RechargeSerializer(many=True)

    def get_enabled(self, status: AutoRechargeStatus) -> bool:
        return bool(status.rule and status.rule.enabled)

    @extend_schema_field(CardSerializer(allow_null=True))
    def get_card(self, status: AutoRechargeStatus) -> dict[str, Any] | None:
        rule = status.rule
        return CardSerializer(rule).data if rule and rule.card_last4 else None

    @extend_schema_field(TurnedOffSerializer(allow_null=True))
    def get_turned_off(self, status: AutoRechargeStatus) -> dict[str, Any] | None:
        rule = status.rule
        if rule is None or rule.enabled or rule.failed_at is None:
            return None
        return TurnedOffSerializer(rule).data
