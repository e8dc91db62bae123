"""The background worker: `python manage.py run_grants` (a second process in production).

The only process that delivers grants: web processes record them and nudge it
(`payments.services.worker_nudge`). Delivers due grants to Flash, processes and retries stored
Stripe events (the dj-stripe mirror and plan work), applies downgrades whose period has ended,
re-reads Stripe's catalogue at start and every CATALOGUE_SYNC_SECONDS (not with `--once`: one pass
does the due work only), settles asynchronous generations nobody polled
(relay/async_generation.py), and rolls usage up (today and yesterday) every
METERING_ROLLUP_INTERVAL_SECONDS so the usage endpoints and dashboards stay fresh. Sends webhooks
to developers from their outbox on threads of its own (webhooks/worker.py: a slow endpoint never
holds up a grant), and announces keys entering their last week (key.expiring) every
KEY_EXPIRY_SCAN_SECONDS; reads the balance after charged generations of users with a
low-balance alert and sends the alerts' emails (alerts/); charges due auto-recharges off session
(payments/recharge.py). Several may run at once: every grant, event, webhook delivery, balance
check, email and recharge is claimed by exactly one of them, and one roll-up runs at a time."""

from __future__ import annotations

import signal
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from alerts.services import low_balance_checks_due, low_balance_emails_send_due
from apikeys.services import keys_expiring_announce
from metering.services import usage_rollup_recent
from payments.catalogue import catalogue_sync_in_worker
from payments.services import (
    grants_deliver_due,
    plan_changes_apply_due,
    recharge_emails_send_due,
    recharges_charge_due,
    stripe_events_process_due,
    worker_wait,
)
from relay.async_generation import async_generations_settle_due
from relay.reconcile import generations_reconcile_due
from webhooks.outbox import deliveries_send_due
from webhooks.worker import DeliveryLoop


class Command(BaseCommand):
    help = (
        "Deliver credit grants to Flash (exactly once), retry Stripe events, settle async "
        "generations, roll usage up."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="one pass, then exit")
        parser.add_argument(
            "--sleep",
            type=float,
            default=None,
            help="seconds between passes (default GRANT_WORKER_SLEEP_SECONDS)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stopping = False

        def stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        if not options["once"]:
            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
        pause = (
            options["sleep"]
            if options["sleep"] is not None
            else settings.GRANT_WORKER_SLEEP_SECONDS
        )
        next_rollup = next_key_scan = next_catalogue_sync = 0.0
        # --once sends the due webhooks itself, after the pass that may have made some.
        deliveries = None if options["once"] else DeliveryLoop().start()
        seen = worker_wait(seconds=0, seen=None)
        try:
            while True:
                # Generations whose answer was lost first (relay.refunds): their refunds go out
                # below.
                generations_reconcile_due()
                grants = grants_deliver_due()
                events = stripe_events_process_due()
                settled = async_generations_settle_due()
                plan_changes_apply_due()  # downgrades whose period ended without a renewal yet
                periodic = settings.CATALOGUE_SYNC_SECONDS and not options["once"]
                if periodic and time.monotonic() >= next_catalogue_sync:
                    catalogue_sync_in_worker()
                    next_catalogue_sync = time.monotonic() + settings.CATALOGUE_SYNC_SECONDS
                # Balances after charged generations, then the alerts they crossed into.
                low_balance_checks_due()
                low_balance_emails_send_due()
                recharges = recharges_charge_due()
                recharge_emails_send_due()  # the emails of recharges that failed
                if grants or events or settled or recharges or options["verbosity"] > 1:
                    self.stdout.write(
                        f"grants claimed: {grants}, events processed: {events}, "
                        f"async generations settled: {settled}, recharges charged: {recharges}"
                    )
                if time.monotonic() >= next_rollup:
                    usage_rollup_recent()
                    next_rollup = time.monotonic() + settings.METERING_ROLLUP_INTERVAL_SECONDS
                if time.monotonic() >= next_key_scan:
                    keys_expiring_announce()
                    next_key_scan = time.monotonic() + settings.KEY_EXPIRY_SCAN_SECONDS
                if deliveries is None:
                    deliveries_send_due()
                if options["once"] or stopping:
                    return
                # Until the next pass, or sooner when a web process nudges (a grant committed).
                seen = worker_wait(seconds=pause, seen=seen)
                close_old_connections()  # a long-lived worker must not keep a dead connection
        finally:
            if deliveries is not None:
                deliveries.stop()  # attempts under way finish and are recorded
