"""wire.py against a scripted raw TCP server: the bytes on the wire and every failure path.

The in-process TestHttpServer always speaks well-formed HTTP, so it cannot show how
the lean client copes with a server that answers garbage, closes at the wrong moment
or never answers. The server here answers each request with bytes a test gives it,
and records exactly what it received.
"""

from __future__ import annotations

import enum
import os
import pickle
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from django_resto import wire
from django_resto.hosts import parse_host
from django_resto.transport import BytesBody, FileBody
from tests.servers import TlsFiles

#: How often server threads blocked on a socket look at the stop flag.
POLL = 0.05
#: No server thread waits longer than this for anything, whatever a test does.
SERVER_DEADLINE = 10.0
#: Pause between the parts of a reply, so the client sees them in separate reads.
PART_PAUSE = 0.02

CREATED = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


class Act(enum.Enum):
    """What the server does instead of answering a request."""

    CLOSE = "close the connection without answering"
    HANG = "never answer, keep the connection open"


@dataclass(frozen=True)
class Reply:
    """Bytes to write back, in parts, and whether to close the connection afterwards.

    ``repeat`` is written for ever after the parts, until the client gives up: the
    server that never stops talking. ``delay`` passes before the first part.
    """

    parts: tuple[bytes, ...]
    close: bool = False
    pause: float = PART_PAUSE
    repeat: bytes = b""
    delay: float = 0.0


def reply(
    *parts: bytes,
    close: bool = False,
    pause: float = PART_PAUSE,
    repeat: bytes = b"",
    delay: float = 0.0,
) -> Reply:
    """Several parts arrive in separate reads: they exercise the client's partial parsing."""
    return Reply(parts, close, pause, repeat, delay)


def trickle(data: bytes, pause: float, **kwargs: Any) -> Reply:
    """``data`` one byte at a time: every read is quick, the whole answer is not."""
    return reply(*(data[index : index + 1] for index in range(len(data))), pause=pause, **kwargs)


Action = Reply | Act


def _content_length(head: bytes) -> int:
    """The server must read whole bodies, or the next request would start mid-body."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


class ScriptedServer:
    """A listening socket on loopback that plays a script, one action per request.

    Actions are taken in the order requests arrive, whatever connection carries
    them; once the script is exhausted every request is met with ``Act.CLOSE``.
    Each connection is served by its own thread, so a pool may hold several.
    """

    def __init__(
        self,
        actions: list[Action],
        *,
        read_block: int = 1024 * 1024,
        read_pause: float = 0.0,
        receive_buffer: int | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.actions = list(actions)
        # A slow reader: at most ``read_block`` bytes per read, ``read_pause`` after each.
        self.read_block = read_block
        self.read_pause = read_pause
        self.context: ssl.SSLContext | None = None
        self.ca_cert = None if tls is None else str(tls.ca_cert)
        if tls is not None:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(tls.cert, tls.key)
        self.requests: list[bytes] = []  # complete requests, head and body, as received
        self.accepted = 0
        self.closed = 0  # connections the server side has closed
        self.answered = 0  # replies written in full
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.listener = socket.socket()
        if receive_buffer is not None:
            # Before listen(), so accepted sockets inherit it: a small window makes a
            # slow reader slow down the client at once, whatever the kernel would buffer.
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.settimeout(POLL)
        self.port: int = self.listener.getsockname()[1]
        scheme = "https" if tls is not None else "http"
        self.host = parse_host(f"{scheme}://127.0.0.1:{self.port}")
        self.origin = f"{scheme}://127.0.0.1:{self.port}"
        acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._threads.append(acceptor)
        acceptor.start()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait for a counter to reach a value: the server thread updates them."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout=timeout)

    def stop(self) -> None:
        self._stop.set()
        self.listener.close()
        for thread in self._threads:
            thread.join(timeout=5)
        alive = [thread for thread in self._threads if thread.is_alive()]
        assert not alive, f"server threads did not stop: {alive}"

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(POLL)
            with self._cond:
                self.accepted += 1
                self._cond.notify_all()
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _recv(self, sock: socket.socket) -> bytes:
        """One read; b"" on end of stream, on a reset, or when the fixture stops."""
        deadline = time.monotonic() + SERVER_DEADLINE
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                data = sock.recv(self.read_block)
            except TimeoutError:
                continue
            except OSError:
                return b""
            if data and self.read_pause:
                self._stop.wait(self.read_pause)
            return data
        return b""

    def _read_request(self, sock: socket.socket, buffer: bytearray) -> bytes | None:
        while b"\r\n\r\n" not in buffer:
            data = self._recv(sock)
            if not data:
                return None
            buffer += data
        end = buffer.index(b"\r\n\r\n") + 4
        total = end + _content_length(bytes(buffer[:end]))
        while len(buffer) < total:
            data = self._recv(sock)
            if not data:
                return None  # the client gave up in the middle of its body
            buffer += data
        request = bytes(buffer[:total])
        del buffer[:total]
        return request

    def _serve(self, sock: socket.socket) -> None:
        buffer = bytearray()
        try:
            if self.context is not None:
                sock.settimeout(SERVER_DEADLINE)
                sock = self.context.wrap_socket(sock, server_side=True)
                sock.settimeout(POLL)
            while True:
                request = self._read_request(sock, buffer)
                if request is None:
                    return
                with self._cond:
                    self.requests.append(request)
                    action = self.actions.pop(0) if self.actions else Act.CLOSE
                    self._cond.notify_all()
                if action is Act.CLOSE:
                    return
                if action is Act.HANG:
                    while self._recv(sock):
                        pass
                    return
                sock.settimeout(SERVER_DEADLINE)
                if action.delay and self._stop.wait(action.delay):
                    return
                for index, part in enumerate(action.parts):
                    if index:
                        time.sleep(action.pause)
                    sock.sendall(part)
                if action.repeat:
                    # Until the client closes (the write fails) or the fixture stops.
                    deadline = time.monotonic() + SERVER_DEADLINE
                    while not self._stop.is_set() and time.monotonic() < deadline:
                        sock.sendall(action.repeat)
                        if action.pause:
                            self._stop.wait(action.pause)
                    return
                sock.settimeout(POLL)
                with self._cond:
                    self.answered += 1
                    self._cond.notify_all()
                if action.close:
                    return
        except OSError:
            return  # the client closed while we were writing: part of some scripts
        finally:
            sock.close()
            with self._cond:
                self.closed += 1
                self._cond.notify_all()


Scripted = Callable[..., ScriptedServer]
PoolFor = Callable[..., wire.ConnectionPool]


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    """Start scripted servers: ``scripted(reply(CREATED), Act.CLOSE, read_pause=0.1)``."""
    servers: list[ScriptedServer] = []

    def start(*actions: Action, **options: Any) -> ScriptedServer:
        server = ScriptedServer(list(actions), **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def pool_for(scripted: Scripted) -> Iterator[PoolFor]:
    """Connection pools to scripted servers, closed at teardown.

    Depending on ``scripted`` makes the pools close before the servers stop, so no
    server thread waits for a client that is already gone.
    """
    pools: list[wire.ConnectionPool] = []

    def make(server: ScriptedServer, **kwargs: Any) -> wire.ConnectionPool:
        kwargs.setdefault("connect_timeout", 2.0)
        kwargs.setdefault("read_timeout", 2.0)
        if server.ca_cert is not None:
            kwargs.setdefault("verify", server.ca_cert)
        pool = wire.ConnectionPool(server.host, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


def put(pool: wire.ConnectionPool, body: bytes = b"x", target: str = "/media/a.txt") -> wire.Answer:
    """One whole write, for tests about what happens around it rather than in it."""
    return pool.start("PUT", target, headers={}, body=BytesBody(body)).answer()


def expected_put(server: ScriptedServer, body: bytes = b"x", target: str = "/media/a.txt") -> bytes:
    """The exact bytes of ``put(pool, body, target)``, to compare what a server received."""
    return (
        f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# The request on the wire


def test_put_request_bytes_are_exact(scripted, pool_for):
    server = scripted(reply(CREATED))
    pool = pool_for(server)
    auth = wire.basic_credentials("user", "pässword")
    pending = pool.start(
        "PUT", "/media/h%C3%A9llo%20w.txt", headers={"Authorization": auth}, body=BytesBody(b"hi")
    )
    assert pending.answer() == wire.Answer(201, "Created", {"content-length": "0"})
    assert server.requests == [
        b"PUT /media/h%C3%A9llo%20w.txt HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{server.port}\r\n".encode()
        + b"Authorization: Basic dXNlcjpww6Rzc3dvcmQ=\r\n"
        b"Content-Length: 2\r\n"
        b"\r\n"
        b"hi"
    ]


@pytest.mark.parametrize("body", [BytesBody(b""), None], ids=["empty-body", "no-body"])
def test_empty_put_says_content_length_zero(scripted, pool_for, body):
    server = scripted(reply(CREATED))
    pool = pool_for(server)
    assert pool.start("PUT", "/media/e", headers={}, body=body).answer().status == 201
    assert server.requests == [
        f"PUT /media/e HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    ]


@pytest.mark.parametrize("method", ["DELETE", "MKCOL"])
def test_bodiless_methods_send_no_content_length(scripted, pool_for, method):
    server = scripted(reply(NO_CONTENT))
    pool = pool_for(server)
    headers = {"Authorization": "Bearer t0ken"}
    assert pool.start(method, "/media/d/", headers=headers).answer().status == 204
    assert server.requests == [
        f"{method} /media/d/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        "Authorization: Bearer t0ken\r\n\r\n".encode()
    ]


# Answers


def test_answer_body_is_skipped_and_the_connection_reused(scripted, pool_for):
    error_page = b"<html>" + b"x" * 5000 + b"</html>"
    server = scripted(
        reply(
            b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n" % len(error_page),
            error_page[:100],
            error_page[100:],
        ),
        reply(CREATED),
    )
    pool = pool_for(server)
    first = put(pool, b"one")
    assert first == wire.Answer(201, "Created", {"content-length": str(len(error_page))})
    assert put(pool, b"two").status == 201
    assert (pool.opened, pool.sent, server.accepted) == (1, 2, 1)
    assert server.requests == [expected_put(server, b"one"), expected_put(server, b"two")]


def test_chunked_answer_with_extensions_and_trailers_then_reuse(scripted, pool_for):
    server = scripted(
        reply(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5;name=value\r\nhello\r\n1A;other\r\n" + b"z" * 26 + b"\r\n",
            b"0;last\r\nX-Checksum: abc\r\nX-Other: d\r\n\r\n",
        ),
        reply(NO_CONTENT),
    )
    pool = pool_for(server)
    assert put(pool) == wire.Answer(201, "Created", {"transfer-encoding": "chunked"})
    assert put(pool) == wire.Answer(204, "No Content", {})
    assert (pool.opened, pool.sent, server.accepted) == (1, 2, 1)


def test_interim_100_continue_is_skipped(scripted, pool_for):
    server = scripted(
        reply(
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b'HTTP/1.1 201 Created\r\nETag: "1"\r\nContent-Length: 0\r\n\r\n',
        ),
        reply(CREATED),
    )
    pool = pool_for(server)
    assert put(pool) == wire.Answer(201, "Created", {"etag": '"1"', "content-length": "0"})
    assert put(pool).status == 201
    assert (pool.opened, pool.sent) == (1, 2)


def test_interim_answers_then_final_answer_in_one_read(scripted, pool_for):
    server = scripted(
        reply(b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n" + NO_CONTENT),
        reply(CREATED),
    )
    pool = pool_for(server)
    assert put(pool) == wire.Answer(204, "No Content", {})
    assert put(pool).status == 201
    assert (pool.opened, pool.sent) == (1, 2)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nConnection: Keep-Alive, Close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 201 Created\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 201 Created\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["connection-close", "close-in-a-list", "http-1.0", "http-1.0-keep-alive"],
)
def test_connection_not_reused(scripted, pool_for, answer):
    # The server keeps its side open: the client must decide from the answer alone.
    server = scripted(reply(answer), reply(CREATED))
    pool = pool_for(server)
    assert put(pool, b"one").status == 201
    assert put(pool, b"two").status == 201
    assert (pool.opened, pool.sent, server.accepted) == (2, 2, 2)
    assert server.requests == [expected_put(server, b"one"), expected_put(server, b"two")]


def test_answer_without_length_is_read_to_the_end(scripted, pool_for):
    server = scripted(
        reply(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"some", b" body", close=True
        ),
        reply(CREATED),
    )
    pool = pool_for(server)
    assert put(pool) == wire.Answer(200, "OK", {"content-type": "text/plain"})
    assert put(pool).status == 201
    assert (pool.opened, pool.sent, server.accepted) == (2, 2, 2)


def test_stray_bytes_after_an_answer_spoil_the_connection(scripted, pool_for):
    server = scripted(reply(CREATED + b"HTTP/1.1 500 Oops\r\n\r\n"), reply(CREATED))
    pool = pool_for(server)
    assert put(pool).status == 201
    assert put(pool).status == 201  # not the stray 500
    assert (pool.opened, pool.sent) == (2, 2)


def test_header_names_are_lower_case_and_repeated_names_joined(scripted, pool_for):
    server = scripted(
        reply(
            b"HTTP/1.1 201 Created\r\n"
            b'ETag: "abc"\r\n'
            b"DAV: 1\r\n"
            b"dav:  2 \r\n"
            b"Dav:3\r\n"
            b"X-Empty:\r\n"
            b"CONTENT-length: 0\r\n"
            b"\r\n"
        )
    )
    answer = put(pool_for(server))
    assert answer == wire.Answer(
        201,
        "Created",
        {"etag": '"abc"', "dav": "1, 2, 3", "x-empty": "", "content-length": "0"},
    )


@pytest.mark.parametrize(
    ("status_line", "status", "reason"),
    [
        (b"HTTP/1.1 204 No Content", 204, "No Content"),
        (b"HTTP/1.1 204", 204, ""),
        (b"HTTP/1.1 507 Insufficient  Storage ", 507, "Insufficient  Storage"),
    ],
)
def test_status_line(scripted, pool_for, status_line, status, reason):
    length = b"" if status == 204 else b"Content-Length: 0\r\n"
    server = scripted(reply(status_line + b"\r\n" + length + b"\r\n"), reply(CREATED))
    pool = pool_for(server)
    answer = put(pool)
    assert (answer.status, answer.reason) == (status, reason)
    assert put(pool).status == 201
    assert pool.opened == 1


def test_204_body_is_not_waited_for(scripted, pool_for):
    # A 204 has no body whatever its headers say: a client that believed the
    # Content-Length would wait for bytes that never come.
    server = scripted(
        reply(b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"), reply(CREATED)
    )
    pool = pool_for(server, read_timeout=1.0)
    assert put(pool) == wire.Answer(204, "No Content", {"content-length": "10"})
    assert put(pool).status == 201
    assert (pool.opened, pool.sent) == (1, 2)


# Malformed answers (the details are llhttp's words)

BAD_LENGTH = "invalid character in Content-Length"


@pytest.mark.parametrize(
    ("parts", "detail"),
    [
        ((b"SPDY/3 201 Created\r\n\r\n",), "expected HTTP/"),
        ((b"HTTP/1.1 20 Created\r\n\r\n",), "invalid status code"),
        ((b"HTTP/1.1 2x1 Created\r\n\r\n",), "invalid status code"),
        ((b"<html>hello</html>\r\n\r\n",), "expected HTTP/"),
        ((b"HTTP/1.1 201 Created\r\nNo colon here\r\n\r\n",), "invalid header token"),
        ((b"HTTP/1.1 201 Created\r\n: empty name\r\n\r\n",), "invalid header token"),
        ((b"HTTP/1.1 201 Created\r\nX-Folded: a\r\n  b\r\n\r\n",), "unexpected whitespace"),
        ((b"HTTP/1.1 201 Created\r\nContent-Length: ten\r\n\r\n",), BAD_LENGTH),
        ((b"HTTP/1.1 201 Created\r\nContent-Length: -1\r\n\r\n",), BAD_LENGTH),
        ((b"HTTP/1.1 201 Created\r\nContent-Length: 1, 1\r\n\r\n",), BAD_LENGTH),
        ((b"HTTP/1.1 201 Created\r\nX-Big: " + b"a" * 200_000,), "larger than 64 KiB"),
        (
            (b"HTTP/1.1 201 Created\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",),
            "larger than 64 KiB",
        ),
        (
            (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",),
            "invalid character in chunk size",
        ),
        (
            (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",),
            "invalid character in chunk size",
        ),
    ],
    ids=[
        "protocol",
        "short-code",
        "letter-in-code",
        "html",
        "header-without-colon",
        "header-without-name",
        "folded-header",
        "content-length-word",
        "content-length-negative",
        "content-length-list",
        "head-over-64k-unterminated",
        "head-over-64k",
        "chunk-size-word",
        "chunk-size-empty",
    ],
)
def test_malformed_answer(scripted, pool_for, parts, detail):
    server = scripted(reply(*parts), reply(CREATED))
    pool = pool_for(server)
    with pytest.raises(ConnectionError) as info:
        put(pool)
    message = str(info.value)
    assert message.startswith(f"PUT {server.origin}/media/a.txt: invalid answer: ")
    assert detail in message
    assert not isinstance(info.value, TimeoutError)
    # Never retried, and the broken connection is never used again.
    assert len(server.requests) == 1
    assert put(pool).status == 201
    assert (pool.opened, pool.sent) == (2, 2)


@pytest.mark.parametrize(
    ("parts", "detail"),
    [
        ((b"HTTP/1.1 201 Cre",), "in the middle of its answer"),
        ((b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n", b"short"), "middle of a body"),
        (
            (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n", b"a\r\nhel"),
            "middle of a body",
        ),
        (
            (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n"),
            "middle of a body",
        ),
        (
            (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 1\r\n",),
            "middle of a body",
        ),
    ],
    ids=["in-head", "in-body", "in-chunk", "between-chunks", "in-trailers"],
)
def test_connection_closed_in_the_middle_of_an_answer(scripted, pool_for, parts, detail):
    server = scripted(reply(*parts, close=True))
    pool = pool_for(server)
    with pytest.raises(ConnectionError) as info:
        put(pool)
    assert str(info.value).startswith(f"PUT {server.origin}/media/a.txt: invalid answer: ")
    assert detail in str(info.value)
    # Part of an answer came back: the server saw the request, so it is not sent again.
    assert (pool.opened, pool.sent, len(server.requests)) == (1, 1, 1)


# The stale-connection retry


def test_connection_closed_before_any_answer_is_retried_once(scripted, pool_for):
    server = scripted(Act.CLOSE, reply(CREATED))
    pool = pool_for(server)
    assert put(pool, b"body") == wire.Answer(201, "Created", {"content-length": "0"})
    assert server.accepted == 2
    assert server.requests == [expected_put(server, b"body")] * 2
    assert (pool.opened, pool.sent) == (2, 2)


def test_connection_always_closed_before_any_answer_fails_after_two_attempts(scripted, pool_for):
    server = scripted(Act.CLOSE, Act.CLOSE, Act.CLOSE)
    pool = pool_for(server)
    with pytest.raises(ConnectionError) as info:
        put(pool)
    message = str(info.value)
    assert message.startswith(f"PUT {server.origin}/media/a.txt: the connection was closed")
    assert "twice" in message
    assert server.wait_for(lambda: server.closed == 2)
    assert (server.accepted, len(server.requests)) == (2, 2)
    assert (pool.opened, pool.sent) == (2, 2)


def test_idle_connection_closed_by_the_server_is_caught_by_the_retry(
    scripted, pool_for, monkeypatch
):
    # Within CHECK_IDLE_AFTER an idle connection is not probed: the request goes out
    # on it, finds it closed, and is sent again on a new one.
    monkeypatch.setattr(wire, "CHECK_IDLE_AFTER", 60.0)
    server = scripted(reply(CREATED, close=True), reply(NO_CONTENT))
    pool = pool_for(server)
    assert put(pool).status == 201
    assert server.wait_for(lambda: server.closed == 1)
    assert put(pool).status == 204
    assert (pool.opened, pool.sent) == (2, 3)
    assert len(server.requests) == 2


def test_idle_connection_closed_by_the_server_is_replaced_without_a_retry(
    scripted, pool_for, monkeypatch
):
    monkeypatch.setattr(wire, "CHECK_IDLE_AFTER", 0)
    server = scripted(reply(CREATED, close=True), reply(NO_CONTENT))
    pool = pool_for(server)
    assert put(pool).status == 201
    assert server.wait_for(lambda: server.closed == 1)
    # The probe is one select(2): wait until the server's FIN has reached our socket.
    (idle,) = pool._idle
    assert select.select([idle.sock], [], [], 5)[0]
    assert put(pool).status == 204
    assert (pool.opened, pool.sent) == (2, 2)
    assert server.requests == [expected_put(server)] * 2


def test_idle_connection_still_open_is_reused_after_the_probe(scripted, pool_for, monkeypatch):
    monkeypatch.setattr(wire, "CHECK_IDLE_AFTER", 0)
    server = scripted(reply(CREATED), reply(NO_CONTENT))
    pool = pool_for(server)
    assert put(pool).status == 201
    assert put(pool).status == 204
    assert (pool.opened, pool.sent, server.accepted) == (1, 2, 1)


# Timeouts and refused connections


def test_no_answer_is_a_read_timeout_without_a_retry(scripted, pool_for):
    server = scripted(Act.HANG, reply(CREATED))
    pool = pool_for(server, read_timeout=0.3)
    began = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        put(pool)
    elapsed = time.monotonic() - began
    assert 0.25 <= elapsed < 2
    assert str(info.value) == f"PUT {server.origin}/media/a.txt: no answer within 0.3s"
    assert (pool.opened, pool.sent, server.accepted, len(server.requests)) == (1, 1, 1, 1)
    # The connection that timed out is dropped, not handed to the next request.
    assert put(pool).status == 201
    assert (pool.opened, server.accepted) == (2, 2)


def test_connection_refused_names_method_and_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pool = wire.ConnectionPool(
        parse_host(f"127.0.0.1:{port}"), connect_timeout=2.0, read_timeout=2.0
    )
    with pytest.raises(ConnectionError) as info:
        pool.start("DELETE", "/media/x%20y.txt", headers={})
    message = str(info.value)
    assert message.startswith(f"DELETE http://127.0.0.1:{port}/media/x%20y.txt: cannot connect: ")
    assert not isinstance(info.value, TimeoutError)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert (pool.opened, pool.sent) == (0, 1)


def test_full_accept_queue_is_a_connect_timeout():
    # A listener whose accept queue is full drops SYNs (Linux): the connection is
    # neither refused nor established, which is how an unreachable host behaves.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers: list[socket.socket] = []
        try:
            for _ in range(8):
                try:
                    fillers.append(socket.create_connection(("127.0.0.1", port), timeout=0.3))
                except TimeoutError:
                    break
            else:
                pytest.skip("this kernel does not drop SYNs on a full accept queue")
            pool = wire.ConnectionPool(
                parse_host(f"127.0.0.1:{port}"), connect_timeout=0.3, read_timeout=2.0
            )
            began = time.monotonic()
            with pytest.raises(TimeoutError) as info:
                pool.start("PUT", "/media/a.txt", headers={}, body=BytesBody(b"x"))
            assert time.monotonic() - began < 2
        finally:
            for filler in fillers:
                filler.close()
    assert str(info.value) == f"PUT http://127.0.0.1:{port}/media/a.txt: no connection within 0.3s"
    assert isinstance(info.value, ConnectionError)
    assert (pool.opened, pool.sent) == (0, 1)


# Bodies


def test_file_that_shrank_after_it_was_measured_fails_and_spoils_the_connection(
    scripted, pool_for, tmp_path
):
    path = tmp_path / "shrinks.bin"
    path.write_bytes(b"a" * (wire.INLINE_BODY + 50_000))
    body = FileBody(path)
    with open(path, "r+b") as handle:
        handle.truncate(10_000)
    server = scripted(reply(CREATED))
    pool = pool_for(server)
    with pytest.raises(ConnectionError) as info:
        pool.start("PUT", "/media/s.bin", headers={}, body=body)
    assert str(info.value).startswith(f"PUT {server.origin}/media/s.bin: connection failed: ")
    assert f"after 10000 of {wire.INLINE_BODY + 50_000} bytes" in str(info.value)
    # The server waited for the rest of the body until the client closed the connection.
    assert server.wait_for(lambda: server.closed == 1)
    assert server.requests == []
    # The connection was not given back to the pool: the next request opens another.
    assert put(pool).status == 201
    assert (pool.opened, pool.sent, server.accepted) == (2, 2, 2)


def test_small_file_that_shrank_after_it_was_measured_fails(scripted, pool_for, tmp_path):
    path = tmp_path / "shrinks.txt"
    path.write_bytes(b"a" * 1000)
    body = FileBody(path)
    path.write_bytes(b"a" * 10)
    server = scripted(reply(CREATED))
    pool = pool_for(server, read_timeout=0.3)
    with pytest.raises(ConnectionError):
        pool.start("PUT", "/media/s.txt", headers={}, body=body).answer()


@pytest.fixture
def sendfile_calls(monkeypatch) -> list[int]:
    """Counts os.sendfile calls, to tell which path a body took to the socket."""
    calls: list[int] = []
    real = os.sendfile

    def counting(*args: Any) -> int:
        calls.append(args[3])
        return real(*args)

    monkeypatch.setattr(os, "sendfile", counting)
    return calls


def test_large_file_body_arrives_intact_through_sendfile(
    scripted, pool_for, tmp_path, sendfile_calls
):
    data = os.urandom(3 * 1024 * 1024 + 7)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    server = scripted(reply(CREATED), reply(CREATED))
    pool = pool_for(server)
    for _ in range(2):  # the file is opened again for each request
        answer = pool.start("PUT", "/media/big.bin", headers={}, body=FileBody(path)).answer()
        assert answer.status == 201
    assert server.requests == [expected_put(server, data, "/media/big.bin")] * 2
    assert sendfile_calls
    assert (pool.opened, pool.sent) == (1, 2)


@pytest.mark.parametrize(
    "size", [wire.INLINE_BODY, wire.INLINE_BODY + 1, 3 * wire.STREAM_BLOCK + 5]
)
def test_bytes_body_arrives_intact_without_sendfile(scripted, pool_for, size, sendfile_calls):
    data = os.urandom(size)
    server = scripted(reply(CREATED))
    pool = pool_for(server)
    assert put(pool, data).status == 201
    assert server.requests == [expected_put(server, data)]
    assert sendfile_calls == []


def test_small_file_body_goes_inline(scripted, pool_for, tmp_path, sendfile_calls):
    path = tmp_path / "small.txt"
    path.write_bytes(b"small file")
    server = scripted(reply(CREATED))
    pool = pool_for(server)
    assert pool.start("PUT", "/media/a.txt", headers={}, body=FileBody(path)).answer().status == 201
    assert server.requests == [expected_put(server, b"small file")]
    assert sendfile_calls == []


# The pool


def test_pool_cannot_be_pickled(scripted, pool_for):
    pool = pool_for(scripted())
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(pool)


def test_requests_started_on_two_pools_are_answered_in_parallel(scripted, pool_for):
    one = scripted(reply(CREATED))
    two = scripted(reply(b"HTTP/1.1 204 No Content\r\nX-Server: two\r\n\r\n"))
    pool_one, pool_two = pool_for(one), pool_for(two)
    pending_one = pool_one.start("PUT", "/media/p", headers={}, body=BytesBody(b"1"))
    pending_two = pool_two.start("PUT", "/media/p", headers={}, body=BytesBody(b"2"))
    # Both servers got their request before either answer was read.
    assert one.wait_for(lambda: one.answered == 1)
    assert two.wait_for(lambda: two.answered == 1)
    assert pending_one.answer() == wire.Answer(201, "Created", {"content-length": "0"})
    assert pending_two.answer() == wire.Answer(204, "No Content", {"x-server": "two"})
    assert one.requests == [expected_put(one, b"1", "/media/p")]
    assert two.requests == [expected_put(two, b"2", "/media/p")]


def test_concurrent_requests_on_one_pool_use_separate_connections(scripted, pool_for):
    server = scripted(reply(CREATED), reply(CREATED), reply(CREATED))
    pool = pool_for(server, max_idle=1)
    first = pool.start("PUT", "/media/1", headers={}, body=BytesBody(b"1"))
    second = pool.start("PUT", "/media/2", headers={}, body=BytesBody(b"2"))
    assert first.answer().status == 201
    assert second.answer().status == 201
    assert (pool.opened, server.accepted) == (2, 2)
    # max_idle=1: one of the two connections was closed on release, the other is reused.
    assert server.wait_for(lambda: server.closed == 1)
    assert put(pool).status == 201
    assert (pool.opened, pool.sent, server.accepted) == (2, 3, 2)


# Bugs found while writing these tests, fixed in wire.py since


def test_retry_after_a_stale_connection_goes_to_a_new_connection(scripted, pool_for, monkeypatch):
    monkeypatch.setattr(wire, "CHECK_IDLE_AFTER", 60.0)
    server = scripted(reply(CREATED, close=True), reply(CREATED, close=True), reply(NO_CONTENT))
    pool = pool_for(server)
    first = pool.start("PUT", "/media/1", headers={}, body=BytesBody(b"1"))
    second = pool.start("PUT", "/media/2", headers={}, body=BytesBody(b"2"))
    assert (first.answer().status, second.answer().status) == (201, 201)
    # Both connections are idle in the pool, and both were closed by the server.
    assert server.wait_for(lambda: server.closed == 2)
    assert put(pool).status == 204
    assert (pool.opened, server.accepted) == (3, 3)


@pytest.mark.parametrize(
    "chunks",
    [b"-2\r\n0\r\n\r\n", b"0x1\r\nX\r\n0\r\n\r\n", b"+1\r\nX\r\n0\r\n\r\n"],
    ids=["negative", "0x-prefix", "plus-sign"],
)
def test_chunk_size_must_be_hex_digits(scripted, pool_for, chunks):
    server = scripted(
        reply(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks, close=True)
    )
    with pytest.raises(ConnectionError, match="invalid answer: invalid character in chunk size"):
        put(pool_for(server))


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 201 Created\r\nContent-Length: \xb2\r\n\r\n",
        b"HTTP/1.1 2\xb20 Created\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["content-length", "status-code"],
)
def test_superscript_digits_are_an_invalid_answer(scripted, pool_for, answer):
    server = scripted(reply(answer))
    with pytest.raises(ConnectionError, match="invalid answer"):
        put(pool_for(server))


def test_head_just_over_64k_is_an_invalid_answer(scripted, pool_for):
    start = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nX-Big: "
    head = start + b"a" * (wire.MAX_HEAD + 100 - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == wire.MAX_HEAD + 100
    server = scripted(reply(head))
    pool = pool_for(server)
    pending = pool.start("PUT", "/media/a.txt", headers={}, body=BytesBody(b"x"))
    # The whole answer is in our socket buffer before it is read.
    assert server.wait_for(lambda: server.answered == 1)
    with pytest.raises(ConnectionError, match="larger than 64 KiB"):
        pending.answer()


@pytest.mark.parametrize("value", ["Bearer t0ken\n", "Bearer t0ken\r\nX-Injected: 1"])
def test_header_value_with_a_line_break_is_refused(scripted, pool_for, value):
    server = scripted(reply(CREATED))
    pool = pool_for(server)
    with pytest.raises(ValueError):
        pending = pool.start(
            "PUT", "/media/a.txt", headers={"Authorization": value}, body=BytesBody(b"x")
        )
        pending.answer()  # only reached while the bug lasts: frees the connection
    assert server.requests == []


def test_an_answer_sent_before_the_body_was_read_is_the_outcome():
    """A server may refuse a large body before reading it (413, 401) and close: sending
    then fails, but the answer it left is the outcome, not a stale-connection retry."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def refuse() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            conn.sendall(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
            conn.shutdown(socket.SHUT_WR)
            time.sleep(0.2)  # then close with the body unread: the client's send fails
        listener.close()

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    pool = wire.ConnectionPool(parse_host(f"127.0.0.1:{port}"), connect_timeout=2, read_timeout=2)
    answer = pool.start("PUT", "/media/big", headers={}, body=BytesBody(b"x" * (64 << 20))).answer()
    thread.join(timeout=5)
    assert (answer.status, answer.reason) == (413, "Content Too Large")
    assert (pool.opened, pool.sent) == (1, 1)  # no retry
    assert pool._idle == []  # the connection is not kept


# Deadlines and caps: a server that never stops, or never finishes, fails the request

#: How late a failure past its deadline may come on a loaded 2-core machine: the
#: bound says "not a hang", never how fast the client is.
LATE = 1.5


def deadline_of(pool: wire.ConnectionPool, size: int) -> float:
    return pool.read_timeout + size / pool.min_transfer_rate


def test_answer_head_trickled_a_byte_at_a_time_fails_at_the_deadline(scripted, pool_for):
    # Every byte comes within the read timeout, the whole answer would take 4 s.
    server = scripted(trickle(CREATED, 0.1))
    pool = pool_for(server, read_timeout=0.5)
    body = b"x" * wire.INLINE_BODY
    began = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        put(pool, body)
    elapsed = time.monotonic() - began
    assert str(info.value) == (
        f"PUT {server.origin}/media/a.txt: no complete answer within 0.75 s "
        "(timeout 0.5 s + 64 KiB at 256 KiB/s)"
    )
    assert deadline_of(pool, len(body)) == 0.75
    assert 0.75 <= elapsed < 0.75 + LATE
    assert (pool.opened, pool.sent, len(server.requests)) == (1, 1, 1)  # not retried


def test_answer_body_trickled_within_the_deadline_is_read(scripted, pool_for):
    # Slow, but done in time: the deadline is a bound, not a speed limit on answers.
    answer = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello"
    server = scripted(trickle(answer, 0.005), reply(CREATED))
    pool = pool_for(server, read_timeout=2.0)
    assert put(pool) == wire.Answer(201, "Created", {"content-length": "5"})
    assert put(pool).status == 201
    assert pool.opened == 1


def test_answer_trickled_over_tls_fails_at_the_deadline(scripted, pool_for, tls_files):
    server = scripted(trickle(CREATED, 0.1), tls=tls_files)
    pool = pool_for(server, read_timeout=0.5)
    began = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        pool.start("DELETE", "/media/a.txt", headers={}).answer()
    elapsed = time.monotonic() - began
    assert str(info.value) == (
        f"DELETE {server.origin}/media/a.txt: no complete answer within 0.5 s (timeout 0.5 s)"
    )
    assert 0.5 <= elapsed < 0.5 + LATE


def test_endless_100_continue_fails_after_the_cap(scripted, pool_for):
    server = scripted(reply(repeat=b"HTTP/1.1 100 Continue\r\n\r\n", pause=0))
    pool = pool_for(server)
    began = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        put(pool)
    assert str(info.value) == (
        f"PUT {server.origin}/media/a.txt: invalid answer: "
        f"more than {wire.MAX_INTERIM} interim (1xx) answers"
    )
    assert not isinstance(info.value, TimeoutError)
    assert time.monotonic() - began < deadline_of(pool, 1) + LATE
    assert (pool.opened, pool.sent) == (1, 1)
    assert server.wait_for(lambda: server.closed == 1)  # the client hung up


def test_interim_answers_up_to_the_cap_are_accepted(scripted, pool_for):
    interim = b"HTTP/1.1 102 Processing\r\n\r\n" * wire.MAX_INTERIM
    server = scripted(reply(interim, CREATED), reply(CREATED))
    pool = pool_for(server)
    assert put(pool).status == 201
    assert put(pool).status == 201
    assert pool.opened == 1


ENDLESS_CHUNKS = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"


@pytest.mark.parametrize(
    ("head", "repeat"),
    [
        (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n", ENDLESS_CHUNKS),
        (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\nx\r\n" * 1000),
        (
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
            b"X-Trailer: " + b"t" * 1000 + b"\r\n",
        ),
        (b"HTTP/1.1 201 Created\r\n\r\n", b"x" * 65536),
        (b"HTTP/1.0 201 Created\r\n\r\n", b"x" * 65536),
    ],
    ids=["chunked", "tiny-chunks", "chunked-trailers", "close-delimited", "http-1.0"],
)
def test_endless_answer_body_fails_at_the_cap(scripted, pool_for, head, repeat):
    # A 201 whose body never ends is not an acknowledgement.
    server = scripted(reply(head, repeat=repeat, pause=0))
    pool = pool_for(server)
    began = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        put(pool)
    assert str(info.value) == (
        f"PUT {server.origin}/media/a.txt: invalid answer: the answer's body is larger "
        "than 1 MiB, the most an answer to a write may carry"
    )
    assert not isinstance(info.value, TimeoutError)
    assert time.monotonic() - began < deadline_of(pool, 1) + LATE
    assert (pool.opened, pool.sent) == (1, 1)  # never retried
    assert server.wait_for(lambda: server.closed == 1)  # the client closed the connection
    assert pool._idle == []


@pytest.mark.parametrize(
    "length",
    [b"%d" % (wire.MAX_ANSWER_BODY + 1), b"9" * 5000, b"0" * 5000 + b"%d" % (1 << 40)],
    ids=["one-over", "5000-digits", "leading-zeros"],
)
def test_content_length_over_the_cap_fails_without_reading(scripted, pool_for, length):
    # 5000 digits: more than any length (llhttp's "Content-Length overflow"), and still
    # a clean failure of that host.
    server = scripted(reply(b"HTTP/1.1 201 Created\r\nContent-Length: " + length + b"\r\n\r\n"))
    pool = pool_for(server)
    with pytest.raises(ConnectionError, match=r"larger than 1 MiB, the most an answer|overflow"):
        put(pool)
    assert server.wait_for(lambda: server.closed == 1)
    assert pool._idle == []


def body_of(framing: str, size: int) -> Reply:
    """A 201 whose body takes ``size`` bytes on the wire, framing included."""
    if framing == "content-length":
        return reply(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n" % size, b"x" * size)
    if framing == "chunked":
        data = size - len(b"fffff\r\n\r\n0\r\n\r\n")
        body = b"%05x\r\n" % data + b"x" * data + b"\r\n0\r\n\r\n"
        assert len(body) == size
        return reply(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n", body)
    return reply(b"HTTP/1.1 201 Created\r\n\r\n", b"x" * size, close=True)


@pytest.mark.parametrize("framing", ["content-length", "chunked", "close-delimited"])
def test_answer_body_of_exactly_the_cap_is_accepted(scripted, pool_for, framing):
    server = scripted(body_of(framing, wire.MAX_ANSWER_BODY), reply(CREATED))
    pool = pool_for(server)
    assert put(pool).status == 201
    assert put(pool).status == 201


@pytest.mark.parametrize("framing", ["content-length", "chunked", "close-delimited"])
def test_answer_body_one_byte_over_the_cap_fails(scripted, pool_for, framing):
    server = scripted(body_of(framing, wire.MAX_ANSWER_BODY + 1), reply(CREATED))
    pool = pool_for(server)
    with pytest.raises(ConnectionError, match="larger than 1 MiB, the most an answer"):
        put(pool)
    assert put(pool).status == 201
    assert (pool.opened, pool.sent) == (2, 2)


def test_endless_close_delimited_body_trickled_fails_at_the_deadline(scripted, pool_for):
    # Under the cap for ever, but never over: the deadline ends it.
    server = scripted(reply(b"HTTP/1.1 201 Created\r\n\r\n", repeat=b"x" * 100, pause=0.05))
    pool = pool_for(server, read_timeout=0.5)
    began = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        put(pool)
    elapsed = time.monotonic() - began
    assert str(info.value) == (
        f"PUT {server.origin}/media/a.txt: no complete answer within 0.5 s "
        "(timeout 0.5 s + 1 B at 256 KiB/s)"
    )
    assert 0.5 <= elapsed < 0.5 + LATE


#: A slow reader for send tests: 64 KiB reads, 20 ms apart (at most 3.2 MiB/s). Each
#: wait for room in the send buffer is well within a 1 s read timeout, the whole of a
#: 32 MiB body is not within the 3 s deadline of these tests.
SLOW_READER = {"read_block": 64 * 1024, "read_pause": 0.02, "receive_buffer": 64 * 1024}
SLOW_BODY = 32 * 1024 * 1024


@pytest.mark.parametrize("kind", ["file-sendfile", "bytes-stream"])
def test_server_reading_the_body_slowly_is_bounded_by_the_deadline(
    scripted, pool_for, tmp_path, kind, sendfile_calls
):
    server = scripted(reply(CREATED), **SLOW_READER)
    pool = pool_for(server, read_timeout=1.0, min_transfer_rate=16 * 1024 * 1024)
    data = os.urandom(SLOW_BODY)
    if kind == "file-sendfile":
        path = tmp_path / "big.bin"
        path.write_bytes(data)
        body: Any = FileBody(path)
    else:
        body = BytesBody(data)
    began = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        pool.start("PUT", "/media/big.bin", headers={}, body=body).answer()
    elapsed = time.monotonic() - began
    assert str(info.value) == (
        f"PUT {server.origin}/media/big.bin: the request was not sent in full within 3 s "
        "(timeout 1 s + 32 MiB at 16 MiB/s)"
    )
    assert 3 <= elapsed < 3 + LATE
    assert bool(sendfile_calls) is (kind == "file-sendfile")
    assert server.requests == []  # the rest of the body was never sent
    assert (pool.opened, pool.sent, pool._idle) == (1, 1, [])


def test_server_reading_the_body_slowly_over_tls_is_bounded_by_the_deadline(
    scripted, pool_for, tmp_path, tls_files
):
    # TLS records are 16 KiB: a 64 KiB read takes one, so this reader is slower still.
    server = scripted(reply(CREATED), tls=tls_files, **{**SLOW_READER, "read_pause": 0.005})
    pool = pool_for(server, read_timeout=1.0, min_transfer_rate=16 * 1024 * 1024)
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(SLOW_BODY))
    began = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        pool.start("PUT", "/media/big.bin", headers={}, body=FileBody(path)).answer()
    elapsed = time.monotonic() - began
    assert str(info.value) == (
        f"PUT {server.origin}/media/big.bin: the request was not sent in full within 3 s "
        "(timeout 1 s + 32 MiB at 16 MiB/s)"
    )
    assert 3 <= elapsed < 3 + LATE


@pytest.mark.parametrize("kind", ["file-sendfile", "bytes-stream"])
def test_server_that_stops_reading_fails_after_the_read_timeout(scripted, pool_for, tmp_path, kind):
    # A long deadline (32 s) does not let a server go silent: no room in the send
    # buffer for a whole read timeout fails the request then.
    server = scripted(reply(CREATED), read_pause=SERVER_DEADLINE)  # one read, then nothing
    pool = pool_for(server, read_timeout=0.3, min_transfer_rate=1024 * 1024)
    data = os.urandom(SLOW_BODY)
    if kind == "file-sendfile":
        path = tmp_path / "big.bin"
        path.write_bytes(data)
        body: Any = FileBody(path)
    else:
        body = BytesBody(data)
    began = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        pool.start("PUT", "/media/big.bin", headers={}, body=body).answer()
    assert str(info.value) == f"PUT {server.origin}/media/big.bin: sending stalled for 0.3s"
    assert 0.3 <= time.monotonic() - began < 0.3 + LATE


@pytest.mark.parametrize("kind", ["file-sendfile", "bytes-stream"])
def test_large_body_longer_than_the_timeout_is_not_cut_off(scripted, pool_for, tmp_path, kind):
    # 512 reads of 64 KiB, 5 ms apart: at least 2.56 s of sending, more than the 2 s
    # timeout, well within the deadline of 2 s + 32 MiB at 4 MiB/s = 10 s.
    server = scripted(reply(CREATED), read_block=64 * 1024, read_pause=0.005)
    pool = pool_for(server, read_timeout=2.0, min_transfer_rate=4 * 1024 * 1024)
    data = os.urandom(SLOW_BODY)
    if kind == "file-sendfile":
        path = tmp_path / "big.bin"
        path.write_bytes(data)
        body: Any = FileBody(path)
    else:
        body = BytesBody(data)
    began = time.monotonic()
    answer = pool.start("PUT", "/media/big.bin", headers={}, body=body).answer()
    elapsed = time.monotonic() - began
    assert answer.status == 201
    assert pool.read_timeout < elapsed < deadline_of(pool, SLOW_BODY) == 10
    (request,) = server.requests
    assert request == expected_put(server, data, "/media/big.bin")


def test_retry_after_a_stale_connection_keeps_the_deadline(scripted, pool_for):
    # The first connection is closed without an answer after 0.4 s (a stale connection,
    # retried); the retry then hangs. A new deadline would give it a whole timeout and
    # end in "no answer within 0.6s" at 1 s; the request's own ends it at 0.6 s.
    server = scripted(reply(delay=0.4, close=True), Act.HANG)
    pool = pool_for(server, read_timeout=0.6)
    began = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        put(pool)
    elapsed = time.monotonic() - began
    assert str(info.value) == (
        f"PUT {server.origin}/media/a.txt: no complete answer within 0.6 s "
        "(timeout 0.6 s + 1 B at 256 KiB/s)"
    )
    assert 0.6 <= elapsed < 0.6 + LATE
    assert (pool.opened, pool.sent, len(server.requests)) == (2, 2, 2)


def test_no_retry_once_the_deadline_has_passed(scripted, pool_for):
    # The connection closed without an answer, but that is only seen past the deadline
    # (another host was awaited first): a retry would start too late.
    server = scripted(reply(delay=0.6, close=True), reply(CREATED))
    pool = pool_for(server, read_timeout=0.5)
    pending = pool.start("DELETE", "/media/a.txt", headers={})
    assert server.wait_for(lambda: server.closed == 1)
    with pytest.raises(TimeoutError) as info:
        pending.answer()
    assert str(info.value) == (
        f"DELETE {server.origin}/media/a.txt: the connection was closed before any answer, "
        "with no time left to send again within 0.5 s (timeout 0.5 s)"
    )
    assert (pool.opened, pool.sent, server.accepted) == (1, 1, 1)


def test_an_answer_received_in_time_is_taken_after_the_deadline(scripted, pool_for):
    # The fan-out reads answers one host after another: while a hanging host is waited
    # for, the others' deadlines pass with their answers already received.
    hanging, silent = scripted(Act.HANG), scripted(Act.HANG)
    quick = scripted(reply(CREATED), reply(NO_CONTENT))
    pools = [pool_for(server, read_timeout=0.5) for server in (hanging, quick, silent)]
    started = [pool.start("PUT", "/media/p", headers={}, body=BytesBody(b"1")) for pool in pools]
    assert quick.wait_for(lambda: quick.answered == 1)
    with pytest.raises(TimeoutError, match=r"no answer within 0\.5s"):
        started[0].answer()
    assert time.monotonic() > started[1].deadline
    assert started[1].answer() == wire.Answer(201, "Created", {"content-length": "0"})
    # Nothing received by the deadline: no second read timeout is waited for.
    with pytest.raises(TimeoutError) as info:
        started[2].answer()
    assert str(info.value) == (
        f"PUT {silent.origin}/media/p: no complete answer within 0.5 s "
        "(timeout 0.5 s + 1 B at 256 KiB/s)"
    )
    # The connection read past its deadline serves the next request with a whole timeout.
    assert put(pools[1]).status == 204
    (conn,) = pools[1]._idle
    assert conn.timeout == conn.sock.gettimeout() == 0.5
    assert pools[1].opened == 1


def test_an_answer_read_after_the_deadline_gets_a_short_grace_not_a_trickle(scripted, pool_for):
    # Read late, a trickling host gets LATE_READ to finish, not another deadline.
    hanging, trickling = scripted(Act.HANG), scripted(trickle(CREATED, 0.1))
    pools = [pool_for(server, read_timeout=0.5) for server in (hanging, trickling)]
    began = time.monotonic()
    started = [pool.start("DELETE", "/media/p", headers={}) for pool in pools]
    with pytest.raises(TimeoutError, match=r"no answer within 0\.5s"):
        started[0].answer()
    late = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        started[1].answer()
    assert str(info.value) == (
        f"DELETE {trickling.origin}/media/p: no complete answer within 0.5 s (timeout 0.5 s)"
    )
    assert time.monotonic() - late >= wire.LATE_READ
    assert time.monotonic() - began < 0.5 + LATE  # the whole trickle would take 4.3 s


def test_a_fast_request_leaves_the_socket_timeout_alone(scripted, pool_for, monkeypatch):
    # settimeout is an ioctl(2): the hot path must not pay it on every request. (A
    # wide slack, so a stalled test process cannot make a request slow.)
    monkeypatch.setattr(wire, "DEADLINE_SLACK", 1.0)
    server = scripted(reply(CREATED), reply(NO_CONTENT), reply(NO_CONTENT))
    pool = pool_for(server)
    assert put(pool).status == 201  # opens the connection, which sets its timeout
    (conn,) = pool._idle
    calls: list[float | None] = []
    real = socket.socket.settimeout

    def counting(self: socket.socket, value: float | None) -> None:
        if self is conn.sock:  # not the server's sockets
            calls.append(value)
        real(self, value)

    monkeypatch.setattr(socket.socket, "settimeout", counting)
    assert put(pool, b"y" * 1000).status == 204
    assert pool.start("DELETE", "/media/a.txt", headers={}).answer().status == 204
    assert calls == []
    assert pool.opened == 1


def test_a_timeout_lowered_by_one_deadline_is_raised_for_the_next_request(scripted, pool_for):
    # A slow answer lowers the socket's timeout towards its deadline; the next request
    # on the connection gets the whole read timeout back.
    slow = b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\n"
    server = scripted(reply(slow, b"a", b"b", b"c", pause=0.2), reply(NO_CONTENT))
    pool = pool_for(server, read_timeout=1.5)
    assert put(pool).status == 201
    (conn,) = pool._idle
    assert conn.timeout < pool.read_timeout
    assert conn.sock.gettimeout() == pytest.approx(conn.timeout)
    assert put(pool).status == 204
    assert conn.sock.gettimeout() == conn.timeout == pool.read_timeout
    assert pool.opened == 1


# Reads: the same pool, the same parser, the body read at the reader's pace


def test_head_answer_is_not_waited_for_its_body_and_keeps_the_connection(scripted, pool_for):
    # A HEAD answer's Content-Length is the GET's: no body follows, whatever it says.
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\nLast-Modified: x\r\n\r\n"
    server = scripted(reply(head), reply(CREATED))
    pool = pool_for(server, read_timeout=1.0)
    began = time.monotonic()
    response = pool.start("HEAD", "/media/a.txt", headers={}).response()
    assert time.monotonic() - began < 0.5
    assert (response.status, response.size, response.headers["last-modified"]) == (200, 12345, "x")
    assert response.read() == b""
    assert len(pool._idle) == 1  # back in the pool before the caller read anything
    assert put(pool).status == 201
    assert pool.opened == 1


def test_streamed_chunked_download_goes_back_to_the_pool_when_read_to_its_end(scripted, pool_for):
    server = scripted(
        reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5\r\nhello\r\n",
            b"6\r\n world\r\n0\r\n\r\n",
        ),
        reply(CREATED),
    )
    pool = pool_for(server)
    response = pool.start("GET", "/media/a.txt", headers={}).response()
    assert (response.status, response.size) == (200, None)
    assert response.read(3) == b"hel"
    assert pool._idle == []  # still the download's
    assert response.read() == b"lo world"
    assert len(pool._idle) == 1
    response.close()
    assert put(pool).status == 201
    assert pool.opened == 1


def test_download_closed_before_its_end_closes_the_connection(scripted, pool_for):
    server = scripted(
        reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"12345", b"67890"),
        reply(CREATED),
    )
    pool = pool_for(server)
    response = pool.start("GET", "/media/a.txt", headers={}).response()
    assert response.read(5) == b"12345"
    response.close()
    assert pool._idle == []
    assert server.wait_for(lambda: server.closed == 1)
    assert put(pool).status == 201
    assert (pool.opened, pool.sent) == (2, 2)


def test_download_cut_short_is_a_connection_error(scripted, pool_for):
    server = scripted(reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"12345", close=True))
    pool = pool_for(server)
    response = pool.start("GET", "/media/a.txt", headers={}).response()
    with pytest.raises(ConnectionError, match="in the middle of a body"):
        response.read()
    assert pool._idle == []


def test_reads_are_retried_once_on_a_stale_connection(scripted, pool_for):
    server = scripted(Act.CLOSE, reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    pool = pool_for(server)
    response = pool.start("GET", "/media/a.txt", headers={}).response()
    assert response.read() == b"ok"
    assert (pool.opened, pool.sent, len(server.requests)) == (2, 2, 2)


def test_a_read_answer_head_is_bounded_by_the_deadline_too(scripted, pool_for):
    server = scripted(trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0.1))
    pool = pool_for(server, read_timeout=0.5)
    began = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no complete answer within 0\.5 s"):
        pool.start("HEAD", "/media/a.txt", headers={}).response()
    assert 0.5 <= time.monotonic() - began < 0.5 + LATE
