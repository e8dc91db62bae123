from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from timepoint_billing import admin_site, health, metrics_endpoint
from timepoint_billing.routes import ADMIN, API_V1, HEALTH, INTERNAL, OIDC, PORTAL

# The areas (API_V1, ADMIN, ...) are declared in timepoint_billing/routes.py, which the middleware
# and the error handler read too.
urlpatterns = [
    # The relay first: Django tries patterns in order, and every include that shares the
    # `api/v1/` prefix but does not match costs a failed sub-resolve on the hot path.
    path(API_V1, include("relay.urls")),
    path(HEALTH, health.health, name="health"),
    path(f"{HEALTH}/ready", health.health_ready, name="health-ready"),
    path("metrics", metrics_endpoint.metrics_view, name="metrics"),
    path(f"{ADMIN}dashboard/", admin_site.dashboard, name="admin-dashboard"),
    path(ADMIN, admin.site.urls),
    path(PORTAL, include("portal.urls")),
    path(OIDC, include("mozilla_django_oidc.urls")),
    path("api/schema", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path(API_V1, include("accounts.urls")),
    path(API_V1, include("apikeys.urls")),
    path(API_V1, include("payments.urls")),
    path(API_V1, include("metering.urls")),
    path(API_V1, include("webhooks.urls")),
    path(API_V1, include("alerts.urls")),
    # Sibling services only (X-Service-Key); internal/middleware.py decides where it exists.
    path(INTERNAL, include("internal.urls")),
]

handler400 = "timepoint_billing.errors.handler400"
handler403 = "timepoint_billing.errors.handler403"
handler404 = "timepoint_billing.errors.handler404"
handler500 = "timepoint_billing.errors.handler500"
