"""Drain the replication journal: the command django_dust users know, made safe to run.

Each row is repaired from the current state of the master copy, not by replaying
the operation that failed, so it can run from cron or a systemd timer at any time,
concurrently with uploads, as often as wanted.

``--watch`` keeps it running instead, as a service: a pass every ``--interval``
seconds over the rows that are due. A row whose repair fails waits longer each time
(``next_attempt``, up to ``--max-backoff``); a host that does not answer ends its pass
at its first failure, so that a dead server costs one request per pass rather than one
per row; a new failure of a row makes it due at once. SIGTERM or SIGINT stops it after
the rows in hand, with status 0. One line per pass (JSON with ``--json``) says what it
did, for the service's log.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, close_old_connections
from django.db.models import QuerySet
from django.utils import timezone

from django_resto import journal
from django_resto.management.options import add_host_option, add_storage_option
from django_resto.management.progress import Progress, command_stream
from django_resto.models import PendingReplication
from django_resto.repair import MAX_BACKOFF, RepairReport, drain, resto_aliases

#: Seconds between two passes of --watch.
DEFAULT_INTERVAL = 10.0


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
        parser.add_argument(
            "--watch",
            action="store_true",
            help="Keep running: drain the rows that are due every --interval seconds, "
            "until SIGTERM or SIGINT (exit status 0).",
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=DEFAULT_INTERVAL,
            help=f"With --watch: seconds between passes (default {DEFAULT_INTERVAL:g}).",
        )
        parser.add_argument(
            "--max-backoff",
            type=float,
            default=MAX_BACKOFF,
            help="The longest a row whose repair keeps failing waits before the next try, "
            f"in seconds (default {MAX_BACKOFF:g}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        limit = options["limit"]
        if limit is not None and limit < 1:
            raise CommandError("--limit must be a positive number")
        if options["interval"] <= 0:
            raise CommandError("--interval must be positive")
        if options["max_backoff"] <= 0:
            raise CommandError("--max-backoff must be positive")
        if options["watch"] and (options["dry_run"] or limit is not None):
            raise CommandError("--watch repairs every due row: no --dry-run, no --limit")
        rows = PendingReplication.objects.all()
        if options["storages"]:
            unknown = sorted(set(options["storages"]) - set(resto_aliases()))
            if unknown:
                raise CommandError(f"{unknown[0]!r} is not a django_resto storage in STORAGES")
            rows = rows.filter(storage__in=options["storages"])
        if options["hosts"]:
            rows = rows.filter(host__in=options["hosts"])
        if options["watch"]:
            self.watch(rows, options)
        else:
            self.once(rows, options)

    def once(self, selection: QuerySet[PendingReplication], options: dict[str, Any]) -> None:
        """Try every selected row once, due or not: an operator asking wants it now."""
        limit = options["limit"]
        count = selection.count()
        selected = count if limit is None else min(limit, count)
        progress = Progress(selected, "Repairing", stream=command_stream(self.stderr))
        try:
            report = drain(
                selection,
                limit=limit,
                dry_run=options["dry_run"],
                on_progress=progress.advance,
                max_backoff=options["max_backoff"],
            )
        finally:
            progress.close()
        remaining = selection.count()
        if options["json"]:
            summary = {
                "dry_run": options["dry_run"],
                "selected": selected,
                **self._counts(report),
                "remaining": remaining,
                "actions": [
                    {"action": verb, "host": host, "name": name}
                    for verb, host, name in report.actions
                ],
                "errors": report.errors,
            }
            self.stdout.write(json.dumps(summary, indent=2, sort_keys=True))
        else:
            prefix = "would " if options["dry_run"] else ""
            if report.actions:
                # One write for the lot: a drain of 10,000 rows has as many lines.
                self.stdout.write(
                    "\n".join(
                        f"{prefix}{verb} {name} on {host}" for verb, host, name in report.actions
                    )
                )
            for error in report.errors:
                self.stderr.write(error)
            self.stdout.write(
                f"{selected} row(s) selected: {report.repaired} repaired, "
                f"{report.failed} failed, {report.skipped} skipped; {remaining} remaining."
            )
        if remaining:
            raise SystemExit(1)

    def watch(self, selection: QuerySet[PendingReplication], options: dict[str, Any]) -> None:
        """Drain the due rows every ``--interval`` seconds until a signal says stop."""
        stop = threading.Event()
        with _stopped_by_signals(stop):
            number = 0
            while not stop.is_set():
                number += 1
                started = time.monotonic()
                # As a request would: a connection the database dropped since the last
                # pass (a restart, CONN_MAX_AGE) is replaced rather than failing this one.
                close_old_connections()
                try:
                    report = drain(
                        selection.filter(journal.due(timezone.now())),
                        max_backoff=options["max_backoff"],
                        stop=stop,
                        until_unreachable=True,
                    )
                    remaining = selection.count()
                    waiting = selection.exclude(journal.due(timezone.now())).count()
                except DatabaseError as exc:
                    # The journal's database is away: the rows are safe in it, so wait
                    # for it rather than exit (and be restarted) in a loop.
                    self.stderr.write(f"pass {number}: the journal is unavailable: {exc}")
                    close_old_connections()
                else:
                    self._pass_line(
                        number, report, remaining, waiting, time.monotonic() - started, options
                    )
                stop.wait(options["interval"])
        self.stdout.write("stopped" if not options["json"] else json.dumps({"stopped": True}))

    def _pass_line(
        self,
        number: int,
        report: RepairReport,
        remaining: int,
        waiting: int,
        seconds: float,
        options: dict[str, Any],
    ) -> None:
        if options["json"]:
            line = json.dumps(
                {
                    "pass": number,
                    **self._counts(report),
                    "remaining": remaining,
                    "backed_off": waiting,
                    "unreachable": sorted(report.unreachable),
                    "seconds": round(seconds, 3),
                },
                sort_keys=True,
            )
        else:
            line = (
                f"pass {number}: {report.repaired} repaired, {report.failed} failed, "
                f"{report.skipped} skipped in {seconds:.2f}s; {remaining} remaining, "
                f"{waiting} backed off"
            )
            if report.unreachable:
                line += f"; not answering: {', '.join(sorted(report.unreachable))}"
            for error in report.errors[:10]:
                self.stderr.write(error)
        self.stdout.write(line)
        self.stdout.flush()

    @staticmethod
    def _counts(report: RepairReport) -> dict[str, int]:
        return {"repaired": report.repaired, "failed": report.failed, "skipped": report.skipped}


@contextmanager
def _stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM (systemd, a deploy) and SIGINT (a terminal) set ``stop`` instead of killing.

    The repairs in hand finish and the rows repaired so far are cleared, so a deploy
    that restarts the service costs no repair twice.
    """

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
