from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from timepoint_billing import admin_site, health, metrics

urlpatterns = [
    # The relay first: Django tries patterns in order, and every include that shares the
    # `api/v1/` prefix but does not match costs a failed sub-resolve on the hot path.
    path("api/v1/", include("relay.urls")),
    path("health", health.health, name="health"),
    path("health/ready", health.health_ready, name="health-ready"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("admin/dashboard/", admin_site.dashboard, name="admin-dashboard"),
    path("admin/", admin.site.urls),
    path("portal/", include("portal.urls")),
    path("oidc/", include("mozilla_django_oidc.urls")),
    path("api/schema", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("api/v1/", include("accounts.urls")),
    path("api/v1/", include("apikeys.urls")),
    path("api/v1/", include("payments.urls")),
    path("api/v1/", include("metering.urls")),
    path("api/v1/", include("webhooks.urls")),
    # Sibling services only (X-Service-Key); internal/middleware.py decides where it exists.
    path("internal/", include("internal.urls")),
]

handler400 = "timepoint_billing.errors.handler400"
handler403 = "timepoint_billing.errors.handler403"
handler404 = "timepoint_billing.errors.handler404"
handler500 = "timepoint_billing.errors.handler500"
