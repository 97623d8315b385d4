"""HTTP to one media server: PUT, DELETE, HEAD, GET, MKCOL and PROPFIND.

Connections stay alive between operations, so a save costs one request per host
instead of a TCP (and TLS) handshake plus a request. Writes (PUT, DELETE, MKCOL) go
through :mod:`django_resto.wire`, which is several times cheaper per request and can
be started on every host before any answer is awaited; reads, streamed downloads and
listings use one ``requests.Session`` per host. The transport knows URLs and status
codes; it knows nothing of Django's Storage API, so it can be reused by the sync and
repair commands.
"""

from __future__ import annotations

import http.client
import io
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from . import wire
from .exceptions import UnexpectedStatusCode
from .settings import Host

logger = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"PUT", "DELETE", "MKCOL", "PROPFIND"})


class Body:
    """Something that can be sent to several hosts at once, each reading its own copy.

    A body is opened once per request (and again when a PUT is retried after
    creating parent collections), so it never needs to be held in memory.
    """

    size: int

    def open(self) -> IO[bytes]:  # pragma: no cover - interface
        raise NotImplementedError

    def inline(self) -> bytes:
        """The whole body as bytes, read once and shared by every host (small bodies only)."""
        data = self.__dict__.get("_inline")
        if data is None:
            handle = self.open()
            try:
                data = wire.read_exactly(handle, self.size)
            finally:
                handle.close()
            self._inline = data
        return data


class FileBody(Body):
    """A file on disk: every host gets its own file descriptor and offset."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.size = os.path.getsize(self.path)

    def open(self) -> IO[bytes]:
        return open(self.path, "rb")

    def __repr__(self) -> str:
        return f"FileBody({self.path!r})"


class BytesBody(Body):
    """Bytes already in memory (small uploads): shared read-only, never copied."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = memoryview(data).toreadonly()
        self.size = self.data.nbytes

    def open(self) -> IO[bytes]:
        return io.BytesIO(self.data)

    def inline(self) -> bytes:
        return self.data.tobytes()

    def __repr__(self) -> str:
        return f"BytesBody(<{self.size} bytes>)"


@dataclass(frozen=True)
class PutResult:
    created: bool  # False: the server replaced an existing file (204)
    collections_created: int = 0


def _stale_connection(exc: requests.ConnectionError) -> bool:
    """True when a kept-alive connection was closed under us, before any answer.

    That happens when a server's keep-alive timeout races our next request. PUT and
    DELETE are idempotent, so one retry on a fresh connection is safe; a refused or
    timed-out connection is a real failure and is not retried.
    """
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(
            error, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError
        ):
            return True
        nested = error.args[-1] if error.args else None
        if isinstance(nested, BaseException) and id(nested) not in seen:
            error = nested
            continue
        error = error.__cause__ or error.__context__
    return False


class HostTransport:
    """All HTTP traffic to one media server.

    Thread-safe: a requests Session with an HTTPAdapter pool serves concurrent
    requests, each on its own pooled connection.
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
        # A write's deadline is the timeout plus its body at this rate (wire.py); reads
        # through requests keep the per-read timeout.
        self.min_transfer_rate = min_transfer_rate
        self.verify = verify
        self._auth = auth
        self._auth_headers: dict[str, str] = {}
        if token is not None:
            value = f"Bearer {token}" if token_header.lower() == "authorization" else token
            self._auth_headers[token_header] = value
        self.pool_size = pool_size
        self._session: requests.Session | None = None
        self._pool: wire.ConnectionPool | None = None
        self._lock = threading.Lock()
        self._write_headers = dict(self._auth_headers)
        if auth is not None:
            self._write_headers["Authorization"] = wire.basic_credentials(*auth)

    def __repr__(self) -> str:
        return f"<HostTransport {self.host.name}>"

    # Sessions hold sockets and locks: they are rebuilt after unpickling.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        state["_pool"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    session = requests.Session()
                    adapter = HTTPAdapter(
                        pool_connections=1, pool_maxsize=self.pool_size, max_retries=0
                    )
                    session.mount("http://", adapter)
                    session.mount("https://", adapter)
                    session.verify = self.verify
                    # Media servers are never behind the user's HTTP proxy settings.
                    session.trust_env = False
                    self._session = session
        return self._session

    @property
    def pool(self) -> wire.ConnectionPool:
        """The kept-alive connections that carry this host's writes."""
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = wire.ConnectionPool(
                        self.host,
                        connect_timeout=self.timeout[0],
                        read_timeout=self.timeout[1],
                        verify=self.verify,
                        max_idle=self.pool_size,
                        min_transfer_rate=self.min_transfer_rate,
                    )
        return self._pool

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def url(self, name: str) -> str:
        """The URL of a storage name."""
        return self._absolute_url(self.prefix + name)

    def _absolute_url(self, path: str) -> str:
        return self.host.origin + quote(path, safe="/")

    def request(
        self,
        method: str,
        name: str,
        *,
        body: Body | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """Send one request about a storage name (a path below the media prefix)."""
        return self.send(method, self.prefix + name, body=body, headers=headers, stream=stream)

    def send(
        self,
        method: str,
        path: str,
        *,
        body: Body | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        authenticate: bool | None = None,
    ) -> requests.Response:
        """Send one request to an absolute URL path, retrying once on a stale connection.

        Credentials go with write methods, and with any request when ``authenticate``
        is True (the sync command's JSON listing is a GET that media servers protect).
        """
        url = self._absolute_url(path)
        all_headers = dict(headers or {})
        auth = None
        if authenticate or (authenticate is None and method in WRITE_METHODS):
            auth = self._auth
            all_headers.update(self._auth_headers)
        for attempt in (1, 2):
            data: Any = None
            handle: IO[bytes] | None = None
            if body is not None:
                if body.size == 0:
                    # requests turns an empty stream into a chunked body; nginx's DAV
                    # module then sees no Content-Length. Send real empty bytes.
                    data = b""
                else:
                    handle = data = body.open()
            try:
                response = self.session.request(
                    method,
                    url,
                    data=data,
                    headers=all_headers,
                    auth=auth,
                    timeout=self.timeout,
                    allow_redirects=False,
                    stream=stream,
                )
            except requests.ConnectionError as exc:
                if attempt == 1 and _stale_connection(exc):
                    logger.debug("Retrying %s %s after a stale connection", method, url)
                    continue
                raise
            finally:
                if handle is not None:
                    handle.close()
            logger.debug("%s %s -> %s", method, url, response.status_code)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _unexpected(self, method: str, path: str, response: requests.Response) -> Exception:
        response.close()
        return UnexpectedStatusCode(
            self.host.name,
            method,
            self._absolute_url(path),
            response.status_code,
            response.reason or "",
        )

    def write(self, method: str, path: str, body: Body | None = None) -> wire.Answer:
        """Send one write request to an absolute URL path and wait for its answer."""
        return self.start_write(method, path, body).answer()

    def start_write(self, method: str, path: str, body: Body | None = None) -> wire.Pending:
        """Put a write request on the wire; its answer is read by ``answer()``."""
        pending = self.pool.start(
            method, quote(path, safe="/"), headers=self._write_headers, body=body
        )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s sent", method, self._absolute_url(path))
        return pending

    def _unexpected_answer(self, method: str, path: str, answer: wire.Answer) -> Exception:
        return UnexpectedStatusCode(
            self.host.name, method, self._absolute_url(path), answer.status, answer.reason
        )

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

    def head(self, name: str) -> requests.Response | None:
        """HEAD ``name``: the response on 200, None on 404."""
        response = self.request("HEAD", name)
        response.close()
        if response.status_code == 200:
            return response
        if response.status_code == 404:
            return None
        raise self._unexpected("HEAD", self.prefix + name, response)

    def get(self, name: str) -> requests.Response:
        """GET ``name`` as a stream; the caller reads and closes it."""
        response = self.request("GET", name, stream=True)
        if response.status_code == 200:
            return response
        if response.status_code == 404:
            response.close()
            raise FileNotFoundError(f"{name} does not exist on {self.host.name}")
        raise self._unexpected("GET", self.prefix + name, response)
