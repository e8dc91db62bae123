from django.urls import path

from internal import api

urlpatterns = [
    path("billing/status", api.BillingStatusApi.as_view(), name="internal-billing-status"),
    path("keys/verify", api.KeyVerifyApi.as_view(), name="internal-keys-verify"),
    path("credits/check", api.CreditsCheckApi.as_view(), name="internal-credits-check"),
    path("schema", api.InternalSchemaApi.as_view(), name="internal-schema"),
]
