"""Drain the replication journal: the command django_dust users know, made safe to run.

Each row is repaired from the current state of the master copy, not by replaying
the operation that failed, so it can run from cron or a systemd timer at any time,
concurrently with uploads, as often as wanted.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_resto.management.options import add_host_option, add_storage_option
from django_resto.management.progress import Progress, command_stream
from django_resto.models import PendingReplication
from django_resto.repair import repair_rows, resto_aliases


class Command(BaseCommand):
    help = "Replay pending replications to the media servers that missed them."

    def add_arguments(self, parser: CommandParser) -> None:
        add_storage_option(
            parser,
            "Only rows of this STORAGES alias (repeatable). Default: all.",
        )
        add_host_option(parser, "Only this host.")
        parser.add_argument("--limit", type=int, help="Repair at most this many rows.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Show what would be done; change nothing."
        )
        parser.add_argument("--json", action="store_true", help="Print a JSON summary.")

    def handle(self, *args: Any, **options: Any) -> None:
        limit = options["limit"]
        if limit is not None and limit < 1:
            raise CommandError("--limit must be a positive number")
        rows = PendingReplication.objects.all()
        if options["storages"]:
            unknown = sorted(set(options["storages"]) - set(resto_aliases()))
            if unknown:
                raise CommandError(f"{unknown[0]!r} is not a django_resto storage in STORAGES")
            rows = rows.filter(storage__in=options["storages"])
        if options["hosts"]:
            rows = rows.filter(host__in=options["hosts"])
        selection = rows
        rows = rows.order_by("first_attempt", "host", "name")
        if limit is not None:
            rows = rows[:limit]
        batch = list(rows)
        progress = Progress(len(batch), "Repairing", stream=command_stream(self.stderr))
        try:
            report = repair_rows(batch, dry_run=options["dry_run"], on_progress=progress.advance)
        finally:
            progress.close()
        remaining = selection.count()
        if options["json"]:
            summary = {
                "dry_run": options["dry_run"],
                "selected": len(batch),
                "repaired": report.repaired,
                "failed": report.failed,
                "skipped": report.skipped,
                "remaining": remaining,
                "actions": [
                    {"action": verb, "host": host, "name": name}
                    for verb, host, name in report.actions
                ],
                "errors": report.errors,
            }
            self.stdout.write(json.dumps(summary, indent=2, sort_keys=True))
        else:
            for verb, host, name in report.actions:
                prefix = "would " if options["dry_run"] else ""
                self.stdout.write(f"{prefix}{verb} {name} on {host}")
            for error in report.errors:
                self.stderr.write(error)
            self.stdout.write(
                f"{len(batch)} row(s) selected: {report.repaired} repaired, "
                f"{report.failed} failed, {report.skipped} skipped; {remaining} remaining."
            )
        if remaining:
            raise SystemExit(1)
