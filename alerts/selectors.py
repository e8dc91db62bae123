"""Reads of low-balance alerts for the API, the portal (its banner) and the admin."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from accounts.models import User
from alerts.models import LowBalanceAlert, LowBalanceCrossing, WatchPurpose


@dataclass(frozen=True)
class AlertStatus:
    threshold: int | None
    below: bool  # the balance fell below the threshold and has not been seen above it since
    last_balance: int | None
    last_alert_at: datetime | None


def alert_status(*, user: User) -> AlertStatus:
    alert = LowBalanceAlert.objects.filter(user=user, purpose=WatchPurpose.ALERT).first()
    if alert is None:
        return AlertStatus(threshold=None, below=False, last_balance=None, last_alert_at=None)
    crossings = LowBalanceCrossing.objects.filter(user=user, purpose=WatchPurpose.ALERT)
    last = crossings.values_list("created_at", flat=True)
    return AlertStatus(
        threshold=alert.threshold,
        below=not alert.armed and alert.last_balance is not None,
        last_balance=alert.last_balance,
        last_alert_at=last.first(),
    )
