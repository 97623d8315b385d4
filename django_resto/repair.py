"""Draining the journal: bring each lagging host in line, one (host, name) at a time.

Hosts are repaired in parallel, each by its own thread going through its rows in
order, so one slow or dead server does not hold the others back and two repairs
of one (host, name) never race each other.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import connection

from . import journal, registry
from .exceptions import describe
from .fanout import FanOut
from .transport import Body, HostTransport

if TYPE_CHECKING:
    from .models import PendingReplication

logger = logging.getLogger("django_resto")


@dataclass
class RepairReport:
    repaired: int = 0
    failed: int = 0
    skipped: int = 0
    actions: list[tuple[str, str, str]] = field(default_factory=list)  # (verb, host, name)
    errors: list[str] = field(default_factory=list)


def resto_storage(alias: str) -> Any | None:
    """The configured storage for a journal key, or None if it is not a django_resto one."""
    return registry.storage(alias)


def resto_aliases() -> list[str]:
    """Every STORAGES alias whose backend is a django_resto storage."""
    return registry.aliases()


class _Stream:
    """A GET response seen as a sized, readable body, so the PUT sends Content-Length."""

    def __init__(self, raw: Any, size: int) -> None:
        self._raw = raw
        self._size = size
        self._position = 0

    def read(self, amount: int = -1) -> bytes:
        data = self._raw.read(None if amount is None or amount < 0 else amount)
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position

    def __len__(self) -> int:
        return self._size - self._position

    def __iter__(self):
        return iter(lambda: self.read(1024 * 1024), b"")

    def close(self) -> None:
        self._raw.close()


class RemoteBody(Body):
    """A file read from one media server while it is written to another.

    DistributedStorage has no master copy; a lagging host is repaired from a host
    that acknowledged the latest write, streaming, without touching the local disk.
    """

    def __init__(self, source: HostTransport, name: str) -> None:
        self.source = source
        self.name = name
        response = source.head(name)
        if response is None:
            raise FileNotFoundError(f"{name} is not on {source.host.name}")
        self.size = int(response.headers.get("Content-Length", "0"))

    def open(self) -> Any:
        response = self.source.request(
            "GET", self.name, headers={"Accept-Encoding": "identity"}, stream=True
        )
        if response.status_code != 200:
            response.close()
            raise FileNotFoundError(
                f"{self.name} answered {response.status_code} on {self.source.host.name}"
            )
        return _Stream(response.raw, self.size)


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
) -> RepairReport:
    """Repair the given rows: parallel across hosts, in order within a host."""
    report = RepairReport()
    lock = threading.Lock()
    by_host: dict[str, list[PendingReplication]] = defaultdict(list)
    for row in rows:
        by_host[row.host].append(row)

    def work(host: str) -> None:
        try:
            repair_host(host)
        finally:
            if threading.current_thread() is not threading.main_thread():
                connection.close()

    def repair_host(host: str) -> None:
        for row in sorted(by_host[host], key=lambda r: (r.name, r.seq)):
            storage = resto_storage(row.storage)
            if storage is None or host not in storage.hosts:
                with lock:
                    report.skipped += 1
                    report.errors.append(
                        f"{row.name} on {host}: storage {row.storage!r} is not a configured "
                        "django_resto storage with this host"
                    )
                _tick()
                continue
            if dry_run:
                with lock:
                    report.actions.append((planned_action(storage, row), host, row.name))
                _tick()
                continue
            try:
                # The decision (PUT, DELETE, COPY) is taken under the name's lock, so a
                # delete in another process cannot slip between it and the request.
                with storage.locked(row.name) as seq:
                    verb = repair_row(storage, row)
                    # Numbered inside the lock, before the master copy was read: every
                    # operation up to then is reflected on the host. Distributed copies
                    # only what the row named, so only that row's operation is settled.
                    settled = row.seq if verb == "COPY" else seq
                    journal.safely(journal.clear, row.storage, [host], row.name, settled)
            except Exception as exc:
                logger.warning("Repair of %s on %s failed: %s", row.name, host, describe(exc))
                journal.safely(
                    journal.mark,
                    row.storage,
                    [host],
                    row.name,
                    row.operation,
                    row.seq,
                    error=describe(exc),
                    sources=row.sources,
                )
                with lock:
                    report.failed += 1
                    report.errors.append(f"{row.name} on {host}: {describe(exc)}")
            else:
                with lock:
                    report.repaired += 1
                    report.actions.append((verb, host, row.name))
            _tick()

    def _tick() -> None:
        if on_progress is not None:
            with lock:
                on_progress()

    hosts = sorted(by_host)
    for outcome in FanOut(max(1, len(hosts))).run(work, hosts):
        if outcome.error is not None:
            raise outcome.error
    return report
