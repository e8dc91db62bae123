from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Here, not at the top: an app module imports models, which only exist once Django has
        # loaded every app (the documented place for this).
        from accounts import (
            schema,  # noqa: F401  (registers the OpenAPI security schemes)
            services,
        )
        from timepoint_billing import callers

        callers.resolver_register("session", services.caller_from_session_token)
        callers.resolver_register("jwt", services.caller_from_jwt)
