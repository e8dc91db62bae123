"""Production enforces the address rules: a process with private webhook targets allowed, plain
http allowed, or the development secret-encryption key refuses to start."""

from __future__ import annotations

from pathlib import Path

from timepoint_billing.tests.test_foundation import _manage_check, _production_env


def test_production_refuses_to_relax_the_webhook_rules(tmp_path: Path) -> None:
    assert _manage_check(_production_env(tmp_path)).returncode == 0  # the defaults are strict
    relaxed = _production_env(
        tmp_path,
        WEBHOOKS_ALLOW_PRIVATE_URLS="true",
        WEBHOOKS_REQUIRE_HTTPS="false",
        WEBHOOK_SECRET_KEY="dev-insecure-secret-key-do-not-use-in-production",
    )
    result = _manage_check(relaxed)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "WEBHOOKS_ALLOW_PRIVATE_URLS must be off in production" in message
    assert "WEBHOOKS_REQUIRE_HTTPS must be on in production" in message
    assert "WEBHOOK_SECRET_KEY is the development default" in message
