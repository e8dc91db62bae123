"""Input and output shapes of the webhook endpoints, and of the events the gateway sends."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from timepoint_billing.serializers import StrictSerializer
from webhooks.models import (
    DeliveryState,
    EventType,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from webhooks.services import MAX_ROTATION_OVERLAP_SECONDS

EVENTS_HELP = "Event types this endpoint receives: " + ", ".join(
    f"`{value}` ({label.lower()})" for value, label in EventType.choices
)
URL_HELP = (
    "Where events are POSTed: `https://…` reachable on the internet (addresses on private, "
    "loopback or link-local networks are refused, at registration and at every send; "
    "redirects are not followed)."
)


def _events_field(**kwargs: Any) -> serializers.ListField:
    return serializers.ListField(
        child=serializers.ChoiceField(choices=EventType.choices),
        min_length=1,
        max_length=len(EventType.values),
        help_text=EVENTS_HELP,
        **kwargs,
    )


class EndpointCreateInputSerializer(StrictSerializer):
    url = serializers.CharField(max_length=2048, help_text=URL_HELP)
    events = _events_field()
    description = serializers.CharField(
        max_length=200, required=False, default="", allow_blank=True
    )


class EndpointUpdateInputSerializer(StrictSerializer):
    """Only the fields sent change."""

    url = serializers.CharField(max_length=2048, required=False, help_text=URL_HELP)
    events = _events_field(required=False)
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    enabled = serializers.BooleanField(
        required=False,
        source="is_enabled",
        help_text="false: nothing is sent; queued deliveries wait (their 3-day window runs on).",
    )


class SecretRotateInputSerializer(StrictSerializer):
    overlap_seconds = serializers.IntegerField(
        min_value=0,
        max_value=MAX_ROTATION_OVERLAP_SECONDS,
        default=24 * 3600,
        help_text="How long the old secret keeps signing too (0 … 604800 s; default a day).",
    )


class EndpointOutputSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")
    events = serializers.ListField(child=serializers.ChoiceField(choices=EventType.choices))
    enabled = serializers.BooleanField(source="is_enabled")
    secret_prefix = serializers.CharField(help_text="The current secret's first characters.")
    previous_secret_expires_at = serializers.SerializerMethodField(
        help_text="While a rotated-out secret still signs too: when it stops. null: none."
    )
    queued = serializers.IntegerField(
        default=0, help_text="Deliveries waiting for their first or next attempt."
    )
    failed = serializers.IntegerField(
        default=0, help_text="Deliveries whose 3-day retry window ended without a 2xx."
    )

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "url",
            "description",
            "events",
            "enabled",
            "secret_prefix",
            "previous_secret_expires_at",
            "queued",
            "failed",
            "created_at",
        ]

    def get_previous_secret_expires_at(self, endpoint: WebhookEndpoint) -> str | None:
        moment = endpoint.previous_secret_expires_at
        if moment is None or not endpoint.previous_secret_active():
            return None
        return serializers.DateTimeField().to_representation(moment)


class EndpointCreatedOutputSerializer(EndpointOutputSerializer):
    secret = serializers.SerializerMethodField(
        help_text="`whsec_…`: verify every delivery's `Timepoint-Signature` with it. Shown once."
    )

    class Meta(EndpointOutputSerializer.Meta):
        fields = [*EndpointOutputSerializer.Meta.fields, "secret"]

    def get_secret(self, endpoint: WebhookEndpoint) -> str:
        return str(self.context["secret"])


class AttemptOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = ["number", "started_at", "duration_ms", "status_code", "error", "response_excerpt"]


class DeliveryOutputSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")
    event_id = serializers.CharField(source="event.public_id")
    event_type = serializers.ChoiceField(source="event.type", choices=EventType.choices)
    endpoint_id = serializers.CharField(source="endpoint.public_id")
    state = serializers.ChoiceField(
        choices=DeliveryState.choices,
        help_text="`pending` (not tried yet), `sending`, `succeeded` (a 2xx), `retrying` (the "
        "last attempt failed; see next_attempt_at), `failed` (3 days without a 2xx).",
    )
    next_attempt_at = serializers.SerializerMethodField()
    attempts_recent = AttemptOutputSerializer(
        source="recent_attempts", many=True, help_text="The last attempts, newest first."
    )

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "event_id",
            "event_type",
            "endpoint_id",
            "state",
            "attempts",
            "next_attempt_at",
            "retry_until",
            "last_attempt_at",
            "last_status_code",
            "last_error",
            "delivered_at",
            "created_at",
            "attempts_recent",
        ]

    def get_next_attempt_at(self, delivery: WebhookDelivery) -> str | None:
        if delivery.state not in (DeliveryState.PENDING, DeliveryState.RETRYING):
            return None
        return serializers.DateTimeField().to_representation(delivery.next_attempt_at)


class DeliveryListQuerySerializer(StrictSerializer):
    state = serializers.ChoiceField(choices=DeliveryState.choices, required=False)
    limit = serializers.IntegerField(min_value=1, max_value=100, default=50)


# --- What each delivery's body looks like (documented as OpenAPI callbacks)


class KeyFactsSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="`tp_live_AbCd1234`: the key's public prefix.")
    mode = serializers.CharField(help_text="`live` or `test`.")


class CreditsLowDataSerializer(serializers.Serializer):
    balance = serializers.IntegerField(help_text="The Flash balance after the generation.")
    threshold = serializers.IntegerField(help_text="Your alert threshold it fell below.")


class CreditsGrantedDataSerializer(serializers.Serializer):
    reference = serializers.CharField(
        help_text="The grant's reference (`stripe:<payment or invoice>`, `apple:<transaction>`, "
        "`manual:<id>`, `refund:<request>`): the same for one grant however often it is sent."
    )
    amount = serializers.IntegerField(help_text="Credits added.")
    # A declared field named like Field.source (DRF's metaclass moves it into `fields`).
    source = serializers.ChoiceField(choices=["stripe", "apple", "manual", "refund"])  # type: ignore[assignment]
    balance_after = serializers.IntegerField(
        allow_null=True, help_text="The balance right after, when Flash reported it."
    )


class RechargeFailedDataSerializer(serializers.Serializer):
    pack = serializers.CharField(help_text="The credit pack auto-recharge tried to buy.")
    code = serializers.CharField(help_text="Why: e.g. `card_declined`, `authentication_required`.")
    reason = serializers.CharField(help_text="A sentence for people.")


class KeyRevokedDataSerializer(serializers.Serializer):
    key = KeyFactsSerializer()
    revoked_at = serializers.DateTimeField()


class KeyExpiringDataSerializer(serializers.Serializer):
    key = KeyFactsSerializer()
    expires_at = serializers.DateTimeField(help_text="When the key stops working: roll it.")


class PaymentFactsSerializer(serializers.Serializer):
    reference = serializers.CharField()
    provider = serializers.CharField(help_text="`stripe` or `apple`.")
    product = serializers.CharField(help_text="The pack or plan paid for.")
    amount_cents = serializers.IntegerField()
    amount_refunded_cents = serializers.IntegerField(help_text="Refunded so far, in total.")
    currency = serializers.CharField()
    status = serializers.CharField(help_text="`refunded`, `partially_refunded` or `disputed`.")


class PaymentRefundedDataSerializer(serializers.Serializer):
    payment = PaymentFactsSerializer()


EVENT_DATA: dict[str, type[serializers.Serializer]] = {
    EventType.CREDITS_LOW: CreditsLowDataSerializer,
    EventType.CREDITS_GRANTED: CreditsGrantedDataSerializer,
    EventType.CREDITS_RECHARGE_FAILED: RechargeFailedDataSerializer,
    EventType.KEY_REVOKED: KeyRevokedDataSerializer,
    EventType.KEY_EXPIRING: KeyExpiringDataSerializer,
    EventType.PAYMENT_REFUNDED: PaymentRefundedDataSerializer,
}


def event_body_serializer(event_type: str) -> type[serializers.Serializer]:
    """The body of a delivery of `event_type`, as a serializer class named for the schema."""
    data = EVENT_DATA[event_type]
    name = "".join(part.title() for part in event_type.replace("_", ".").split(".")) + "Event"
    return type(
        name,
        (serializers.Serializer,),
        {
            "__doc__": f"The body of a `{event_type}` delivery.",
            "id": serializers.CharField(
                help_text="`evt_…`: the event; the same in every delivery of it."
            ),
            "object": serializers.ChoiceField(choices=["event"]),
            "type": serializers.ChoiceField(choices=[event_type]),
            "created": serializers.IntegerField(help_text="When it happened (Unix seconds)."),
            "data": data(),
        },
    )
