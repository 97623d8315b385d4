"""HTTP/1.1 on kept-alive sockets: every request the library sends to a media server.

One pool of connections per host carries writes (PUT, DELETE, MKCOL) and reads (HEAD,
streamed GET, PROPFIND, JSON listings) alike: one TLS set-up, one stale-connection
retry, one set of deadlines. requests cost about half a millisecond of CPU per request
(``bench/overhead.py``: session merging, hooks, cookie jars), which a save to three
hosts paid three times, plus a thread hand-off per host; what stays cheap here:

- a request head and a small body leave in one ``send``; a file body follows the
  head through ``sendfile(2)``, so the bytes go from the page cache to the socket
  without passing through Python (TLS falls back to a read/send loop);
- a request is split in two (:meth:`ConnectionPool.start`, then :meth:`Pending.answer`
  or :meth:`Pending.response`), so the fan-out can put small requests on the wire to
  every host from one thread and only then wait for the answers: the servers work in
  parallel while no thread is handed anything.

Answers are parsed by llhttp, Node.js's HTTP parser, through httptools (:class:`_Parse`):
it does the framing and refuses what is not HTTP/1.x, for about a microsecond per
answer. ``http.client`` and h11 were measured too: 20 to 40 microseconds per answer
(http.client parses every head with the ``email`` package), which made a small save to
three hosts half again as expensive in CPU. What a client of possibly broken servers
needs beyond a parser is added here: every socket read is bounded by the request's
deadline, and interim (1xx) answers, heads and the bodies of answers to writes are capped.

Each request has one deadline, ``read_timeout + body size / min_transfer_rate`` from
its start, for sending and the answer's head together, and for a write the whole
answer: a socket timeout alone bounds each read, so a server that trickles its answer,
or reads the body a byte at a time, would hold a save for ever. A streamed download is
read at its reader's pace, each read within the read timeout.

Failures raise :class:`TransportError`, an ``OSError``; its subclasses are also the
builtin ``ConnectionError`` or ``TimeoutError`` they are.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import functools
import io
import os
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, Protocol
from urllib.parse import urlsplit

import certifi
import httptools

from .hosts import Host

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
#: Idle connections a host's pool keeps at most, by default. More than the threads of
#: any one worker process (a gunicorn ``--threads 16`` worker, a drain's fan-out): with
#: fewer, each thread beyond the cap opens a new connection for its next request (16
#: threads on a pool of 10 opened 67-109 per host per 5,300 requests). The extra
#: sockets cost a file descriptor each and nothing else; one the server closed while
#: idle is noticed and dropped when it is next taken (``CHECK_IDLE_AFTER``).
MAX_IDLE = 64

#: An idle connection is checked for a close by the server (one select(2)) only
#: after this many seconds: servers close idle connections after their keep-alive
#: timeout (nginx: 65 s), not within a second; a rare earlier close is caught by the
#: retry on a connection closed before any answer.
CHECK_IDLE_AFTER = 1.0
# Header names are tokens (RFC 9110); values may not contain line breaks or NUL.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


# --- errors ----------------------------------------------------------------------------


class TransportError(OSError):
    """A media server could not be asked, or gave no usable answer: that host failed.

    An ``OSError``, so code written for network errors catches it; each subclass is
    also the builtin ``ConnectionError`` or ``TimeoutError`` that it is. The classes are
    named as requests named its own, which the library raised before: log lines, the
    journal's ``last_error`` and filters written against them read the same. Messages
    name the method and the URL, never credentials.
    """


class ConnectionError(TransportError, builtins.ConnectionError):
    """Refused, reset, closed twice before any answer, or an answer that is not HTTP."""


class SSLError(ConnectionError):
    """TLS failed: the handshake, the certificate or its host name."""


class Timeout(TransportError, TimeoutError):
    """No (complete) answer in time."""


class ReadTimeout(Timeout):
    """No answer within the read timeout, or none complete within the request's deadline."""


class ConnectTimeout(ConnectionError, Timeout):
    """No connection within the connect timeout: the host is unreachable, so both kinds."""


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


# --- bodies ----------------------------------------------------------------------------


class Readable(Protocol):
    """What a body opens: a file, or a download from another media server."""

    def read(self, size: int = ..., /) -> bytes: ...

    def close(self) -> None: ...


class Body:
    """Something that can be sent to several hosts at once, each reading its own copy.

    A body is opened once per request (and again when a PUT is retried after
    creating parent collections), so it never needs to be held in memory.
    """

    size: int

    def open(self) -> Readable:  # pragma: no cover - interface
        raise NotImplementedError

    def inline(self) -> bytes:
        """The whole body as bytes, read once and shared by every host (small bodies only)."""
        data = self.__dict__.get("_inline")
        if data is None:
            handle = self.open()
            try:
                data = read_exactly(handle.read, self.size)
            finally:
                handle.close()
            self._inline = data
        return data


class FileBody(Body):
    """A file on disk: every host gets its own file descriptor and offset.

    ``size`` may be given by a caller that has just stat'ed the file (the master copy,
    checked for being a directory), saving a second stat of it.
    """

    def __init__(self, path: str | os.PathLike[str], size: int | None = None) -> None:
        self.path = os.fspath(path)
        self.size = os.path.getsize(self.path) if size is None else size

    def open(self) -> IO[bytes]:
        return open(self.path, "rb")

    def inline(self) -> bytes:
        """Read with bare descriptor calls: ``open()`` adds a buffered reader, and three
        system calls (fstat, ioctl, lseek) on every small save and every drained row."""
        data = self.__dict__.get("_inline")
        if data is None:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = self._inline = read_exactly(functools.partial(os.read, fd), self.size)
            finally:
                os.close(fd)
        return data

    def __repr__(self) -> str:
        return f"FileBody({self.path!r})"


class BytesBody(Body):
    """Bytes already in memory (small uploads): shared read-only, never copied."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = memoryview(data).toreadonly().cast("B")
        self.size = self.data.nbytes

    def open(self) -> IO[bytes]:
        return io.BytesIO(self.data)

    def inline(self) -> bytes:
        return self.data.tobytes()

    def __repr__(self) -> str:
        return f"BytesBody(<{self.size} bytes>)"


def read_exactly(read: Callable[[int], bytes], size: int) -> bytes:
    """Up to ``size`` bytes from ``read`` (a handle's, or a descriptor's), however short
    its reads are. One read is returned as it is: ``b"".join`` of one bytes copies nothing."""
    parts = []
    remaining = size
    while remaining > 0:
        data = read(remaining)
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


def _has_fileno(handle: Any) -> bool:
    try:
        handle.fileno()
    except (OSError, AttributeError, ValueError):
        return False
    return True


# --- answers ---------------------------------------------------------------------------


class Headers(dict[str, str]):
    """Header fields by lower-case name, repeated fields joined with ", "; any case looks up."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


def _headers(fields: list[tuple[bytes, bytes]]) -> Headers:
    headers = Headers()
    for name, value in fields:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").strip()
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


class Answer:
    """What a server said to a write (the body is read and dropped).

    The reason phrase and the fields of an answer read by :class:`_LeanParse` are
    parsed only when asked for: a save looks at the status alone.
    """

    __slots__ = ("_fields", "_headers", "_reason", "_source", "status")

    def __init__(
        self,
        status: int,
        reason: str = "",
        headers: dict[str, str] | None = None,
        *,
        fields: list[tuple[bytes, bytes]] | None = None,
        source: _LeanParse | None = None,
    ) -> None:
        self.status = status
        self._reason = reason
        self._headers = None if headers is None else Headers(headers)
        self._fields = fields or []
        self._source = source

    def _load(self) -> None:
        source = self._source
        if source is not None:
            source.frame()
            self._reason = source.reason.decode("latin-1").strip()
            self._fields = source.fields[: source.head_fields]
            self._source = None

    @property
    def reason(self) -> str:
        self._load()
        return self._reason

    @property
    def headers(self) -> Headers:
        """The header fields, decoded only when asked for: a save never looks at them."""
        self._load()
        if self._headers is None:
            self._headers = _headers(self._fields)
        return self._headers

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Answer):
            return NotImplemented
        return (self.status, self.reason, self.headers) == (
            other.status,
            other.reason,
            other.headers,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.reason!r}, {self.headers!r})"


class _Parse:
    """One answer, as llhttp (Node.js's HTTP parser, through httptools) reads it.

    llhttp does the framing: status line, fields, Content-Length or chunked bodies
    (extensions, trailers), 1xx and 204/304 answers without a body, and it refuses
    what is not HTTP/1.x (a folded or nameless field, two Content-Lengths, a chunk
    size such as ``0x1``). This object feeds it the connection's bytes, each read
    within the request's deadline, and adds what a client of possibly broken servers
    needs beyond a parser: at most :data:`MAX_INTERIM` interim answers, heads of at
    most :data:`MAX_HEAD`, answers to writes of at most :data:`MAX_ANSWER_BODY` of
    body (framing included), the end of a HEAD answer (which llhttp cannot be told
    has no body), and answers that end at the close, which httptools leaves to us.

    Class attributes are the defaults: a write's answer sets few of them, and each
    assignment is CPU on the hot path.
    """

    status = 0
    reason = b""
    interim = 0
    received = 0  # bytes fed to the parser
    head_fields = 0  # how many of ``fields`` are the head's (trailers follow)
    head_total = 0  # of every head parsed whole: received - head_total is body
    head_done = False  # the real answer's head (not an interim one's)
    complete = False
    keep_alive = False
    until_close = False  # the body ends when the server closes the connection
    stray = False  # bytes after the answer: the connection cannot be trusted
    length: int | None = None  # Content-Length
    chunked = False
    head_size = 0  # the head's fields, as sent (name, value, ": ", CRLF)
    problem: _Malformed | None = None  # found by a callback, raised after the feed
    raw: list[bytes] | None = None  # what was fed, kept by a lean parse (see _LeanParse)

    def __init__(self, conn: Connection, method: str, *, capped: bool, keep_body: bool) -> None:
        self.conn = conn
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = method == "HEAD"
        self.capped = capped  # an answer to a write: its body is capped
        self.keep_body = keep_body  # a read: body pieces are kept for the reader
        self.body: list[bytes] = []
        self.fields: list[tuple[bytes, bytes]] = []

    # llhttp's callbacks (httptools calls them by name).

    def on_message_begin(self) -> None:
        if self.head_done:
            self.stray = True  # a second answer to one request

    def on_status(self, reason: bytes) -> None:
        if not self.head_done:
            self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # Trailer fields land here too; the head's are those before on_headers_complete.
        self.fields.append((name, value))
        self.head_size += len(name) + len(value) + 4
        # Only two names matter to the framing: a length test skips the others cheaply.
        if len(name) == 14 or len(name) == 17:
            self._framing(name.lower(), value)

    def _framing(self, key: bytes, value: bytes) -> None:
        if self.head_done:
            return  # a trailer: the framing was settled by the head
        if key == b"content-length":
            # llhttp allows one such field, of digits only, below 2**64.
            self.length = int(value.strip().lstrip(b"0") or b"0")
        elif key == b"transfer-encoding":
            self.chunked = value.strip().lower().endswith(b"chunked")

    def on_headers_complete(self) -> None:
        if self.head_done:
            return
        size = self.head_size + 17 + len(self.reason)  # "HTTP/1.1 200 ", CRLFs
        self.head_total += size
        if size > MAX_HEAD:
            self.problem = self.problem or _head_too_large()
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            self.interim += 1
            if self.interim > MAX_INTERIM:
                self.problem = self.problem or _Malformed(
                    f"more than {MAX_INTERIM} interim (1xx) answers"
                )
            self.fields = []
            self.reason = b""
            self.length = None
            self.chunked = False
            self.head_size = 0
            return
        self.status = status
        self.head_done = True
        self.head_fields = len(self.fields)
        self.keep_alive = parser.should_keep_alive()
        if self.head_only or status == 204 or status == 304:
            self.complete = True  # no body, whatever the fields say (llhttp: not for HEAD)
            return
        if self.capped and self.length is not None and self.length > MAX_ANSWER_BODY:
            self.problem = self.problem or _too_large()
        self.until_close = self.length is None and not self.chunked

    def on_body(self, data: bytes) -> None:
        if self.complete:
            self.stray = True  # what a HEAD answer's Content-Length made llhttp expect
        elif self.keep_body:
            self.body.append(data)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True

    # Reading.

    def more(self) -> bool:
        """Receive and parse more of the answer; False at the end of the stream."""
        if not self.head_done:
            if self.received - self.head_total > MAX_HEAD:
                raise _head_too_large()
        elif self.capped and self.received - self.head_total > MAX_ANSWER_BODY:
            raise _too_large()
        data = self.conn.receive()
        if not data:
            return False
        self.received += len(data)
        if self.raw is not None:
            self.raw.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise _Malformed("the server switched protocols") from None
        except httptools.HttpParserError as exc:
            if not self.complete:
                raise self.problem or _Malformed(_parser_words(exc)) from None
            self.stray = True  # garbage after the answer
        if self.raw is not None and self.head_done and not self.complete:
            self.frame()  # a body follows: its framing and caps are needed now
        if self.problem is not None:
            raise self.problem
        if self.head_done and self.capped and self.received - self.head_total > MAX_ANSWER_BODY:
            raise _too_large()
        return True

    def frame(self) -> None:
        """Make sure the head's fields and framing are known (only lean parses defer it)."""

    def ended(self) -> None:
        """The connection closed: the end of an answer that runs to the close, or a failure."""
        if self.head_done:
            self.frame()
        if not self.head_done:
            if not self.received:
                raise _Stale("the server closed the connection without answering")
            raise _Malformed("the server closed the connection in the middle of its answer")
        if not self.until_close:
            raise _Malformed("the server closed the connection in the middle of a body")
        self.complete = True
        self.keep_alive = False

    def read_head(self) -> None:
        while not self.head_done:
            if not self.more():
                self.ended()

    def read_all(self) -> None:
        while not self.complete:
            if not self.more():
                self.ended()

    def next_piece(self) -> bytes:
        """The next received piece of the body; b"" at its end."""
        while not self.body and not self.complete:
            if not self.more():
                self.ended()
        return self.body.pop(0) if self.body else b""

    def reusable(self) -> bool:
        """Whether another request may follow this answer, read to its end."""
        # HTTP/1.0 keep-alive is left alone: media servers speak 1.1.
        return (
            self.complete
            and not self.stray
            and self.keep_alive
            and self.parser.get_http_version() == "1.1"
        )

    def answer(self) -> Answer:
        fields = self.fields
        if len(fields) > self.head_fields:
            fields = fields[: self.head_fields]
        return Answer(self.status, self.reason.decode("latin-1").strip(), fields=fields)

    @property
    def headers(self) -> Headers:
        return _headers(self.fields[: self.head_fields])


class _LeanParse(_Parse):
    """An answer to a write, read with no Python call per field.

    A write needs the status and whether the connection stays usable; llhttp's call
    back into Python for each field was most of a small PUT's parsing cost. So this
    parse keeps the bytes it fed and, only when something needs the fields (a body to
    frame, a reason or headers asked for, a close to judge), parses the head again
    with :class:`_Parse`'s own callbacks. Answers whose head is larger than one
    receive are framed at once, so :data:`MAX_HEAD` holds as for any answer.
    """

    # None: llhttp is not asked to call back for these (httptools skips missing ones).
    on_header = None  # type: ignore[assignment]
    on_status = None  # type: ignore[assignment]
    framed = False

    capped = True
    keep_body = False
    head_only = False  # True for a HEAD (an exists()); writes otherwise
    body: list[bytes] = []  # never appended to: keep_body is False

    def __init__(self, conn: Connection, method: str) -> None:
        # Not _Parse.__init__: each assignment it makes is CPU a write's answer spares.
        self.conn = conn
        self.parser = httptools.HttpResponseParser(self)
        self.raw = []
        if method == "HEAD":
            self.head_only = True

    def on_headers_complete(self) -> None:
        if self.head_done:
            return
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            self.interim += 1
            if self.interim > MAX_INTERIM:
                self.problem = self.problem or _Malformed(
                    f"more than {MAX_INTERIM} interim (1xx) answers"
                )
            return
        self.status = status
        self.head_done = True
        self.keep_alive = parser.should_keep_alive()
        if self.head_only or status == 204 or status == 304:
            self.complete = True  # no body, whatever the fields say
        if self.received > RECV_SIZE // 2:
            self.frame()  # a head this large may break MAX_HEAD: measure it now

    def frame(self) -> None:
        if self.framed or not self.head_done:
            return
        self.framed = True
        full = _Parse(self.conn, "HEAD" if self.head_only else "PUT", capped=True, keep_body=False)
        with contextlib.suppress(httptools.HttpParserError):  # the first parse judged those
            full.parser.feed_data(b"".join(self.raw or ()))
        self.reason = full.reason
        self.fields = full.fields
        self.head_fields = full.head_fields
        self.length = full.length
        self.chunked = full.chunked
        self.head_total = full.head_total
        if full.problem is not None and self.problem is None:
            self.problem = full.problem
        if not self.complete:
            if self.length is not None and self.length > MAX_ANSWER_BODY:
                self.problem = self.problem or _too_large()
            self.until_close = self.length is None and not self.chunked

    def answer(self) -> Answer:
        if self.framed:
            return super().answer()
        return Answer(self.status, source=self)


def _head_too_large() -> _Malformed:
    return _Malformed(f"the answer's head is larger than {_amount(MAX_HEAD)}")


def _parser_words(exc: Exception) -> str:
    """llhttp's reason for refusing an answer, as a phrase for the error message."""
    text = str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


# --- connections -----------------------------------------------------------------------


class Connection:
    """One socket to a media server and the bytes received but not yet parsed."""

    def __init__(self, sock: socket.socket, plain: bool, read_timeout: float) -> None:
        self.sock = sock
        self.plain = plain  # sendfile(2) only works on a socket without TLS
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

    def _sendall(self, data: bytes | memoryview) -> None:
        # sendall's timeout bounds the whole call (Python >= 3.5), TLS's each record write.
        self._arm()
        if self.plain:
            # Written first, waited for only if the socket is full: on a socket with a
            # timeout, Python polls before every send, which for a request that fits in
            # the socket's buffer (nearly all of them) is a second system call and a
            # second release of the GIL, paid by every thread of the process.
            try:
                sent = os.write(self.sock.fileno(), data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        try:
            self.sock.sendall(data)
        except TimeoutError as exc:
            raise self._timed_out(exc) from None

    def receive(self) -> bytes:
        """The next bytes of the answer, within the deadline; b"" at the end of the stream."""
        self._arm()
        try:
            return self.sock.recv(RECV_SIZE)
        except TimeoutError as exc:
            raise self._timed_out(exc) from None

    def close(self) -> None:
        self.sock.close()

    def dropped(self) -> bool:
        """True if an idle connection was closed by the server (or has stray bytes)."""
        # poll, not select: select cannot watch descriptors above 1023, which a busy
        # application server with many open files reaches.
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        try:
            return bool(poller.poll(0))
        except OSError:
            return True

    def send(self, head: bytes, inline: bytes | None, body: Body | None, size: int) -> None:
        if inline is not None:
            self._sendall(head + inline)
            return
        self._sendall(head)
        if body is None or size == 0:
            return
        if isinstance(body, BytesBody):
            # Slices of the shared buffer: no copy per host (a BytesIO over it would
            # copy the whole body first, then every block read from it).
            view = body.data
            for start in range(0, size, STREAM_BLOCK):
                self._sendall(view[start : start + STREAM_BLOCK])
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

    def _send_file(self, handle: Readable, size: int) -> int:
        if self.plain and _has_fileno(handle):
            return self._sendfile(handle.fileno(), size)  # type: ignore[attr-defined]
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


# What sending on a connection the server has closed raises (TLS has its own words).
_CLOSED = (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


def _read_whole(conn: Connection, method: str) -> tuple[Answer, bool]:
    """Read one answer to a write to its end, body dropped; return it and whether the
    connection can carry another request."""
    parse = _LeanParse(conn, method)
    parse.read_all()
    return parse.answer(), parse.reusable()


def _read_head(conn: Connection, method: str) -> _Parse:
    """Read the head of an answer whose body its reader reads."""
    parse = _Parse(conn, method, capped=False, keep_body=True)
    parse.read_head()
    return parse


def _answer_left_on(conn: Connection, method: str) -> Answer | None:
    """An answer the server sent before closing a connection we could not finish sending on."""
    try:
        answer, _ = _read_whole(conn, method)
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


# --- requests --------------------------------------------------------------------------


class Pending:
    """A request on the wire whose answer has not been read yet.

    If the connection turns out to have been closed before the server answered (a
    keep-alive timeout or a reload racing our request), the request is sent once more
    on a new connection: every method the library sends is idempotent. The retry keeps
    the deadline set here, so a flaky server cannot double a save's wait.
    """

    def __init__(
        self, pool: ConnectionPool, method: str, target: str, head: bytes, body: Body | None
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
                raise ConnectionError(
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
            raise ConnectionError(
                f"{where}: the connection was closed "
                f"before any answer, twice ({exc or type(exc).__name__})"
            ) from exc
        if time.monotonic() >= self.deadline:
            # Noticed late (another host's answer was awaited first): the retry keeps
            # the deadline, so there is no time left to send again.
            raise ReadTimeout(
                f"{where}: the connection was closed before any answer, with no time left "
                f"to send again within {self.pool.deadline_reason(self)}"
            ) from exc
        self.retried = True

    def _late(self) -> None:
        """Called past the deadline (the fan-out awaited another host first), still take
        an answer that has arrived, within ``LATE_READ``."""
        if self.conn is not None:
            now = time.monotonic()
            if now > self.deadline:
                self.conn.deadline = now + LATE_READ

    def _read(self, read: Any) -> Any:
        """Run ``read(conn)`` on the connection, sending again once if it was stale."""
        self._late()
        while True:
            conn = self.conn
            assert conn is not None
            try:
                return read(conn)
            except (_Stale, *_CLOSED) as exc:
                self._discard()
                self._count_retry(exc)
                self._send()
                if self._early is not None:
                    return None
            except BaseException as exc:
                self._discard()
                raise self.pool.translate(exc, self) from exc

    def answer(self) -> Answer:
        """Wait for the server's whole answer (within the request's deadline), body dropped."""
        if self._early is not None:
            return self._early
        outcome = self._read(lambda conn: _read_whole(conn, self.method))
        if outcome is None:
            assert self._early is not None
            return self._early
        answer, reusable = outcome
        conn = self.conn
        assert conn is not None
        self.conn = None
        self.pool.release(conn, reusable)
        return answer

    def response(self) -> Response:
        """Wait for the answer's head; its body is read from the returned Response."""
        if self._early is not None:
            return Response.without_body(self._early)
        parse = self._read(lambda conn: _read_head(conn, self.method))
        if parse is None:
            assert self._early is not None
            return Response.without_body(self._early)
        conn = self.conn
        assert conn is not None
        self.conn = None
        # The body goes at its reader's pace, each read within the read timeout.
        conn.deadline = float("inf")
        return Response(self, conn, parse)

    def _discard(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class ReadStream(io.RawIOBase):
    """A read-only stream whose subclasses only write ``read``: io's buffered readers and
    ``shutil.copyfileobj`` call ``readinto`` and ``readall``, given here in its terms."""

    def readable(self) -> bool:
        return True

    def readall(self) -> bytes:
        return self.read()

    def readinto(self, target: Any) -> int:
        view = memoryview(target).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


class Response(ReadStream):
    """An answer whose body is read as its reader goes: a streamed download, a listing.

    At most one received piece of the body (one socket read) is held. The connection
    goes back to the pool once the body has been read to its end, which for a HEAD or
    a small answer is before the Response is even handed over; closed before that,
    the connection is closed too (what is left of the body could be anything).
    """

    status: int
    reason: str
    #: The header fields, any case looks up.
    headers: Headers
    #: The body's Content-Length, or for HEAD the length a GET would have (None: unknown).
    size: int | None

    def __init__(self, pending: Pending | None, conn: Connection | None, parse: _Parse) -> None:
        super().__init__()
        self._pending = pending
        self._conn = conn
        self._parse = parse
        self._rest = b""  # what a short read left of a piece
        self.status = parse.status
        self.reason = parse.reason.decode("latin-1").strip()
        self.headers = parse.headers
        self.size = parse.length
        self._check()

    @classmethod
    def without_body(cls, early: Answer) -> Response:
        """An answer already read whole (sent before the request was): nothing to read."""
        parse = _Parse.__new__(_Parse)
        parse.status, parse.reason = early.status, early.reason.encode("latin-1")
        parse.fields = [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in early.headers.items()
        ]
        parse.body, parse.complete, parse.length = [], True, 0
        parse.head_fields = len(parse.fields)
        return cls(None, None, parse)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._rest]
            self._rest = b""
            while piece := self._next():
                parts.append(piece)
            return b"".join(parts)
        piece = self._rest or self._next()
        self._rest = piece[size:]
        return piece[:size]

    def _next(self) -> bytes:
        parse = self._parse
        if parse.body or self._conn is None:
            piece = parse.body.pop(0) if parse.body else b""
        else:
            try:
                piece = parse.next_piece()
            except BaseException as exc:
                self._drop()
                assert self._pending is not None
                raise self._pending.pool.translate(exc, self._pending) from exc
        self._check()
        return piece

    def _check(self) -> None:
        """Give the connection back once the body has been received to its end."""
        conn = self._conn
        if conn is not None and self._parse.complete:
            self._conn = None
            assert self._pending is not None
            self._pending.pool.release(conn, self._parse.reusable())

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._drop()
        self._parse.body = []
        self._rest = b""
        super().close()

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# --- the pool --------------------------------------------------------------------------


class ConnectionPool:
    """Kept-alive connections to one media server, shared by every thread.

    A thread takes an idle connection (or opens one) for the length of one request
    and gives it back; at most ``max_idle`` idle connections are kept (the most
    recently used is taken first, so the ones the server may have closed sit unused).
    """

    def __init__(
        self,
        host: Host,
        *,
        connect_timeout: float,
        read_timeout: float,
        verify: bool | str = True,
        max_idle: int = MAX_IDLE,
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
        self._header_lines: dict[tuple[tuple[str, str], ...], str] = {}
        #: Connections opened and requests sent over the pool's life (tests, bench).
        self.opened = 0
        self.sent = 0

    def url(self, target: str) -> str:
        return self.host.origin + target

    def start(
        self, method: str, target: str, *, headers: Mapping[str, str], body: Body | None = None
    ) -> Pending:
        """Send a request (``target`` already quoted) and return it, not yet answered."""
        lines = f"{method} {target} HTTP/1.1\r\nHost: {self.netloc}\r\n"
        if headers:
            lines += self._fields(headers)
        if body is not None or method == "PUT":
            lines += f"Content-Length: {0 if body is None else body.size}\r\n"
        head = (lines + "\r\n").encode("latin-1")
        return Pending(self, method, target, head, body)

    def _fields(self, headers: Mapping[str, str]) -> str:
        """Header lines, checked once per set of headers: a transport sends the same
        credentials with every write."""
        key = tuple(headers.items())
        lines = self._header_lines.get(key)
        if lines is None:
            for name, value in key:
                # A line break in a value (a token read from a file with its newline)
                # would end the head early or inject a header: refuse it.
                if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
                    raise ValueError(
                        f"invalid header {name!r}: names are tokens, values have no line breaks"
                    )
            lines = "".join(f"{name}: {value}\r\n" for name, value in key)
            if len(self._header_lines) < 64:
                self._header_lines[key] = lines
        return lines

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
        if reusable:
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
                # certifi's bundle, as requests and most Python HTTP clients use: the
                # same certificates are accepted whatever the operating system trusts.
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
        """The TransportError for a low-level failure, naming the request."""
        if isinstance(exc, TransportError):
            return exc
        where = f"{pending.method} {self.url(pending.target)}"
        if isinstance(exc, _Malformed):
            return ConnectionError(f"{where}: invalid answer: {exc}")
        if isinstance(exc, _Deadline):
            what = "the request was not sent in full" if sending else "no complete answer"
            return ReadTimeout(f"{where}: {what} within {self.deadline_reason(pending)}")
        if isinstance(exc, TimeoutError):
            if connecting:
                return ConnectTimeout(f"{where}: no connection within {self.connect_timeout}s")
            if sending:
                return ReadTimeout(f"{where}: sending stalled for {self.read_timeout}s")
            return ReadTimeout(f"{where}: no answer within {self.read_timeout}s")
        if isinstance(exc, ssl.SSLError | ssl.CertificateError):
            return SSLError(f"{where}: {exc}")
        if isinstance(exc, OSError):
            verb = "cannot connect" if connecting else "connection failed"
            return ConnectionError(f"{where}: {verb}: {exc}")
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
