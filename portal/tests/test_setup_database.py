"""`manage.py setup_database` (what `make run` uses): a fresh database is built from the models in
seconds and recorded as fully migrated; an existing one is migrated as usual."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _manage(database: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}", "REDIS_URL": ""}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_fresh_database_is_built_and_recorded_as_migrated(tmp_path: Path) -> None:
    database = tmp_path / "fresh.sqlite3"
    first = _manage(database, "setup_database")
    assert first.returncode == 0, first.stderr
    assert "built the schema from the models" in first.stdout
    check = _manage(database, "migrate", "--check")  # exits 1 if any migration is unapplied
    assert check.returncode == 0, check.stdout + check.stderr
    again = _manage(database, "setup_database")
    assert again.returncode == 0 and "No migrations to apply" in again.stdout, again.stdout
    users = _manage(
        database,
        "shell",
        "-c",
        "from accounts.models import User; from djstripe.models import Customer; "
        "print(User.objects.count(), Customer.objects.count())",
    )
    assert users.stdout.strip().splitlines()[-1] == "0 0", users.stdout + users.stderr
