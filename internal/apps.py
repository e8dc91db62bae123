from django.apps import AppConfig


class InternalConfig(AppConfig):
    name = "internal"
    verbose_name = "Internal API (sibling services)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from internal import openapi  # noqa: F401  (registers the OpenAPI security scheme)
