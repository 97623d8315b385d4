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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from django_resto import wire
from django_resto.settings import parse_host
from django_resto.transport import BytesBody, FileBody

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
    """Bytes to write back, in parts, and whether to close the connection afterwards."""

    parts: tuple[bytes, ...]
    close: bool = False


def reply(*parts: bytes, close: bool = False) -> Reply:
    """Several parts arrive in separate reads: they exercise the client's partial parsing."""
    return Reply(parts, close)


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

    def __init__(self, actions: list[Action]) -> None:
        self.actions = list(actions)
        self.requests: list[bytes] = []  # complete requests, head and body, as received
        self.accepted = 0
        self.closed = 0  # connections the server side has closed
        self.answered = 0  # replies written in full
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(POLL)
        self.port: int = self.listener.getsockname()[1]
        self.host = parse_host(f"127.0.0.1:{self.port}")
        self.origin = f"http://127.0.0.1:{self.port}"
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
                return sock.recv(1024 * 1024)
            except TimeoutError:
                continue
            except OSError:
                return b""
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
                for index, part in enumerate(action.parts):
                    if index:
                        time.sleep(PART_PAUSE)
                    sock.sendall(part)
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
    """Start scripted servers: ``scripted(reply(CREATED), Act.CLOSE)``."""
    servers: list[ScriptedServer] = []

    def start(*actions: Action) -> ScriptedServer:
        server = ScriptedServer(list(actions))
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
            b"5;name=value\r\nhello\r\n1A ; other\r\n" + b"z" * 26 + b"\r\n",
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


# Malformed answers


@pytest.mark.parametrize(
    ("parts", "detail"),
    [
        ((b"SPDY/3 201 Created\r\n\r\n",), "not an HTTP/1.x status line"),
        ((b"HTTP/1.1 20 Created\r\n\r\n",), "not an HTTP/1.x status line"),
        ((b"HTTP/1.1 2x1 Created\r\n\r\n",), "not an HTTP/1.x status line"),
        ((b"<html>hello</html>\r\n\r\n",), "not an HTTP/1.x status line"),
        ((b"HTTP/1.1 201 Created\r\nNo colon here\r\n\r\n",), "invalid header line"),
        ((b"HTTP/1.1 201 Created\r\n: empty name\r\n\r\n",), "invalid header line"),
        ((b"HTTP/1.1 201 Created\r\nX-Folded: a\r\n  b\r\n\r\n",), "invalid header line"),
        ((b"HTTP/1.1 201 Created\r\nContent-Length: ten\r\n\r\n",), "invalid Content-Length"),
        ((b"HTTP/1.1 201 Created\r\nContent-Length: -1\r\n\r\n",), "invalid Content-Length"),
        ((b"HTTP/1.1 201 Created\r\nContent-Length: 1, 1\r\n\r\n",), "invalid Content-Length"),
        ((b"HTTP/1.1 201 Created\r\nX-Big: " + b"a" * 200_000,), "larger than 64 KiB"),
        (
            (b"HTTP/1.1 201 Created\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",),
            "larger than 64 KiB",
        ),
        (
            (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",),
            "invalid chunk size",
        ),
        (
            (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",),
            "invalid chunk size",
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
    with pytest.raises(requests.ConnectionError) as info:
        put(pool)
    message = str(info.value)
    assert message.startswith(f"PUT {server.origin}/media/a.txt: invalid answer: ")
    assert detail in message
    assert not isinstance(info.value, requests.Timeout)
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
            "chunked body was cut short",
        ),
        (
            (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 1\r\n",),
            "chunked body was cut short",
        ),
    ],
    ids=["in-head", "in-body", "in-chunk", "between-chunks", "in-trailers"],
)
def test_connection_closed_in_the_middle_of_an_answer(scripted, pool_for, parts, detail):
    server = scripted(reply(*parts, close=True))
    pool = pool_for(server)
    with pytest.raises(requests.ConnectionError) as info:
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
    with pytest.raises(requests.ConnectionError) as info:
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
    with pytest.raises(requests.ReadTimeout) as info:
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
    with pytest.raises(requests.ConnectionError) as info:
        pool.start("DELETE", "/media/x%20y.txt", headers={})
    message = str(info.value)
    assert message.startswith(f"DELETE http://127.0.0.1:{port}/media/x%20y.txt: cannot connect: ")
    assert not isinstance(info.value, requests.Timeout)
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
            with pytest.raises(requests.ConnectTimeout) as info:
                pool.start("PUT", "/media/a.txt", headers={}, body=BytesBody(b"x"))
            assert time.monotonic() - began < 2
        finally:
            for filler in fillers:
                filler.close()
    assert str(info.value) == f"PUT http://127.0.0.1:{port}/media/a.txt: no connection within 0.3s"
    assert isinstance(info.value, requests.ConnectionError)
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
    with pytest.raises(requests.ConnectionError) as info:
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
    with pytest.raises(requests.ConnectionError):
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
    with pytest.raises(requests.ConnectionError, match="invalid answer: invalid chunk size"):
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
    with pytest.raises(requests.ConnectionError, match="invalid answer"):
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
    with pytest.raises(requests.ConnectionError, match="larger than 64 KiB"):
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
