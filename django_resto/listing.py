"""What files one media server holds: names and sizes below the media prefix.

The audit (``resto_sync``) needs the full tree of every host, and media servers
offer different ways to read it, none of which is part of plain HTTP:

* ``propfind``: WebDAV PROPFIND with ``Depth: 1`` on each collection (lighttpd's
  mod_webdav, Apache). One request per directory.
* ``autoindex``: nginx has no PROPFIND, but ``autoindex on; autoindex_format json;``
  on an internal location (``/_resto/list/`` by default, mapped with ``alias`` onto
  the media root) lists a directory as JSON. One request per directory. nginx
  leaves out names starting with a dot, so such names are checked with HEAD.
* ``head``: the last resort, one HEAD per expected name. It says whether the files
  we know of are there, but it cannot find files we do not know of ("extra" files).

The method is detected per host (PROPFIND first, then the JSON listing, then
HEAD) and a positive detection is remembered for the life of the process, so a
second audit costs no probing. Directories are fetched in parallel on the
transport's kept-alive connections: the cost of a listing is one round trip per
directory level, not per file.

Listing is a privileged operation on a real server (it reveals every name): it is
restricted to trusted IPs or credentials, so the storage's credentials are sent
with every listing request.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import queue
import re
import threading
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from .exceptions import describe
from .settings import get_setting
from .transport import BytesBody, HostTransport, Response, TransportError, UnexpectedStatusCode

logger = logging.getLogger("django_resto")

__all__ = [
    "AUTOINDEX",
    "HEAD",
    "METHODS",
    "PROPFIND",
    "Entry",
    "Listing",
    "ListingError",
    "Sink",
    "Sizes",
    "detect_method",
    "forget_methods",
    "list_host",
    "listing_prefix",
    "probe_names",
]

PROPFIND = "propfind"
AUTOINDEX = "autoindex"
HEAD = "head"
METHODS = (PROPFIND, AUTOINDEX, HEAD)

#: Parallel requests per host while walking a tree or probing names.
DEFAULT_WORKERS = 8

_DAV = "{DAV:}"
# Ask for the three properties we use: lighttpd's allprop answer also carries lock
# discovery and ETags, which triples the bytes to transfer and parse.
_PROPFIND_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:propfind xmlns:D="DAV:"><D:prop>'
    b"<D:resourcetype/><D:getcontentlength/><D:getlastmodified/>"
    b"</D:prop></D:propfind>"
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One file on a host: its size, and its modification time when asked for.

    Slotted: a listing of 300,000 files holds as many entries, and a ``__dict__``
    each would be most of its memory.
    """

    size: int | None
    mtime: datetime | None = None


@dataclass
class Listing:
    """The files found on one host, and how they were found.

    ``complete`` is False when files the caller did not ask about could exist
    unseen: HEAD mode, or a directory whose listing failed (its expected names are
    then probed with HEAD, recorded in ``notes``). ``failed`` maps names whose state
    could not be learned to the reason: they are neither present nor missing.
    """

    host: str
    method: str
    files: dict[str, Entry] = field(default_factory=dict)
    complete: bool = True
    requests: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class ListingError(Exception):
    """A host could not be listed at all (connection refused, timeout, bad answer)."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(f"Cannot list {host}: {message}")


def listing_prefix() -> str:
    """The URL path of the JSON listing, from ``RESTO_LISTING_PREFIX``."""
    prefix = get_setting("LISTING_PREFIX") or ""
    if not prefix.startswith("/"):
        prefix = "/" + prefix
    if not prefix.endswith("/"):
        prefix += "/"
    return prefix


# --- method detection, remembered per (origin, media prefix, listing prefix) -------

_methods: dict[tuple[str, str, str], str] = {}
_methods_lock = threading.Lock()


def forget_methods() -> None:
    """Forget every remembered detection (after reconfiguring a server, and in tests)."""
    with _methods_lock:
        _methods.clear()


def _key(transport: HostTransport, prefix: str) -> tuple[str, str, str]:
    return (transport.host.origin, transport.prefix, prefix)


def detect_method(
    transport: HostTransport, *, prefix: str | None = None, notes: list[str] | None = None
) -> str:
    """Find out how ``transport``'s host can be listed: PROPFIND, JSON autoindex or HEAD.

    Only a positive answer (207 Multi-Status, a JSON array) is remembered: a HEAD
    fallback is re-examined next time, in case the server's listing was being
    set up. Why a method was ruled out goes to ``notes``. Connection failures raise
    a ``TransportError``.
    """
    prefix = listing_prefix() if prefix is None else prefix
    key = _key(transport, prefix)
    with _methods_lock:
        known = _methods.get(key)
    if known is not None:
        return known
    reasons = []
    response = _propfind(transport, "")
    try:
        if response.status == 207:
            method = PROPFIND
        else:
            reasons.append(f"PROPFIND answered {response.status}")
            method = ""
    finally:
        response.close()
    if not method:
        response = _listing_get(transport, prefix)
        try:
            if response.status == 200 and _json_array(response) is not None:
                method = AUTOINDEX
            else:
                reasons.append(
                    f"GET {prefix} answered {response.status}"
                    + ("" if response.status != 200 else " without a JSON array")
                )
        finally:
            response.close()
    if not method:
        if notes is not None:
            notes.append(
                "No listing available ("
                + "; ".join(reasons)
                + "): one HEAD per expected file, extra files cannot be detected."
            )
        return HEAD
    with _methods_lock:
        _methods[key] = method
    return method


# --- requests -------------------------------------------------------------------------


def _propfind(transport: HostTransport, directory: str) -> Response:
    # PROPFIND is in WRITE_METHODS: HostTransport sends the credentials itself.
    return transport.request(
        "PROPFIND",
        directory,
        body=BytesBody(_PROPFIND_BODY),
        headers={"Depth": "1", "Content-Type": 'application/xml; charset="utf-8"'},
    )


def _listing_get(transport: HostTransport, path: str) -> Response:
    """GET a listing URL (outside the media prefix) with the storage's credentials.

    Media servers protect the listing like the write methods, so it is sent with
    ``authenticate=True``, on the transport's pooled connections.
    """
    return transport.send("GET", path, headers={"Accept": "application/json"}, authenticate=True)


def _json_array(response: Response) -> list[object] | None:
    try:
        # surrogateescape: a name that is not UTF-8 on disk must not fail the whole
        # directory; it is reported as undecodable instead.
        data = json.loads(response.read().decode("utf-8", "surrogateescape"))
    except ValueError:
        return None
    return data if isinstance(data, list) else None


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


# Control characters, and the lone surrogates that surrogateescape decoding leaves for
# bytes that are not UTF-8 (a str holding one cannot be encoded back to UTF-8).
_INVALID = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def _valid(name: str) -> bool:
    """Whether a listed name can be a storage name we could act on.

    One regular expression search: the character-by-character test it replaces was
    most of the CPU time of a 300,000-file listing.
    """
    return bool(name) and _INVALID.search(name) is None


# --- one directory -------------------------------------------------------------------


class _BadDirectory(Exception):
    """A directory answered something other than a listing; the walk goes on without it."""


#: ``{storage name: size}`` of the files one directory listing showed.
Sizes = dict[str, int | None]


class _Directory(NamedTuple):
    """One directory's listing. Sizes and modification times are kept apart so that
    an audit, which only compares sizes, never builds an Entry per file."""

    files: Sizes
    mtimes: dict[str, datetime | None] | None
    subdirs: list[str]
    bad: list[str]


def _empty() -> _Directory:
    return _Directory({}, None, [], [])


def _read_propfind(transport: HostTransport, directory: str, mtimes: bool) -> _Directory:
    """List one collection: files, subdirectories, undecodable hrefs."""
    response = _propfind(transport, directory)
    try:
        if response.status == 404:
            return _empty()  # removed while we walked
        if response.status != 207:
            raise _BadDirectory(f"PROPFIND answered {response.status}")
        body = response.read()
    finally:
        response.close()
    if b"<!DOCTYPE" in body[:1024].upper() or b"<!ENTITY" in body:
        # A multistatus never needs a DTD; entities are how XML bombs work.
        raise _BadDirectory("PROPFIND answer declares a DTD")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise _BadDirectory(f"PROPFIND answer is not XML: {exc}") from None
    files: Sizes = {}
    times: dict[str, datetime | None] | None = {} if mtimes else None
    subdirs: list[str] = []
    bad: list[str] = []
    prefix = transport.prefix
    for item in root.iter(f"{_DAV}response"):
        href = item.findtext(f"{_DAV}href", "").strip()
        try:
            path = unquote(urlsplit(href).path, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            bad.append(href)
            continue
        if not path.startswith(prefix):
            continue
        relative = path[len(prefix) :]
        is_dir = False
        size: int | None = None
        modified: str | None = None
        for propstat in item.iter(f"{_DAV}propstat"):
            status = propstat.findtext(f"{_DAV}status", "")
            if " 200 " not in f"{status} ":
                continue
            prop = propstat.find(f"{_DAV}prop")
            if prop is None:
                continue
            if prop.find(f"{_DAV}resourcetype/{_DAV}collection") is not None:
                is_dir = True
            length = prop.findtext(f"{_DAV}getcontentlength")
            if length is not None and length.strip().isdigit():
                size = int(length.strip())
            modified = prop.findtext(f"{_DAV}getlastmodified") or modified
        if is_dir:
            relative = relative if relative.endswith("/") or not relative else relative + "/"
            # Depth 1 lists the collection itself too; only strictly deeper ones recurse.
            if relative != directory and relative.startswith(directory):
                subdirs.append(relative)
            continue
        if not relative or relative.endswith("/") or not _valid(relative):
            if relative:
                bad.append(href)
            continue
        files[relative] = size
        if times is not None:
            times[relative] = _http_date(modified)
    return _Directory(files, times, subdirs, bad)


def _read_autoindex(
    transport: HostTransport, prefix: str, directory: str, mtimes: bool
) -> _Directory:
    """List one directory through nginx's JSON autoindex: files, subdirectories, bad names."""
    response = _listing_get(transport, prefix + directory)
    try:
        if response.status == 404:
            return _empty()
        if response.status != 200:
            raise _BadDirectory(f"GET {prefix}{directory} answered {response.status}")
        entries = _json_array(response)
    finally:
        response.close()
    if entries is None:
        raise _BadDirectory(f"GET {prefix}{directory} did not answer a JSON array")
    files: Sizes = {}
    times: dict[str, datetime | None] | None = {} if mtimes else None
    subdirs: list[str] = []
    bad: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name")
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            continue
        relative = directory + name
        # The directory was valid (it would not be walked otherwise): test the name only.
        if _INVALID.search(name) is not None:
            bad.append(relative.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
            continue
        kind = entry.get("type")
        if kind == "file":
            size = entry.get("size")
            files[relative] = size if isinstance(size, int) else None
            if times is not None:
                times[relative] = _http_date(entry.get("mtime"))
        elif kind == "directory":
            subdirs.append(relative + "/")
    return _Directory(files, times, subdirs, bad)


# --- whole trees ------------------------------------------------------------------------


#: Receives each listed directory's files in place of ``Listing.files`` (see list_host).
Sink = Callable[[str, Sizes], None]


def _walk(
    read: Callable[[str], _Directory],
    workers: int,
    listing: Listing,
    sink: Sink | None = None,
) -> list[str]:
    """Walk the tree, ``workers`` directories at a time.

    Returns the directories that could not be listed (their files are unknown).
    A connection failure aborts the walk: the host is unreachable.

    Answers come back through a queue, in the order they finish: waiting on the
    pending futures instead (``concurrent.futures.wait``) locks and scans every one
    of them per answer, quadratic in a tree of thousands of directories. Only twice
    ``workers`` directories are submitted at a time, the others wait as names: a
    future per directory of a 3,000-directory tree, submitted at once, held
    tens of megabytes across three hosts.
    """
    unlisted: list[str] = []
    finished: queue.SimpleQueue[concurrent.futures.Future[_Directory]] = queue.SimpleQueue()
    pending: dict[concurrent.futures.Future[_Directory], str] = {}
    waiting: deque[str] = deque([""])
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix="django_resto_list"
    ) as pool:

        def submit() -> None:
            while waiting and len(pending) < 2 * workers:
                directory = waiting.popleft()
                future = pool.submit(read, directory)
                pending[future] = directory
                future.add_done_callback(finished.put)

        submit()
        try:
            while pending:
                future = finished.get()
                directory = pending.pop(future)
                listing.requests += 1
                try:
                    result = future.result()
                except _BadDirectory as exc:
                    if not directory:
                        raise ListingError(listing.host, str(exc)) from None
                    unlisted.append(directory)
                    listing.notes.append(f"Could not list {directory}: {exc}")
                    submit()
                    continue
                # Queued before the files are handled, for the workers to fetch meanwhile.
                waiting.extend(result.subdirs)
                submit()
                for name in result.bad:
                    listing.notes.append(f"Ignored a name that is not valid UTF-8: {name!r}")
                if sink is not None:
                    sink(directory, result.files)
                elif result.mtimes is None:
                    listing.files.update({name: Entry(size) for name, size in result.files.items()})
                else:
                    times = result.mtimes
                    listing.files.update(
                        {name: Entry(size, times[name]) for name, size in result.files.items()}
                    )
        finally:
            for future in pending:
                future.cancel()
    return unlisted


def probe_names(
    transport: HostTransport,
    names: Iterable[str],
    listing: Listing,
    *,
    workers: int = DEFAULT_WORKERS,
    mtimes: bool = False,
) -> None:
    """HEAD each name, adding those found to ``listing.files``.

    A name answered with an unexpected status goes to ``listing.failed``; a
    connection failure stops the probing and raises ListingError.
    """
    names = list(names)
    if not names:
        return
    stop = threading.Event()

    def head(name: str) -> tuple[str, Entry | str | None]:
        if stop.is_set():
            return name, "cancelled"
        try:
            stat = transport.stat(name)
        except UnexpectedStatusCode as exc:
            return name, f"HEAD answered {exc.status}"
        except TransportError:
            stop.set()
            raise
        if stat is None:
            return name, None
        return name, Entry(stat.size, _http_date(stat.modified) if mtimes else None)

    with concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, min(workers, len(names))), thread_name_prefix="django_resto_head"
    ) as pool:
        futures = [pool.submit(head, name) for name in names]
        error: BaseException | None = None
        for future in futures:
            try:
                name, result = future.result()
            except TransportError as exc:
                error = error or exc
                continue
            listing.requests += 1
            if isinstance(result, Entry):
                listing.files[name] = result
            elif isinstance(result, str):
                listing.failed[name] = result
    if error is not None:
        raise ListingError(listing.host, describe(error)) from error


def _hidden(name: str) -> bool:
    """Whether a segment of ``name`` starts with a dot (a test on the whole string, not
    per segment: it runs once per expected name)."""
    return name.startswith(".") or "/." in name


def _under(name: str, directories: Collection[str]) -> bool:
    return any(name.startswith(directory) for directory in directories)


def list_host(
    transport: HostTransport,
    *,
    expected: Iterable[str] | None = None,
    method: str | None = None,
    prefix: str | None = None,
    workers: int = DEFAULT_WORKERS,
    mtimes: bool = False,
    sink: Sink | None = None,
) -> Listing:
    """List every file below the media prefix on ``transport``'s host.

    ``expected`` are the names the caller knows should exist: the HEAD fallback
    probes them, and so do the tree methods for names a tree listing cannot show
    (dot-files on nginx, directories that failed to list). ``method`` forces a
    method instead of detecting one. Raises ListingError when the host cannot be
    reached or its root cannot be listed.

    ``sink`` is handed each listed directory's ``{name: size}`` as it arrives, and
    the listing's ``files`` then only hold the names probed with HEAD: an audit
    compares directory by directory, instead of holding a whole tree per host
    (``mtimes`` do not reach a sink). ``expected`` is read again as needed when it is
    a collection, not copied.
    """
    prefix = listing_prefix() if prefix is None else prefix
    workers = max(1, min(workers, transport.pool_size))
    host = transport.host.name
    notes: list[str] = []
    try:
        if method is None:
            method = detect_method(transport, prefix=prefix, notes=notes)
        elif method not in METHODS:
            raise ValueError(f"Unknown listing method {method!r}; choose one of {METHODS}")
        listing = Listing(host=host, method=method, notes=notes)
        expected_names: Collection[str] = (
            expected if isinstance(expected, Collection) else list(expected or ())
        )
        if method == HEAD:
            listing.complete = False
            probe_names(transport, expected_names, listing, workers=workers, mtimes=mtimes)
            return listing
        if method == PROPFIND:

            def read(directory: str) -> _Directory:
                return _read_propfind(transport, directory, mtimes and sink is None)

        else:

            def read(directory: str) -> _Directory:
                return _read_autoindex(transport, prefix, directory, mtimes and sink is None)

        unlisted = _walk(read, workers, listing, sink)
    except TransportError as exc:
        raise ListingError(host, describe(exc)) from exc
    blind: list[str] = []
    if unlisted:
        listing.complete = False
        blind = [name for name in expected_names if _under(name, unlisted)]
    if method == AUTOINDEX:
        # nginx's autoindex never shows dot-files; only HEAD can see them.
        hidden = [name for name in expected_names if _hidden(name) and name not in listing.files]
        if hidden:
            listing.notes.append(
                f"{len(hidden)} name(s) with a dot-file segment checked with HEAD "
                "(nginx's autoindex hides them); extra dot-files cannot be detected."
            )
        already = set(blind)
        blind.extend(name for name in hidden if name not in already)
    if blind:
        probe_names(transport, blind, listing, workers=workers, mtimes=mtimes)
    return listing
