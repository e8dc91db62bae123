from django.contrib import admin
from django.urls import include, path
from django.urls.resolvers import RoutePattern

from timepoint_billing import admin_site, health, metrics_endpoint
from timepoint_billing.admin_apps import AdminUrls
from timepoint_billing.routes import ADMIN, API_V1, HEALTH, INTERNAL, OIDC, PORTAL, LazyURLResolver


def lazily(route: str, module: str | AdminUrls, app_name: str | None = None) -> LazyURLResolver:
    """`path(route, include(module))` that imports the module when a path under it is first
    resolved or a name in it reversed, instead of when the URL conf loads (Django's resolver
    imports a urlconf given by name on first use, as it does ROOT_URLCONF). For the areas only
    people, the portal and sibling services use: a worker that only relays never loads their
    views, serializers and drf-spectacular's views (~1.5 MB per worker, issue 17). The relay is
    included eagerly: its async views are found at startup (routes.async_route_prefixes)."""
    pattern = RoutePattern(route, is_endpoint=False)
    return LazyURLResolver(pattern, module, app_name=app_name, namespace=app_name)


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
    lazily(ADMIN, AdminUrls(), app_name=admin.site.name),
    lazily(PORTAL, "portal.urls", app_name="portal"),
    lazily(OIDC, "mozilla_django_oidc.urls"),
    # /api/schema, /api/docs, /api/redoc
    lazily("api/", "timepoint_billing.schema_urls"),
    lazily(API_V1, "accounts.urls"),
    lazily(API_V1, "apikeys.urls"),
    lazily(API_V1, "payments.urls"),
    lazily(API_V1, "metering.urls"),
    lazily(API_V1, "webhooks.urls"),
    lazily(API_V1, "alerts.urls"),
    # Sibling services only (X-Service-Key); internal/middleware.py decides where it exists.
    lazily(INTERNAL, "internal.urls"),
]

handler400 = "timepoint_billing.errors.handler400"
handler403 = "timepoint_billing.errors.handler403"
handler404 = "timepoint_billing.errors.handler404"
handler500 = "timepoint_billing.errors.handler500"
