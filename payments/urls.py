from django.urls import path

from payments import api

urlpatterns = [
    path("billing/plans", api.PlanListApi.as_view(), name="billing-plans"),
    path("billing/checkout", api.CheckoutCreateApi.as_view(), name="billing-checkout"),
    path("billing/subscription", api.SubscriptionApi.as_view(), name="billing-subscription"),
    path(
        "billing/subscription/change",
        api.SubscriptionChangeApi.as_view(),
        name="billing-subscription-change",
    ),
    path(
        "billing/subscription/cancel",
        api.SubscriptionCancelApi.as_view(),
        name="billing-subscription-cancel",
    ),
    path(
        "billing/subscription/resume",
        api.SubscriptionResumeApi.as_view(),
        name="billing-subscription-resume",
    ),
    path("billing/portal", api.BillingPortalCreateApi.as_view(), name="billing-portal"),
    path("billing/history", api.BillingHistoryApi.as_view(), name="billing-history"),
    path("billing/auto-recharge", api.AutoRechargeApi.as_view(), name="billing-auto-recharge"),
    path(
        "billing/apple/account-token",
        api.AppleAccountTokenApi.as_view(),
        name="billing-apple-account-token",
    ),
    path("billing/verify-receipt", api.AppleReceiptVerifyApi.as_view(), name="billing-apple"),
    path("billing/webhooks/stripe", api.StripeWebhookApi.as_view(), name="webhook-stripe"),
    path("billing/webhooks/apple", api.AppleWebhookApi.as_view(), name="webhook-apple"),
]
