"""`python manage.py stripe_webhook_endpoint --url https://<host>/api/v1/billing/webhooks/stripe`

Makes sure Stripe sends the gateway's events in the shape the code reads: a webhook endpoint for
the URL pinned to `STRIPE_API_VERSION` (as Saleor creates its endpoints). Payloads follow the
endpoint's version; one created without a version follows the account's default, which a
Dashboard upgrade changes under the gateway.

- A pinned endpoint for the URL exists: says so (and any event it does not send).
- None does: creates one and prints its signing secret, once. Set it as STRIPE_WEBHOOK_SECRET
  (the previous one in STRIPE_WEBHOOK_SECRETS_EXTRA until the old endpoint is disabled), then
  disable the unpinned endpoints it lists.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from payments import stripe_client
from payments.services import STRIPE_WEBHOOK_EVENTS
from timepoint_billing.errors import ApiError


class Command(BaseCommand):
    help = "Create (or check) the Stripe webhook endpoint, pinned to STRIPE_API_VERSION."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", required=True, help="the gateway's Stripe webhook URL")

    def handle(self, *args: Any, **options: Any) -> None:
        url = str(options["url"])
        if not url.startswith("https://") and not settings.STRIPE_API_BASE:
            raise CommandError("Stripe delivers webhooks to https:// URLs only.")
        pinned = settings.STRIPE_API_VERSION
        try:
            endpoints = [e for e in stripe_client.webhook_endpoints() if e.get("url") == url]
            current = [e for e in endpoints if e.get("api_version") == pinned]
            if current:
                endpoint = current[0]
                self.stdout.write(f"{endpoint['id']} already sends {url} events as {pinned}.")
            else:
                endpoint = stripe_client.webhook_endpoint_create(
                    url=url, events=STRIPE_WEBHOOK_EVENTS
                )
                self.stdout.write(f"Created {endpoint['id']} for {url}, pinned to {pinned}.")
                self.stdout.write(f"Its signing secret (shown once): {endpoint['secret']}")
                self.stdout.write(
                    "Set it as STRIPE_WEBHOOK_SECRET (keep the previous one in "
                    "STRIPE_WEBHOOK_SECRETS_EXTRA until the old endpoint is disabled)."
                )
        except ApiError as exc:
            raise CommandError(f"Stripe: {exc.detail_text}") from exc
        sent = set(endpoint.get("enabled_events") or [])
        missing = [name for name in STRIPE_WEBHOOK_EVENTS if "*" not in sent and name not in sent]
        if missing:
            self.stderr.write(f"{endpoint['id']} does not send: {', '.join(missing)}")
        for other in endpoints:
            if other.get("api_version") != pinned and other.get("status") != "disabled":
                version = other.get("api_version") or "the account's default version"
                self.stderr.write(
                    f"Disable {other['id']} (same URL, follows {version}) once the new secret "
                    "is deployed."
                )
