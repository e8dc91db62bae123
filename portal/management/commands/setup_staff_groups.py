from typing import Any

from django.core.management.base import BaseCommand

from portal.services import staff_groups_setup


class Command(BaseCommand):
    help = (
        'Create or reset the staff groups: "support" (read-only billing admin) and "billing" '
        "(may grant credits, retry grants, review payments, change key tiers)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        for name, count in staff_groups_setup(reset=True).items():
            self.stdout.write(f"{name}: {count} permissions")
