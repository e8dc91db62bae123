"""Webhook lag in the metrics (issue 15): the delay from Stripe creating an event to the gateway
storing it, from storing to its work done, and the age of the oldest unprocessed event."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.test import Client
from prometheus_client import REGISTRY

from payments.tests import factories as f
from timepoint_billing.metrics_endpoint import exposition


def _lag(stage: str) -> tuple[float, float]:
    labels = {"provider": "stripe", "stage": stage}
    count = REGISTRY.get_sample_value("tpb_webhook_lag_seconds_count", labels) or 0.0
    total = REGISTRY.get_sample_value("tpb_webhook_lag_seconds_sum", labels) or 0.0
    return count, total


@pytest.mark.django_db(transaction=True)
def test_stripe_webhook_lag_is_measured(user: Any, customer_id: str, flash_peer: Any) -> None:
    from payments.services import stripe_events_process_due

    count, total = _lag("received")
    event = json.loads(f.event("checkout.session.completed", f.pack_session(customer_id, user.pk)))
    event["created"] = int(time.time()) - 120  # Stripe made it two minutes ago
    assert f.post_webhook(Client(), json.dumps(event).encode()).status_code == 200
    new_count, new_total = _lag("received")
    assert new_count == count + 1
    assert 119 <= new_total - total <= 600

    # Stored, work not done yet: the backlog's age is exposed at scrape time.
    text = exposition().decode()
    assert 'tpb_webhook_unprocessed_oldest_age_seconds{provider="stripe"}' in text

    processed, _ = _lag("processed")
    stripe_events_process_due()
    assert _lag("processed")[0] == processed + 1
    text = exposition().decode()
    assert 'tpb_webhook_unprocessed_oldest_age_seconds{provider="stripe"} 0.0' in text
