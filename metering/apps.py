from django.apps import AppConfig


class MeteringConfig(AppConfig):
    name = "metering"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts.signals import user_export
        from metering import selectors

        user_export.connect(selectors.usage_export, dispatch_uid="metering.user_export")
