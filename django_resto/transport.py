"""HTTP to one media server: PUT, DELETE, MKCOL, HEAD, GET and PROPFIND.

Connections stay alive between operations, so a save costs one request per host
instead of a TCP (and TLS) handshake plus a request. Every request goes through one
:class:`django_resto.wire.ConnectionPool` per host, writes and reads alike: one pool,
one TLS set-up, one stale-connection retry, and writes can be started on every host
before any answer is awaited. The transport knows URLs and status codes; it knows
nothing of Django's Storage API, so it can be reused by the sync and repair commands.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from . import wire
from .exceptions import UnexpectedStatusCode
from .hosts import Host, parse_host
from .wire import (
    Body,
    BytesBody,
    ConnectTimeout,
    FileBody,
    ReadTimeout,
    Response,
    SSLError,
    Timeout,
    TransportError,
)

__all__ = [
    "Body",
    "BytesBody",
    "ConnectTimeout",
    "FileBody",
    "Host",
    "HostTransport",
    "PutResult",
    "ReadTimeout",
    "Response",
    "SSLError",
    "Stat",
    "Timeout",
    "TransportError",
    "UnexpectedStatusCode",
    "parse_host",
]

logger = logging.getLogger(__name__)

#: Methods that carry the storage's credentials: the writes, and PROPFIND, which
#: reveals every name.
WRITE_METHODS = frozenset({"PUT", "DELETE", "MKCOL", "PROPFIND"})
# What quote(path, safe="/") leaves as it is: most names, which then skip its cost.
_UNQUOTED = re.compile(r"[A-Za-z0-9_.~/-]*")


def _quote(path: str) -> str:
    return path if _UNQUOTED.fullmatch(path) else quote(path, safe="/")


@dataclass(frozen=True)
class PutResult:
    created: bool  # False: the server replaced an existing file (204)
    collections_created: int = 0


@dataclass(frozen=True)
class Stat:
    """What a HEAD says about a file, as the server put it."""

    size: int | None  # Content-Length
    modified: str | None  # the Last-Modified header, an HTTP date
    etag: str | None


class HostTransport:
    """All HTTP traffic to one media server.

    Thread-safe: each request takes a connection of the pool for its own length.
    """

    def __init__(
        self,
        host: Host,
        prefix: str,
        *,
        timeout: float,
        connect_timeout: float | None = None,
        verify: bool | str = True,
        auth: tuple[str, str] | None = None,
        token: str | None = None,
        token_header: str = "Authorization",
        pool_size: int = 10,
        min_transfer_rate: float = 256 * 1024,
    ) -> None:
        self.host = host
        self.prefix = prefix
        self.timeout = (connect_timeout or timeout, timeout)
        # A request's deadline is the timeout plus its body at this rate (wire.py).
        self.min_transfer_rate = min_transfer_rate
        self.verify = verify
        self._auth = auth
        self.pool_size = pool_size
        self._pool: wire.ConnectionPool | None = None
        self._lock = threading.Lock()
        self._auth_headers: dict[str, str] = {}
        if token is not None:
            value = f"Bearer {token}" if token_header.lower() == "authorization" else token
            self._auth_headers[token_header] = value
        if auth is not None:
            self._auth_headers["Authorization"] = wire.basic_credentials(*auth)

    def __repr__(self) -> str:
        return f"<HostTransport {self.host.name}>"

    # Pools hold sockets and locks: they are rebuilt after unpickling.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def pool(self) -> wire.ConnectionPool:
        """The kept-alive connections that carry every request to this host."""
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = wire.ConnectionPool(
                        self.host,
                        connect_timeout=self.timeout[0],
                        read_timeout=self.timeout[1],
                        verify=self.verify,
                        # The pool size is how many requests this transport runs at
                        # once; the threads of the process calling it may be more.
                        max_idle=max(self.pool_size, wire.MAX_IDLE),
                        min_transfer_rate=self.min_transfer_rate,
                    )
        return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def url(self, name: str) -> str:
        """The URL of a storage name."""
        return self._absolute_url(self.prefix + name)

    def _absolute_url(self, path: str) -> str:
        return self.host.origin + _quote(path)

    # --- any request -----------------------------------------------------------------

    def request(
        self,
        method: str,
        name: str,
        *,
        body: Body | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Send one request about a storage name (a path below the media prefix)."""
        return self.send(method, self.prefix + name, body=body, headers=headers)

    def send(
        self,
        method: str,
        path: str,
        *,
        body: Body | None = None,
        headers: dict[str, str] | None = None,
        authenticate: bool | None = None,
    ) -> Response:
        """Send one request to an absolute URL path and return the answer, body unread.

        Credentials go with the authenticated methods, and with any request when
        ``authenticate`` is True (the sync command's JSON listing is a GET that media
        servers protect). Read the body, or close the response: the connection goes
        back to the pool only once the body has been read to its end.
        """
        fields = dict(headers or {})
        if authenticate or (authenticate is None and method in WRITE_METHODS):
            fields.update(self._auth_headers)
        response = self.pool.start(method, _quote(path), headers=fields, body=body).response()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s -> %s", method, self._absolute_url(path), response.status)
        return response

    def _unexpected(self, method: str, path: str, status: int, reason: str) -> Exception:
        return UnexpectedStatusCode(
            self.host.name, method, self._absolute_url(path), status, reason
        )

    # --- reads -----------------------------------------------------------------------

    def stat(self, name: str) -> Stat | None:
        """HEAD ``name``: its size, modification time and ETag; None if it is not there."""
        response = self.request("HEAD", name)
        response.close()
        if response.status == 200:
            return Stat(
                size=response.size,
                modified=response.headers.get("Last-Modified"),
                etag=response.headers.get("ETag"),
            )
        if response.status == 404:
            return None
        raise self._unexpected("HEAD", self.prefix + name, response.status, response.reason)

    def exists(self, name: str) -> bool:
        """HEAD ``name``, reading its status only: a save asks this before every write.

        The answer's fields are not parsed (:meth:`stat` parses them), which made most
        of the cost of the question.
        """
        path = self.prefix + name
        answer = self.pool.start("HEAD", _quote(path), headers={}).answer()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("HEAD %s -> %s", self._absolute_url(path), answer.status)
        if answer.status == 200:
            return True
        if answer.status == 404:
            return False
        raise self._unexpected("HEAD", path, answer.status, answer.reason)

    def open(self, name: str, *, headers: dict[str, str] | None = None) -> Response:
        """GET ``name`` as a stream (``read``, ``size``); the caller reads and closes it.

        Raises FileNotFoundError if the server does not have it.
        """
        response = self.request("GET", name, headers=headers)
        if response.status == 200:
            return response
        response.close()
        if response.status == 404:
            raise FileNotFoundError(f"{name} does not exist on {self.host.name}")
        raise self._unexpected("GET", self.prefix + name, response.status, response.reason)

    # --- writes ----------------------------------------------------------------------

    def write(self, method: str, path: str, body: Body | None = None) -> wire.Answer:
        """Send one write request to an absolute URL path and wait for its answer."""
        return self.start_write(method, path, body).answer()

    def start_write(self, method: str, path: str, body: Body | None = None) -> wire.Pending:
        """Put a write request on the wire; its answer is read by ``answer()``."""
        pending = self.pool.start(method, _quote(path), headers=self._auth_headers, body=body)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s sent", method, self._absolute_url(path))
        return pending

    def _unexpected_answer(self, method: str, path: str, answer: wire.Answer) -> Exception:
        return self._unexpected(method, path, answer.status, answer.reason)

    def put(self, name: str, body: Body) -> PutResult:
        """Store ``body`` as ``name``; create parent collections when the server asks for it.

        A strict WebDAV server (lighttpd, Apache) answers 409 when a parent collection
        is missing. Only then do we spend MKCOL requests, so a server with
        ``create_full_put_path`` (nginx) pays nothing for nested names.
        """
        return self.start_put(name, body)()

    def start_put(self, name: str, body: Body) -> Callable[[], PutResult]:
        """Send the PUT of ``name`` now; the returned callable waits for the outcome."""
        path = self.prefix + name
        pending = self.start_write("PUT", path, body)
        return lambda: self._finish_put(path, body, pending)

    def _finish_put(self, path: str, body: Body, pending: wire.Pending) -> PutResult:
        answer = pending.answer()
        created = 0
        # lighttpd 1.4 answers an empty PUT into a missing collection with 500, not
        # 409 (it fails creating the file before it looks at the parent); the retry
        # after MKCOL is harmless where the 500 had another cause.
        missing_parent = answer.status == 409 or (answer.status == 500 and body.size == 0)
        if missing_parent and path.strip("/").count("/"):
            created = self.make_parents(path)
            answer = self.write("PUT", path, body)
        if answer.status == 201:
            return PutResult(created=True, collections_created=created)
        if answer.status == 204:
            return PutResult(created=False, collections_created=created)
        raise self._unexpected_answer("PUT", path, answer)

    def make_parents(self, path: str) -> int:
        """Create the collections above ``path``; return how many were new.

        Usually only the innermost one is missing (a new month under ``uploads/``), so
        it is tried first and the walk goes up only on 409, then creates the missing
        ones parents first. 405 means the collection exists (RFC 4918). The media
        prefix itself is included: a fresh lighttpd root may not have ``/media/`` yet.
        """
        segments = path.strip("/").split("/")[:-1]
        collections = [
            "/" + "/".join(segments[:depth]) + "/" for depth in range(1, len(segments) + 1)
        ]
        created = 0
        index = len(collections) - 1
        while index >= 0:
            answer = self.write("MKCOL", collections[index])
            if answer.status == 201:
                created += 1
                break
            if answer.status == 405:
                break
            if answer.status != 409:
                raise self._unexpected_answer("MKCOL", collections[index], answer)
            index -= 1
        for collection in collections[index + 1 :]:
            answer = self.write("MKCOL", collection)
            if answer.status == 201:
                created += 1
            elif answer.status != 405:
                raise self._unexpected_answer("MKCOL", collection, answer)
        return created

    def delete(self, name: str) -> bool:
        """Delete ``name``; return False if the server did not have it (404)."""
        return self.start_delete(name)()

    def start_delete(self, name: str) -> Callable[[], bool]:
        """Send the DELETE of ``name`` now; the returned callable waits for the outcome."""
        path = self.prefix + name
        pending = self.start_write("DELETE", path)

        def finish() -> bool:
            answer = pending.answer()
            if answer.status in (200, 204):
                return True
            if answer.status == 404:
                return False
            raise self._unexpected_answer("DELETE", path, answer)

        return finish
