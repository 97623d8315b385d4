"""Draining the journal: bring each lagging host in line, one (host, name) at a time.

Hosts are repaired in parallel, each by its own thread going through its rows in
order, so one slow or dead server does not hold the others back and two repairs
of one (host, name) never race each other.

Each row is repaired under its name's lock, one at a time; the journal around it is
read and cleared by batches (journal.batches, journal.clear_repaired), and a batch's
repairs share one sequence number (ordering.shared_number), so that a backlog of
10,000 rows costs a few dozen journal statements besides the locks themselves (none
on SQLite, whose locks are in a file; a statement per lock and unlock on PostgreSQL).
A failed row is backed off exponentially (``next_attempt``), which ``--watch`` honours.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.utils import timezone

from . import journal, ordering, registry
from .breaker import HostHeldOpen, opens_breaker
from .exceptions import describe
from .fanout import FanOut
from .transport import Body, HostTransport, Response

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from .models import PendingReplication

logger = logging.getLogger("django_resto")

#: A row whose repair failed waits ``BACKOFF_BASE * 2**attempts`` seconds (jittered),
#: at most ``max_backoff`` (MAX_BACKOFF unless the command says otherwise).
BACKOFF_BASE = 1.0
MAX_BACKOFF = 600.0


@dataclass
class RepairReport:
    repaired: int = 0
    failed: int = 0
    skipped: int = 0
    actions: list[tuple[str, str, str]] = field(default_factory=list)  # (verb, host, name)
    errors: list[str] = field(default_factory=list)
    #: Hosts whose pass ended at a failure saying the host does not answer (drain's
    #: ``until_unreachable``); their remaining rows were not tried.
    unreachable: list[str] = field(default_factory=list)
    #: The run was asked to stop, and left rows untried.
    stopped: bool = False


def resto_storage(alias: str) -> Any | None:
    """The configured storage for a journal key, or None if it is not a django_resto one."""
    return registry.storage(alias)


def resto_aliases() -> list[str]:
    """Every STORAGES alias whose backend is a django_resto storage."""
    return registry.aliases()


class RemoteBody(Body):
    """A file read from one media server while it is written to another.

    DistributedStorage has no master copy; a lagging host is repaired from a host
    that acknowledged the latest write, streaming, without touching the local disk.
    """

    def __init__(self, source: HostTransport, name: str) -> None:
        self.source = source
        self.name = name
        stat = source.stat(name)
        if stat is None:
            raise FileNotFoundError(f"{name} is not on {source.host.name}")
        self.size = stat.size or 0

    def open(self) -> Response:
        # The PUT reads it block by block: the whole file is never in memory.
        return self.source.open(self.name, headers={"Accept-Encoding": "identity"})


def planned_action(storage: Any, row: PendingReplication) -> str:
    """What repairing ``row`` would do now: PUT, DELETE or COPY from another host."""
    return storage.planned_repair(row)


def repair_row(storage: Any, row: PendingReplication) -> str:
    """Repair one row's host; return the verb used. Raises if the host is still behind."""
    return storage.repair(row)


def copy_from_sources(storage: Any, row: PendingReplication) -> None:
    """PUT ``row``'s file on its host, streamed from a host that acknowledged the write.

    For storages without a master copy (Distributed): the sources are the hosts
    that acknowledged the PUT the row records.
    """
    problems = []
    for source in row.sources:
        if source == row.host or source not in storage.hosts:
            continue
        try:
            body = RemoteBody(storage.transport(source), row.name)
        except Exception as exc:
            problems.append(f"{source}: {describe(exc)}")
            continue
        storage.put_file(row.host, row.name, body)
        return
    raise FileNotFoundError(
        f"No host that acknowledged {row.name} can provide it ({'; '.join(problems) or 'none'})"
    )


def repair_rows(
    rows: Iterable[PendingReplication],
    *,
    dry_run: bool = False,
    on_progress: Callable[[], None] | None = None,
    max_backoff: float = MAX_BACKOFF,
    stop: threading.Event | None = None,
) -> RepairReport:
    """Repair the given rows: parallel across hosts, in order within a host."""
    by_host: dict[str, list[PendingReplication]] = defaultdict(list)
    for row in rows:
        by_host[row.host].append(row)

    def batches(host: str) -> Iterator[list[PendingReplication]]:
        ordered = sorted(by_host[host], key=lambda r: (r.name, r.seq))
        for start in range(0, len(ordered), journal.BATCH_SIZE):
            yield ordered[start : start + journal.BATCH_SIZE]

    run = _Drain(dry_run=dry_run, on_progress=on_progress, max_backoff=max_backoff, stop=stop)
    return run.hosts({host: batches(host) for host in by_host})


def drain(
    selection: QuerySet[PendingReplication],
    *,
    limit: int | None = None,
    dry_run: bool = False,
    on_progress: Callable[[], None] | None = None,
    max_backoff: float = MAX_BACKOFF,
    stop: threading.Event | None = None,
    until_unreachable: bool = False,
) -> RepairReport:
    """Repair the rows of ``selection`` that exist now (the ``limit`` oldest, if given).

    As :func:`repair_rows`, but each host's thread reads its own rows, oldest first,
    a batch per query, so that neither the rows nor the round trips grow with the
    backlog and a slow host holds no other back. Rows journaled after the start are
    left for the next run, so that failures meanwhile cannot keep it going for ever.

    ``until_unreachable`` ends a host's pass at a failure that says the host does not
    answer, leaving its other rows untried (not backed off) for the next pass:
    ``--watch`` sends a dead host one request per pass, not one per row.
    """
    pks = selection.order_by("pk").values_list("pk", flat=True)
    upto = pks[limit - 1 : limit].first() if limit is not None else None
    if upto is None:  # no limit, or fewer rows than it: every row there is now
        upto = pks.last()
    if upto is None:
        return RepairReport()
    bounded = selection.filter(pk__lte=upto)
    hosts = sorted(set(bounded.order_by().values_list("host", flat=True).distinct()))
    run = _Drain(
        dry_run=dry_run,
        on_progress=on_progress,
        max_backoff=max_backoff,
        stop=stop,
        until_unreachable=until_unreachable,
    )
    return run.hosts({host: journal.batches(bounded.filter(host=host)) for host in hosts})


def host_down(error: BaseException) -> bool:
    """Whether a repair's failure says its host does not answer, not that one file failed.

    The breaker's test (a network error or a 5xx), less the errors of the name's lock,
    which say another process holds the name.
    """
    if isinstance(error, ordering.LockTimeout | ordering.LockUnavailable):
        return False
    return isinstance(error, HostHeldOpen) or opens_breaker(error)


class _Drain:
    """One run of repairs over some hosts' rows: a thread per host, a report for all."""

    def __init__(
        self,
        *,
        dry_run: bool,
        on_progress: Callable[[], None] | None,
        max_backoff: float,
        stop: threading.Event | None,
        until_unreachable: bool = False,
    ) -> None:
        self.dry_run = dry_run
        self.on_progress = on_progress
        self.max_backoff = max_backoff
        self.stop = stop
        self.until_unreachable = until_unreachable
        self.report = RepairReport()
        self._lock = threading.Lock()
        self._storages: dict[str, Any | None] = {}

    def hosts(self, batches: dict[str, Iterator[list[PendingReplication]]]) -> RepairReport:
        names = sorted(batches)
        fanout = FanOut(max(1, len(names)))
        try:
            outcomes = fanout.run(lambda host: self._host(host, batches[host]), names)
        finally:
            fanout.shutdown()
        for outcome in outcomes:
            if outcome.error is not None:
                raise outcome.error
        return self.report

    def _storage(self, alias: str) -> Any | None:
        # Asked once per alias, not per row: the registry imports the backend's class.
        if alias not in self._storages:
            self._storages[alias] = resto_storage(alias)
        return self._storages[alias]

    def _host(self, host: str, batches: Iterator[list[PendingReplication]]) -> None:
        try:
            for batch in batches:
                settled: list[tuple[int, int]] = []
                # One number for the batch's locks, not a write per lock, on which the
                # hosts' threads would queue (SQLite has one writer at a time).
                try:
                    with ordering.shared_number():
                        for row in batch:
                            if self.stop is not None and self.stop.is_set():
                                with self._lock:
                                    self.report.stopped = True
                                return
                            error = self._row(host, row, settled)
                            self._tick()
                            if error is not None and self.until_unreachable and host_down(error):
                                with self._lock:
                                    self.report.unreachable.append(host)
                                return
                finally:
                    # Also when stopped or interrupted: what was repaired is not redone.
                    journal.safely(journal.clear_repaired, settled)
        finally:
            if threading.current_thread() is not threading.main_thread():
                connection.close()

    def _row(
        self, host: str, row: PendingReplication, settled: list[tuple[int, int]]
    ) -> Exception | None:
        """Repair one row; on success add it to ``settled``; return the failure, if any."""
        storage = self._storage(row.storage)
        if storage is None or host not in storage.hosts:
            with self._lock:
                self.report.skipped += 1
                self.report.errors.append(
                    f"{row.name} on {host}: storage {row.storage!r} is not a configured "
                    "django_resto storage with this host"
                )
            return None
        if self.dry_run:
            with self._lock:
                self.report.actions.append((planned_action(storage, row), host, row.name))
            return None
        try:
            # The decision (PUT, DELETE, COPY) is taken under the name's lock, so a
            # delete in another process cannot slip between it and the request.
            with storage.locked(row.name) as seq:
                verb = repair_row(storage, row)
        except Exception as exc:
            logger.warning("Repair of %s on %s failed: %s", row.name, host, describe(exc))
            delay = journal.retry_delay(row.attempts + 1, base=BACKOFF_BASE, cap=self.max_backoff)
            journal.safely(
                journal.mark,
                row.storage,
                [host],
                row.name,
                row.operation,
                row.seq,
                error=describe(exc),
                sources=row.sources,
                next_attempt=timezone.now() + timedelta(seconds=delay),
            )
            with self._lock:
                self.report.failed += 1
                self.report.errors.append(f"{row.name} on {host}: {describe(exc)}")
            return exc
        # Numbered before the master copy was read, inside this lock or an earlier one of
        # the batch (ordering.shared_number): every operation numbered up to then had
        # left the name's lock before this repair took it, so it is reflected on the
        # host. Distributed copies only what the row named, so only that row's operation
        # is settled. Deleted with the batch (journal.py).
        settled.append((row.pk, row.seq if verb == "COPY" else seq))
        with self._lock:
            self.report.repaired += 1
            self.report.actions.append((verb, host, row.name))
        return None

    def _tick(self) -> None:
        if self.on_progress is not None:
            with self._lock:
                self.on_progress()
