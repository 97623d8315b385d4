"""Audit media servers against the master copy, and optionally bring them back in line.

The journal (``process_failed_media``) repairs what the library *knows* went wrong.
The audit finds what it does not know: a media server restored from an old backup,
a disk replaced, a file edited by hand, a process killed before journaling. It
compares every host's tree (see ``listing``) with the master copy (MEDIA_ROOT, or
the storage's ``location``) and reports, per host, files that are missing, extra
(on the host, not in the master copy) or of a different size; with ``checksum``
also same-size files whose content differs.

Repairs go through ``storage.converge``: the action is derived from the master
copy *when the repair runs*, under the same per-name lock as uploads, which every
process and application server shares (ordering.py). So a file uploaded or deleted
between the audit and the repair is neither deleted from a host nor resurrected on it.

A ``storage:ALIAS`` host (a bucket) is listed by its storage (ListObjectsV2 for S3,
a ``listdir`` walk otherwise, see targets_storage.py); with ``checksum`` an object
whose ETag is an MD5 is compared with the master copy's MD5 without a download, and
streamed and hashed only when the ETag is not an MD5 or does not match.

DistributedStorage has no master copy: its hosts are compared with each other. The
reference is the union of their files, and for a file's size the most common one
among the hosts holding it. The audit only reports there; it never repairs or
deletes, because without a master copy (or the journal's history) a file that
exists on one host only could be an upload that missed the others or a delete
that missed this one, and guessing wrong loses data.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import connection as db_connection
from django.db import transaction

from . import journal, registry
from .exceptions import describe
from .listing import (
    DEFAULT_WORKERS,
    HEAD,
    Entry,
    Listing,
    ListingError,
    Sizes,
    list_host,
    probe_names,
)
from .names import MAX_NAME_LENGTH
from .transport import HostTransport

logger = logging.getLogger("django_resto")

__all__ = [
    "HostReport",
    "SyncReport",
    "audit",
    "hash_remote",
    "master_files",
    "repair",
]

Tick = Callable[[], None]


@dataclass
class HostReport:
    """What the audit found on one host, and what the repair did there."""

    host: str
    reachable: bool = True
    method: str | None = None
    complete: bool = True
    remote_files: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    checksum_mismatched: list[str] = field(default_factory=list)
    #: Names whose state on the host could not be learned, with the reason.
    unknown: dict[str, str] = field(default_factory=dict)
    repaired: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sizes: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    elapsed: float = 0.0

    def to_fix(self) -> list[str]:
        """Names the repair must (re)upload: missing, size- or content-mismatched, and
        those whose state is unknown (an upload from the master copy is always safe)."""
        return sorted({*self.missing, *self.mismatched, *self.checksum_mismatched, *self.unknown})

    @property
    def remaining(self) -> int:
        """Differences still there after the run (unreachable counts as one)."""
        fixed = {*self.repaired, *self.deleted}
        count = sum(1 for name in self.to_fix() if name not in fixed)
        count += sum(1 for name in self.extra if name not in fixed)
        return count + (0 if self.reachable else 1)

    @property
    def ok(self) -> bool:
        return self.remaining == 0 and not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "reachable": self.reachable,
            "method": self.method,
            "complete": self.complete,
            "remote_files": self.remote_files,
            "counts": {
                "missing": len(self.missing),
                "extra": len(self.extra),
                "mismatched": len(self.mismatched),
                "checksum_mismatched": len(self.checksum_mismatched),
                "unknown": len(self.unknown),
                "repaired": len(self.repaired),
                "deleted": len(self.deleted),
                "errors": len(self.errors),
                "remaining": self.remaining,
            },
            "missing": self.missing,
            "extra": self.extra,
            "mismatched": self.mismatched,
            "checksum_mismatched": self.checksum_mismatched,
            # name -> [size in the reference, size on the host]
            "sizes": {name: list(pair) for name, pair in sorted(self.sizes.items())},
            "unknown": self.unknown,
            "repaired": self.repaired,
            "deleted": self.deleted,
            "errors": self.errors,
            "notes": self.notes,
            "ok": self.ok,
            "elapsed": round(self.elapsed, 3),
        }


@dataclass
class SyncReport:
    """The audit of one storage: the reference it used and one HostReport per host."""

    storage: str
    backend: str
    reference: str  # "master": the master copy; "hosts": the union of the hosts
    reference_files: int = 0
    hosts: list[HostReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checksum: bool = False
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return all(host.ok for host in self.hosts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "storage": self.storage,
            "backend": self.backend,
            "reference": self.reference,
            "reference_files": self.reference_files,
            "checksum": self.checksum,
            "ok": self.ok,
            "elapsed": round(self.elapsed, 3),
            "notes": self.notes,
            "hosts": [host.to_dict() for host in self.hosts],
        }


# --- the master copy ----------------------------------------------------------------


#: The master copy by directory: ``{directory: {storage name: size}}``, directories
#: as listings name them (``""`` for the root, else ending with ``/``).
MasterTree = dict[str, dict[str, int]]

# What a directory entry's name may not hold for the name to be sent: control
# characters, backslashes, and the lone surrogates os.fsdecode leaves for bytes that are
# not UTF-8. See _master_tree for why this is the whole of validate_name here.
_UNSENDABLE = re.compile("[\x00-\x1f\x7f\\\\\ud800-\udfff]")


def _parent(name: str) -> str:
    """The directory of ``name`` as a MasterTree key."""
    return name[: name.rfind("/") + 1]


def _master_tree(root: str | os.PathLike[str]) -> tuple[MasterTree, list[str]]:
    """Every file below ``root``, by directory, and notes on what was skipped.

    Symlinked files count (FileSystemStorage serves them); symlinked directories
    are not followed, as os.walk does, so a loop cannot hang the audit. Names the
    storage could never have written (and could not send: control characters,
    backslashes, undecodable bytes) are skipped and reported.

    A name built from directory entries has no empty, ``.`` or ``..`` segment and
    is not absolute, so of validate_name's rules only the length and the characters
    of each segment remain to check: one regular expression per entry, where
    validate_name (and Django's pathlib-based check within it) was most of the
    walk's time at 300,000 files. A directory's verdict is passed on to its files.
    """
    tree: MasterTree = {}
    notes: list[str] = []
    root = os.fspath(root)
    if not os.path.isdir(root):
        notes.append(f"The master copy {root} does not exist: it holds no file.")
        return tree, notes
    unsendable = _UNSENDABLE.search
    stack: list[tuple[str, bool]] = [("", True)]
    while stack:
        relative, sendable = stack.pop()
        directory = os.path.join(root, relative) if relative else root
        try:
            scan = os.scandir(directory)
        except OSError as exc:
            notes.append(f"Could not read {directory}: {exc.strerror or exc}")
            continue
        files: dict[str, int] = {}
        with scan:
            for entry in scan:
                name = relative + entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((name + "/", sendable and not unsendable(entry.name)))
                        continue
                    if not entry.is_file():
                        continue
                    size = entry.stat().st_size
                except OSError:
                    continue  # removed while we walked
                if not sendable or unsendable(entry.name) or len(name) > MAX_NAME_LENGTH:
                    notes.append(f"Skipped {name!r}: cannot be sent to a media server.")
                    continue
                files[name] = size
        if files:
            tree[relative] = files
    return tree, notes


def master_files(root: str | os.PathLike[str]) -> tuple[dict[str, int], list[str]]:
    """Every file below ``root`` as ``{storage name: size}``, and notes on what was skipped
    (see _master_tree, which the audit uses as it is)."""
    tree, notes = _master_tree(root)
    files: dict[str, int] = {}
    for directory in tree.values():
        files.update(directory)
    return files, notes


class _Names(Collection[str]):
    """The names of a MasterTree, as a collection read as often as needed: the listings
    take it as their ``expected`` names without a flat copy per host."""

    __slots__ = ("_count", "_tree")

    def __init__(self, tree: MasterTree) -> None:
        self._tree = tree
        self._count = sum(map(len, tree.values()))

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        for files in self._tree.values():
            yield from files

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._tree.get(_parent(name), ())


# Bytes hashed per read: large enough that a big file costs few interpreter loops,
# small enough that hashing never holds much of a file in memory.
BLOCKSIZE = 256 * 1024


def _hash_file(path: str, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(BLOCKSIZE):
            digest.update(chunk)
    return digest.hexdigest()


def hash_remote(transport: HostTransport, name: str) -> str | None:
    """SHA-256 of ``name`` as the host serves it, read as a stream; None if it is gone.

    ``Accept-Encoding: identity``: a server that gzips text would otherwise make
    every CSS file look different from the master copy.
    """
    try:
        response = transport.open(name, headers={"Accept-Encoding": "identity"})
    except FileNotFoundError:
        return None
    try:
        digest = hashlib.sha256()
        while chunk := response.read(BLOCKSIZE):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        response.close()


class _LocalHashes:
    """Hashes of master files, each computed once however many hosts ask for it."""

    def __init__(self, storage: Any, algorithm: str = "sha256") -> None:
        self._storage = storage
        self._algorithm = algorithm
        self._lock = threading.Lock()
        self._futures: dict[str, concurrent.futures.Future[str]] = {}

    def get(self, name: str) -> str:
        with self._lock:
            future = self._futures.get(name)
            owner = future is None
            if future is None:
                future = self._futures[name] = concurrent.futures.Future()
        if owner:
            try:
                future.set_result(_hash_file(self._storage.path(name), self._algorithm))
            except Exception as exc:
                future.set_exception(exc)
        return future.result()


# --- the audit ------------------------------------------------------------------------


def _has_master(storage: Any) -> bool:
    capabilities = registry.capabilities_of(storage)
    return capabilities is not None and capabilities.master_copy


class _Tally:
    """One host's differences from the master copy, gathered directory by directory.

    A host's listing is compared with the master copy one directory at a time, as
    the directory arrives (``listing.list_host``'s ``sink``), and only what differs
    is kept: three listings of 300,000 files held whole until the end were most of
    the audit's memory. A directory equal to the master's (the usual case) costs
    one dict comparison.
    """

    def __init__(self, tree: MasterTree) -> None:
        self.tree = tree
        self.listed = 0
        self.seen: set[str] = set()
        #: Master names that a listed directory did not show.
        self.absent: list[str] = []
        self.extra: list[str] = []
        self.sizes: dict[str, tuple[int, int]] = {}
        #: Files a listing reported outside the directory it was asked for (or twice).
        self.stray: Sizes = {}

    def add(self, directory: str, files: Sizes) -> None:
        if directory in self.seen:
            self.stray.update(files)
            return
        self.seen.add(directory)
        master = self.tree.get(directory, {})
        if files == master:
            self.listed += len(files)
            return
        matched = 0
        for name, size in files.items():
            expected = master.get(name)
            if expected is not None:
                matched += 1
                if size is not None and size != expected:
                    self.sizes[name] = (expected, size)
            elif _parent(name) != directory:
                self.stray[name] = size
                continue
            else:
                self.extra.append(name)
            self.listed += 1
        if matched < len(master):
            self.absent.extend(name for name in master if name not in files)

    def add_listing(self, files: dict[str, Entry]) -> None:
        """A whole listing at once (a storage target's), split into its directories."""
        directories: dict[str, Sizes] = {}
        for name, entry in files.items():
            directories.setdefault(_parent(name), {})[name] = entry.size
        for directory, sizes in directories.items():
            self.add(directory, sizes)

    def report(self, report: HostReport, listing: Listing) -> None:
        """Fill ``report``; ``listing`` holds what HEAD found (and could not find)."""
        report.method = listing.method
        report.complete = listing.complete
        report.unknown = dict(sorted(listing.failed.items()))
        report.notes.extend(listing.notes)
        absent = self.absent
        for directory, files in self.tree.items():
            if directory not in self.seen:
                absent.extend(files)
        found = dict(self.stray)
        found.update((name, entry.size) for name, entry in listing.files.items())
        if found:
            # Names HEAD found, or a listing showed out of place: present unless a
            # directory listing showed them already.
            unseen = set(absent)
            extra = set(self.extra)
            for name, size in found.items():
                master = self.tree.get(_parent(name), {}).get(name)
                if master is None:
                    if name not in extra:
                        extra.add(name)
                        self.extra.append(name)
                        self.listed += 1
                    continue
                if name not in unseen:
                    continue
                unseen.discard(name)
                self.listed += 1
                if size is not None and size != master:
                    self.sizes[name] = (master, size)
            absent = [name for name in absent if name in unseen]
        unknown = report.unknown
        report.remote_files = self.listed
        report.missing = sorted(name for name in absent if name not in unknown)
        report.extra = sorted(self.extra)
        report.mismatched = sorted(self.sizes)
        report.sizes.update(self.sizes)


def _compare(
    report: HostReport,
    listing: Listing,
    reference: dict[str, int],
) -> None:
    files = listing.files
    report.method = listing.method
    report.complete = listing.complete
    report.remote_files = len(files)
    report.unknown = dict(sorted(listing.failed.items()))
    report.notes.extend(listing.notes)
    report.missing = sorted(
        name for name in reference if name not in files and name not in report.unknown
    )
    report.extra = sorted(name for name in files if name not in reference)
    mismatched = []
    for name, size in reference.items():
        entry = files.get(name)
        if entry is not None and entry.size is not None and entry.size != size:
            mismatched.append(name)
            report.sizes[name] = (size, entry.size)
    report.mismatched = sorted(mismatched)


def _checksums(
    storage: Any,
    report: HostReport,
    names: Sequence[str],
    hashes: _LocalHashes,
    workers: int,
    tick: Tick,
    md5s: dict[str, str] | None = None,
    local_md5: _LocalHashes | None = None,
) -> None:
    """Compare the content of ``names`` on one host with the master copy, ``workers`` at a time.

    ``md5s`` are the MD5s a storage target's listing gave (S3 ETags of single-part
    objects): a name whose MD5 matches the master's is the same without a download.
    A mismatch is confirmed by streaming the object, since a 32-digit ETag is not
    always the MD5 (SSE-KMS); so is every name without one (multipart uploads).
    """
    transport = storage.transport(report.host)
    workers = min(workers, transport.pool_size)  # more threads than sockets only queue
    stop = threading.Event()
    by_etag = 0

    def check(name: str) -> tuple[str, str]:
        """(verdict, detail): same, different, missing, or unknown with the reason."""
        if stop.is_set():
            return "unknown", "checksum skipped: the host stopped answering"
        try:
            md5 = (md5s or {}).get(name)
            if md5 is not None and local_md5 is not None and md5 == local_md5.get(name):
                return "same", "etag"
            remote = hash_remote(transport, name)
            if remote is None:
                return "missing", ""
            return ("same" if remote == hashes.get(name) else "different"), ""
        except ConnectionError as exc:
            stop.set()  # the host went away: do not wait for a timeout per file
            return "unknown", f"checksum: {describe(exc)}"
        except Exception as exc:  # an odd status, a local file deleted meanwhile
            return "unknown", f"checksum: {describe(exc)}"

    different: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, workers), thread_name_prefix="django_resto_checksum"
    ) as pool:
        futures = {name: pool.submit(check, name) for name in names}
        for name, future in futures.items():
            verdict, detail = future.result()
            if verdict == "different":
                different.append(name)
            elif verdict == "missing":
                report.missing.append(name)
            elif verdict == "unknown":
                report.unknown[name] = detail
            elif detail == "etag":
                by_etag += 1
            tick()
    report.missing.sort()
    report.unknown = dict(sorted(report.unknown.items()))
    report.checksum_mismatched = sorted(different)
    if md5s is not None:
        report.notes.append(
            f"{by_etag} of {len(names)} object(s) matched by their ETag (MD5); the others "
            "were downloaded and hashed."
        )


def audit(
    storage: Any,
    *,
    alias: str,
    hosts: Iterable[str] | None = None,
    checksum: bool = False,
    method: str | None = None,
    prefix: str | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: Callable[[int, str], Any] | None = None,
) -> SyncReport:
    """Compare every host (or ``hosts``) of ``storage`` with its reference.

    ``method`` forces a listing method (see ``listing.METHODS``). ``progress`` is a
    factory ``(total, label) -> Progress`` (anything with ``advance`` and
    ``close``), called once per phase. Hosts are audited in parallel; a host that
    cannot be listed is reported unreachable, not raised.
    """
    start = time.perf_counter()
    selected = list(storage.hosts if hosts is None else hosts)
    master = _has_master(storage)
    report = SyncReport(
        storage=alias,
        backend=type(storage).__name__,
        reference="master" if master else "hosts",
        checksum=checksum,
    )
    reports = {host: HostReport(host) for host in selected}
    report.hosts = [reports[host] for host in selected]
    tree: MasterTree = {}
    if master:
        tree, notes = _master_tree(storage.location)
        report.notes.extend(notes)
    master_names = _Names(tree) if master else None
    tallies: dict[str, _Tally] = {}
    bar = progress(len(selected), "Listing") if progress else None

    def list_one(host: str) -> Listing | None:
        begin = time.perf_counter()
        # With a master copy, each host is compared while it is listed (see _Tally).
        tally = _Tally(tree) if master else None
        try:
            target = storage.transport(host)
            listing: Listing
            if not isinstance(target, HostTransport):
                # A storage target (a bucket) lists itself; listing methods are HTTP's.
                listing = target.list(expected=master_names, workers=workers)
                if tally is not None:
                    tally.add_listing(listing.files)
            else:
                listing = list_host(
                    target,
                    expected=master_names,
                    method=method,
                    prefix=storage.listing_prefix if prefix is None else prefix,
                    workers=workers,
                    sink=None if tally is None else tally.add,
                )
            if tally is not None:
                tallies[host] = tally
            return listing
        except ListingError as exc:
            reports[host].reachable = False
            reports[host].errors.append(str(exc))
            return None
        finally:
            reports[host].elapsed = time.perf_counter() - begin
            if bar is not None:
                bar.advance()

    listings: dict[str, Listing] = {}
    try:
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, len(selected)), thread_name_prefix="django_resto_audit"
        ) as pool:
            for host, listing in zip(selected, pool.map(list_one, selected), strict=True):
                if listing is not None:
                    listings[host] = listing
    finally:
        if bar is not None:
            bar.close()

    if master_names is not None:
        report.reference_files = len(master_names)
        for host, listing in listings.items():
            tallies.pop(host).report(reports[host], listing)
    else:
        reference = _union_reference(storage, listings, reports, workers, report.notes)
        report.reference_files = len(reference)
        for host, listing in listings.items():
            _compare(reports[host], listing, reference)
            _majority_mismatches(reports[host], listing, reference)

    if checksum:
        if master_names is None:
            raise ValueError("A checksum audit needs a master copy (Hybrid or Async storage).")
        to_check = {}
        for host in listings:
            # What the host holds of the master copy, less the size mismatches.
            found = reports[host]
            skip = {*found.missing, *found.unknown, *found.mismatched}
            to_check[host] = sorted(name for name in master_names if name not in skip)
        total = sum(len(names) for names in to_check.values())
        bar = progress(total, "Checksums") if progress else None
        hashes = _LocalHashes(storage)
        local_md5 = _LocalHashes(storage, "md5")
        md5s = {host: _listed_md5s(listing) for host, listing in listings.items()}
        lock = threading.Lock()

        def tick() -> None:
            if bar is not None:
                with lock:
                    bar.advance()

        try:
            with concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, len(to_check)), thread_name_prefix="django_resto_audit"
            ) as pool:
                list(
                    pool.map(
                        lambda host: _checksums(
                            storage,
                            reports[host],
                            to_check[host],
                            hashes,
                            workers,
                            tick,
                            md5s[host],
                            local_md5,
                        ),
                        to_check,
                    )
                )
        finally:
            if bar is not None:
                bar.close()
    report.elapsed = time.perf_counter() - start
    return report


def _listed_md5s(listing: Listing) -> dict[str, str] | None:
    """The MD5s a storage target's listing carries (targets_storage.ObjectEntry), by name;
    None for a listing without any (a media server's)."""
    found = {}
    carries = False
    for name, entry in listing.files.items():
        md5 = getattr(entry, "md5", None)
        carries = carries or hasattr(entry, "md5")
        if md5 is not None:
            found[name] = md5
    return found if carries else None


def _union_reference(
    storage: Any,
    listings: dict[str, Listing],
    reports: dict[str, HostReport],
    workers: int,
    notes: list[str],
) -> dict[str, int]:
    """DistributedStorage: every name any host lists, sized by majority; HEAD-only hosts
    are probed for those names once they are known."""
    names: set[str] = set()
    for listing in listings.values():
        if listing.method != HEAD:
            names.update(listing.files)
    listable = [host for host, listing in listings.items() if listing.method != HEAD]
    if not listable and listings:
        notes.append(
            "No host offers a listing (PROPFIND or JSON autoindex): without a master copy "
            "there is no name to compare."
        )
    for host, listing in listings.items():
        if listing.method == HEAD:
            try:
                probe_names(storage.transport(host), sorted(names), listing, workers=workers)
            except ListingError as exc:
                reports[host].reachable = False
                reports[host].errors.append(str(exc))
    for host in [host for host in listings if not reports[host].reachable]:
        del listings[host]
    reference: dict[str, int] = {}
    for name in names:
        sizes: Counter[int] = Counter(
            size
            for listing in listings.values()
            if name in listing.files and (size := listing.files[name].size) is not None
        )
        if sizes:
            reference[name] = sizes.most_common(1)[0][0]
        else:
            reference[name] = -1
    return reference


def _majority_mismatches(report: HostReport, listing: Listing, reference: dict[str, int]) -> None:
    # -1 means no host gave a size: nothing to compare.
    report.mismatched = [name for name in report.mismatched if reference[name] != -1]
    for name in list(report.sizes):
        if name not in report.mismatched:
            del report.sizes[name]


# --- the repair -----------------------------------------------------------------------


def repair(
    storage: Any,
    report: SyncReport,
    *,
    fix: bool = True,
    delete_extra: bool = False,
    workers: int = DEFAULT_WORKERS,
    progress: Callable[[int, str], Any] | None = None,
) -> None:
    """Bring the audited hosts in line: upload what is missing or different (``fix``),
    delete extra files (``delete_extra``). Updates ``report`` in place.

    Every action is ``storage.converge(host, name)``, which looks at the master
    copy at that moment; the journal rows it settles are cleared afterwards in one
    transaction, from this thread (SQLite does not like many writer threads).
    """
    if not _has_master(storage):
        raise ValueError(
            f"{type(storage).__name__} has no master copy: resto_sync cannot tell a missed "
            "upload from a missed delete. Use process_failed_media, which follows the journal."
        )
    plans: dict[str, list[str]] = {}
    for host_report in report.hosts:
        if not host_report.reachable:
            continue
        names = host_report.to_fix() if fix else []
        if delete_extra:
            names = names + host_report.extra
        if names:
            plans[host_report.host] = names
    total = sum(len(names) for names in plans.values())
    if not total:
        return
    bar = progress(total, "Repairing") if progress else None
    lock = threading.Lock()
    settled: list[tuple[str, str, int]] = []
    by_host = {host_report.host: host_report for host_report in report.hosts}

    def one(host: str, name: str) -> None:
        try:
            # Numbered inside the name's lock, before converge reads the master copy.
            with storage.locked(name) as seq:
                verb = storage.converge(host, name)
        except Exception as exc:
            with lock:
                by_host[host].errors.append(f"repair of {name}: {describe(exc)}")
        else:
            with lock:
                (by_host[host].repaired if verb == "PUT" else by_host[host].deleted).append(name)
                settled.append((host, name, seq))
        finally:
            if bar is not None:
                with lock:
                    bar.advance()

    def run_host(host: str) -> None:
        queue = iter(plans[host])
        queue_lock = threading.Lock()

        def drain() -> None:
            # Each thread takes names until none are left, then closes the database
            # connection it opened for the names' locks and numbers.
            try:
                while True:
                    with queue_lock:
                        name = next(queue, None)
                    if name is None:
                        return
                    one(host, name)
            finally:
                db_connection.close()

        count = max(1, min(workers, storage.transport(host).pool_size, len(plans[host])))
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=count, thread_name_prefix="django_resto_repair"
        ) as pool:
            for future in [pool.submit(drain) for _ in range(count)]:
                future.result()

    try:
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=len(plans), thread_name_prefix="django_resto_repair"
        ) as pool:
            list(pool.map(run_host, plans))
    finally:
        if bar is not None:
            bar.close()
    for host_report in report.hosts:
        host_report.repaired.sort()
        host_report.deleted.sort()
    if settled and journal.enabled() and storage.journal_key:
        try:
            with transaction.atomic():
                for host, name, seq in settled:
                    journal.clear(storage.journal_key, [host], name, seq)
        except Exception:
            logger.exception("Could not clear the django_resto journal after resto_sync")
