"""An unexpected error is logged once, as one JSON line with its type, message, whole stack and
the request id; every request still has its one request line (issue 14, point 5)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest


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


def test_unexpected_error_is_logged_once_with_its_stack_and_request_id(log_lines: list) -> None:
    """The one handler every view's unexpected exception goes through (relay routes, DRF views,
    plain views): one JSON line with type, message, the whole stack and the request id."""
    from django.test import RequestFactory

    from timepoint_billing.errors import exception_to_response
    from timepoint_billing.logs import request_id_var

    def deep_in_a_service() -> None:
        raise ValueError("the balance was 'lots'")

    token = request_id_var.set("req-issue-14")
    try:
        try:
            deep_in_a_service()
        except ValueError as exc:
            response = exception_to_response(exc, RequestFactory().get("/api/v1/credits/balance"))
    finally:
        request_id_var.reset(token)
    assert response.status_code == 500
    assert json.loads(response.content) == {
        "detail": "Internal server error.",
        "code": "internal_error",
    }
    errors = [line for line in log_lines if "exc_type" in line]
    assert len(errors) == 1, errors  # logged once
    (error,) = errors
    assert error["level"] == "error" and error["request_id"] == "req-issue-14"
    assert error["exc_type"] == "builtins.ValueError"
    assert "lots" in error["exc_message"]
    assert error["stack"].startswith("Traceback (most recent call last):")
    assert "deep_in_a_service" in error["stack"]  # the whole stack, not only its last line
    assert error["path"] == "/api/v1/credits/balance"
