from django.urls import path

from webhooks import api

urlpatterns = [
    path("webhooks/endpoints", api.EndpointListCreateApi.as_view(), name="webhook-endpoints"),
    path(
        "webhooks/endpoints/<str:endpoint_id>",
        api.EndpointDetailApi.as_view(),
        name="webhook-endpoint-detail",
    ),
    path(
        "webhooks/endpoints/<str:endpoint_id>/rotate-secret",
        api.EndpointSecretRotateApi.as_view(),
        name="webhook-endpoint-rotate-secret",
    ),
    path(
        "webhooks/endpoints/<str:endpoint_id>/deliveries",
        api.EndpointDeliveryListApi.as_view(),
        name="webhook-endpoint-deliveries",
    ),
    path(
        "webhooks/deliveries/<str:delivery_id>/resend",
        api.DeliveryResendApi.as_view(),
        name="webhook-delivery-resend",
    ),
]
