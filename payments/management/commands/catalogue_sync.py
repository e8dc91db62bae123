"""`python manage.py catalogue_sync`: read every product and price from Stripe into the mirror and
rebuild the catalogue (webhooks keep it fresh; this is for a new deployment, a missed webhook, or
after editing many prices). Prints what is on sale and every refused price with the reasons.

`--strict` exits non-zero when any price is refused (a release check)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from payments import selectors
from payments.catalogue import catalogue_sync
from timepoint_billing.errors import ApiError


class Command(BaseCommand):
    help = "Sync plans and credit packs from Stripe's products and prices."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--strict", action="store_true", help="fail when any price is refused")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            valid = catalogue_sync()
        except ApiError as exc:
            raise CommandError(f"Stripe: {exc.detail_text}") from exc
        for plan in selectors.plan_list()[1:]:
            self.stdout.write(
                f"plan {plan['name']}: {plan['display_name']}, {plan['monthly_credits']} credits"
                f" a month, {plan['price_cents']} {plan['currency']}"
                f"{', HD' if plan['hd_access'] else ''}, {plan['api_key_tier']} keys"
            )
        for pack in selectors.pack_list():
            self.stdout.write(
                f"pack {pack['name']}: {pack['display_name']}, {pack['credits']} credits,"
                f" {pack['price_cents']} {pack['currency']}"
            )
        refused = list(selectors.catalogue_refused())
        for item in refused:
            self.stderr.write(f"refused {item.stripe_price_id}: {'; '.join(item.problems)}")
        self.stdout.write(f"{valid} valid prices, {len(refused)} refused.")
        if refused and options["strict"]:
            raise CommandError(f"{len(refused)} price(s) refused; see above.")
