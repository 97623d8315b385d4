"""``manage.py resto_status``: is every media server up, and how far behind is each?

For each host of each django_resto storage: whether it answers HTTP (a HEAD on the
media prefix with a short timeout; any status counts, since a directory URL may
well answer 403 or 404, while a refused connection or a timeout does not), the
round trip in milliseconds, the journal backlog (rows still to repair, how many
of them wait for their back-off, the ages of the oldest and newest), and the
dead-host breaker's state as this process sees it. Breakers are per process and
this command's HEAD does not go through one, so it says "closed" (or "off" when the
storage has none); the web workers' breakers are in the metrics
(``resto_breaker_open``, see metrics.py).

Exit status: 1 when a configured host is unreachable (or, with
``--fail-on-backlog``, when any backlog exists), else 0; 2 for a usage error. A
backlog alone is not a failure by default: ``process_failed_media`` drains it on
its schedule, and a monitoring check that fires on every transient failure would
be ignored.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.files.storage import storages
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count, Max, Min, Q
from django.utils import timezone

from django_resto import journal, registry
from django_resto.exceptions import describe
from django_resto.management.options import add_storage_option
from django_resto.transport import HostTransport

DEFAULT_TIMEOUT = 2.0


def probe(storage: Any, host: str, timeout: float) -> dict[str, Any]:
    """HEAD the media prefix on ``host``: reachable, status, latency, error.

    A ``storage:ALIAS`` host is asked through its storage (a HEAD of the bucket for
    S3; ``status`` is None for a storage that speaks no HTTP), within the timeouts of
    the storage's own client rather than ``timeout``.
    """
    transport = storage.transport(host)
    start = time.perf_counter()
    ask_storage = getattr(transport, "probe", None)  # targets_storage.StorageTarget
    if ask_storage is not None:
        try:
            status = ask_storage()
        except Exception as exc:
            return {"reachable": False, "status": None, "latency_ms": None, "error": describe(exc)}
        latency = (time.perf_counter() - start) * 1000
        return {"reachable": True, "status": status, "latency_ms": round(latency, 1), "error": None}
    # A connection of its own, with the probe's short timeout; a HEAD is a read, so no
    # credentials go with it (the storage's pooled connections are left alone).
    probing = HostTransport(
        transport.host, transport.prefix, timeout=timeout, verify=transport.verify, pool_size=1
    )
    try:
        response = probing.request("HEAD", "")
        response.close()
    except OSError as exc:
        return {"reachable": False, "status": None, "latency_ms": None, "error": describe(exc)}
    finally:
        probing.close()
    latency = (time.perf_counter() - start) * 1000
    return {
        "reachable": True,
        "status": response.status,
        "latency_ms": round(latency, 1),
        "error": None,
    }


@dataclass(frozen=True)
class Backlog:
    """One host's rows in one storage's journal."""

    count: int
    backed_off: int  # of which wait for their back-off (process_failed_media --watch)
    oldest: datetime
    newest: datetime


def backlog(key: str, now: datetime | None = None) -> dict[str, Backlog] | None:
    """``{host: Backlog}`` of one storage's journal (one query); None without a journal."""
    if not journal.enabled():
        return None
    from django_resto.models import PendingReplication

    now = now or timezone.now()
    rows = (
        PendingReplication.objects.filter(storage=key)
        .values("host")
        .annotate(
            count=Count("id"),
            backed_off=Count("id", filter=Q(next_attempt__gt=now)),
            oldest=Min("first_attempt"),
            newest=Max("first_attempt"),
        )
        .order_by()
    )
    return {
        row["host"]: Backlog(row["count"], row["backed_off"], row["oldest"], row["newest"])
        for row in rows
    }


def breaker_state(storage: Any, host: str) -> str:
    """The breaker of ``host`` in this process: "closed", "open", "half-open" or "off"."""
    replicator = getattr(storage, "replicator", None)
    state = getattr(replicator, "breaker_state", None)
    return "closed" if state is None else str(state(host))


def _seconds(now: datetime, then: datetime) -> float:
    return round(max(0.0, (now - then).total_seconds()), 1)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            rest = seconds % size
            smaller = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            return f"{seconds // size}{unit} {rest // smaller[1]}{smaller[0]}"
    return f"{seconds}s"


class Command(BaseCommand):
    help = "Show whether each media server answers, its latency and its replication backlog."

    def add_arguments(self, parser: CommandParser) -> None:
        add_storage_option(
            parser,
            "Only this STORAGES alias (repeatable). Default: every django_resto storage.",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_TIMEOUT,
            help=f"Seconds to wait for each host (default {DEFAULT_TIMEOUT}).",
        )
        parser.add_argument(
            "--fail-on-backlog",
            action="store_true",
            help="Exit with status 1 when any host has journal rows waiting.",
        )
        parser.add_argument("--json", action="store_true", help="Print JSON on stdout.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["timeout"] <= 0:
            raise CommandError("--timeout must be positive", returncode=2)
        targets = self._storages(options["storages"])
        now = timezone.now()
        result: list[dict[str, Any]] = []
        jobs = [(alias, storage, host) for alias, storage in targets for host in storage.hosts]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
            probes = list(pool.map(lambda job: probe(job[1], job[2], options["timeout"]), jobs))
        answers = {
            (alias, host): answer for (alias, _, host), answer in zip(jobs, probes, strict=True)
        }
        for alias, storage in targets:
            rows = backlog(storage.journal_key, now)
            hosts = []
            for host in storage.hosts:
                hosts.append(
                    {
                        "host": host,
                        "configured": True,
                        **answers[(alias, host)],
                        "breaker": breaker_state(storage, host),
                    }
                )
            # Rows for hosts removed from the settings still wait for a repair that
            # process_failed_media will skip: show them rather than hide them.
            for host in sorted(set(rows or {}) - set(storage.hosts)):
                hosts.append(
                    {
                        "host": host,
                        "configured": False,
                        "reachable": None,
                        "status": None,
                        "latency_ms": None,
                        "error": "not among the storage's hosts",
                        "breaker": None,
                    }
                )
            for entry in hosts:
                found = (rows or {}).get(entry["host"])
                entry["backlog"] = None if rows is None else (found.count if found else 0)
                entry["backed_off"] = None if rows is None else (found.backed_off if found else 0)
                entry["oldest"] = found.oldest.isoformat() if found else None
                entry["oldest_age_seconds"] = _seconds(now, found.oldest) if found else None
                entry["newest_age_seconds"] = _seconds(now, found.newest) if found else None
            result.append(
                {
                    "storage": alias,
                    "backend": type(storage).__name__,
                    "journal": rows is not None,
                    "hosts": hosts,
                }
            )
            storage.close()

        unreachable = any(
            entry["configured"] and not entry["reachable"]
            for item in result
            for entry in item["hosts"]
        )
        pending = any(entry["backlog"] for item in result for entry in item["hosts"])
        failed = unreachable or (options["fail_on_backlog"] and pending)
        if options["json"]:
            self.stdout.write(json.dumps({"ok": not failed, "storages": result}, indent=2))
        else:
            self._table(result)
        if failed:
            raise SystemExit(1)

    def _storages(self, aliases: list[str] | None) -> list[tuple[str, Any]]:
        configured = registry.configured()
        found = []
        for alias in dict.fromkeys(aliases or configured):
            if alias not in configured:
                raise CommandError(f"{alias!r} is not in STORAGES", returncode=2)
            if registry.backend_class(alias) is not None:
                found.append((alias, storages[alias]))
            elif aliases:
                raise CommandError(
                    f"STORAGES[{alias!r}] is not a django_resto storage", returncode=2
                )
        if not found:
            raise CommandError("No django_resto storage in STORAGES", returncode=2)
        return found

    def _table(self, result: list[dict[str, Any]]) -> None:
        header: tuple[str, ...] = ("STORAGE", "HOST", "STATE", "LATENCY", "BACKLOG", "OLDEST")
        lines: list[tuple[tuple[str, ...], bool]] = []
        errors = []
        for item in result:
            for entry in item["hosts"]:
                if not entry["configured"]:
                    state = "not configured"
                elif entry["reachable"]:
                    state = "up" if entry["status"] is None else f"up ({entry['status']})"
                else:
                    state = "UNREACHABLE"
                    errors.append(f"{entry['host']}: {entry['error']}")
                if entry["breaker"] in ("open", "half-open"):
                    state += f", breaker {entry['breaker']}"
                latency = "-" if entry["latency_ms"] is None else f"{entry['latency_ms']:.1f} ms"
                count = "n/a" if entry["backlog"] is None else str(entry["backlog"])
                cells: tuple[str, ...] = (
                    item["storage"],
                    entry["host"],
                    state,
                    latency,
                    count,
                    _age(entry["oldest_age_seconds"]),
                )
                lines.append((cells, entry["configured"] and not entry["reachable"]))
        widths = [max(len(row[i]) for row in [header, *(c for c, _ in lines)]) for i in range(6)]
        right = {3, 4}

        def render(cells: tuple[str, ...]) -> str:
            return "  ".join(
                cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                for i, cell in enumerate(cells)
            ).rstrip()

        self.stdout.write(render(header))
        for cells, bad in lines:
            text = render(cells)
            self.stdout.write(self.style.ERROR(text) if bad else text)
        for error in errors:
            self.stdout.write(f"  {error}")
        if not journal.enabled():
            self.stdout.write("(no journal: add django_resto to INSTALLED_APPS to record backlogs)")
