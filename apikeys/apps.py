from django.apps import AppConfig


class ApikeysConfig(AppConfig):
    name = "apikeys"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Here, not at the top: these import models, which exist once every app is loaded.
        from accounts.signals import user_deleted, user_export
        from apikeys import lookup, selectors, services
        from timepoint_billing import callers

        callers.resolver_register(
            "api_key", lookup.caller_from_api_key, cached=lookup.caller_from_api_key_cached
        )

        user_deleted.connect(services.on_user_deleted, dispatch_uid="apikeys.user_deleted")
        user_export.connect(selectors.key_export, dispatch_uid="apikeys.user_export")
