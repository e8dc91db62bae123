from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import RunPython, RunSQL
from django.db.migrations.recorder import MigrationRecorder
from django.test.utils import override_settings

# Third-party data steps that only rewrite rows already there (none in a new database), so a
# fresh build may skip them like Django's own: django-axes 0007 de-duplicates login attempts.
# Our own such migrations say so with `rewrites_existing_rows_only = True`.
_ROW_REWRITES_ONLY = {("axes", "0007_alter_accessattempt_unique_together")}


class _NoMigrations(dict[str, None]):
    """MIGRATION_MODULES for "every app is unmigrated" (what Django's test runner does)."""

    def __contains__(self, item: object) -> bool:
        return True

    def __getitem__(self, item: str) -> None:
        return None


class Command(BaseCommand):
    help = (
        "Migrate the database. One with no migration applied yet is built from the models in one "
        "step and every migration recorded as applied: replaying dj-stripe's history (500-odd "
        "RemoveField operations, each re-rendering the model states) takes ~90 s of CPU, which "
        "made a newcomer's first `make run` slow. Only when no migration outside Django's own has "
        "a data step (RunPython/RunSQL); otherwise, and for a database already migrated, plain "
        "`migrate`."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["database"]
        connection = connections[alias]
        recorder = MigrationRecorder(connection)
        loader = MigrationLoader(connection)
        fresh = not (recorder.has_table() and recorder.applied_migrations())
        # Django's own data steps (auth, contenttypes) only rewrite rows that exist: none yet.
        data_steps = [
            key
            for key, migration in loader.disk_migrations.items()
            if not type(migration).__module__.startswith("django.contrib.")
            and key not in _ROW_REWRITES_ONLY
            and not getattr(migration, "rewrites_existing_rows_only", False)
            and any(isinstance(op, (RunPython, RunSQL)) for op in migration.operations)
        ]
        verbosity = options["verbosity"]
        if not fresh or data_steps:
            call_command("migrate", database=alias, interactive=False, verbosity=verbosity)
            return
        with override_settings(MIGRATION_MODULES=_NoMigrations()):
            call_command("migrate", database=alias, run_syncdb=True, interactive=False, verbosity=0)
        call_command("migrate", database=alias, fake=True, interactive=False, verbosity=0)
        self.stdout.write(
            f"built the schema from the models; {len(loader.disk_migrations)} migrations recorded"
        )
