"""`/metrics` on the production server (gunicorn, 2 workers): a scrape answered by either worker
counts the requests of both (prometheus-client multiprocess mode, issue 15)."""

from __future__ import annotations

import http.client
import shutil
import subprocess
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.reliability.conftest import one_connection_per_worker
from timepoint_billing.tests.test_metrics import FAMILIES

TOKEN = "metrics-reliability-token-0123456789"
PATH = "/api/v1/no-such-route-for-metrics"


def _scrape(connection: http.client.HTTPConnection) -> str:
    connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    body = response.read()
    assert response.status == 200, body[:500]
    return body.decode()


def _unmatched_404s(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "tpb_http_requests":
            return sum(
                sample.value
                for sample in family.samples
                if sample.name == "tpb_http_requests_total"
                and sample.labels == {"route": "unmatched", "method": "GET", "status": "404"}
            )
    return 0.0


def _get(connection: http.client.HTTPConnection, path: str) -> int:
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return response.status


@pytest.mark.django_db(transaction=True)
def test_request_counts_are_summed_across_both_workers(production_gateway: Any) -> None:
    server = production_gateway({"METRICS_TOKEN": TOKEN}, workers=2)
    connections = one_connection_per_worker(server)
    (first_pid, first), (second_pid, second) = sorted(connections.items())
    assert first_pid != second_pid
    assert _unmatched_404s(_scrape(first)) == 0
    for _ in range(7):
        assert _get(first, PATH) == 404
    for _ in range(5):
        assert _get(second, PATH) == 404
    # Each worker served only some of the 12; each one's scrape reports all 12.
    seen_by_first = _scrape(first)
    seen_by_second = _scrape(second)
    assert _unmatched_404s(seen_by_first) == 12
    assert _unmatched_404s(seen_by_second) == 12
    for family in FAMILIES:  # every family, in multiprocess mode too
        assert f"# TYPE {family} " in seen_by_first, family
    # Without the token: refused, on the production server too.
    first.request("GET", "/metrics")
    refused = first.getresponse()
    refused.read()
    assert refused.status == 401
    for connection in connections.values():
        connection.close()
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=seen_by_first.encode(),
        capture_output=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
