"""The deploy files: the web command gunicorn actually runs (Dockerfile and railway.json), and
what the image leaves out."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def _dockerfile_script() -> str:
    cmd = next(
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")
    )
    argv = json.loads(cmd[len("CMD ") :])
    assert argv[:2] == ["sh", "-c"]
    return str(argv[2])


def _railway_script() -> str:
    start = json.loads((ROOT / "railway.json").read_text())["deploy"]["startCommand"]
    argv = shlex.split(start)
    assert argv[:2] == ["sh", "-c"]
    return argv[2]


def _gunicorn_config(script: str, **env: str) -> dict[str, str]:
    """gunicorn's resolved settings for the start script (migrations skipped, nothing served)."""
    migrate, _, serve = script.partition(" && exec gunicorn ")
    assert migrate == "python manage.py migrate --noinput" and serve
    base = {k: v for k, v in os.environ.items() if k != "FORWARDED_ALLOW_IPS"}
    result = subprocess.run(
        ["sh", "-c", f"exec {GUNICORN} {serve} --print-config"],
        cwd=ROOT,
        env={**base, "PORT": "8000", "WEB_CONCURRENCY": "2", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    pairs = (line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return {name.strip(): value.strip() for name, value in pairs}


@pytest.mark.parametrize("script", [_dockerfile_script(), _railway_script()])
def test_web_command_logs_no_access_line_and_trusts_only_the_configured_proxy(script: str) -> None:
    behind_proxy = _gunicorn_config(script, FORWARDED_ALLOW_IPS="10.0.0.0/8")
    # The middleware writes the one JSON line per request; gunicorn's would be a second, not JSON.
    assert behind_proxy["accesslog"] == "None"
    assert behind_proxy["forwarded_allow_ips"] == "['10.0.0.0/8']"
    assert _gunicorn_config(script)["forwarded_allow_ips"] == "['127.0.0.1']"


def test_the_image_leaves_forwarded_allow_ips_to_the_deploy() -> None:
    """Which proxy to trust depends on where the image runs (Railway: its edge proxy); a default
    baked into the image hid a loopback-only value from the production check (issue 13)."""
    text = (ROOT / "Dockerfile").read_text()
    env_block = text[text.index("\nENV ") : text.index("\nWORKDIR")]
    assert "PORT=8000" in env_block and "FORWARDED_ALLOW_IPS" not in env_block


def test_image_leaves_out_local_state_and_caches() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (".venv", ".git", "db.sqlite3*", ".test-db-*", "test-artifacts", "bench/results"):
        assert entry in ignored
    assert "__pycache__" in ignored or "**/__pycache__" in ignored


def _dockerfile_env() -> dict[str, str]:
    """The environment the image's CMD runs with: every `ENV` line, in order."""
    env: dict[str, str] = {}
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[len("ENV ") :]):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def test_image_and_railway_run_in_production_mode_and_refuse_a_bare_deploy() -> None:
    env = _dockerfile_env()
    assert env["ENVIRONMENT"] == "production"
    # railway.json builds that image, so its start command inherits the variable.
    build = json.loads((ROOT / "railway.json").read_text())["build"]
    assert build == {"builder": "DOCKERFILE", "dockerfilePath": "Dockerfile"}
    unset = ("SECRET", "DATABASE", "REDIS")
    bare = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**bare, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Refusing to start with ENVIRONMENT=production" in result.stderr
    assert "SECRET_KEY" in result.stderr and "DATABASE_URL is not set" in result.stderr


def test_web_command_is_the_shared_gunicorn_configuration() -> None:
    for script in (_dockerfile_script(), _railway_script()):
        config = _gunicorn_config(script)
        assert config["worker_class"] == "timepoint_billing.server.GatewayUvicornWorker"
        assert config["bind"] == "['0.0.0.0:8000']"
        assert config["workers"] == "2"


def test_web_command_binds_the_internal_listener_only_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("INTERNAL_API_PORT", raising=False)
    for script in (_dockerfile_script(), _railway_script()):
        assert _gunicorn_config(script)["bind"] == "['0.0.0.0:8000']"
        private = _gunicorn_config(script, INTERNAL_API_PORT="8081")
        assert private["bind"] == "['0.0.0.0:8000', '[::]:8081']"
