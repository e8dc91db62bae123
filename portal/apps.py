from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _create_staff_groups(**kwargs: Any) -> None:
    # Not at the top: apps.py is imported while Django loads the apps, before any model exists.
    from portal.services import staff_groups_setup

    staff_groups_setup(reset=False)  # only creates missing groups; never undoes staff's changes


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Developer portal"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Sent after every app's permissions exist (portal is last in INSTALLED_APPS).
        post_migrate.connect(_create_staff_groups, sender=self, dispatch_uid="portal.staff_groups")
