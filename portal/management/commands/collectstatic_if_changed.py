from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.core.management.base import BaseCommand


def newest_source_mtime() -> float:
    """The newest modification time among the files `collectstatic` would copy."""
    newest = 0.0
    for finder in finders.get_finders():
        for path, storage in finder.list(["CVS", ".*", "*~"]):
            newest = max(newest, Path(storage.path(path)).stat().st_mtime)
    return newest


def completion_marker() -> Path:
    # Written only after a whole collection: an interrupted one (the manifest is written before
    # the compressed copies) is redone next time.
    return Path(settings.STATIC_ROOT) / ".collected"


def collection_is_current() -> bool:
    marker = completion_marker()
    return marker.exists() and marker.stat().st_mtime >= newest_source_mtime()


class Command(BaseCommand):
    help = (
        "Run `collectstatic` (hashed, compressed copies under STATIC_ROOT, which the gateway "
        "serves) unless the collection is newer than every source file: hashing and compressing "
        "the ~350 files takes 10-30 s, so `make run` and the test suite pay it once, not each time."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        if collection_is_current():
            self.stdout.write(f"Static files in {settings.STATIC_ROOT} are up to date.")
            return
        self.stdout.write(f"Collecting static files into {settings.STATIC_ROOT} ...")
        completion_marker().unlink(missing_ok=True)
        call_command("collectstatic", interactive=False, clear=True, verbosity=0)
        completion_marker().touch()
