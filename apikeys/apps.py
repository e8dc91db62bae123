from django.apps import AppConfig


class ApikeysConfig(AppConfig):
    name = "apikeys"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts.signals import user_deleted, user_export
        from apikeys import selectors, services

        user_deleted.connect(services.on_user_deleted, dispatch_uid="apikeys.user_deleted")
        user_export.connect(selectors.key_export, dispatch_uid="apikeys.user_export")
