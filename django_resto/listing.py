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
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
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


@dataclass(frozen=True)
class Entry:
    """One file on a host: its size, and its modification time when asked for."""

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


def _valid(name: str) -> bool:
    """Whether a listed name can be a storage name we could act on."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return bool(name) and not any(ord(c) < 32 or ord(c) == 127 for c in name)


# --- one directory -------------------------------------------------------------------


class _BadDirectory(Exception):
    """A directory answered something other than a listing; the walk goes on without it."""


def _read_propfind(
    transport: HostTransport, directory: str, mtimes: bool
) -> tuple[dict[str, Entry], list[str], list[str]]:
    """List one collection: (files, subdirectories, undecodable hrefs)."""
    response = _propfind(transport, directory)
    try:
        if response.status == 404:
            return {}, [], []  # removed while we walked
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
    files: dict[str, Entry] = {}
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
        files[relative] = Entry(size, _http_date(modified) if mtimes else None)
    return files, subdirs, bad


def _read_autoindex(
    transport: HostTransport, prefix: str, directory: str, mtimes: bool
) -> tuple[dict[str, Entry], list[str], list[str]]:
    """List one directory through nginx's JSON autoindex: (files, subdirectories, bad names)."""
    response = _listing_get(transport, prefix + directory)
    try:
        if response.status == 404:
            return {}, [], []
        if response.status != 200:
            raise _BadDirectory(f"GET {prefix}{directory} answered {response.status}")
        entries = _json_array(response)
    finally:
        response.close()
    if entries is None:
        raise _BadDirectory(f"GET {prefix}{directory} did not answer a JSON array")
    files: dict[str, Entry] = {}
    subdirs: list[str] = []
    bad: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name")
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            continue
        relative = directory + name
        if not _valid(relative):
            bad.append(relative.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
            continue
        kind = entry.get("type")
        if kind == "directory":
            subdirs.append(relative + "/")
        elif kind == "file":
            size = entry.get("size")
            files[relative] = Entry(
                size if isinstance(size, int) else None,
                _http_date(entry.get("mtime")) if mtimes else None,
            )
    return files, subdirs, bad


# --- whole trees ------------------------------------------------------------------------


def _walk(
    transport: HostTransport,
    read: Callable[[str], tuple[dict[str, Entry], list[str], list[str]]],
    workers: int,
    listing: Listing,
) -> list[str]:
    """Walk the tree breadth-first, ``workers`` directories at a time.

    Returns the directories that could not be listed (their files are unknown).
    A connection failure aborts the walk: the host is unreachable.
    """
    unlisted: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix="django_resto_list"
    ) as pool:
        pending = {pool.submit(read, ""): ""}
        try:
            while pending:
                done, _ = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    directory = pending.pop(future)
                    listing.requests += 1
                    try:
                        files, subdirs, bad = future.result()
                    except _BadDirectory as exc:
                        if not directory:
                            raise ListingError(listing.host, str(exc)) from None
                        unlisted.append(directory)
                        listing.notes.append(f"Could not list {directory}: {exc}")
                        continue
                    listing.files.update(files)
                    for name in bad:
                        listing.notes.append(f"Ignored a name that is not valid UTF-8: {name!r}")
                    for subdir in subdirs:
                        pending[pool.submit(read, subdir)] = subdir
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
    return any(part.startswith(".") for part in name.split("/"))


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
) -> Listing:
    """List every file below the media prefix on ``transport``'s host.

    ``expected`` are the names the caller knows should exist: the HEAD fallback
    probes them, and so do the tree methods for names a tree listing cannot show
    (dot-files on nginx, directories that failed to list). ``method`` forces a
    method instead of detecting one. Raises ListingError when the host cannot be
    reached or its root cannot be listed.
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
        expected_names = list(expected or ())
        if method == HEAD:
            listing.complete = False
            probe_names(transport, expected_names, listing, workers=workers, mtimes=mtimes)
            return listing
        if method == PROPFIND:

            def read(directory: str) -> tuple[dict[str, Entry], list[str], list[str]]:
                return _read_propfind(transport, directory, mtimes)

        else:

            def read(directory: str) -> tuple[dict[str, Entry], list[str], list[str]]:
                return _read_autoindex(transport, prefix, directory, mtimes)

        unlisted = _walk(transport, read, workers, listing)
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
        blind.extend(name for name in hidden if name not in blind)
    if blind:
        probe_names(transport, blind, listing, workers=workers, mtimes=mtimes)
    return listing
