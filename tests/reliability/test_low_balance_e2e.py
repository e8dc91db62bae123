"""Low-balance alerts end to end: the production server (2 workers) takes four generations at
once that take the balance from 50 to 30 across a threshold of 38; two background workers read
the balances. One crossing: one email at the real SMTP server, one `credits.low` webhook at the
developer's receiver, whichever worker saw which balance first."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devpeers.smtp_sink import SmtpSink
from devpeers.webhook_receiver import WebhookReceiver, verify
from tests.reliability.conftest import ProductionGateway, generations_at_once, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def production_stack_env(smtp: SmtpSink) -> dict[str, str]:
    return {
        "EMAIL_HOST": smtp.host,
        "EMAIL_PORT": str(smtp.port),
        "EMAIL_USE_TLS": "false",
        "USER_CONCURRENCY_LIMIT": "10",
    }


def test_parallel_generations_across_the_threshold_alert_once(
    production_stack: tuple[ProductionGateway, list[subprocess.Popen[bytes]]],
    smtp: SmtpSink,
    webhook_receiver: WebhookReceiver,
    user: Any,
    session_token: str,
    flash_peer: Any,
) -> None:
    from alerts.models import LowBalanceCrossing
    from webhooks.models import WebhookEvent

    server, workers = production_stack
    web = httpx.Client(
        base_url=server.url,
        timeout=60,
        trust_env=False,
        headers={"Authorization": f"Bearer {session_token}"},
    )
    assert (
        web.put("/api/v1/billing/low-balance-alert", json={"threshold": 38}).json()["last_balance"]
        == 50
    )
    hook = web.post(
        "/api/v1/webhooks/endpoints",
        json={"url": f"{webhook_receiver.url}/h", "events": ["credits.low"]},
    ).json()

    assert generations_at_once(web, 4) == [200] * 4
    assert flash_peer.user_balance(user.flash_user_id) == 30

    [message] = smtp.wait_for(1, timeout=60)
    assert message["To"] == "ada@example.com"
    assert "below the alert threshold of 38" in message.get_content()
    [request] = webhook_receiver.wait_for(1, timeout=60)
    assert verify(hook["secret"], request.headers["timepoint-signature"], request.body)
    body = request.json()
    assert body["type"] == "credits.low" and body["data"]["threshold"] == 38
    assert body["data"]["balance"] < 38

    # Every settled generation asked for a check; all are done and none alerted again.
    wait_for(
        lambda: web.get("/api/v1/billing/low-balance-alert").json()["last_balance"] == 30,
        timeout=30,
    )
    time.sleep(2)
    assert len(smtp.messages) == 1 and len(webhook_receiver.received) == 1
    assert LowBalanceCrossing.objects.count() == 1
    assert WebhookEvent.objects.filter(type="credits.low").count() == 1
    status = web.get("/api/v1/billing/low-balance-alert").json()
    assert status["below"] is True and status["last_alert_at"]
    assert all(worker.poll() is None for worker in workers), "a worker died"
