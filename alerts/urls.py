from django.urls import path

from alerts import api

urlpatterns = [
    path(
        "billing/low-balance-alert",
        api.LowBalanceAlertApi.as_view(),
        name="billing-low-balance-alert",
    ),
]
