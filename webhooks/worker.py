"""The delivery loop inside the background worker (`manage.py run_grants`).

It runs on its own threads beside the worker's main loop, so a slow developer endpoint (up to
WEBHOOK_TIMEOUT_SECONDS per attempt) never delays a credit grant, and the main loop's work never
delays a webhook. WEBHOOK_WORKER_THREADS attempts run at once; each thread has its own database
connection. Several worker processes may run: each delivery is claimed by exactly one.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections, connections

from webhooks.outbox import deliveries_due, delivery_attempt, worker_wait

logger = logging.getLogger("timepoint.webhooks")


def _attempt(delivery_id: int) -> None:
    close_old_connections()  # a long-lived thread must not keep a dead connection
    try:
        delivery_attempt(delivery_id)
    except Exception:
        # Recorded nowhere else: the claim lapses after its lease and the delivery is retried.
        logger.exception("webhook delivery attempt failed unexpectedly")


class DeliveryLoop:
    """`start()` the loop on a thread; `stop()` lets running attempts finish, then returns."""

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-deliveries", daemon=True)

    def start(self) -> DeliveryLoop:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        seen = worker_wait(seconds=0, seen=None)
        pool = ThreadPoolExecutor(
            max_workers=max(1, settings.WEBHOOK_WORKER_THREADS), thread_name_prefix="webhook"
        )
        try:
            while not self._stopping.is_set():
                try:
                    close_old_connections()
                    due = deliveries_due(limit=settings.WEBHOOK_WORKER_THREADS * 4)
                except Exception:
                    logger.exception("webhook delivery loop could not read the outbox")
                    due = []
                list(pool.map(_attempt, due))
                if not due:
                    seen = worker_wait(seconds=settings.WEBHOOK_WORKER_SLEEP_SECONDS, seen=seen)
        finally:
            pool.shutdown(wait=True)
            connections.close_all()
