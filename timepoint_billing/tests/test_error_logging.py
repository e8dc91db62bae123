"""An unexpected error is logged once, as one JSON line with its type, message, whole stack and
the request id; every request still has its one request line (issue 14, point 5)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def log_lines() -> Iterator[list[dict[str, Any]]]:
    """Every record logged during the test, formatted by the configured JSON formatter."""
    (configured,) = [h for h in logging.getLogger().handlers if h.formatter is not None][:1]
    lines: list[dict[str, Any]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(configured.format(record)))

    keep = Keep(logging.INFO)
    logging.getLogger().addHandler(keep)
    try:
        yield lines
    finally:
        logging.getLogger().removeHandler(keep)


def test_unexpected_error_is_logged_once_with_its_stack_and_request_id(
    client: Client, auth_headers: dict, user: Any, flash_peer: Any, log_lines: list
) -> None:
    # Flash answering a balance that is not a number makes the gateway fail unexpectedly.
    flash_peer.set_balance(user.flash_user_id, "lots")
    response = client.post(
        "/api/v1/generate",
        {"query": "Apollo 11"},
        content_type="application/json",
        **auth_headers,
    )
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error.", "code": "internal_error"}
    assert "Traceback" not in response.content.decode()
    request_id = response["X-Request-ID"]

    errors = [line for line in log_lines if "exc_type" in line]
    assert len(errors) == 1, errors  # logged once
    (error,) = errors
    assert error["level"] == "error" and error["request_id"] == request_id
    assert error["exc_type"] == "builtins.ValueError"
    assert "lots" in error["exc_message"]
    assert error["stack"].startswith("Traceback (most recent call last):")
    assert "generation_admit" in error["stack"]  # the whole stack, not only its last line
    requests = [line for line in log_lines if line.get("event") == "request"]
    assert [(r["status"], r["request_id"]) for r in requests] == [(500, request_id)]
