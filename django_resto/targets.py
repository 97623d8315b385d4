"""Where replicas live: targets, behind one small interface.

The replicator, the operations (operations.py), repairs and audits reach a replica
only through :class:`Target`: put, delete, stat, open, list, and :class:`Features`,
what the kind of target can do. The first kind is a WebDAV media server over HTTP
(:class:`DavTarget`, one pooled transport per host); the second is any Django storage
named by a ``storage:ALIAS`` host, an S3 bucket through django-storages for one
(targets_storage.py), with the same methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Protocol

from .listing import DEFAULT_WORKERS, Listing, list_host
from .transport import Body, HostTransport, PutResult, Stat

__all__ = ["DavTarget", "Features", "Stream", "Target"]


@dataclass(frozen=True)
class Features:
    """What a kind of target can do, for the audit and the repair to choose their way."""

    #: It can enumerate its files (PROPFIND, a JSON listing or an autoindex).
    listing: bool
    #: It reports a content hash without a download (an S3 ETag, for most objects).
    checksums: bool
    #: Parent collections must exist before a PUT (WebDAV's MKCOL); a bucket has none.
    collections: bool


class Stream(Protocol):
    """A file read from a target as its reader goes: never held whole in memory."""

    #: Its length in bytes, when the target said (None: unknown).
    size: int | None

    def read(self, size: int = ..., /) -> bytes: ...

    def close(self) -> None: ...


class Target(Protocol):
    """One replica's store, as the replication core uses it."""

    features: ClassVar[Features]

    @property
    def label(self) -> str:
        """The name used in logs, errors and the journal (the ``hosts`` entry)."""
        ...

    def start_put(self, name: str, body: Body) -> Callable[[], PutResult]: ...

    def start_delete(self, name: str) -> Callable[[], bool]: ...

    def put(self, name: str, body: Body) -> PutResult: ...

    def delete(self, name: str) -> bool: ...

    def stat(self, name: str) -> Stat | None:
        """Size, modification time (an HTTP date) and ETag of ``name``; None if it is not there."""
        ...

    def exists(self, name: str) -> bool:
        """Whether the target has ``name``: what a save asks first, so as cheap as it gets."""
        ...

    def open(self, name: str, *, headers: dict[str, str] | None = None) -> Stream:
        """``name`` as a stream; FileNotFoundError if the target does not have it.

        ``headers`` are HTTP request fields for the targets that speak HTTP (an audit
        asks for ``Accept-Encoding: identity``); other kinds read the bytes as stored.
        """
        ...

    def list(
        self,
        *,
        expected: Iterable[str] | None = None,
        workers: int = ...,
        mtimes: bool = False,
    ) -> Listing: ...

    def close(self) -> None: ...


class DavTarget(HostTransport):
    """A WebDAV media server (nginx, lighttpd): its transport, and its listing."""

    features: ClassVar[Features] = Features(listing=True, checksums=False, collections=True)

    @property
    def label(self) -> str:
        return self.host.name

    def list(
        self,
        *,
        expected: Iterable[str] | None = None,
        workers: int = DEFAULT_WORKERS,
        mtimes: bool = False,
        method: str | None = None,
        prefix: str | None = None,
    ) -> Listing:
        """Every file below the media prefix (see listing.list_host)."""
        return list_host(
            self, expected=expected, method=method, prefix=prefix, workers=workers, mtimes=mtimes
        )
