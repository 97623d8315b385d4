"""HTTP/1.1 writes on kept-alive sockets: the hot path of every save and delete.

requests costs about half a millisecond of CPU per request (``bench/overhead.py``):
session merging, hooks, cookie jars and the ``email`` header parser, none of which a
PUT to a media server needs. A save to three hosts paid that three times, plus a
thread hand-off per host, which made small saves no faster than django-resto 1.3
with its new connection per request. This module speaks just the HTTP/1.1 that
the write methods (PUT, DELETE, MKCOL) need:

- a request head and a small body leave in one ``send``; a file body follows the
  head through ``sendfile(2)``, so the bytes go from the page cache to the socket
  without passing through Python (TLS falls back to a read/send loop);
- a write is split in two (:meth:`ConnectionPool.start`, then
  :meth:`Pending.answer`), so the fan-out can put small requests on the wire to every
  host from one thread and only then wait for the answers: the servers work in
  parallel while no thread is handed anything;
- answers are parsed with plain byte operations; bodies (error pages) are skipped.

Each request has one deadline, ``read_timeout + body size / min_transfer_rate`` from
its start, for sending and answering together: a socket timeout alone bounds each
read, so a server that trickles its answer, or reads the body a byte at a time, would
hold a save for ever. Interim answers and answer bodies are capped for the same
reason: a server that never stops talking is as broken as one that never answers.

Reads, streamed downloads and listings stay on requests, which does them well.
Failures raise requests' own exception classes, so callers catch
``requests.RequestException`` whichever path served them.
"""

from __future__ import annotations

import base64
import os
import re
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

import certifi
import requests

from .settings import Host

#: Largest answer head accepted; media servers send a few hundred bytes.
MAX_HEAD = 64 * 1024
#: Bodies up to this size are read once and sent together with the head. They fit
#: in a socket's send buffer, so starting a request never waits for the server.
INLINE_BODY = 64 * 1024
#: Block size for bodies that cannot go through sendfile(2): on TLS connections, or
#: streamed from another server. Large enough that big files cost few loops.
STREAM_BLOCK = 256 * 1024
RECV_SIZE = 64 * 1024
#: Largest ``os.sendfile`` call: the deadline is checked between calls, and one call
#: may block on disk reads, which the socket's non-blocking mode does not cover.
SENDFILE_BLOCK = 1024 * 1024
#: Interim (1xx) answers accepted before the real one. A server sends one 100 Continue
#: or a few 102 Processing; an endless stream of them is a broken host.
MAX_INTERIM = 10
#: Largest body accepted in an answer to a write, framing included. Media servers
#: answer PUT, DELETE and MKCOL with nothing or a short error page (nginx: under 1 KiB);
#: more is a server that will not stop, not an answer.
MAX_ANSWER_BODY = 1024 * 1024
#: How far past its deadline a request may run. A socket timeout is lowered to the time
#: left only when that is this much below it: on a fast request the timeout is never
#: touched (settimeout costs an ioctl(2)), and a late answer fails within this margin.
DEADLINE_SLACK = 0.05
#: How long an answer read after its deadline may still take. The fan-out reads hosts
#: one after another, so while a hanging host is waited for, the others' deadlines pass
#: with their answers already received: those are read (in microseconds), a silent
#: host fails this soon instead of after a whole timeout.
LATE_READ = 0.05
_CAP_DIGITS = len(str(MAX_ANSWER_BODY))
_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
# Header names are tokens (RFC 9110); values may not contain line breaks or NUL.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
#: An idle connection is checked for a close by the server (one select(2)) only
#: after this many seconds: servers close idle connections after their keep-alive
#: timeout (nginx: 65 s), not within a second; a rare earlier close is caught by the
#: retry on a connection closed before any answer.
CHECK_IDLE_AFTER = 1.0


@dataclass(frozen=True)
class Answer:
    """What a server said to one request (the body is read and dropped)."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case


class _Stale(Exception):
    """The connection closed before any byte of the answer: safe to send again."""


class _Malformed(Exception):
    """The bytes received are not an HTTP/1.x answer."""


class _Deadline(Exception):
    """The request's deadline passed (not one silent read: that is a TimeoutError)."""


def _too_large() -> _Malformed:
    return _Malformed(
        f"the answer's body is larger than {_amount(MAX_ANSWER_BODY)}, "
        "the most an answer to a write may carry"
    )


class Connection:
    """One socket to a media server and the bytes received but not yet parsed."""

    def __init__(self, sock: socket.socket, plain: bool, read_timeout: float) -> None:
        self.sock = sock
        self.plain = plain  # sendfile(2) only works on a socket without TLS
        self.buffer = bytearray()
        self.idle_since = 0.0
        self.read_timeout = read_timeout
        self.timeout = read_timeout  # what the socket's timeout is set to now
        self.deadline = float("inf")  # of the request on this connection

    def _arm(self) -> None:
        """Bound the next socket call by the time left, or fail past the deadline.

        The socket's timeout stays within ``[min(read_timeout, left), left + SLACK]``:
        never an early timeout, never more than the slack late, and on a request that
        finishes quickly no settimeout at all.
        """
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Deadline
        timeout = self.timeout
        if timeout > left + DEADLINE_SLACK or (timeout < left and timeout < self.read_timeout):
            timeout = min(self.read_timeout, left + DEADLINE_SLACK)
            self.sock.settimeout(timeout)
            self.timeout = timeout

    def _timed_out(self, exc: TimeoutError) -> BaseException:
        """A socket timeout is the deadline's when the deadline had lowered it."""
        return _Deadline() if self.timeout < self.read_timeout else exc

    def _sendall(self, data: bytes) -> None:
        # sendall's timeout bounds the whole call (Python >= 3.5), TLS's each record write.
        self._arm()
        try:
            self.sock.sendall(data)
        except TimeoutError as exc:
            raise self._timed_out(exc) from None

    def close(self) -> None:
        self.sock.close()

    def dropped(self) -> bool:
        """True if an idle connection was closed by the server (or has stray bytes)."""
        if self.buffer:
            return True
        # poll, not select: select cannot watch descriptors above 1023, which a busy
        # application server with many open files reaches.
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        try:
            return bool(poller.poll(0))
        except OSError:
            return True

    def send(self, head: bytes, inline: bytes | None, body: Any, size: int) -> None:
        if inline is not None:
            self._sendall(head + inline)
            return
        self._sendall(head)
        if body is None or size == 0:
            return
        handle = body.open()
        try:
            sent = self._send_file(handle, size)
        finally:
            handle.close()
        if sent != size:
            # The body ended early (a file shrank since it was measured): the server
            # would wait for the missing bytes; give up on this connection.
            raise ConnectionAbortedError(f"the body ended after {sent} of {size} bytes")

    def _send_file(self, handle: IO[bytes], size: int) -> int:
        if self.plain and _has_fileno(handle):
            return self._sendfile(handle.fileno(), size)
        # TLS, or a body that is not a file (a stream from another media server).
        sent = 0
        while sent < size:
            data = handle.read(min(STREAM_BLOCK, size - sent))
            if not data:
                break
            self._sendall(data)
            sent += len(data)
        return sent

    def _sendfile(self, fileno: int, size: int) -> int:
        """sendfile(2) in bounded calls, waiting for room within the deadline.

        Not ``socket.sendfile``: it waits up to the socket timeout for each bit of room
        and has no bound on the whole, so a server that reads slowly held it for ever.
        The socket is non-blocking (it has a timeout), so each call sends what fits.
        """
        sockno = self.sock.fileno()
        poller: select.poll | None = None
        offset = 0
        while offset < size:
            try:
                sent = os.sendfile(sockno, fileno, offset, min(size - offset, SENDFILE_BLOCK))
            except BlockingIOError:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise _Deadline from None
                if poller is None:
                    poller = select.poll()
                    poller.register(sockno, select.POLLOUT)
                wait = min(self.read_timeout, left + DEADLINE_SLACK)
                if not poller.poll(wait * 1000):
                    if wait < self.read_timeout:
                        raise _Deadline from None
                    raise TimeoutError("timed out") from None
                continue
            if not sent:
                break  # end of file: the caller reports a body shorter than announced
            offset += sent
            if offset < size and time.monotonic() >= self.deadline:
                raise _Deadline
        return offset

    def _fill(self) -> bool:
        self._arm()
        try:
            chunk = self.sock.recv(RECV_SIZE)
        except TimeoutError as exc:
            raise self._timed_out(exc) from None
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def read_answer(self, method: str) -> tuple[Answer, bool]:
        """Read one answer; return it and whether the connection can carry another."""
        received_any = False
        interim = 0
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end > MAX_HEAD or (end < 0 and len(self.buffer) > MAX_HEAD):
                raise _Malformed("the answer's head is larger than 64 KiB")
            if end < 0:
                if not self._fill():
                    if not received_any and not self.buffer:
                        raise _Stale("the server closed the connection without answering")
                    raise _Malformed("the server closed the connection in the middle of its answer")
                received_any = True
                continue
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[: end + 4]
            version, status, reason, headers = _parse_head(head)
            if 100 <= status < 200:
                # An interim answer (100 Continue, 102 Processing): the real one follows.
                interim += 1
                if interim > MAX_INTERIM:
                    raise _Malformed(f"more than {MAX_INTERIM} interim (1xx) answers")
                continue
            break
        reusable = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        if method == "HEAD" or status in (204, 304):
            pass
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._skip_chunked()
        elif "content-length" in headers:
            length = headers["content-length"]
            if not _DIGITS.fullmatch(length):
                raise _Malformed(f"invalid Content-Length {length!r}")
            # Digits counted first: int() refuses more than 4300 of them (ValueError).
            digits = length.lstrip("0")
            if len(digits) > _CAP_DIGITS or int(digits or "0") > MAX_ANSWER_BODY:
                raise _too_large()
            self._skip(int(digits or "0"))
        else:
            # No length: the body runs to the end of the connection.
            received = len(self.buffer)
            self.buffer.clear()
            while received <= MAX_ANSWER_BODY and self._fill():
                received += len(self.buffer)
                self.buffer.clear()
            if received > MAX_ANSWER_BODY:
                raise _too_large()
            reusable = False
        return Answer(status, reason, headers), reusable

    def _skip(self, count: int) -> None:
        while count:
            if not self.buffer and not self._fill():
                raise _Malformed("the server closed the connection in the middle of a body")
            taken = min(count, len(self.buffer))
            del self.buffer[:taken]
            count -= taken

    def _line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            if len(self.buffer) > MAX_HEAD or not self._fill():
                raise _Malformed("a chunked body was cut short")

    def _skip_chunked(self) -> None:
        budget = MAX_ANSWER_BODY  # framing and trailers count: they could be endless too
        while True:
            line = self._line()
            budget -= len(line) + 2
            size_text = line.split(b";", 1)[0].strip()
            if not _HEX.fullmatch(size_text):
                raise _Malformed(f"invalid chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:
                while True:  # trailer fields, up to an empty line
                    line = self._line()
                    budget -= len(line) + 2
                    if budget < 0:
                        raise _too_large()
                    if not line:
                        return
            budget -= size + 2
            if budget < 0:
                raise _too_large()
            self._skip(size + 2)


def read_exactly(handle: IO[bytes], size: int) -> bytes:
    """Up to ``size`` bytes from ``handle``, however short its reads are."""
    parts = []
    remaining = size
    while remaining > 0:
        data = handle.read(remaining)
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


def _has_fileno(handle: IO[bytes]) -> bool:
    try:
        handle.fileno()
    except (OSError, AttributeError, ValueError):
        return False
    return True


def _parse_head(head: str) -> tuple[str, int, str, dict[str, str]]:
    status_line, _, rest = head.partition("\r\n")
    version, _, remainder = status_line.partition(" ")
    code, _, reason = remainder.partition(" ")
    if not version.startswith("HTTP/1.") or not _DIGITS.fullmatch(code) or len(code) != 3:
        raise _Malformed(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in rest.split("\r\n") if rest else ():
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _Malformed(f"invalid header line {line[:80]!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return version, int(code), reason.strip(), headers


# What sending on a connection the server has closed raises (TLS has its own words).
_CLOSED = (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


def _answer_left_on(conn: Connection, method: str) -> Answer | None:
    """An answer the server sent before closing a connection we could not finish sending on."""
    try:
        answer, _ = conn.read_answer(method)
    except Exception:
        return None
    return answer


def _amount(count: float) -> str:
    """Bytes for people: 512 KiB, 1.5 MiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{_number(count / scale)} {unit}"
    return f"{_number(count)} B"


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def basic_credentials(user: str, password: str) -> str:
    """The Authorization value for HTTP Basic; UTF-8, as RFC 7617 recommends."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


class Pending:
    """A request on the wire whose answer has not been read yet.

    If the connection turns out to have been closed before the server answered (a
    keep-alive timeout or a reload racing our request), the request is sent once more
    on a new connection: PUT, DELETE and MKCOL are idempotent. The retry keeps the
    deadline set here, so a flaky server cannot double a save's wait.
    """

    def __init__(
        self, pool: ConnectionPool, method: str, target: str, head: bytes, body: Any
    ) -> None:
        size = 0 if body is None else body.size
        self.deadline = time.monotonic() + pool.read_timeout + size / pool.min_transfer_rate
        self.pool = pool
        self.method = method
        self.target = target
        self.head = head
        self.body = body
        self.size = size
        self.inline: bytes | None = None
        if body is not None and self.size <= INLINE_BODY:
            self.inline = body.inline()
            if len(self.inline) != self.size:
                # A file that shrank since it was measured: sent as it is, the server
                # would wait for the missing bytes until our read timeout.
                raise requests.ConnectionError(
                    f"{method} {pool.url(target)}: the body ended after "
                    f"{len(self.inline)} of {self.size} bytes"
                )
        self.retried = False
        self.conn: Connection | None = None
        self._early: Answer | None = None
        self._send()

    def _send(self) -> None:
        while True:
            conn = self.conn = self.pool.acquire(self, fresh=self.retried)
            conn.deadline = self.deadline
            try:
                conn.send(self.head, self.inline, self.body, self.size)
                return
            except _CLOSED as exc:
                # A server may answer before it has read the whole body (413, 401) and
                # close: then that answer, not a retry, is the outcome.
                self._early = _answer_left_on(conn, self.method)
                self._discard()
                if self._early is not None:
                    return
                self._count_retry(exc)
            except BaseException as exc:
                self._discard()
                raise self.pool.translate(exc, self, sending=True) from exc

    def _count_retry(self, exc: BaseException) -> None:
        where = f"{self.method} {self.pool.url(self.target)}"
        if self.retried:
            raise requests.ConnectionError(
                f"{where}: the connection was closed "
                f"before any answer, twice ({exc or type(exc).__name__})"
            ) from exc
        if time.monotonic() >= self.deadline:
            # Noticed late (another host's answer was awaited first): the retry keeps
            # the deadline, so there is no time left to send again.
            raise requests.ReadTimeout(
                f"{where}: the connection was closed before any answer, with no time left "
                f"to send again within {self.pool.deadline_reason(self)}"
            ) from exc
        self.retried = True

    def answer(self) -> Answer:
        """Wait for the server's answer (within the request's deadline) and return it.

        Called past the deadline (the fan-out awaited another host first), it still
        takes an answer that has arrived, within ``LATE_READ``.
        """
        if self.conn is not None:
            now = time.monotonic()
            if now > self.deadline:
                self.conn.deadline = now + LATE_READ
        while self._early is None:
            conn = self.conn
            assert conn is not None
            try:
                answer, reusable = conn.read_answer(self.method)
            except (_Stale, *_CLOSED) as exc:
                self._discard()
                self._count_retry(exc)
                self._send()
                continue
            except BaseException as exc:
                self._discard()
                raise self.pool.translate(exc, self) from exc
            self.pool.release(conn, reusable)
            self.conn = None
            return answer
        return self._early

    def _discard(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class ConnectionPool:
    """Kept-alive connections to one media server, shared by every thread.

    A thread takes an idle connection (or opens one) for the length of one request
    and gives it back; at most ``max_idle`` idle connections are kept.
    """

    def __init__(
        self,
        host: Host,
        *,
        connect_timeout: float,
        read_timeout: float,
        verify: bool | str = True,
        max_idle: int = 10,
        min_transfer_rate: float = 256 * 1024,
    ) -> None:
        parts = urlsplit(host.origin)
        self.host = host
        self.https = parts.scheme == "https"
        self.hostname = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.netloc = parts.netloc
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        #: Bytes per second a request's deadline allows for its body, on top of the
        #: read timeout (``settings.OPTIONS``).
        self.min_transfer_rate = min_transfer_rate
        self.verify = verify
        self.max_idle = max_idle
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._ssl_context: ssl.SSLContext | None = None
        #: Connections opened and requests sent over the pool's life (tests, bench).
        self.opened = 0
        self.sent = 0

    def url(self, target: str) -> str:
        return self.host.origin + target

    def start(
        self, method: str, target: str, *, headers: dict[str, str], body: Any = None
    ) -> Pending:
        """Send a request (``target`` already quoted) and return it, not yet answered."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.netloc}"]
        for name, value in headers.items():
            # A line break in a value (a token read from a file with its newline) would
            # end the head early or inject a header: refuse it, as requests does.
            if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
                raise requests.exceptions.InvalidHeader(
                    f"invalid header {name!r}: names are tokens, values have no line breaks"
                )
            lines.append(f"{name}: {value}")
        if body is not None or method == "PUT":
            lines.append(f"Content-Length: {0 if body is None else body.size}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return Pending(self, method, target, head, body)

    def acquire(self, pending: Pending, *, fresh: bool = False) -> Connection:
        """A connection for one request: an idle one, or a new one if ``fresh``.

        A retry after a stale connection asks for a new one: when a server reloads, it
        closes every idle connection at once.
        """
        with self._lock:
            self.sent += 1
            while self._idle and not fresh:
                conn = self._idle.pop()
                if time.monotonic() - conn.idle_since < CHECK_IDLE_AFTER or not conn.dropped():
                    return conn
                conn.close()
        try:
            conn = self._connect()
        except BaseException as exc:
            raise self.translate(exc, pending, connecting=True) from exc
        with self._lock:
            self.opened += 1
        return conn

    def release(self, conn: Connection, reusable: bool) -> None:
        if reusable and not conn.buffer:
            with self._lock:
                if len(self._idle) < self.max_idle:
                    conn.idle_since = time.monotonic()
                    self._idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _connect(self) -> Connection:
        sock = socket.create_connection((self.hostname, self.port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.https:
                sock = self._context().wrap_socket(sock, server_hostname=self.hostname)
            sock.settimeout(self.read_timeout)
        except BaseException:
            sock.close()
            raise
        return Connection(sock, plain=not self.https, read_timeout=self.read_timeout)

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            if self.verify is False:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            elif isinstance(self.verify, str):
                if os.path.isdir(self.verify):
                    context = ssl.create_default_context(capath=self.verify)
                else:
                    context = ssl.create_default_context(cafile=self.verify)
            else:
                # The same trust store as requests (certifi), so reads and writes
                # accept the same certificates.
                context = ssl.create_default_context(cafile=certifi.where())
            self._ssl_context = context
        return self._ssl_context

    def translate(
        self,
        exc: BaseException,
        pending: Pending,
        *,
        connecting: bool = False,
        sending: bool = False,
    ) -> BaseException:
        """The requests exception for a low-level failure, naming the request."""
        if isinstance(exc, requests.RequestException):
            return exc
        where = f"{pending.method} {self.url(pending.target)}"
        if isinstance(exc, _Malformed):
            return requests.ConnectionError(f"{where}: invalid answer: {exc}")
        if isinstance(exc, _Deadline):
            what = "the request was not sent in full" if sending else "no complete answer"
            return requests.ReadTimeout(f"{where}: {what} within {self.deadline_reason(pending)}")
        if isinstance(exc, TimeoutError):
            if connecting:
                return requests.ConnectTimeout(
                    f"{where}: no connection within {self.connect_timeout}s"
                )
            if sending:
                return requests.ReadTimeout(f"{where}: sending stalled for {self.read_timeout}s")
            return requests.ReadTimeout(f"{where}: no answer within {self.read_timeout}s")
        if isinstance(exc, ssl.SSLError | ssl.CertificateError):
            return requests.exceptions.SSLError(f"{where}: {exc}")
        if isinstance(exc, OSError):
            verb = "cannot connect" if connecting else "connection failed"
            return requests.ConnectionError(f"{where}: {verb}: {exc}")
        return exc

    def deadline_reason(self, pending: Pending) -> str:
        """The deadline of a request and how it was reached, for people reading a log."""
        allowed = self.read_timeout + pending.size / self.min_transfer_rate
        why = f"timeout {_number(self.read_timeout)} s"
        if pending.size:
            why += f" + {_amount(pending.size)} at {_amount(self.min_transfer_rate)}/s"
        return f"{_number(allowed)} s ({why})"

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("connection pools hold sockets and cannot be pickled")
