"""Billing request and response shapes."""

from __future__ import annotations

from rest_framework import serializers

from payments.models import CreditGrant, Payment


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
