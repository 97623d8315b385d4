"""An in-process HTTP media server for tests: ``TestHttpServer``.

This module is a **stable public API**. django_resto's own test suite uses it, and so can
projects that use django_resto: it lets a test upload through a real socket, to a server
that behaves like the media servers the library talks to in production, and then look at
the files that arrived, without installing nginx or lighttpd.

It is deliberately pure standard library (no Django, no requests) so it can be imported
anywhere, including from a test process that has not configured Django.

What it imitates:

* **permissive mode** (default) behaves like nginx with ``dav_methods PUT DELETE;
  create_full_put_path on;``: PUT creates missing parent directories, MKCOL and PROPFIND
  answer 405, and a JSON directory listing in the format of nginx's ``autoindex_format
  json`` is served under ``listing_prefix``;
* **strict mode** (``strict=True``) behaves like lighttpd's mod_webdav: PUT into a missing
  parent collection answers 409 Conflict, MKCOL creates collections and PROPFIND (Depth 0
  or 1) answers 207 Multi-Status; there is no JSON listing.

Answers by method (name = URL path below ``base_path``; "dir URL" = ends with ``/``):

=========  ======================================  ====================================
method     permissive (nginx)                      strict (lighttpd)
=========  ======================================  ====================================
GET/HEAD   200 file, 404 missing, 301 directory     same
           without ``/``, 403 directory with ``/``
PUT        201 new, 204 overwrite, parents          201, 204; 409 parent missing; 405
           created; 409 onto a directory or a dir   onto a directory; 400 dir URL
           URL; 411 without Content-Length or
           chunked body
DELETE     204 file; 204 directory (recursive)      204 file or directory (recursive);
           only with a dir URL, else 409; 404       404 missing
           missing
MKCOL      405                                      201; 405 exists; 409 parent missing
PROPFIND   405                                      207 for Depth 0/1, 403 otherwise
                                                    (as lighttpd), 404 missing
=========  ======================================  ====================================

In both modes: a path that does not decode as UTF-8 or has a ``.``/``..`` segment answers
400; a path outside ``base_path`` (and outside the listing) answers 404; DELETE of the media
root itself answers 403 (real servers delete the whole root, which no test wants); other
methods (POST, OPTIONS, ...) answer 405. Every response carries ``Content-Length`` except
204 responses, which by RFC 9110 have no body and must not carry it (nginx omits it too);
connections are kept alive unless the request body could not be framed.

PUT streams the body (by ``Content-Length`` or chunked ``Transfer-Encoding``) into a hidden
temporary file (``.~resto-put-*``) at the top of the root, which is on the same filesystem
as the target, then (creating the parents in permissive mode) ``os.replace`` s it onto the
target: a concurrent reader sees the old file or the new one, never half of one.
``files()``, ``names()``, the listing and PROPFIND leave those temporary files out.

Fault injection is thread-safe and takes effect for the next request that arrives; the
order in which a request meets the faults is: dropped connection (before the body is
read), queued ``fail_next``/``drop_next`` rules, persistent ``force_status``, then the normal
checks (400, 404, 401, 403 for ``read_only``, 405). Every response (normal or forced) is
delayed by ``delay`` and blocked by ``hang`` after the request body has been read and
before anything is changed on disk: while it waits, a client that gave up has changed
nothing; when the wait ends the server carries the request out, like a slow real server
(``stop()`` ends the wait without carrying it out). The response to a HEAD never has a
body, whatever its status.

Requests are logged in ``requests`` (``RequestRecord``) before the answer is sent.
The class sets ``__test__ = False`` so pytest does not try to collect it.

Example::

    from django_resto.http_server import TestHttpServer

    with TestHttpServer(base_path="/media/") as server:
        # settings: STORAGES["default"]["OPTIONS"]["hosts"] = [server.host]
        requests.put(server.url + "/media/a/b.txt", data=b"hello", timeout=5)
        assert server.read("a/b.txt") == b"hello"
        assert server.requests[-1].status == 201

        server.fail_next(503, methods="PUT")  # the next PUT answers 503
        server.hang()  # every request now blocks until release() or stop()
        server.release()
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import hmac
import json
import logging
import mimetypes
import os
import shutil
import socket
import socketserver
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote, unquote, urlsplit
from xml.sax.saxutils import escape as xml_escape

__all__ = ["RequestRecord", "TestHttpServer"]

logger = logging.getLogger(__name__)

#: Prefix of the temporary files PUT writes before renaming them onto their target.
TEMP_PREFIX = ".~resto-put-"

# Methods that change files; ``read_only`` answers 403 to them.
_WRITE_METHODS = frozenset({"PUT", "DELETE", "MKCOL"})
# Methods a media URL may be fetched with without credentials.
_READ_METHODS = frozenset({"GET", "HEAD"})
_CHUNK = 64 * 1024
# Characters left as they are in hrefs of PROPFIND answers (RFC 3986 pchar plus "/").
_HREF_SAFE = "/!$&'()*+,;=:@-._~"

MethodsArg = str | Iterable[str] | None


@dataclass(frozen=True)
class RequestRecord:
    """One request the server received, as stored in ``TestHttpServer.requests``.

    ``path`` is the percent-decoded URL path (the raw one when it does not decode),
    without the query string; ``headers`` keeps the header names as the client sent them;
    ``body_length`` counts the request body bytes the server read; ``status`` is the
    status answered, or ``None`` when the connection was closed without an answer
    (``drop_connections``, client gone, server stopped during ``hang``); ``connection``
    numbers the TCP connections of the server from 1, so a test can see keep-alive reuse.
    An answered request is logged before its status line is sent: once a client has the
    answer, the record is in ``requests``.
    """

    method: str
    path: str
    headers: dict[str, str]
    body_length: int
    status: int | None
    query: str = ""
    connection: int = 0


@dataclass
class _FailRule:
    status: int | None  # None: drop the connection
    remaining: int
    methods: frozenset[str] | None


class _Abort(Exception):
    """Close the connection without answering."""


class _BadBody(Exception):
    """The request body cannot be framed: answer 400 and close."""


def _methods(methods: MethodsArg) -> frozenset[str] | None:
    if methods is None:
        return None
    if isinstance(methods, str):
        return frozenset({methods.upper()})
    return frozenset(method.upper() for method in methods)


def _matches(methods: frozenset[str] | None, method: str) -> bool:
    return methods is None or method in methods


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def _relative_parts(name: str) -> list[str]:
    """Split a relative name, refusing anything that could leave the root."""
    parts = [part for part in name.split("/") if part]
    if name.startswith("/") or any(part in (".", "..") for part in parts) or "\0" in name:
        raise ValueError(f"{name!r} is not a relative name inside the server root")
    return parts


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # restart() binds the same port again at once
    request_queue_size = 128  # tests fan out many parallel connections

    def __init__(self, address: tuple[str, int], owner: TestHttpServer) -> None:
        self.owner = owner
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) we don't need.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the library's pooled sessions expect
    server_version = "django-resto-test-server"
    sys_version = ""
    timeout = 60  # an idle keep-alive connection does not hold a thread forever
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
    # and the client's delayed ACK would add ~40 ms to every small response.
    disable_nagle_algorithm = True
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    # -- connection plumbing -------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self._connection_number = self.server.owner._register(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._unregister(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def handle_one_request(self) -> None:
        # Same as BaseHTTPRequestHandler's, but every method goes through _dispatch, so
        # unknown methods answer 405 instead of 501, and socket errors end the connection
        # quietly instead of printing a traceback.
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self._dispatch()
            self.wfile.flush()
        except (OSError, _Abort):
            self.close_connection = True

    # -- request processing --------------------------------------------------------------

    def _dispatch(self) -> None:
        self._body_length = 0
        self._body_done = False
        self._paused = False
        self._status: int | None = None
        self._logged = False
        self._record_path, _, self._query = self.path.partition("?")
        self._target = self._decode_target()
        if self._target is not None:
            self._record_path = self._target
        try:
            self._handle()
        except _BadBody:
            self.close_connection = True
            if self._status is None:
                self._body_done = True
                self._send(HTTPStatus.BAD_REQUEST)
        except (_Abort, ConnectionError, TimeoutError):
            # Dropped on purpose, client gone, or server stopping: no answer.
            self.close_connection = True
        except Exception:  # a bug or a filesystem error: answer 500 and say why in the log
            logger.exception("TestHttpServer failed on %s %s", self.command, self.path)
            self.close_connection = True
            if self._status is None:
                with contextlib.suppress(Exception):
                    self._body_done = self._paused = True
                    self._send(HTTPStatus.INTERNAL_SERVER_ERROR)
        finally:
            if not self._logged:  # closed without an answer
                self._log()

    def _log(self) -> None:
        self._logged = True
        self.server.owner._log_request(
            RequestRecord(
                method=self.command,
                path=self._record_path,
                headers=dict(self.headers.items()),
                body_length=self._body_length,
                status=self._status,
                query=self._query,
                connection=self._connection_number,
            )
        )

    def _handle(self) -> None:
        owner = self.server.owner
        method = self.command
        fault = owner._take_fault(method)
        if fault == "drop":
            raise _Abort
        if isinstance(fault, int):
            self._send(fault)
            return

        target = self._target
        if target is None:
            self._send(HTTPStatus.BAD_REQUEST)
            return
        route = owner._route(target)
        if route is None:
            self._send(HTTPStatus.NOT_FOUND)
            return
        kind, name = route
        credentials = owner._credentials
        needs_auth = kind == "listing" or method not in _READ_METHODS
        if credentials is not None and needs_auth and not self._authorized(credentials):
            self._send(
                HTTPStatus.UNAUTHORIZED,
                headers=[("WWW-Authenticate", 'Basic realm="django_resto"')],
            )
            return
        if owner.read_only and method in _WRITE_METHODS:
            self._send(HTTPStatus.FORBIDDEN)
            return

        try:
            parts = _relative_parts(name)
        except ValueError:
            self._send(HTTPStatus.BAD_REQUEST)
            return
        path = owner._root_path().joinpath(*parts)
        dir_url = name == "" or name.endswith("/")
        if not owner._inside_root(path):
            self._send(HTTPStatus.FORBIDDEN)
            return

        if kind == "listing":
            if method not in _READ_METHODS:
                self._send_405(("GET", "HEAD"))
            else:
                self._do_listing(path, dir_url)
            return
        handler = {
            "GET": self._do_get,
            "HEAD": self._do_get,
            "PUT": self._do_put,
            "DELETE": self._do_delete,
        }.get(method)
        if owner.strict:
            handler = handler or {"MKCOL": self._do_mkcol, "PROPFIND": self._do_propfind}.get(
                method
            )
        if handler is None:
            self._send_405()
            return
        handler(name, path, dir_url)

    def _decode_target(self) -> str | None:
        raw = self.path
        if "://" in raw.partition("?")[0]:  # absolute-form request target
            raw = urlsplit(raw).path or "/"
        raw = raw.partition("?")[0].partition("#")[0]
        try:
            decoded = unquote(raw, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            return None
        if not decoded.startswith("/") or "\0" in decoded:
            return None
        if any(segment in (".", "..") for segment in decoded.split("/")):
            return None
        return decoded

    def _authorized(self, credentials: tuple[str, str]) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        expected_user, expected_password = (c.encode() for c in credentials)
        # Both comparisons always run: no early exit that would time the user name.
        user_ok = hmac.compare_digest(user, expected_user)
        password_ok = hmac.compare_digest(password, expected_password)
        return bool(sep) and user_ok and password_ok

    # -- methods -------------------------------------------------------------------------

    def _do_get(self, name: str, path: Path, dir_url: bool) -> None:
        if path.is_dir():
            if dir_url:
                self._send(HTTPStatus.FORBIDDEN)  # nginx: directory index is forbidden
            else:
                self._send_redirect()
            return
        if dir_url:
            self._send(HTTPStatus.NOT_FOUND)  # "file.txt/" is not the file
            return
        self._send_file(path)

    def _do_put(self, name: str, path: Path, dir_url: bool) -> None:
        owner = self.server.owner
        if dir_url:
            self._send(HTTPStatus.BAD_REQUEST if owner.strict else HTTPStatus.CONFLICT)
            return
        if path.is_dir():
            self._send(HTTPStatus.METHOD_NOT_ALLOWED if owner.strict else HTTPStatus.CONFLICT)
            return
        if "Transfer-Encoding" not in self.headers and "Content-Length" not in self.headers:
            self._send(HTTPStatus.LENGTH_REQUIRED)
            return
        parent = path.parent
        if owner.strict and not parent.is_dir():
            self._send(HTTPStatus.CONFLICT)  # WebDAV: MKCOL the parent collections first
            return
        # The body goes to a hidden temporary file at the top of the root (the same
        # filesystem as the target, so os.replace is atomic), not in the target directory:
        # that way nothing, not even a parent directory, is created before delay/hang.
        fd, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=owner._root_path())
        try:
            with os.fdopen(fd, "wb") as temp_file:
                for chunk in self._iter_body():
                    temp_file.write(chunk)
            os.chmod(temp_name, 0o644)
            self._pause()
            parent_is_file = False
            if not owner.strict:
                try:  # like nginx's create_full_put_path
                    parent.mkdir(parents=True, exist_ok=True)
                except (FileExistsError, NotADirectoryError):
                    parent_is_file = True
            if parent_is_file or not parent.is_dir() or path.is_dir():
                os.unlink(temp_name)
                if path.is_dir() and owner.strict:
                    self._send(HTTPStatus.METHOD_NOT_ALLOWED)
                else:
                    self._send(HTTPStatus.CONFLICT)
                return
            existed = path.is_file()
            os.replace(temp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise
        if existed:
            self._send(HTTPStatus.NO_CONTENT)
        else:
            location = owner.url + quote(self._record_path, safe=_HREF_SAFE)
            self._send(HTTPStatus.CREATED, headers=[("Location", location)])

    def _do_delete(self, name: str, path: Path, dir_url: bool) -> None:
        owner = self.server.owner
        if name == "":
            self._send(HTTPStatus.FORBIDDEN)
            return
        if path.is_dir() and not path.is_symlink():
            if not dir_url and not owner.strict:
                self._send(HTTPStatus.CONFLICT)  # nginx wants a trailing slash for dirs
                return
            self._pause()
            shutil.rmtree(path, ignore_errors=True)
            self._send(HTTPStatus.NO_CONTENT)
            return
        if not path.exists() and not path.is_symlink():
            self._send(HTTPStatus.NOT_FOUND)
            return
        if dir_url:
            self._send(HTTPStatus.CONFLICT)
            return
        self._pause()
        try:
            path.unlink()
        except FileNotFoundError:
            self._send(HTTPStatus.NOT_FOUND)
            return
        self._send(HTTPStatus.NO_CONTENT)

    def _do_mkcol(self, name: str, path: Path, dir_url: bool) -> None:
        if name == "" or path.exists():
            self._send_405()
            return
        if not path.parent.is_dir():
            self._send(HTTPStatus.CONFLICT)
            return
        self._drain_body()
        self._pause()
        try:
            path.mkdir()
        except FileExistsError:
            self._send_405()
            return
        except (FileNotFoundError, NotADirectoryError):
            self._send(HTTPStatus.CONFLICT)
            return
        self._send(HTTPStatus.CREATED)

    def _do_propfind(self, name: str, path: Path, dir_url: bool) -> None:
        depth = self.headers.get("Depth", "infinity").strip().lower()
        if depth not in ("0", "1"):
            self._send(HTTPStatus.FORBIDDEN)  # lighttpd refuses infinite depth too
            return
        if not path.exists():
            self._send(HTTPStatus.NOT_FOUND)
            return
        owner = self.server.owner
        url_path = owner.base_path + "/".join(_relative_parts(name))
        entries: list[tuple[str, Path]] = [(url_path, path)]
        if depth == "1" and path.is_dir():
            prefix = url_path if url_path.endswith("/") else url_path + "/"
            for child in sorted(os.listdir(path)):
                if not child.startswith(TEMP_PREFIX):
                    entries.append((prefix + child, path / child))
        responses = []
        for href, entry in entries:
            try:
                st = entry.stat()
            except OSError:
                continue
            is_dir = entry.is_dir()
            if is_dir and not href.endswith("/"):
                href += "/"
            props = [f"<D:getlastmodified>{_http_date(st.st_mtime)}</D:getlastmodified>"]
            if is_dir:
                props.append("<D:resourcetype><D:collection/></D:resourcetype>")
            else:
                content_type = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
                props.append(f"<D:getcontentlength>{st.st_size}</D:getcontentlength>")
                props.append(f"<D:getcontenttype>{xml_escape(content_type)}</D:getcontenttype>")
                props.append("<D:resourcetype/>")
            responses.append(
                "<D:response>\n"
                f"<D:href>{xml_escape(quote(href, safe=_HREF_SAFE))}</D:href>\n"
                "<D:propstat>\n<D:prop>\n" + "\n".join(props) + "\n</D:prop>\n"
                "<D:status>HTTP/1.1 200 OK</D:status>\n</D:propstat>\n</D:response>\n"
            )
        body = (
            '<?xml version="1.0" encoding="utf-8"?>\n'
            '<D:multistatus xmlns:D="DAV:">\n' + "".join(responses) + "</D:multistatus>\n"
        ).encode()
        self._send(
            HTTPStatus.MULTI_STATUS,
            body,
            headers=[("Content-Type", "application/xml; charset=utf-8")],
        )

    def _do_listing(self, path: Path, dir_url: bool) -> None:
        if path.is_dir():
            if not dir_url:
                self._send_redirect()
                return
            self._send(
                HTTPStatus.OK,
                _nginx_json_listing(path),
                headers=[("Content-Type", "application/json")],
            )
            return
        if dir_url:
            self._send(HTTPStatus.NOT_FOUND)
            return
        self._send_file(path)  # nginx's alias serves files under the prefix too

    # -- bodies and responses ------------------------------------------------------------

    def _iter_body(self) -> Iterator[bytes]:
        """Yield the request body, framed by chunked encoding or Content-Length."""
        self._body_done = True
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            if encoding.strip().lower() != "chunked":
                raise _BadBody
            yield from self._iter_chunked()
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return
        try:
            remaining = int(length_header.strip())
        except ValueError:
            raise _BadBody from None
        if remaining < 0:
            raise _BadBody
        while remaining:
            data = self.rfile.read(min(_CHUNK, remaining))
            if not data:
                raise _Abort  # client gone mid-body
            remaining -= len(data)
            self._body_length += len(data)
            yield data

    def _iter_chunked(self) -> Iterator[bytes]:
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise _Abort
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadBody from None
            if size < 0:
                raise _BadBody
            if size == 0:
                while True:  # trailer section, up to the empty line
                    trailer = self.rfile.readline(8192)
                    if not trailer:
                        raise _Abort
                    if trailer in (b"\r\n", b"\n"):
                        return
            remaining = size
            while remaining:
                data = self.rfile.read(min(_CHUNK, remaining))
                if not data:
                    raise _Abort
                remaining -= len(data)
                self._body_length += len(data)
                yield data
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise _BadBody

    def _drain_body(self) -> None:
        """Read and discard an unread body, so the connection can serve the next request."""
        if not self._body_done:
            for _ in self._iter_body():
                pass

    def _pause(self) -> None:
        """Read the body, then apply ``delay`` and ``hang``, once per request and before
        any side effect."""
        self._drain_body()
        if not self._paused:
            self._paused = True
            self.server.owner._wait_for_faults(self.command)

    def _send_405(self, allowed: Iterable[str] | None = None) -> None:
        if allowed is None:
            allowed = ["GET", "HEAD", "PUT", "DELETE"]
            if self.server.owner.strict:
                allowed += ["MKCOL", "PROPFIND"]
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, headers=[("Allow", ", ".join(allowed))])

    def _send_redirect(self) -> None:
        location = self.server.owner.url + quote(self._record_path + "/", safe=_HREF_SAFE)
        self._send(HTTPStatus.MOVED_PERMANENTLY, headers=[("Location", location)])

    def _send_file(self, path: Path) -> None:
        self._pause()
        try:
            file = path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self._send(HTTPStatus.NOT_FOUND)
            return
        with file:
            # fstat on the open file: os.replace swaps inodes, so size and body agree.
            st = os.fstat(file.fileno())
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            headers = [
                ("Content-Type", content_type),
                ("Last-Modified", _http_date(st.st_mtime)),
                ("ETag", f'"{int(st.st_mtime):x}-{st.st_size:x}"'),
            ]
            self._send(HTTPStatus.OK, headers=headers, length=st.st_size)
            if self.command != "HEAD":
                remaining = st.st_size
                while remaining:
                    data = file.read(min(_CHUNK, remaining))
                    if not data:  # truncated under our feet: the framing is broken
                        self.close_connection = True
                        break
                    self.wfile.write(data)
                    remaining -= len(data)

    def _send(
        self,
        status: int,
        body: bytes | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        length: int | None = None,
    ) -> None:
        """Answer, after draining the request body and applying delay/hang.

        ``length`` announces a body the caller writes itself (files); otherwise ``body``
        (a short text for errors) is written, except for HEAD, which gets the headers only.
        """
        self._pause()
        head = self.command == "HEAD"
        status = int(status)
        if body is None and length is None:
            body = b"" if status < 400 else f"{status} {_reason(status)}\n".encode()
        self.send_response(status, _reason(status))
        has_type = False
        for key, value in headers:
            has_type = has_type or key.lower() == "content-type"
            self.send_header(key, value)
        if body and not has_type:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        if status != HTTPStatus.NO_CONTENT and status >= 200:
            self.send_header("Content-Length", str(len(body or b"") if length is None else length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self._status = status
        self._log()
        self.end_headers()
        if body and not head:
            self.wfile.write(body)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _nginx_json_listing(directory: Path) -> bytes:
    """Render ``directory`` exactly as nginx 1.22 ``autoindex_format json`` does.

    Observed with nginx 1.22.1: hidden entries are left out; directories come first, then
    files, each group in byte order of the name; the body is ``[\\r\\n``, then one line per
    entry ending in ``\\r\\n`` (with a ``,`` before it except on the last one), then ``]``
    (so an empty directory gives ``[\\r\\n]``); names are JSON strings with UTF-8 kept as
    is; ``mtime`` is an HTTP date; only files have ``size``.
    """
    entries: list[tuple[bool, bytes, str]] = []
    with os.scandir(directory) as scan:
        for entry in scan:
            if entry.name.startswith("."):
                continue
            try:
                st = entry.stat()
                is_dir = entry.is_dir()
                is_file = entry.is_file()
            except OSError:
                continue  # deleted while listing
            name = json.dumps(entry.name, ensure_ascii=False)
            mtime = _http_date(st.st_mtime)
            if is_dir:
                text = f'{{ "name":{name}, "type":"directory", "mtime":"{mtime}" }}'
            elif is_file:
                text = f'{{ "name":{name}, "type":"file", "mtime":"{mtime}", "size":{st.st_size} }}'
            else:
                text = f'{{ "name":{name}, "type":"other", "mtime":"{mtime}" }}'
            entries.append((not is_dir, os.fsencode(entry.name), text))
    entries.sort(key=lambda item: (item[0], item[1]))
    lines = "".join(
        text + ("," if i < len(entries) - 1 else "") + "\r\n"
        for i, (*_, text) in enumerate(entries)
    )
    return ("[\r\n" + lines + "]").encode("utf-8", "surrogateescape")


class TestHttpServer:
    """A threaded HTTP/1.1 media server on loopback, for tests (stable API).

    ``root`` is the directory that holds the files of ``base_path``; when it is ``None``
    the server owns a temporary directory, removed by ``stop()`` (``restart()`` keeps it).
    ``strict`` selects lighttpd-like WebDAV behaviour instead of nginx-like behaviour.
    ``listing_prefix`` is the URL prefix of the nginx-style JSON listing (permissive mode
    only; ``None`` disables it). ``credentials=(user, password)`` requires HTTP Basic auth
    for everything except GET and HEAD of media files.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        root: str | os.PathLike[str] | None = None,
        strict: bool = False,
        base_path: str = "/",
        listing_prefix: str | None = "/_resto/list/",
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self._bind_host = host
        self._port = port
        self.strict = strict
        self.base_path = _url_prefix(base_path, "base_path")
        self._listing_prefix = (
            None if listing_prefix is None else _url_prefix(listing_prefix, "listing_prefix")
        )
        if credentials is not None and len(credentials) != 2:
            raise ValueError("credentials must be a (user, password) pair")
        self._credentials = None if credentials is None else (credentials[0], credentials[1])
        self._root_arg = None if root is None else Path(root)
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._root: Path | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connection_count = 0
        self._log: list[RequestRecord] = []
        self._release_generation = 0  # bumped by release(): hung requests proceed
        self._hanging = 0  # requests currently blocked by hang()
        self._init_faults()
        self._root_path()  # create the root now, so tests can seed files before start()

    def _init_faults(self) -> None:
        self._rules: list[_FailRule] = []
        self._forced: tuple[int, frozenset[str] | None] | None = None
        # (enabled, methods) pairs; methods None means every method.
        self._drop: tuple[bool, frozenset[str] | None] = (False, None)
        self._hang: tuple[bool, frozenset[str] | None] = (False, None)
        self._delay: tuple[float, frozenset[str] | None] = (0.0, None)
        self._read_only = False

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Bind (the same port again after ``stop()``/``restart()``) and serve in threads."""
        if self._server is not None:
            raise RuntimeError("TestHttpServer is already running")
        self._root_path()
        self._stopping.clear()
        server = _Server((self._bind_host, self._port), self)
        self._port = int(server.server_address[1])
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"TestHttpServer:{self._port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close every connection, and remove the root if the server owns it.

        Hung or delayed handlers are woken and close their connection without answering,
        so this returns within about ``timeout`` seconds whatever the handlers were doing.
        """
        self._shutdown(timeout)
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None
            self._root = None

    def restart(self, timeout: float = 5.0) -> Self:
        """Stop and start again on the same port, keeping the files (a server reboot)."""
        self._shutdown(timeout)
        return self.start()

    def _shutdown(self, timeout: float) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        with self._cond:
            self._stopping.set()
            self._cond.notify_all()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = dict(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for handler_thread in [*connections.values(), thread]:
            if handler_thread is not None and handler_thread is not threading.current_thread():
                handler_thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def running(self) -> bool:
        """Whether the server is accepting connections."""
        return self._server is not None

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (known once started, kept for restarts)."""
        if not self._port:
            raise RuntimeError("the port is known once the server has started")
        return self._port

    @property
    def host(self) -> str:
        """``"127.0.0.1:PORT"``: what goes in the library's ``hosts`` setting."""
        host = f"[{self._bind_host}]" if ":" in self._bind_host else self._bind_host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """``"http://127.0.0.1:PORT"``, without a trailing slash."""
        return f"http://{self.host}"

    @property
    def listing_prefix(self) -> str | None:
        """URL prefix of the JSON listing, or ``None`` when none is served (strict mode)."""
        return None if self.strict else self._listing_prefix

    @property
    def credentials(self) -> tuple[str, str] | None:
        """The ``(user, password)`` pair required for writes, if any."""
        return self._credentials

    # -- files ---------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The directory holding the files served under ``base_path``."""
        return self._root_path()

    def _root_path(self) -> Path:
        if self._root is None:
            if self._root_arg is not None:
                self._root_arg.mkdir(parents=True, exist_ok=True)
                self._root = self._root_arg.resolve()
            else:
                self._tempdir = tempfile.TemporaryDirectory(
                    prefix="resto-http-", ignore_cleanup_errors=True
                )
                self._root = Path(self._tempdir.name).resolve()
        return self._root

    def _inside_root(self, path: Path) -> bool:
        root = os.path.realpath(self._root_path())
        real = os.path.realpath(path)
        return real == root or real.startswith(root + os.sep)

    def path(self, name: str) -> Path:
        """Filesystem path of the media file ``name`` (relative, ``/``-separated)."""
        return self._root_path().joinpath(*_relative_parts(name))

    def read(self, name: str) -> bytes | None:
        """Content of the file ``name``, or ``None`` if there is no such file."""
        try:
            return self.path(name).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists (file or directory)."""
        return self.path(name).exists()

    def write(self, name: str, data: bytes) -> Path:
        """Seed a file directly on disk (creating parents), bypassing HTTP."""
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def names(self) -> list[str]:
        """Sorted relative names of every file under the root (no directories)."""
        return _tree_names(self._root_path())

    def files(self) -> dict[str, bytes]:
        """``{relative name: content}`` of every file, sorted by name, for tree comparisons.

        Directories are left out (an empty directory does not show); so are the temporary
        files of PUT requests in progress.
        """
        root = self._root_path()
        result = {}
        for name in _tree_names(root):
            with contextlib.suppress(OSError):
                result[name] = (root / name).read_bytes()
        return result

    # -- request log ---------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the requests received, oldest first."""
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        """Forget the requests received so far."""
        with self._lock:
            self._log.clear()

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until ``count`` requests have been answered (or dropped); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._log) >= count, timeout)

    def _log_request(self, record: RequestRecord) -> None:
        with self._cond:
            self._log.append(record)
            self._cond.notify_all()

    # -- fault injection -----------------------------------------------------------------

    def fail_next(self, status: int, count: int = 1, methods: MethodsArg = None) -> None:
        """Answer ``status`` to the next ``count`` requests (of ``methods``, default all).

        Nothing is changed on disk for those requests. Calls queue up: the first rule that
        matches a request is used, and it takes precedence over ``force_status``.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._rules.append(_FailRule(int(status), count, _methods(methods)))

    def drop_next(self, count: int = 1, methods: MethodsArg = None) -> None:
        """Close the connection without an answer for the next ``count`` requests."""
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._rules.append(_FailRule(None, count, _methods(methods)))

    def force_status(self, status: int | None, methods: MethodsArg = None) -> None:
        """Answer ``status`` to every request (of ``methods``) until called with ``None``."""
        with self._lock:
            self._forced = None if status is None else (int(status), _methods(methods))

    def drop_connections(self, enabled: bool = True, methods: MethodsArg = None) -> None:
        """While enabled, close each connection (of ``methods``) as soon as the request
        line and headers are read, without any response: the client gets a connection
        error (e.g. ``requests.ConnectionError``)."""
        with self._lock:
            self._drop = (bool(enabled), _methods(methods))

    @property
    def read_only(self) -> bool:
        """When true, PUT, DELETE and MKCOL answer 403 Forbidden."""
        with self._lock:
            return self._read_only

    @read_only.setter
    def read_only(self, value: bool) -> None:
        with self._lock:
            self._read_only = bool(value)

    def delay(self, seconds: float, methods: MethodsArg = None) -> None:
        """Wait ``seconds`` before answering each request (of ``methods``); 0 disables.

        The wait happens after the request body is read and before any change on disk;
        ``stop()`` interrupts it (the connection is then closed without an answer).
        """
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        with self._lock:
            self._delay = (float(seconds), _methods(methods))

    def hang(self, methods: MethodsArg = None) -> None:
        """Block every request (of ``methods``) before it is answered, until ``release()``.

        Blocked handlers are released without answering by ``stop()``; use
        ``wait_until_hanging`` to know a request has reached the server.
        """
        with self._lock:
            self._hang = (True, _methods(methods))

    def release(self) -> None:
        """Stop hanging and let the requests that were blocked by ``hang()`` proceed."""
        with self._cond:
            self._hang = (False, None)
            self._release_generation += 1
            self._cond.notify_all()

    def wait_until_hanging(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until ``count`` requests are blocked by ``hang()``; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._hanging >= count, timeout)

    @property
    def hanging(self) -> int:
        """How many requests are currently blocked by ``hang()``."""
        with self._lock:
            return self._hanging

    def reset_faults(self) -> None:
        """Remove every fault (queued statuses, forced status, drop, read-only, delay,
        hang) and release hung requests. The request log is kept."""
        with self._cond:
            self._init_faults()
            self._release_generation += 1
            self._cond.notify_all()

    def _take_fault(self, method: str) -> int | str | None:
        with self._lock:
            if self._drop[0] and _matches(self._drop[1], method):
                return "drop"
            for rule in self._rules:
                if _matches(rule.methods, method):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                    return "drop" if rule.status is None else rule.status
            if self._forced is not None and _matches(self._forced[1], method):
                return self._forced[0]
        return None

    def _wait_for_faults(self, method: str) -> None:
        with self._lock:
            seconds, delay_methods = self._delay
        if seconds and _matches(delay_methods, method) and self._stopping.wait(seconds):
            raise _Abort
        with self._cond:
            if not (self._hang[0] and _matches(self._hang[1], method)):
                return
            generation = self._release_generation
            self._hanging += 1
            self._cond.notify_all()
            try:
                self._cond.wait_for(
                    lambda: self._release_generation != generation or self._stopping.is_set()
                )
            finally:
                self._hanging -= 1
            if self._stopping.is_set():
                raise _Abort

    # -- internals used by the handler ---------------------------------------------------

    def _route(self, path: str) -> tuple[str, str] | None:
        listing = self.listing_prefix
        if listing is not None:
            if path.startswith(listing):
                return "listing", path[len(listing) :]
            if path == listing.rstrip("/"):
                return "listing", ""
        if path.startswith(self.base_path):
            return "media", path[len(self.base_path) :]
        return None

    def _register(self, connection: socket.socket) -> int:
        with self._lock:
            self._connections[connection] = threading.current_thread()
            self._connection_count += 1
            number = self._connection_count
            stopping = self._stopping.is_set()
        if stopping:  # accepted just before shutdown: do not serve it
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        return number

    def _unregister(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.pop(connection, None)

    def __repr__(self) -> str:
        state = f"{self.url}" if self.running else "stopped"
        mode = "strict" if self.strict else "permissive"
        return f"<TestHttpServer {state} {mode} base_path={self.base_path!r}>"


def _url_prefix(value: str, what: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{what} must start with '/', got {value!r}")
    return value if value.endswith("/") else value + "/"


def _tree_names(root: Path) -> list[str]:
    names = []
    for dirpath, _dirnames, filenames in os.walk(root):
        relative = os.path.relpath(dirpath, root)
        for filename in filenames:
            if filename.startswith(TEMP_PREFIX):
                continue
            name = filename if relative == "." else f"{relative}/{filename}"
            names.append(name.replace(os.sep, "/"))
    return sorted(names)
