"""Production HTTP settings, checked in a process configured as production runs it
(ENVIRONMENT=production): Django's deploy check, HTTPS redirect with the health check exempt,
HSTS, secure cookies, CORS without localhost, and the deep health check kept to staff or a
token."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from timepoint_billing.tests.test_foundation import ROOT, _production_env

SECRET = "prod-Kq8v2LmZx4Rt7Wp1Yc9Nb3Hd6Fg0Js5Ua-e2Xo8Ti4Qs6Vr1Mn7Bk3"  # long and varied enough

_PROBE = """
import django, json
django.setup()
from django.conf import settings
from django.test import Client

client = Client()
https = {"HTTP_X_FORWARDED_PROTO": "https", "HTTP_HOST": "api.timepointai.com"}
http = {"HTTP_HOST": "api.timepointai.com"}
out = {}
plain = client.get("/api/v1/keys", **http)
out["api_over_http"] = [plain.status_code, plain.get("Location")]
out["health_over_http"] = client.get("/health", HTTP_HOST="healthcheck.railway.app").status_code
secure = client.get("/health", **https)
out["hsts"] = secure.get("Strict-Transport-Security")
def preflight(origin):
    answer = client.options("/api/v1/keys", HTTP_ORIGIN=origin,
                            HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET", **https)
    return answer.get("Access-Control-Allow-Origin")
out["cors_localhost"] = preflight("http://localhost:3000")
out["cors_app"] = preflight("https://app.timepointai.com")
def deep(path, **headers):
    answer = client.get(path, **https, **headers)
    return [answer.status_code, answer["Content-Type"], answer.json().get("code")]
out["deep_anonymous"] = deep("/health?deep=1")
out["ready_anonymous"] = deep("/health/ready")
out["deep_wrong_token"] = deep("/health?deep=1", HTTP_X_HEALTH_TOKEN="guess")
out["deep_token"] = deep("/health?deep=1", HTTP_X_HEALTH_TOKEN="monitor-token-0123456789")
out["cookies"] = [settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE]
print(json.dumps(out))
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = _production_env(
        tmp_path,
        SECRET_KEY=SECRET,
        ALLOWED_HOSTS="api.timepointai.com",
        HEALTH_CHECK_TOKEN="monitor-token-0123456789",
        HEALTH_CHECK_TIMEOUT="0.5",
    )
    env["DJANGO_SETTINGS_MODULE"] = "timepoint_billing.settings"
    return env


def test_django_deploy_check_finds_nothing_in_production(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "security.W" not in result.stdout + result.stderr


def test_the_silenced_middleware_checks_are_subclasses_of_what_django_looks_for() -> None:
    from django.conf import settings
    from django.middleware import clickjacking, csrf, security
    from django.utils.module_loading import import_string

    installed = [import_string(path) for path in settings.MIDDLEWARE]
    for wanted in (
        security.SecurityMiddleware,
        clickjacking.XFrameOptionsMiddleware,
        csrf.CsrfViewMiddleware,
    ):
        assert any(issubclass(cls, wanted) for cls in installed), wanted


def test_production_http_behaviour(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["api_over_http"] == [301, "https://api.timepointai.com/api/v1/keys"]
    assert out["health_over_http"] == 200  # the platform's check is exempt from the redirect
    assert out["hsts"] == "max-age=31536000; includeSubDomains"
    assert out["cors_localhost"] is None
    assert out["cors_app"] == "https://app.timepointai.com"
    for name in ("deep_anonymous", "ready_anonymous", "deep_wrong_token"):
        assert out[name] == [403, "application/json", "permission_denied"], name
    # The monitor gets the real check (the upstreams are down here: 503, not 403).
    assert out["deep_token"][0] == 503 and out["deep_token"][2] is None
    assert out["cookies"] == [True, True]


@pytest.mark.django_db(transaction=True)
def test_deep_health_in_production_for_staff_only(
    client: Any, user: Any, session_token: str, settings: Any, flash_peer: Any, clockchain_peer: Any
) -> None:
    settings.IS_PRODUCTION = True
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {session_token}"}
    assert client.get("/health?deep=1", **bearer).status_code == 403
    assert client.get("/health?deep=1", HTTP_AUTHORIZATION="Bearer tps_nope").status_code == 401
    user.is_staff = True
    user.save()
    answer = client.get("/health?deep=1", **bearer)
    assert answer.status_code == 200, answer.content
    assert answer.json()["checks"]["flash"] == {"ok": True}
    settings.IS_PRODUCTION = False
    assert client.get("/health?deep=1").status_code == 200  # outside production: open
