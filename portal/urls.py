from django.urls import path

from portal import alert_pages, key_pages, recharge_pages, views, webhook_pages

app_name = "portal"

urlpatterns = [
    path("", views.HomePage.as_view(), name="home"),
    path("login/", views.login_page, name="login"),
    path("login/local/", views.local_signin, name="local-signin"),
    path("docs/", views.docs_page, name="docs"),
    path("keys/", key_pages.KeyListPage.as_view(), name="keys"),
    path("keys/<int:key_id>/", key_pages.KeyEditPage.as_view(), name="key"),
    path("keys/<int:key_id>/roll/", key_pages.KeyRollPage.as_view(), name="key-roll"),
    path("keys/<int:key_id>/revoke/", key_pages.KeyRevokePage.as_view(), name="key-revoke"),
    path("usage/", views.UsagePage.as_view(), name="usage"),
    path("billing/", views.BillingPage.as_view(), name="billing"),
    path("billing/checkout/", views.CheckoutPage.as_view(), name="checkout"),
    path("billing/alert/", alert_pages.LowBalanceAlertPage.as_view(), name="low-balance-alert"),
    path("billing/subscription/", views.SubscriptionPage.as_view(), name="subscription"),
    path(
        "billing/auto-recharge/",
        recharge_pages.AutoRechargePage.as_view(),
        name="auto-recharge",
    ),
    path("webhooks/", webhook_pages.WebhookListPage.as_view(), name="webhooks"),
    path(
        "webhooks/deliveries/<str:delivery_id>/resend/",
        webhook_pages.WebhookResendPage.as_view(),
        name="webhook-resend",
    ),
    path("webhooks/<str:endpoint_id>/", webhook_pages.WebhookDetailPage.as_view(), name="webhook"),
    path(
        "webhooks/<str:endpoint_id>/rotate/",
        webhook_pages.WebhookRotatePage.as_view(),
        name="webhook-rotate",
    ),
    path(
        "webhooks/<str:endpoint_id>/toggle/",
        webhook_pages.WebhookTogglePage.as_view(),
        name="webhook-toggle",
    ),
    path(
        "webhooks/<str:endpoint_id>/delete/",
        webhook_pages.WebhookDeletePage.as_view(),
        name="webhook-delete",
    ),
]
