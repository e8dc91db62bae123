"""The gateway's skeleton as a client sees it: health, JSON errors, body limit, CORS, docs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db


def test_health_is_fast_and_database_only(client: Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["version"]


def test_ready_reports_each_dependency_and_503_when_upstreams_are_down(
    client: Client, settings
) -> None:
    settings.FLASH_URL = "http://127.0.0.1:9"  # discard port: nothing listens
    settings.CLOCKCHAIN_URL = "http://127.0.0.1:9"
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response["Retry-After"]
    checks = response.json()["checks"]
    assert checks["database"]["ok"] is True
    assert checks["flash"]["ok"] is False
    assert checks["clockchain"]["ok"] is False


def test_unknown_api_path_is_json_404(client: Client) -> None:
    response = client.get("/api/v1/does-not-exist")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found.", "code": "not_found"}


def test_unknown_api_path_is_json_even_in_debug(client: Client, settings) -> None:
    settings.DEBUG = True
    response = client.get("/api/v1/does-not-exist")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert set(response.json()) == {"detail", "code"}


def test_method_not_allowed_is_json_and_keeps_the_allow_header(client: Client) -> None:
    response = client.post("/health", HTTP_ORIGIN="https://app.timepointai.com")
    assert response.status_code == 405
    assert response.json() == {"detail": "Method not allowed.", "code": "method_not_allowed"}
    assert response["Allow"] == "GET"
    assert response["Access-Control-Allow-Origin"] == "https://app.timepointai.com"


def test_oversized_body_is_413_json(client: Client) -> None:
    body = b"x" * (10 * 1024 * 1024)
    response = client.post("/api/v1/keys", data=body, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_request_id_is_echoed_when_well_formed_and_generated_otherwise(client: Client) -> None:
    echoed = client.get("/health", HTTP_X_REQUEST_ID="abc-12345-request")
    assert echoed["X-Request-ID"] == "abc-12345-request"
    replaced = client.get("/health", HTTP_X_REQUEST_ID="bad id\twith spaces")
    assert re.fullmatch(r"[0-9a-f]{32}", replaced["X-Request-ID"])


@pytest.mark.parametrize("origin", ["https://app.timepointai.com", "http://localhost:5173"])
def test_cors_preflight_allowed_for_known_origins(client: Client, origin: str) -> None:
    response = client.options(
        "/api/v1/credits/balance",
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization,x-api-key,content-type",
    )
    assert response["Access-Control-Allow-Origin"] == origin
    assert response["Access-Control-Allow-Credentials"] == "true"
    assert "PATCH" in response["Access-Control-Allow-Methods"]
    # A credentialed preflight takes "*" literally: each header the SPA sends must be listed.
    allowed = {h.strip().lower() for h in response["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "x-api-key", "content-type", "x-request-id"} <= allowed
    assert "*" not in allowed


def test_cors_preflight_denied_for_other_origins(client: Client) -> None:
    response = client.options(
        "/api/v1/credits/balance",
        HTTP_ORIGIN="https://evil.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization,x-api-key",
    )
    assert not [name for name in response.headers if name.lower().startswith("access-control-")]


def test_schema_is_valid_openapi() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    validate_schema(schema)
    assert schema["openapi"].startswith("3.")


def test_docs_load_no_external_url(client: Client) -> None:
    for path in ("/api/docs", "/api/redoc"):
        response = client.get(path)
        assert response.status_code == 200
        html = response.content.decode()
        external = re.findall(r"""(?:src|href)=["'](https?:)?//[^"']+""", html)
        assert external == [], f"{path} loads {external}"
    assert client.get("/api/schema").status_code == 200


# Every variable the production check reads, dropped from the test process's environment so
# each case starts from exactly what it sets.
_PRODUCTION_VARIABLES = (
    "ENVIRONMENT",
    "SECRET_KEY",
    "DEBUG",
    "DATABASE_URL",
    "REDIS_URL",
    "AUTH0_",
    "STRIPE_",
    "FLASH_",
    "CLOCKCHAIN_",
    "APPLE_",
    "API_KEY_DIGEST_SECRET",
    "ALLOWED_HOSTS",
    "RAILWAY_",
    "FORWARDED_ALLOW_IPS",
    "LOCAL_SIGNIN",
    "EMAIL_",
)


def _production_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A complete, valid production environment (nothing listens at its URLs), plus overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PRODUCTION_VARIABLES)}
    env.update(
        ENVIRONMENT="production",
        SECRET_KEY="prod-" + "s" * 40,
        DATABASE_URL=f"sqlite:///{tmp_path / 'prod.sqlite3'}",
        REDIS_URL="redis://127.0.0.1:9/0",
        AUTH0_DOMAIN="timepoint.example.auth0.com",
        AUTH0_AUDIENCE="https://api.timepointai.com",
        STRIPE_SECRET_KEY="sk_live_prod",
        STRIPE_WEBHOOK_SECRET="whsec_prod",
        FLASH_URL="http://127.0.0.1:9",
        FLASH_SERVICE_KEY="prod-flash-service",
        FLASH_ADMIN_KEY="prod-flash-admin",
        FLASH_GATEWAY_SIGNING_SECRET="prod-flash-signing",
        CLOCKCHAIN_URL="http://127.0.0.1:9",
        CLOCKCHAIN_SERVICE_KEY="prod-clockchain-service",
        FORWARDED_ALLOW_IPS="127.0.0.1",
        EMAIL_HOST="smtp.example.com",
    )
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def _manage_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_to_start_without_secret_key() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PRODUCTION_VARIABLES)}
    env["ENVIRONMENT"] = "production"
    result = _manage_check(env)
    assert result.returncode != 0
    assert "Refusing to start with ENVIRONMENT=production" in result.stderr
    for name in (
        "SECRET_KEY",
        "FLASH_SERVICE_KEY",
        "FLASH_ADMIN_KEY",
        "FLASH_GATEWAY_SIGNING_SECRET",
        "CLOCKCHAIN_SERVICE_KEY",
        "STRIPE_SECRET_KEY",
        "STRIPE_WEBHOOK_SECRET",
        "AUTH0_DOMAIN",
    ):
        assert name in result.stderr


def test_production_refuses_secrets_left_at_their_development_defaults(tmp_path: Path) -> None:
    env = _production_env(
        tmp_path,
        FLASH_SERVICE_KEY="flash-service-key",
        FLASH_ADMIN_KEY="flash-admin-key",
        FLASH_GATEWAY_SIGNING_SECRET="flash-signing-secret",
        CLOCKCHAIN_SERVICE_KEY="clockchain-service-key",
        API_KEY_DIGEST_SECRET="dev-insecure-secret-key-do-not-use-in-production",
    )
    result = _manage_check(env)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    for name in (
        "FLASH_SERVICE_KEY",
        "FLASH_ADMIN_KEY",
        "FLASH_GATEWAY_SIGNING_SECRET",
        "CLOCKCHAIN_SERVICE_KEY",
        "API_KEY_DIGEST_SECRET",
    ):
        assert f"{name} is the development default" in message
    assert "is not set" not in message and "SECRET_KEY is unset" not in message


def test_production_apple_needs_the_app_id_and_root_certificates(tmp_path: Path) -> None:
    result = _manage_check(_production_env(tmp_path, APPLE_ENVIRONMENT="Production"))
    assert result.returncode != 0
    assert "APPLE_APP_APPLE_ID is not set" in result.stderr
    assert "APPLE_ROOT_CERT_PATHS is not set" in result.stderr

    configured = _production_env(
        tmp_path,
        APPLE_ENVIRONMENT="Production",
        APPLE_APP_APPLE_ID="1234567890",
        APPLE_ROOT_CERT_PATHS="/app/certs/AppleRootCA-G3.cer",
    )
    assert _manage_check(configured).returncode == 0


_HEALTH_PROBE = """
import django, json, os
django.setup()
from django.test import Client
client = Client()
print(json.dumps({host: client.get("/health", HTTP_HOST=host).status_code
                  for host in ("healthcheck.railway.app", "evil.example")}))
"""


def test_production_health_answers_railways_health_check_host(tmp_path: Path) -> None:
    env = _production_env(tmp_path, ALLOWED_HOSTS="api.timepointai.com")
    env["DJANGO_SETTINGS_MODULE"] = "timepoint_billing.settings"
    result = subprocess.run(
        [sys.executable, "-c", _HEALTH_PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    statuses = json.loads(result.stdout.strip().splitlines()[-1])
    assert statuses == {"healthcheck.railway.app": 200, "evil.example": 400}


def test_admin_login_page_renders(client: Client) -> None:
    assert client.get("/admin/login/").status_code == 200


def test_production_refuses_a_proxy_setting_that_gives_every_client_one_address(
    tmp_path: Path,
) -> None:
    """Behind Railway's proxy, trusting only loopback makes every client the proxy (issue 13):
    one caller's failed logins would count against all. The check names the fix."""
    unset = _manage_check(_production_env(tmp_path, FORWARDED_ALLOW_IPS=""))
    assert unset.returncode != 0 and "FORWARDED_ALLOW_IPS is not set" in unset.stderr
    railway = {"RAILWAY_ENVIRONMENT_NAME": "production", "RAILWAY_PROJECT_ID": "p-1"}
    loopback = _manage_check(_production_env(tmp_path, **railway))
    assert loopback.returncode != 0
    assert "FORWARDED_ALLOW_IPS trusts only loopback on Railway" in loopback.stderr
    trusted = _manage_check(_production_env(tmp_path, FORWARDED_ALLOW_IPS="10.0.0.0/8", **railway))
    assert trusted.returncode == 0, trusted.stderr
    # Off Railway a proxy on the same host (nginx in front) is a loopback proxy: accepted.
    assert _manage_check(_production_env(tmp_path)).returncode == 0
