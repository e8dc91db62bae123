"""Billing API: catalogue, checkout, subscription changes, portal, history, Stripe and Apple
webhooks, Apple receipts.

The caller's own calls (checkout, portal, history, verify-receipt) are rate limited and metered
like every other client call; the public catalogue and the providers' webhooks are not."""

from __future__ import annotations

from typing import cast

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from accounts.scopes import Scope
from apikeys.drf import LimitedMeteredApiView
from payments import selectors, serializers, services
from payments.apple_tokens import apple_account_token
from payments.models import PlanSubscription
from timepoint_billing.errors import NotFound
from timepoint_billing.openapi import error_responses

TAGS = ["billing"]


def _user(request: Request) -> User:
    # Every authenticated route: GatewayAuthentication puts our User here.
    return cast(User, request.user)


class PlanListApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        tags=TAGS,
        summary="Plans and credit packs with prices, credits and HD access (public)",
        responses={200: serializers.CatalogueSerializer},
    )
    def get(self, request: Request) -> Response:
        data = {"plans": selectors.plan_list(), "packs": selectors.pack_list()}
        return Response(serializers.CatalogueSerializer(data).data)


class CheckoutCreateApi(LimitedMeteredApiView):
    required_scope = Scope.BILLING

    @extend_schema(
        tags=TAGS,
        summary="Start a Stripe Checkout for a credit pack or a plan",
        request=serializers.CheckoutInputSerializer,
        responses={
            200: serializers.CheckoutOutputSerializer,
            **error_responses(400, 401, 409, 429, 502, 503),
        },
    )
    def post(self, request: Request) -> Response:
        payload = serializers.CheckoutInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        result = services.checkout_create(
            user=_user(request),
            package=payload.validated_data.get("package", ""),
            plan=payload.validated_data.get("plan", ""),
        )
        return Response(serializers.CheckoutOutputSerializer(result).data)


PLAN_CHANGE_RULES = (
    "An upgrade (more monthly credits) takes effect at once: Stripe charges the rest of the "
    "period at the new price less what is left of the old one, and the difference in monthly "
    "credits for the rest of the period is granted once that invoice is paid (in proportion to "
    "the share of the new price charged). HD access and the API-key tier follow at once. A "
    "downgrade takes effect at the end of the period: the current plan, its credits and limits "
    "stay until then, and nothing is refunded. Asking for the plan a scheduled downgrade would "
    "leave cancels the downgrade. 402 `payment_declined`: the card was declined, nothing "
    "changed. 409 `no_subscription`: subscribe through checkout first; `already_on_plan`; "
    "`subscription_ending`: resume it first."
)


class SubscriptionApi(LimitedMeteredApiView):
    required_scope = Scope.READ

    @extend_schema(
        tags=TAGS,
        summary="Your subscription: plan, price and terms, period end, a scheduled downgrade",
        responses={200: serializers.SubscriptionOutputSerializer, **error_responses(401, 404, 429)},
    )
    def get(self, request: Request) -> Response:
        row = selectors.plan_subscription_for_user(user=_user(request))
        if row is None:
            raise NotFound("You have no subscription.", code="no_subscription")
        return _subscription(row)


def _subscription(row: PlanSubscription) -> Response:
    view = selectors.subscription_view(row)
    return Response(serializers.SubscriptionOutputSerializer(view).data)


class SubscriptionChangeApi(LimitedMeteredApiView):
    required_scope = Scope.BILLING

    @extend_schema(
        tags=TAGS,
        summary="Change plan: upgrade now (prorated), downgrade at the end of the period",
        description=PLAN_CHANGE_RULES,
        request=serializers.PlanChangeInputSerializer,
        responses={
            200: serializers.SubscriptionOutputSerializer,
            **error_responses(400, 401, 402, 409, 429, 502),
        },
    )
    def post(self, request: Request) -> Response:
        payload = serializers.PlanChangeInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        row = services.plan_change(user=_user(request), plan=payload.validated_data["plan"])
        return _subscription(row)


class SubscriptionCancelApi(LimitedMeteredApiView):
    required_scope = Scope.BILLING

    @extend_schema(
        tags=TAGS,
        summary="Cancel at the end of the period (the plan and its credits stay until then)",
        request=None,
        responses={
            200: serializers.SubscriptionOutputSerializer,
            **error_responses(401, 409, 429, 502),
        },
    )
    def post(self, request: Request) -> Response:
        return _subscription(services.subscription_cancel(user=_user(request)))


class SubscriptionResumeApi(LimitedMeteredApiView):
    required_scope = Scope.BILLING

    @extend_schema(
        tags=TAGS,
        summary="Resume a subscription cancelled at period end, before the period ends",
        request=None,
        responses={
            200: serializers.SubscriptionOutputSerializer,
            **error_responses(401, 409, 429, 502),
        },
    )
    def post(self, request: Request) -> Response:
        return _subscription(services.subscription_resume(user=_user(request)))


class BillingPortalCreateApi(LimitedMeteredApiView):
    required_scope = Scope.BILLING

    @extend_schema(
        tags=TAGS,
        summary="A Stripe billing-portal link to change or cancel a plan",
        request=None,
        responses={200: serializers.PortalOutputSerializer, **error_responses(401, 404, 429, 502)},
    )
    def post(self, request: Request) -> Response:
        url = services.billing_portal_create(user=_user(request))
        return Response({"portal_url": url})


class BillingHistoryApi(LimitedMeteredApiView):
    required_scope = Scope.READ

    @extend_schema(
        tags=TAGS,
        summary="The caller's payments, subscriptions and credit grants with their states",
        responses={200: serializers.HistorySerializer, **error_responses(401, 429)},
    )
    def get(self, request: Request) -> Response:
        data = {
            "payments": selectors.payment_list_for_user(user=_user(request)),
            "subscriptions": selectors.subscription_list_for_user(user=_user(request)),
            "grants": selectors.grant_list_for_user(user=_user(request)),
        }
        return Response(serializers.HistorySerializer(data).data)


class StripeWebhookApi(APIView):
    """Stripe calls this; it is authenticated by the `Stripe-Signature` over the raw body."""

    authentication_classes = []
    permission_classes = [AllowAny]
    parser_classes = []

    @extend_schema(
        tags=TAGS,
        summary="Stripe webhook (signed by Stripe)",
        request={"application/json": OpenApiTypes.OBJECT},
        responses={200: serializers.ReceivedSerializer, **error_responses(400)},
    )
    def post(self, request: Request) -> Response:
        _, created = services.stripe_webhook_receive(
            payload=request.body, signature_header=request.headers.get("Stripe-Signature", "")
        )
        return Response({"received": True, "duplicate": not created})


class AppleReceiptVerifyApi(LimitedMeteredApiView):
    required_scope = Scope.BILLING

    @extend_schema(
        tags=TAGS,
        summary="Verify an App Store signed transaction and grant its credits once",
        request=serializers.VerifyReceiptInputSerializer,
        responses={
            200: serializers.VerifyReceiptOutputSerializer,
            **error_responses(400, 401, 409, 429, 503),
        },
        description=(
            "409 `apple_account_mismatch`: the transaction's `appAccountToken` belongs to "
            "another account (see `GET /billing/apple/account-token`). 409 "
            "`transaction_already_claimed`: a transaction without a token was already credited "
            "to another account (first come)."
        ),
    )
    def post(self, request: Request) -> Response:
        payload = serializers.VerifyReceiptInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        grant = services.apple_transaction_verify(
            user=_user(request), signed_transaction=payload.validated_data["signed_transaction"]
        )
        return Response(serializers.VerifyReceiptOutputSerializer(grant).data)


class AppleAccountTokenApi(LimitedMeteredApiView):
    # Billing: the token binds App Store purchases to this account (as verify-receipt does).
    required_scope = Scope.BILLING

    @extend_schema(
        tags=TAGS,
        summary="Your appAccountToken for App Store purchases",
        description=(
            "A stable UUID for this account. The app sets it as `appAccountToken` on every "
            "purchase; `verify-receipt` then credits a transaction carrying it to this account "
            "only, and refuses it (409 `apple_account_mismatch`) for any other. A transaction "
            "without a token is credited to the first account that presents it."
        ),
        responses={
            200: serializers.AppleAccountTokenSerializer,
            **error_responses(401, 429),
        },
    )
    def get(self, request: Request) -> Response:
        token = apple_account_token(user=_user(request))
        return Response(serializers.AppleAccountTokenSerializer({"app_account_token": token}).data)


class AppleWebhookApi(APIView):
    """App Store Server Notifications v2; authenticated by Apple's signature on the payload."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        tags=TAGS,
        summary="App Store Server Notifications v2 (signed by Apple)",
        request=serializers.AppleNotificationInputSerializer,
        responses={200: serializers.ReceivedSerializer, **error_responses(400, 503)},
    )
    def post(self, request: Request) -> Response:
        payload = serializers.AppleNotificationInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        created = services.apple_notification_receive(
            signed_payload=payload.validated_data["signedPayload"]
        )
        return Response({"received": True, "duplicate": not created})


class AutoRechargeApi(LimitedMeteredApiView):
    required_scope = Scope.BILLING

    @extend_schema(
        operation_id="billing_auto_recharge_retrieve",
        tags=TAGS,
        summary="Your auto-recharge rule, its card and your latest recharges",
        responses={200: serializers.AutoRechargeOutputSerializer, **error_responses(401, 429)},
    )
    def get(self, request: Request) -> Response:
        status = selectors.auto_recharge_status(user=_user(request))
        return Response(serializers.AutoRechargeOutputSerializer(status).data)

    @extend_schema(
        operation_id="billing_auto_recharge_set",
        tags=TAGS,
        summary="Set auto-recharge: when your balance falls below `threshold`, buy `pack`",
        description=(
            "Opt-in. When a settled generation takes your Flash balance from `threshold` or more "
            "to below it, the gateway buys `pack` with the card saved at your last Checkout (a "
            "payment made without you, off session), at most `daily_cap` times in 24 hours. The "
            "credits arrive once Stripe confirms the payment (a `credits.granted` webhook). A "
            "decline or a bank asking you to authenticate turns auto-recharge off, emails you "
            "and sends `credits.recharge_failed`; set it again (with `enabled: true`) once your "
            "card is fixed. 409 `no_saved_card`: buy a pack once at Checkout first."
        ),
        request=serializers.AutoRechargeInputSerializer,
        responses={
            200: serializers.AutoRechargeOutputSerializer,
            **error_responses(400, 401, 409, 429, 502, 503),
        },
    )
    def put(self, request: Request) -> Response:
        payload = serializers.AutoRechargeInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        services.recharge_rule_set(user=_user(request), **payload.validated_data)
        status = selectors.auto_recharge_status(user=_user(request))
        return Response(serializers.AutoRechargeOutputSerializer(status).data)
