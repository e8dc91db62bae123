"""django.contrib.admin's app, with its autodiscovery (importing every app's `admin.py`) put off
in a web process until the admin is first used: the admin modules and the forms, widgets and
services they import were ~2 MB of every gateway worker, most of which never serves a staff page
(issue 17). `manage.py` (checks, commands) and the test suite discover at startup as Django does.

First use is the admin's URL conf being read (resolving a path under /admin/ or reversing an
`admin:` name: timepoint_billing/urls.py `AdminUrls`) or the billing dashboard (admin_site.py).
"""

from __future__ import annotations

from types import ModuleType

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.apps import SimpleAdminConfig
from django.urls import URLPattern, URLResolver


class GatewayAdminConfig(SimpleAdminConfig):
    def ready(self) -> None:
        super().ready()
        if not settings.WEB_PROCESS:
            admin.autodiscover()


class AdminUrls(ModuleType):
    """The admin site's URL conf as a module (what Django's resolver takes for a URL conf) whose
    `urlpatterns` are built when first read, the apps' admin modules imported first
    (`autodiscover` imports each once, so calling it again is free)."""

    def __init__(self) -> None:
        super().__init__("timepoint_billing.admin_urls")

    @property
    def urlpatterns(self) -> list[URLResolver | URLPattern]:
        admin.autodiscover()
        return admin.site.get_urls()
