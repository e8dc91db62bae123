from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts.signals import plan_terms, user_deleted, user_export
        from alerts.signals import balance_crossed
        from payments import export, services

        user_deleted.connect(services.on_user_deleted, dispatch_uid="payments.user_deleted")
        plan_terms.connect(services.plan_terms_for_staff, dispatch_uid="payments.plan_terms")
        user_export.connect(export.billing_export, dispatch_uid="payments.user_export")
        balance_crossed.connect(
            services.recharge_on_crossing, dispatch_uid="payments.recharge_on_crossing"
        )
