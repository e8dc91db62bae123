"""A key made before scopes existed keeps its reach (issue 18, Done when): the real migrations run
on a fresh SQLite database in a subprocess (the suite itself builds its tables from the models),
a key is made with the schema of `apikeys.0001`, the spend-controls migration runs, and the same
raw key still authenticates with every scope, while a key made afterwards gets the new default."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.reliability.conftest import ROOT, subprocess_env

SCRIPT = """
import json
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

call_command("migrate", "apikeys", "0001", verbosity=0)
before = MigrationExecutor(connection).loader.project_state(("apikeys", "0001_initial")).apps
OldUser = before.get_model("accounts", "User")
OldKey = before.get_model("apikeys", "APIKey")

from apikeys import lookup, services

raw = lookup.key_generate(mode="live")
user = OldUser.objects.create(username="auth0|before-scopes", email="old@example.com")
OldKey.objects.create(
    user=user,
    name="made before scopes",
    key_digest=lookup.key_digest(raw),
    prefix=lookup.key_display_prefix(raw),
)

# Today's models are used below: bring the apps they read up to date too (a later column on the
# user, say), not only apikeys.
for app in ("apikeys", "accounts"):
    call_command("migrate", app, verbosity=0)

from accounts.models import User
from accounts.scopes import ALL_SCOPES

caller = lookup.caller_from_api_key(raw)
new_key, _ = services.key_create(user=User.objects.get(pk=user.pk), name="made after")
print(json.dumps({
    "old": caller.api_key.scopes,
    "old_has_every_scope": all(caller.api_key.has_scope(scope) for scope in ALL_SCOPES),
    "old_budget": caller.api_key.monthly_credit_budget,
    "old_lists": [caller.api_key.allowed_origins, caller.api_key.allowed_cidrs],
    "new": new_key.scopes,
}))
"""


def test_a_key_made_before_scopes_keeps_every_scope(tmp_path: Path) -> None:
    env = subprocess_env(DATABASE_URL=f"sqlite:///{tmp_path / 'before-scopes.sqlite3'}")
    env.pop("REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {
        "old": ["read", "generate", "publish", "keys", "billing"],
        "old_has_every_scope": True,
        "old_budget": None,
        "old_lists": [[], []],
        "new": ["read", "generate", "publish"],
    }
