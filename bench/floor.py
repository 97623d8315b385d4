"""The floor of the benchmark: the cheapest client of the same requests.

Issue 12 measures django_resto against what a save *has* to cost: Django's own local
save (``FileSystemStorage``), then the same PUTs to every media server, sent by a
client with nothing else in it:

- one kept-alive socket per host, opened once (``TCP_NODELAY``, as ours);
- phased sends: the request goes to every host before any answer is read, so the hosts
  work at once with no thread at all;
- bodies from the file through ``sendfile(2)`` (the master copy of a Hybrid save, an
  upload's temporary file) and from the upload's own buffer otherwise: no copy in Python;
- large bodies go to every socket at once from one thread, in a ``poll(2)`` loop;
- the answer is read as far as its status line and ``Content-Length``.

It has no journal, no per-name lock, no retries, no deadlines, no quorum and no error
handling beyond raising on a status other than 201 or 204: it is a yardstick, not a
client anyone should run. Each of our costs on top of it is a feature; the benchmark
says what they cost.

This module is imported by ``bench/worker.py`` by file name (the worker runs outside
the repository's package), and needs nothing but Django and the standard library.
"""

from __future__ import annotations

import io
import os
import select
import socket
import threading
from typing import Any
from urllib.parse import quote

from django.core.files.storage import FileSystemStorage, Storage

#: Bodies up to this size go out with one ``sendall`` per host, which never blocks for
#: long on loopback; bigger ones go through the poll loop, to every host at once.
SMALL_BODY = 64 * 1024
#: Largest single ``sendfile(2)`` or ``send(2)`` in the poll loop.
BLOCK = 1024 * 1024


class Answer(Exception):
    """A status other than 201 or 204."""


class FloorClient:
    """PUTs of one body to every host, as cheaply as this machine allows."""

    def __init__(self, hosts: list[str], prefix: str = "/media/") -> None:
        self.hosts = list(hosts)
        self.prefix = prefix
        self.socks: list[socket.socket] = []
        for host in self.hosts:
            name, _, port = host.rpartition(":")
            sock = socket.create_connection((name, int(port)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.socks.append(sock)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()

    def _heads(self, name: str, size: int) -> list[bytes]:
        target = quote(self.prefix + name)
        return [
            f"PUT {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n\r\n".encode()
            for host in self.hosts
        ]

    def put(self, name: str, *, data: memoryview | None = None, path: str | None = None) -> None:
        """PUT ``data`` (or the file at ``path``) as ``name`` on every host."""
        if data is not None:
            size = len(data)
        else:
            assert path is not None
            size = os.stat(path).st_size
        heads = self._heads(name, size)
        if data is not None and size <= SMALL_BODY:
            for sock, head in zip(self.socks, heads, strict=True):
                sock.sendall(head + data)
        elif data is not None:
            self._send_all(heads, size, data=data)
        else:
            fd = os.open(path, os.O_RDONLY)  # type: ignore[arg-type]
            try:
                self._send_all(heads, size, fd=fd)
            finally:
                os.close(fd)
        for sock in self.socks:
            self._answer(sock)

    def _send_all(
        self, heads: list[bytes], size: int, *, data: memoryview | None = None, fd: int = -1
    ) -> None:
        """Send the heads and the body to every socket at once, from this thread."""
        poller = select.poll()
        by_fd: dict[int, list[Any]] = {}  # socket fd -> [socket, head left, body offset]
        for sock, head in zip(self.socks, heads, strict=True):
            sock.setblocking(False)
            by_fd[sock.fileno()] = [sock, memoryview(head), 0]
            poller.register(sock, select.POLLOUT)
        try:
            while by_fd:
                for sockno, _ in poller.poll():
                    state = by_fd[sockno]
                    sock, head, offset = state
                    try:
                        if head:
                            state[1] = head[sock.send(head) :]
                            continue
                        if data is not None:
                            sent = sock.send(data[offset : offset + BLOCK])
                        else:
                            sent = os.sendfile(sockno, fd, offset, min(BLOCK, size - offset))
                    except BlockingIOError:
                        continue
                    state[2] = offset = offset + sent
                    if offset >= size:
                        poller.unregister(sockno)
                        del by_fd[sockno]
        finally:
            for sock in self.socks:
                sock.setblocking(True)

    @staticmethod
    def _answer(sock: socket.socket) -> None:
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buffer += chunk
        head, _, rest = buffer.partition(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            field, _, value = line.partition(b":")
            if field.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += sock.recv(length - len(rest))
        if status not in (201, 204):
            raise Answer(f"PUT answered {status}")


def _buffer(content: Any) -> memoryview | None:
    """The upload's own bytes, when it holds them in memory (Django's small uploads).

    ``getvalue`` hands over the BytesIO's own bytes object when it can (an upload made
    from bytes, never written to since), where ``getbuffer`` would copy it first.
    """
    inner = getattr(content, "file", content)
    if isinstance(inner, io.BytesIO):
        return memoryview(inner.getvalue())
    return None


class _PerThread(threading.local):
    client: FloorClient | None = None


class _Clients:
    """One FloorClient per thread: a socket carries one request at a time."""

    def __init__(self, hosts: list[str]) -> None:
        self.hosts = hosts
        self._local = _PerThread()

    @property
    def client(self) -> FloorClient:
        if self._local.client is None:
            self._local.client = FloorClient(self.hosts)
        return self._local.client


class FloorHybrid(_Clients, FileSystemStorage):
    """Django's local save, then the PUTs from the master copy just written."""

    def __init__(self, hosts: list[str], **kwargs: Any) -> None:
        FileSystemStorage.__init__(self, **kwargs)
        _Clients.__init__(self, hosts)

    def _save(self, name: str, content: Any) -> str:
        name = super()._save(name, content)
        self.client.put(name, path=self.path(name))
        return name


class FloorDistributed(_Clients, Storage):
    """The PUTs alone: no master copy, and no question asked before a save."""

    def exists(self, name: str) -> bool:
        return False

    def _save(self, name: str, content: Any) -> str:
        data = _buffer(content)
        if data is not None:
            self.client.put(name, data=data)
        else:
            self.client.put(name, path=content.temporary_file_path())
        return name
