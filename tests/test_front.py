# The fixture media_server_factory is imported from tests.servers, and pytest passes it
# back as an argument of the same name, which pyflakes reads as a redefinition.
# ruff: noqa: F811
"""nginx_dav as the site's front (nginx_dav_front_enabled), on a real nginx on loopback.

The site's config is rendered from the role with two upstream servers, small HTTP servers
on loopback standing in for the application servers' gunicorn: they answer every request
with what they received, so a test sees what the application would see. Clients come
from 127.0.0.1, the only trusted network here, or from 127.0.0.2, which reaches the same
loopback server but is not trusted: both the trusted and the refused write can be shown
on one server, without any traffic leaving loopback.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.servers import (
    MediaServer,
    NginxDav,
    TlsFiles,
    media_server_factory,  # noqa: F401 - fixture
    tls_files,  # noqa: F401 - fixture
)

pytestmark = pytest.mark.real_server

TRUSTED, UNTRUSTED = "127.0.0.1", "127.0.0.2"
TIMEOUT = 10
PROBE = "/_resto_readiness_probe"  # tests/servers.py's readiness probe, proxied too


@dataclass(frozen=True)
class Received:
    """One request as an application server received it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class _App(ThreadingHTTPServer):
    """An application server on loopback that remembers what it was sent."""

    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _AppHandler)
        self.name = name
        self.received: list[Received] = []
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def record(self, request: Received) -> None:
        with self._lock:
            self.received.append(request)

    def requests(self) -> list[Received]:
        """What it received, the readiness probes of the test server left out."""
        with self._lock:
            return [r for r in self.received if not r.path.startswith(PROBE)]


class _AppHandler(BaseHTTPRequestHandler):
    server: _App
    protocol_version = "HTTP/1.1"

    def _answer(self, body_too: bool = True) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        received = Received(
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self.rfile.read(length),
        )
        self.server.record(received)
        payload = json.dumps({"app": self.server.name, "headers": received.headers}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body_too:
            self.wfile.write(payload)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer(body_too=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests look at .received


@pytest.fixture
def apps() -> Iterator[list[_App]]:
    """Two application servers, stopped at teardown."""
    started = [_App(name) for name in ("app1", "app2")]
    threads = [
        threading.Thread(target=app.serve_forever, args=(0.05,), daemon=True) for app in started
    ]
    for thread in threads:
        thread.start()
    try:
        yield started
    finally:
        for app in started:
            app.shutdown()
            app.server_close()
        for thread in threads:
            thread.join(TIMEOUT)


Front = Callable[..., NginxDav]


@pytest.fixture
def front(media_server_factory: Callable[..., MediaServer], apps: list[_App]) -> Front:
    """``make(**role_vars)``: a started nginx, the front of ``apps``, that trusts only
    127.0.0.1."""

    def make(*, tls: TlsFiles | None = None, **role_vars: Any) -> NginxDav:
        variables = {
            "nginx_dav_front_enabled": True,
            "nginx_dav_front_servers": [app.address for app in apps],
            "media_dav_trusted_networks": [f"{TRUSTED}/32"],
            **role_vars,
        }
        server = media_server_factory("nginx", tls=tls, role_vars=variables)
        assert isinstance(server, NginxDav)
        return server

    return make


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    server: NginxDav,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    source: str = TRUSTED,
    ssl_context: ssl.SSLContext | None = None,
) -> Answer:
    """One request to ``server`` from the loopback address ``source``."""
    connection: http.client.HTTPConnection
    if ssl_context is None:
        connection = http.client.HTTPConnection(
            "127.0.0.1", server.port, timeout=TIMEOUT, source_address=(source, 0)
        )
    else:
        connection = http.client.HTTPSConnection(
            "127.0.0.1",
            server.port,
            timeout=TIMEOUT,
            source_address=(source, 0),
            context=ssl_context,
        )
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.read())
    finally:
        connection.close()


# -- the site ----------------------------------------------------------------------------


def test_the_site_goes_to_every_app_server_with_the_client_in_the_headers(front, apps):
    server = front()
    answers = [send(server, "GET", "/") for _ in range(4)]
    assert [a.status for a in answers] == [200] * 4
    assert {a.json()["app"] for a in answers} == {"app1", "app2"}  # round robin
    for app in apps:
        for received in app.requests():
            assert (received.method, received.path) == ("GET", "/")
            assert received.headers["x-forwarded-for"] == TRUSTED
            assert received.headers["x-forwarded-proto"] == "http"
            # The port the client asked for stays: the application builds its URLs from it.
            assert received.headers["x-forwarded-host"] == f"127.0.0.1:{server.port}"
            assert received.headers["host"] == f"127.0.0.1:{server.port}"


def test_the_site_is_public_and_a_claimed_address_is_not_forwarded(front, apps):
    server = front()
    forged = {"X-Forwarded-For": "203.0.113.9"}
    got = send(server, "GET", "/accounts/?next=/", headers=forged, source=UNTRUSTED)
    assert got.status == 200
    assert got.json()["headers"]["x-forwarded-for"] == UNTRUSTED  # what nginx saw
    posted = send(server, "POST", "/upload/", body=b"form data", source=UNTRUSTED)
    assert posted.status == 200  # the site's own forms: the application decides
    received = sorted((r.method, r.path, r.body) for app in apps for r in app.requests())
    assert received == [("GET", "/accounts/?next=/", b""), ("POST", "/upload/", b"form data")]


def test_the_site_over_tls_says_https(front, apps, tls_files):
    server = front(tls=tls_files)
    context = ssl.create_default_context(cafile=str(tls_files.ca_cert))
    got = send(server, "GET", "/", ssl_context=context)
    assert got.status == 200
    assert got.json()["headers"]["x-forwarded-proto"] == "https"


def test_the_site_has_its_own_body_limit(front, apps):
    server = front(nginx_dav_front_max_body_mib=1)
    too_big = b"x" * (1024 * 1024 + 1)
    assert send(server, "POST", "/upload/", body=too_big).status == 413
    assert [r for app in apps for r in app.requests()] == []
    # The media keep theirs (media_dav_max_upload_mib).
    assert send(server, "PUT", "/media/big.bin", body=too_big).status == 201
    assert server.read("big.bin") == too_big


# -- the media, as without the front -----------------------------------------------------


def test_media_are_read_from_disk_by_everybody(front, apps):
    server = front()
    server.write("uploads/a.txt", b"from disk")
    for source in (TRUSTED, UNTRUSTED):
        got = send(server, "GET", "/media/uploads/a.txt", source=source)
        assert (got.status, got.body) == (200, b"from disk")
    assert send(server, "GET", "/media/uploads/missing.txt").status == 404
    assert [r for app in apps for r in app.requests()] == []


def test_media_writes_and_the_listing_stay_trusted_only(front, apps):
    server = front()
    assert send(server, "PUT", "/media/uploads/b.txt", body=b"trusted").status == 201
    assert server.read("uploads/b.txt") == b"trusted"
    assert send(server, "PUT", "/media/uploads/c.txt", body=b"x", source=UNTRUSTED).status == 403
    assert send(server, "PUT", "/media/uploads/b.txt", body=b"x", source=UNTRUSTED).status == 403
    assert send(server, "DELETE", "/media/uploads/b.txt", source=UNTRUSTED).status == 403
    assert server.files() == {"uploads/b.txt": b"trusted"}
    assert send(server, "GET", "/_resto/list/uploads/", source=UNTRUSTED).status == 403
    listing = send(server, "GET", "/_resto/list/uploads/")
    assert [entry["name"] for entry in listing.json()] == ["b.txt"]
    assert send(server, "DELETE", "/media/uploads/b.txt").status == 204
    assert server.files() == {}
    assert [r for app in apps for r in app.requests()] == []
