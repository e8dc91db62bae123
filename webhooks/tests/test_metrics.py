"""Operators see the outbox: deliveries waiting by state, and how overdue the oldest due one is."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from timepoint_billing.metrics_endpoint import exposition
from webhooks.models import WebhookDelivery
from webhooks.services import event_emit

pytestmark = pytest.mark.django_db


def _sample(text: str, start: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(start))


def test_the_outbox_is_exported(user: Any, endpoint: tuple[Any, str]) -> None:
    text = exposition().decode()
    assert _sample(text, 'tpb_outgoing_webhooks{state="pending"}') == 0
    assert _sample(text, "tpb_outgoing_webhook_overdue_seconds") == 0
    event_emit(user_id=user.pk, type="key.revoked", data={}, dedupe_key="m1")
    WebhookDelivery.objects.update(next_attempt_at=timezone.now() - timedelta(minutes=5))
    text = exposition().decode()
    assert _sample(text, 'tpb_outgoing_webhooks{state="pending"}') == 1
    assert 299 <= _sample(text, "tpb_outgoing_webhook_overdue_seconds") <= 330
