"""Recompute daily and monthly usage aggregates from usage records (idempotent; run periodically).

python manage.py rollup_usage                 # today and yesterday (UTC) and their months
python manage.py rollup_usage --day 2026-11-24
python manage.py rollup_usage --from 2026-11-01 --to 2026-11-24
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from metering.services import flush_usage, usage_rollup


class Command(BaseCommand):
    help = "Recompute usage aggregates (daily and monthly) from usage records."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--day", type=date.fromisoformat)
        parser.add_argument("--from", dest="start", type=date.fromisoformat)
        parser.add_argument("--to", dest="end", type=date.fromisoformat)

    def handle(self, *args: Any, **options: Any) -> None:
        today = timezone.now().date()
        if options["day"]:
            days = [options["day"]]
        elif options["start"] or options["end"]:
            start, end = options["start"] or options["end"], options["end"] or today
            if start > end:
                raise CommandError("--from must not be after --to")
            days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
        else:
            days = [today - timedelta(days=1), today]
        flush_usage()  # this process's own queued records, if any
        written = usage_rollup(days=days)
        self.stdout.write(
            f"rolled up {len(days)} day(s): {written['daily_rows']} daily rows, "
            f"{written['monthly_rows']} monthly rows"
        )
