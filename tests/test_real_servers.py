# The fixture media_server_factory is imported from tests.servers, and pytest passes it
# back as an argument of the same name, which pyflakes reads as a redefinition.
# ruff: noqa: F811
"""Real nginx and lighttpd on loopback (tests/servers.py), and TestHttpServer parity with them.

These need the nginx and lighttpd binaries (CI installs them); a missing binary fails the
test with a clear message. No Django needed: run with ``-p no:django`` if there are no
settings.
"""

from __future__ import annotations

import os
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from django_resto.testing import TestHttpServer
from tests.servers import (
    MEDIA_SERVER_KINDS,
    LighttpdDav,
    MediaServer,
    MediaServerPool,
    NginxDav,
    RealServerError,
    lighttpd_dav,  # noqa: F401 - fixture
    media_server_factory,  # noqa: F401 - fixture
    nginx_dav,  # noqa: F401 - fixture
    resto_test_server,  # noqa: F401 - fixture
)

pytestmark = pytest.mark.real_server

TIMEOUT = 5
DAV = "{DAV:}"
Factory = Callable[..., MediaServer]


@pytest.fixture(autouse=True)
def media_root(tmp_path: Path) -> Path:
    """Override conftest's fixture of the same name, which needs Django's ``settings``:
    these tests must run without Django (``-p no:django``)."""
    return tmp_path


@pytest.fixture
def session():
    with requests.Session() as sess:
        yield sess


def call(session: requests.Session, method: str, url: str, **kwargs) -> requests.Response:
    kwargs.setdefault("allow_redirects", False)
    return session.request(method, url, timeout=TIMEOUT, **kwargs)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone once reaped, which stop() does.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# -- nginx -------------------------------------------------------------------------------


def test_nginx_put_get_head_delete(media_server_factory: Factory, session: requests.Session):
    server = media_server_factory("nginx")
    assert isinstance(server, NginxDav)
    assert server.host == f"127.0.0.1:{server.port}"
    assert server.url == f"http://127.0.0.1:{server.port}"
    url = server.url + "/media/a/b/c.txt"
    created = call(session, "PUT", url, data=b"nested")
    assert created.status_code == 201  # create_full_put_path made a/ and a/b/
    assert server.files() == {"a/b/c.txt": b"nested"}
    assert server.read("a/b/c.txt") == b"nested"
    assert server.path("a/b/c.txt") == server.root / "a" / "b" / "c.txt"
    assert call(session, "PUT", url, data=b"again!").status_code == 204
    got = call(session, "GET", url)
    assert (got.status_code, got.content) == (200, b"again!")
    head = call(session, "HEAD", url)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == "6"
    assert head.headers["Last-Modified"].endswith(" GMT")
    assert "ETag" in head.headers
    assert call(session, "HEAD", server.url + "/media/nope").status_code == 404
    assert call(session, "DELETE", url).status_code == 204
    assert call(session, "DELETE", url).status_code == 404
    assert server.files() == {}
    assert server.exists("a/b")  # DELETE of a file leaves its directories
    assert call(session, "DELETE", server.url + "/media/a").status_code == 409
    assert call(session, "DELETE", server.url + "/media/a/").status_code == 204
    assert not server.exists("a")


def test_nginx_has_no_webdav_collections(media_server_factory: Factory, session: requests.Session):
    server = media_server_factory("nginx")
    assert call(session, "MKCOL", server.url + "/media/col/").status_code == 405
    assert (
        call(session, "PROPFIND", server.url + "/media/", headers={"Depth": "1"}).status_code == 405
    )
    assert not server.exists("col")


def test_nginx_json_listing(media_server_factory: Factory, session: requests.Session):
    server = media_server_factory("nginx")
    assert server.listing_prefix == "/_resto/list/"
    assert (
        call(session, "PUT", server.url + "/media/uploads/x.jpg", data=b"12345").status_code == 201
    )
    assert call(session, "PUT", server.url + "/media/uploads/sub/y", data=b"y").status_code == 201
    listing = call(session, "GET", server.url + "/_resto/list/uploads/")
    assert listing.status_code == 200
    assert listing.headers["Content-Type"] == "application/json"
    entries = listing.json()
    assert [(e["name"], e["type"], e.get("size")) for e in entries] == [
        ("sub", "directory", None),
        ("x.jpg", "file", 5),
    ]
    assert all(e["mtime"].endswith(" GMT") for e in entries)
    assert call(session, "GET", server.url + "/_resto/list/missing/").status_code == 404
    assert call(session, "GET", server.url + "/_resto/list/uploads").status_code == 301


def seed_tree(server: MediaServer) -> None:
    """The same awkward tree, with the same mtimes, on any server."""
    names = {
        "uploads/x.jpg": b"12345",
        "uploads/B": b"",
        "uploads/a": b"a",
        "uploads/_": b"__",
        'uploads/caf\u00e9 &"<.txt': "\u00e9".encode(),
        "uploads/new\nline": b"n",
        "uploads/tab\tand\\back": b"t",
        "uploads/.hidden": b"h",
        "uploads/Zdir/f": b"f",
        "uploads/sub/g": b"g",
    }
    for name, data in names.items():
        server.write(name, data)
    (server.root / "uploads" / "empty").mkdir()
    for dirpath, dirnames, filenames in os.walk(server.root):
        for index, entry in enumerate(sorted(dirnames + filenames)):
            stamp = 1_700_000_000 + index * 3607
            os.utime(Path(dirpath) / entry, (stamp, stamp))


@pytest.mark.parametrize("directory", ["", "uploads/", "uploads/empty/", "uploads/sub/"])
def test_test_server_listing_is_byte_identical_to_nginx(
    media_server_factory: Factory, session: requests.Session, directory: str
):
    nginx = media_server_factory("nginx")
    test = media_server_factory("test")
    for server in (nginx, test):
        seed_tree(server)
    answers = [call(session, "GET", f"{s.url}/_resto/list/{directory}") for s in (nginx, test)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[1].content == answers[0].content
    assert answers[1].headers["Content-Type"] == answers[0].headers["Content-Type"]


def test_nginx_large_and_chunked_bodies(media_server_factory: Factory, session: requests.Session):
    server = media_server_factory("nginx")
    big = os.urandom(5 * 1024 * 1024)  # above nginx's 1m default client_max_body_size
    assert call(session, "PUT", server.url + "/media/big.bin", data=big).status_code == 201
    assert server.read("big.bin") == big
    chunks = [b"part1-", b"part2"]
    response = call(session, "PUT", server.url + "/media/chunked.txt", data=iter(chunks))
    assert response.status_code == 201
    assert server.read("chunked.txt") == b"part1-part2"


def test_nginx_keeps_connections_alive(media_server_factory: Factory, session: requests.Session):
    server = media_server_factory("nginx")
    for index in range(10):
        url = f"{server.url}/media/k{index}"
        assert call(session, "PUT", url, data=b"k").status_code == 201
        assert call(session, "GET", url).headers.get("Connection") == "keep-alive"
    lines = server.access_log.read_text().splitlines()
    ours = [line for line in lines if "/media/k" in line]
    assert len(ours) == 20
    connections = {line.split("connection=")[1].split()[0] for line in ours}
    assert len(connections) == 1  # all 20 requests on one kept-alive connection
    assert ours[-1].endswith("requests=20")


# -- lighttpd ----------------------------------------------------------------------------


def test_lighttpd_needs_mkcol(media_server_factory: Factory, session: requests.Session):
    server = media_server_factory("lighttpd")
    assert isinstance(server, LighttpdDav)
    assert server.strict is True
    assert server.listing_prefix is None
    base = server.url + "/media/"
    assert call(session, "PUT", base + "a/b/c.txt", data=b"c").status_code == 409
    assert server.files() == {}
    assert call(session, "MKCOL", base + "a/b/").status_code == 409  # a/ is missing too
    assert call(session, "MKCOL", base + "a/").status_code == 201
    assert call(session, "MKCOL", base + "a/").status_code == 405
    assert call(session, "MKCOL", base + "a/b/").status_code == 201
    assert call(session, "PUT", base + "a/b/c.txt", data=b"c").status_code == 201
    assert call(session, "PUT", base + "a/b/c.txt", data=b"cc").status_code == 204
    assert server.files() == {"a/b/c.txt": b"cc"}
    head = call(session, "HEAD", base + "a/b/c.txt")
    assert (head.status_code, head.headers["Content-Length"]) == (200, "2")
    assert call(session, "GET", base + "a/b/c.txt").content == b"cc"
    assert call(session, "DELETE", base + "a/b/c.txt").status_code == 204
    assert call(session, "DELETE", base + "a/b/c.txt").status_code == 404
    assert call(session, "DELETE", base + "a").status_code == 204  # recursive, no slash needed
    assert not server.exists("a")


def test_lighttpd_propfind(media_server_factory: Factory, session: requests.Session):
    server = media_server_factory("lighttpd")
    server.write("dir/f.txt", b"four")
    (server.root / "dir" / "sub").mkdir()
    response = call(session, "PROPFIND", server.url + "/media/dir/", headers={"Depth": "1"})
    assert response.status_code == 207
    found = {}
    for item in ET.fromstring(response.content).iter(f"{DAV}response"):
        prop = item.find(f"{DAV}propstat/{DAV}prop")
        is_collection = prop.find(f"{DAV}resourcetype/{DAV}collection") is not None
        length = prop.findtext(f"{DAV}getcontentlength")
        found[item.findtext(f"{DAV}href")] = (is_collection, None if is_collection else length)
    assert found == {
        "/media/dir/": (True, None),
        "/media/dir/f.txt": (False, "4"),
        "/media/dir/sub/": (True, None),
    }
    depth0 = call(session, "PROPFIND", server.url + "/media/dir/", headers={"Depth": "0"})
    assert depth0.status_code == 207
    assert [e.text for e in ET.fromstring(depth0.content).iter(f"{DAV}href")] == ["/media/dir/"]
    missing = call(session, "PROPFIND", server.url + "/media/nope/", headers={"Depth": "1"})
    assert missing.status_code == 404


def test_lighttpd_large_and_chunked_bodies(
    media_server_factory: Factory, session: requests.Session
):
    server = media_server_factory("lighttpd")
    big = os.urandom(5 * 1024 * 1024)
    assert call(session, "PUT", server.url + "/media/big.bin", data=big).status_code == 201
    assert server.read("big.bin") == big
    response = call(session, "PUT", server.url + "/media/ch.txt", data=iter([b"ab", b"cd"]))
    assert response.status_code == 201
    assert server.read("ch.txt") == b"abcd"


# -- both: lifecycle, credentials --------------------------------------------------------


@pytest.mark.parametrize("kind", ["nginx", "lighttpd"])
def test_restart_on_the_same_port(
    media_server_factory: Factory, session: requests.Session, kind: str
):
    server = media_server_factory(kind)
    port, pid = server.port, server.pid
    assert call(session, "PUT", server.url + "/media/kept.txt", data=b"kept").status_code == 201
    server.stop()
    assert not server.running
    assert not process_alive(pid)
    assert not group_alive(pid)
    with pytest.raises(requests.ConnectionError):
        call(session, "GET", server.url + "/media/kept.txt")
    server.start()
    assert server.port == port
    assert server.pid != pid
    assert call(session, "GET", server.url + "/media/kept.txt").content == b"kept"
    pid = server.pid
    server.restart()
    assert (server.port, server.running) == (port, True)
    assert server.pid != pid
    assert call(session, "PUT", server.url + "/media/after.txt", data=b"a").status_code == 201
    assert server.names() == ["after.txt", "kept.txt"]


@pytest.mark.parametrize("cls", [NginxDav, LighttpdDav])
def test_no_process_left_when_the_body_raises(tmp_path: Path, cls: type):
    with pytest.raises(ZeroDivisionError), cls(tmp_path) as server:
        pid = server.pid
        assert process_alive(pid)
        1 / 0  # noqa: B018
    assert not process_alive(pid)
    assert not group_alive(pid)  # nginx workers included


@pytest.mark.parametrize("kind", ["nginx", "lighttpd"])
def test_credentials(media_server_factory: Factory, session: requests.Session, kind: str):
    server = media_server_factory(kind, credentials=("user", "s3cret"))
    url = server.url + "/media/f.txt"
    denied = call(session, "PUT", url, data=b"x")
    assert denied.status_code == 401
    assert denied.headers["WWW-Authenticate"].startswith('Basic realm="django_resto"')
    assert call(session, "PUT", url, data=b"x", auth=("user", "wrong")).status_code == 401
    assert server.files() == {}
    assert call(session, "PUT", url, data=b"x", auth=("user", "s3cret")).status_code == 201
    assert call(session, "GET", url).status_code == 200
    assert call(session, "HEAD", url).status_code == 200
    assert call(session, "DELETE", url).status_code == 401
    assert server.exists("f.txt")
    assert call(session, "DELETE", url, auth=("user", "s3cret")).status_code == 204
    if kind == "nginx":
        listing = server.url + "/_resto/list/"
        assert call(session, "GET", listing).status_code == 401
        assert call(session, "GET", listing, auth=("user", "s3cret")).status_code == 200
    else:
        base = server.url + "/media/"
        assert call(session, "PROPFIND", base, headers={"Depth": "1"}).status_code == 401
        assert call(session, "MKCOL", base + "c/").status_code == 401
        assert call(session, "MKCOL", base + "c/", auth=("user", "s3cret")).status_code == 201


@pytest.mark.parametrize("kind", ["nginx", "lighttpd"])
def test_base_path_root(media_server_factory: Factory, session: requests.Session, kind: str):
    server = media_server_factory(kind, base_path="/")
    assert server.root == server.docroot
    assert call(session, "PUT", server.url + "/top.txt", data=b"t").status_code == 201
    assert server.files() == {"top.txt": b"t"}


def test_missing_binary_fails_clearly(media_server_factory: Factory, monkeypatch):
    monkeypatch.setattr(NginxDav, "binary_name", "nginx-not-installed-here")
    with pytest.raises(pytest.fail.Exception, match="nginx-not-installed-here binary not found"):
        media_server_factory("nginx")


def test_startup_failure_reports_the_logs(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(LighttpdDav, "config", lambda self: "this is = not ( a config\n")
    server = LighttpdDav(tmp_path)
    with pytest.raises(RealServerError, match="lighttpd exited with status") as error:
        server.start()
    assert "this is = not ( a config" in str(error.value)  # the config is shown
    assert "output.log" in str(error.value)
    assert not server.running


def test_port_taken_by_someone_else_is_reported(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = LighttpdDav(tmp_path, port=sock.getsockname()[1])
        with pytest.raises(RealServerError, match=r"(?s)exited.*in use"):
            server.start()


def test_unknown_kind(media_server_factory: Factory):
    with pytest.raises(ValueError, match="unknown media server kind"):
        media_server_factory("apache")


# -- TestHttpServer parity ---------------------------------------------------------------

# (method, name below /media/ or a full path, body, headers) -> same status on both servers.
PERMISSIVE_SCENARIO = [
    ("PUT", "new.txt", b"1", {}),
    ("PUT", "new.txt", b"2", {}),
    ("PUT", "a/b/c.txt", b"3", {}),
    ("GET", "a/b/c.txt", None, {}),
    ("HEAD", "a/b/c.txt", None, {}),
    ("GET", "missing", None, {}),
    ("HEAD", "missing", None, {}),
    ("GET", "a/", None, {}),
    ("GET", "a", None, {}),
    ("PUT", "a", b"onto a directory", {}),
    ("PUT", "a/dir-url/", b"x", {}),
    ("MKCOL", "col/", None, {}),
    ("PROPFIND", "", None, {"Depth": "1"}),
    ("POST", "new.txt", b"x", {}),
    ("DELETE", "new.txt", None, {}),
    ("DELETE", "new.txt", None, {}),
    ("DELETE", "a", None, {}),
    ("DELETE", "a/", None, {}),
    ("GET", "/_resto/list/", None, {}),
    ("GET", "/_resto/list/missing/", None, {}),
    ("GET", "/_resto/list/a", None, {}),
    ("GET", "/elsewhere/x", None, {}),
]

STRICT_SCENARIO = [
    ("PUT", "a/b/c.txt", b"1", {}),
    ("MKCOL", "a/b/", None, {}),
    ("MKCOL", "a/", None, {}),
    ("MKCOL", "a/", None, {}),
    ("MKCOL", "a/b", None, {}),
    ("PUT", "a/b/c.txt", b"2", {}),
    ("PUT", "a/b/c.txt", b"3", {}),
    ("PUT", "a/b", b"onto a collection", {}),
    ("PUT", "a/x/", b"collection URL", {}),
    ("GET", "a/b/c.txt", None, {}),
    ("HEAD", "a/b/c.txt", None, {}),
    ("GET", "missing", None, {}),
    ("PROPFIND", "a/", None, {"Depth": "0"}),
    ("PROPFIND", "a/", None, {"Depth": "1"}),
    ("PROPFIND", "a/", None, {"Depth": "infinity"}),
    ("PROPFIND", "a/", None, {}),
    ("PROPFIND", "missing/", None, {"Depth": "1"}),
    ("DELETE", "a/b/c.txt", None, {}),
    ("DELETE", "a/b/c.txt", None, {}),
    ("DELETE", "a", None, {}),
    ("GET", "/_resto/list/", None, {}),
    ("GET", "/elsewhere/x", None, {}),
]


def run_scenario(server: MediaServer, scenario: list, auth=None) -> list[tuple[str, str, int]]:
    results = []
    with requests.Session() as session:
        for method, name, body, headers in scenario:
            path = name if name.startswith("/") else "/media/" + name
            response = call(
                session, method, server.url + path, data=body, headers=headers, auth=auth
            )
            results.append((method, name, response.status_code))
    return results


@pytest.mark.parametrize(
    ("real", "imitation", "scenario"),
    [("nginx", "test", PERMISSIVE_SCENARIO), ("lighttpd", "test-strict", STRICT_SCENARIO)],
)
def test_test_server_answers_like_the_real_server(
    media_server_factory: Factory, real: str, imitation: str, scenario: list
):
    real_server = media_server_factory(real)
    test_server = media_server_factory(imitation)
    assert isinstance(test_server, TestHttpServer)
    assert run_scenario(test_server, scenario) == run_scenario(real_server, scenario)
    assert test_server.files() == real_server.files()
    assert test_server.strict == real_server.strict
    assert test_server.listing_prefix == real_server.listing_prefix


@pytest.mark.parametrize(("real", "imitation"), [("nginx", "test"), ("lighttpd", "test-strict")])
def test_test_server_credentials_like_the_real_server(
    media_server_factory: Factory, real: str, imitation: str
):
    credentials = ("u", "p")
    servers = [media_server_factory(k, credentials=credentials) for k in (real, imitation)]
    scenario = [
        ("PUT", "f.txt", b"x", {}),
        ("DELETE", "f.txt", None, {}),
        ("GET", "f.txt", None, {}),
    ]
    anonymous = [run_scenario(s, scenario) for s in servers]
    assert (
        anonymous[0]
        == anonymous[1]
        == [
            ("PUT", "f.txt", 401),
            ("DELETE", "f.txt", 401),
            ("GET", "f.txt", 404),
        ]
    )
    authorized = [run_scenario(s, scenario, auth=credentials) for s in servers]
    assert (
        authorized[0]
        == authorized[1]
        == [
            ("PUT", "f.txt", 201),
            ("DELETE", "f.txt", 204),
            ("GET", "f.txt", 404),
        ]
    )


def test_factory_builds_every_kind(media_server_factory: Factory, session: requests.Session):
    for kind in MEDIA_SERVER_KINDS:
        server = media_server_factory(kind)
        if server.strict:
            assert call(session, "MKCOL", server.url + "/media/d/").status_code == 201
        response = call(session, "PUT", server.url + "/media/d/f.txt", data=kind.encode())
        assert response.status_code == 201, kind
        assert server.files() == {"d/f.txt": kind.encode()}


def test_pool_stops_everything(tmp_path_factory: pytest.TempPathFactory):
    pool = MediaServerPool(tmp_path_factory)
    servers = [pool.make(kind) for kind in MEDIA_SERVER_KINDS]
    pids = [s.pid for s in servers if not isinstance(s, TestHttpServer)]
    assert len(pids) == 2
    assert all(process_alive(pid) for pid in pids)
    assert all(s.running for s in servers)
    pool.stop_all()
    assert not any(s.running for s in servers)
    assert not any(process_alive(pid) for pid in pids)
    assert not any(group_alive(pid) for pid in pids)  # nginx workers included


def test_convenience_fixtures(
    resto_test_server: MediaServer, nginx_dav: MediaServer, lighttpd_dav: MediaServer
):
    assert isinstance(resto_test_server, TestHttpServer)
    assert isinstance(nginx_dav, NginxDav)
    assert isinstance(lighttpd_dav, LighttpdDav)
    for server in (resto_test_server, nginx_dav, lighttpd_dav):
        assert server.running
        assert server.base_path == "/media/"
        response = requests.put(server.url + "/media/f.txt", data=b"f", timeout=TIMEOUT)
        assert response.status_code == 201
        assert server.files() == {"f.txt": b"f"}


def test_star_import_exports_the_fixtures():
    namespace: dict = {}
    exec("from tests.servers import *", namespace)
    for name in ("media_server_factory", "resto_test_server", "nginx_dav", "lighttpd_dav"):
        assert name in namespace
    assert namespace["MEDIA_SERVER_KINDS"] == ("test", "test-strict", "nginx", "lighttpd")
