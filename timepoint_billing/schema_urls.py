"""The public OpenAPI document and its two viewers, under `api/` (timepoint_billing/urls.py
includes this module lazily: drf-spectacular's views load its schema machinery and Django's test
client, which a relaying worker never needs)."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

urlpatterns = [
    path("schema", SpectacularAPIView.as_view(), name="schema"),
    path("docs", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("redoc", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
]
