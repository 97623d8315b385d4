"""TestHttpServer, exercised over real loopback HTTP (requests and http.client).

No Django needed: run with ``-p no:django`` if there are no settings.
"""

from __future__ import annotations

import ast
import email.utils
import http.client
import json
import os
import socket
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from django_resto.testing import http_server
from django_resto.testing.http_server import TEMP_PREFIX, RequestRecord, TestHttpServer

TIMEOUT = 5
DAV = "{DAV:}"


@pytest.fixture(autouse=True)
def media_root(tmp_path: Path) -> Path:
    """Override conftest's fixture of the same name, which needs Django's ``settings``:
    these tests must run without Django (``-p no:django``)."""
    return tmp_path


@pytest.fixture
def server() -> Iterator[TestHttpServer]:
    with TestHttpServer(base_path="/media/") as srv:
        yield srv


@pytest.fixture
def strict() -> Iterator[TestHttpServer]:
    with TestHttpServer(base_path="/media/", strict=True) as srv:
        yield srv


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as sess:
        yield sess


def raw(
    server: TestHttpServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request with http.client, which sends the path exactly as given."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def dav(session: requests.Session, method: str, url: str, **kwargs) -> requests.Response:
    return session.request(method, url, timeout=TIMEOUT, **kwargs)


# -- lifecycle and addresses -------------------------------------------------------------


def test_addresses_and_lifecycle():
    server = TestHttpServer()
    assert not server.running
    with pytest.raises(RuntimeError):
        server.host  # noqa: B018 - the port is unknown before start
    server.start()
    try:
        assert server.running
        assert server.port > 0
        assert server.host == f"127.0.0.1:{server.port}"
        assert server.url == f"http://127.0.0.1:{server.port}"
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
    finally:
        server.stop()
    assert not server.running
    server.stop()  # idempotent


def test_context_manager_owns_and_removes_temporary_root():
    with TestHttpServer() as server:
        root = server.root
        assert root.is_dir()
        response = requests.put(server.url + "/x.txt", data=b"x", timeout=TIMEOUT)
        assert response.status_code == 201
        assert (root / "x.txt").read_bytes() == b"x"
    assert not root.exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/x.txt", timeout=TIMEOUT)


def test_given_root_is_used_and_kept(tmp_path: Path):
    root = tmp_path / "media-root"
    with TestHttpServer(root=root) as server:
        assert server.root == root.resolve()
        assert requests.put(server.url + "/a/b.txt", data=b"ab", timeout=TIMEOUT).status_code == 201
    assert (root / "a" / "b.txt").read_bytes() == b"ab"


def test_restart_keeps_port_and_files(server: TestHttpServer, session: requests.Session):
    port = server.port
    assert (
        session.put(server.url + "/media/keep.txt", data=b"k", timeout=TIMEOUT).status_code == 201
    )
    server.restart()
    assert server.port == port
    assert server.running
    # The pooled connection was closed by the restart; requests reconnects transparently.
    response = session.get(server.url + "/media/keep.txt", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.content == b"k"


def test_stop_then_start_reuses_the_port():
    server = TestHttpServer()
    server.start()
    port = server.port
    server.stop()
    server.start()
    try:
        assert server.port == port
        assert requests.put(server.url + "/n.txt", data=b"n", timeout=TIMEOUT).status_code == 201
    finally:
        server.stop()


def test_not_collected_by_pytest_and_pure_stdlib():
    assert TestHttpServer.__test__ is False
    tree = ast.parse(Path(http_server.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported - {"__future__"} <= set(sys.stdlib_module_names)
    assert "django" not in imported
    assert "requests" not in imported


def test_invalid_arguments():
    with pytest.raises(ValueError, match="base_path"):
        TestHttpServer(base_path="media/")
    with pytest.raises(ValueError, match="listing_prefix"):
        TestHttpServer(listing_prefix="list/")
    with pytest.raises(ValueError, match="credentials"):
        TestHttpServer(credentials=("only-user",))  # type: ignore[arg-type]
    assert TestHttpServer(base_path="/media").base_path == "/media/"


# -- file helpers ------------------------------------------------------------------------


def test_file_helpers(server: TestHttpServer):
    server.write("b/2.txt", b"two")
    server.write("a.txt", b"one")
    (server.root / "empty").mkdir()
    assert server.path("b/2.txt") == server.root / "b" / "2.txt"
    assert server.read("b/2.txt") == b"two"
    assert server.read("missing.txt") is None
    assert server.read("b") is None
    assert server.exists("b")
    assert server.exists("a.txt")
    assert not server.exists("nope")
    assert server.names() == ["a.txt", "b/2.txt"]
    assert server.files() == {"a.txt": b"one", "b/2.txt": b"two"}
    assert list(server.files()) == ["a.txt", "b/2.txt"]
    for bad in ("../x", "a/../../x", "/etc/passwd", "./a"):
        with pytest.raises(ValueError):
            server.path(bad)


def test_files_ignore_put_temporary_files(server: TestHttpServer):
    (server.root / f"{TEMP_PREFIX}abc").write_bytes(b"partial")
    server.write("real.txt", b"r")
    assert server.files() == {"real.txt": b"r"}


# -- GET / HEAD / PUT / DELETE -----------------------------------------------------------


def test_put_new_then_overwrite(server: TestHttpServer, session: requests.Session):
    url = server.url + "/media/photo.jpg"
    created = session.put(url, data=b"first", timeout=TIMEOUT)
    assert created.status_code == 201
    assert created.headers["Content-Length"] == "0"
    assert created.headers["Location"] == url
    replaced = session.put(url, data=b"second!", timeout=TIMEOUT)
    assert replaced.status_code == 204
    assert "Content-Length" not in replaced.headers  # RFC 9110: none on 204
    assert replaced.content == b""
    assert server.files() == {"photo.jpg": b"second!"}


def test_get_and_head(server: TestHttpServer, session: requests.Session):
    path = server.write("dir/f.txt", b"hello")
    mtime = 1_700_000_000
    os.utime(path, (mtime, mtime))
    got = session.get(server.url + "/media/dir/f.txt", timeout=TIMEOUT)
    assert got.status_code == 200
    assert got.content == b"hello"
    assert got.headers["Content-Length"] == "5"
    assert got.headers["Content-Type"] == "text/plain"
    assert got.headers["Last-Modified"] == email.utils.formatdate(mtime, usegmt=True)
    head = session.head(server.url + "/media/dir/f.txt", timeout=TIMEOUT)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["Content-Length"] == "5"
    assert head.headers["Last-Modified"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert head.headers["ETag"] == got.headers["ETag"]


def test_get_head_missing_and_directories(server: TestHttpServer, session: requests.Session):
    server.write("d/f.txt", b"f")
    assert session.get(server.url + "/media/nope.txt", timeout=TIMEOUT).status_code == 404
    assert session.head(server.url + "/media/nope.txt", timeout=TIMEOUT).status_code == 404
    assert session.get(server.url + "/media/d/", timeout=TIMEOUT).status_code == 403
    assert session.get(server.url + "/media/d/f.txt/", timeout=TIMEOUT).status_code == 404
    redirect = session.get(server.url + "/media/d", allow_redirects=False, timeout=TIMEOUT)
    assert redirect.status_code == 301
    assert redirect.headers["Location"] == server.url + "/media/d/"


def test_permissive_put_creates_parents(server: TestHttpServer, session: requests.Session):
    response = session.put(server.url + "/media/a/b/c/d.bin", data=b"\x00\x01", timeout=TIMEOUT)
    assert response.status_code == 201
    assert server.read("a/b/c/d.bin") == b"\x00\x01"


def test_permissive_put_conflicts(server: TestHttpServer, session: requests.Session):
    server.write("file.txt", b"f")
    (server.root / "dir").mkdir()
    assert (
        session.put(server.url + "/media/file.txt/x", data=b"x", timeout=TIMEOUT).status_code == 409
    )
    assert session.put(server.url + "/media/dir", data=b"x", timeout=TIMEOUT).status_code == 409
    assert session.put(server.url + "/media/new/", data=b"x", timeout=TIMEOUT).status_code == 409
    assert server.files() == {"file.txt": b"f"}


def test_strict_put_needs_parent_collection(strict: TestHttpServer, session: requests.Session):
    base = strict.url + "/media/"
    assert session.put(base + "a/b/c.txt", data=b"c", timeout=TIMEOUT).status_code == 409
    assert strict.files() == {}
    assert not strict.exists("a")
    assert dav(session, "MKCOL", base + "a/").status_code == 201
    assert dav(session, "MKCOL", base + "a/b/").status_code == 201
    assert session.put(base + "a/b/c.txt", data=b"c", timeout=TIMEOUT).status_code == 201
    assert session.put(base + "a/b/c.txt", data=b"cc", timeout=TIMEOUT).status_code == 204
    assert strict.files() == {"a/b/c.txt": b"cc"}
    assert session.put(base + "top.txt", data=b"t", timeout=TIMEOUT).status_code == 201


def test_strict_put_conflicts(strict: TestHttpServer, session: requests.Session):
    (strict.root / "dir").mkdir()
    strict.write("file.txt", b"f")
    assert session.put(strict.url + "/media/dir", data=b"x", timeout=TIMEOUT).status_code == 405
    assert session.put(strict.url + "/media/dir/", data=b"x", timeout=TIMEOUT).status_code == 400
    assert (
        session.put(strict.url + "/media/file.txt/x", data=b"x", timeout=TIMEOUT).status_code == 409
    )


def test_put_without_length_is_411(server: TestHttpServer):
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"PUT /media/x HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 411 Length Required\r\n")
    assert not server.exists("x")


def test_delete(server: TestHttpServer, session: requests.Session):
    server.write("a/f.txt", b"f")
    server.write("d/g.txt", b"g")
    assert session.delete(server.url + "/media/a/f.txt", timeout=TIMEOUT).status_code == 204
    assert session.delete(server.url + "/media/a/f.txt", timeout=TIMEOUT).status_code == 404
    assert not server.exists("a/f.txt")
    # nginx semantics for directories: a trailing slash is required, then it is recursive.
    assert session.delete(server.url + "/media/d", timeout=TIMEOUT).status_code == 409
    assert session.delete(server.url + "/media/d/", timeout=TIMEOUT).status_code == 204
    assert not server.exists("d")
    # The media root itself is never deleted.
    assert session.delete(server.url + "/media/", timeout=TIMEOUT).status_code == 403
    assert server.root.is_dir()


def test_strict_delete_collection(strict: TestHttpServer, session: requests.Session):
    strict.write("d/e/f.txt", b"f")
    assert session.delete(strict.url + "/media/d", timeout=TIMEOUT).status_code == 204
    assert not strict.exists("d")
    assert session.delete(strict.url + "/media/d", timeout=TIMEOUT).status_code == 404


def test_mkcol(strict: TestHttpServer, session: requests.Session):
    base = strict.url + "/media/"
    assert dav(session, "MKCOL", base + "col/").status_code == 201
    assert (strict.root / "col").is_dir()
    assert dav(session, "MKCOL", base + "col/").status_code == 405
    assert dav(session, "MKCOL", base + "noslash").status_code == 201
    assert dav(session, "MKCOL", base + "missing/child/").status_code == 409
    assert not strict.exists("missing")
    strict.write("file.txt", b"f")
    assert dav(session, "MKCOL", base + "file.txt").status_code == 405


def test_permissive_refuses_webdav_methods(server: TestHttpServer, session: requests.Session):
    server.write("f.txt", b"f")
    for method in ("MKCOL", "PROPFIND"):
        response = dav(session, method, server.url + "/media/new/")
        assert response.status_code == 405
        assert response.headers["Allow"] == "GET, HEAD, PUT, DELETE"
    assert not server.exists("new")
    for method in ("POST", "OPTIONS", "PATCH", "COPY"):
        assert dav(session, method, server.url + "/media/f.txt").status_code == 405


def propfind(session: requests.Session, url: str, depth: str | None) -> requests.Response:
    headers = {} if depth is None else {"Depth": depth}
    return dav(session, "PROPFIND", url, headers=headers)


def parse_multistatus(body: bytes) -> dict[str, dict[str, object]]:
    result = {}
    for response in ET.fromstring(body).iter(f"{DAV}response"):
        href = response.findtext(f"{DAV}href")
        prop = response.find(f"{DAV}propstat/{DAV}prop")
        length = prop.findtext(f"{DAV}getcontentlength")
        result[href] = {
            "collection": prop.find(f"{DAV}resourcetype/{DAV}collection") is not None,
            "length": None if length is None else int(length),
            "status": response.findtext(f"{DAV}propstat/{DAV}status"),
        }
    return result


def test_propfind(strict: TestHttpServer, session: requests.Session):
    strict.write("dir/a.txt", b"aaa")
    strict.write("dir/sub/b.txt", b"b")
    strict.write("dir/caf\u00e9 x.txt", b"cc")
    depth1 = propfind(session, strict.url + "/media/dir/", "1")
    assert depth1.status_code == 207
    assert depth1.headers["Content-Type"] == "application/xml; charset=utf-8"
    assert int(depth1.headers["Content-Length"]) == len(depth1.content)
    ok = "HTTP/1.1 200 OK"
    assert parse_multistatus(depth1.content) == {
        "/media/dir/": {"collection": True, "length": None, "status": ok},
        "/media/dir/a.txt": {"collection": False, "length": 3, "status": ok},
        "/media/dir/caf%C3%A9%20x.txt": {"collection": False, "length": 2, "status": ok},
        "/media/dir/sub/": {"collection": True, "length": None, "status": ok},
    }
    depth0 = propfind(session, strict.url + "/media/dir", "0")
    assert depth0.status_code == 207
    assert list(parse_multistatus(depth0.content)) == ["/media/dir/"]
    on_file = propfind(session, strict.url + "/media/dir/a.txt", "1")
    assert parse_multistatus(on_file.content) == {
        "/media/dir/a.txt": {"collection": False, "length": 3, "status": ok}
    }
    root = propfind(session, strict.url + "/media/", "1")
    assert list(parse_multistatus(root.content)) == ["/media/", "/media/dir/"]
    assert propfind(session, strict.url + "/media/missing/", "1").status_code == 404
    assert propfind(session, strict.url + "/media/dir/", "infinity").status_code == 403
    assert propfind(session, strict.url + "/media/dir/", None).status_code == 403


# -- framing, keep-alive, paths ----------------------------------------------------------


def test_chunked_put_with_requests(server: TestHttpServer, session: requests.Session):
    parts = [b"abc", b"", b"d" * 70_000, b"end"]
    response = session.put(server.url + "/media/chunked.bin", data=iter(parts), timeout=TIMEOUT)
    assert response.status_code == 201
    assert server.read("chunked.bin") == b"".join(parts)
    record = server.requests[-1]
    assert record.headers["Transfer-Encoding"] == "chunked"
    assert record.body_length == len(b"".join(parts))


def test_chunked_put_with_extensions_and_trailers_keeps_connection(server: TestHttpServer):
    request = (
        b"PUT /media/c.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: y\r\n\r\n"
        b"GET /media/c.txt HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        data = b""
        while not data.endswith(b"hello!"):
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 201 Created\r\n")
    assert b"HTTP/1.1 200 OK\r\n" in data
    assert server.read("c.txt") == b"hello!"


def test_bad_chunked_body_is_400_and_closes(server: TestHttpServer):
    request = b"PUT /media/bad HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in data
    assert server.files() == {}


def test_keep_alive_connection_is_reused_across_all_answers(server: TestHttpServer):
    strict_creds = TestHttpServer(base_path="/media/", credentials=("u", "p"))
    with strict_creds:
        for srv in (server, strict_creds):
            auth = {"Authorization": "Basic dTpw"}  # u:p
            connection = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=TIMEOUT)
            connection.connect()
            sock = connection.sock
            srv.fail_next(503, methods="GET")
            steps = [
                ("PUT", "/media/k.txt", b"k" * 1000, auth, 201),
                ("PUT", "/media/k.txt", b"second", {}, 401 if srv is strict_creds else 204),
                ("GET", "/media/k.txt", None, {}, 503),
                ("GET", "/media/k.txt", None, {}, 200),
                ("HEAD", "/media/k.txt", None, {}, 200),
                ("GET", "/media/none", None, {}, 404),
                ("PUT", "/outside/x", b"body to drain", auth, 404),
                ("POST", "/media/k.txt", b"posted", auth, 405),
                ("DELETE", "/media/k.txt", None, auth, 204),
                ("GET", "/media/k.txt", None, {}, 404),
            ]
            for method, path, body, headers, expected in steps:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                content = response.read()
                assert (method, path, response.status) == (method, path, expected)
                assert response.getheader("Connection") is None
                if response.status != 204:
                    length = int(response.getheader("Content-Length"))
                    assert length == (len(content) if method != "HEAD" else length)
                assert connection.sock is sock  # same socket: kept alive
            connection.close()
            assert {record.connection for record in srv.requests} == {1}


def test_requests_session_uses_one_pooled_connection(
    server: TestHttpServer, session: requests.Session
):
    for index in range(20):
        url = f"{server.url}/media/f{index}.txt"
        assert session.put(url, data=b"x", timeout=TIMEOUT).status_code == 201
        assert session.get(url, timeout=TIMEOUT).status_code == 200
        assert session.get(url + ".missing", timeout=TIMEOUT).status_code == 404
    records = server.requests
    assert len(records) == 60
    assert {record.connection for record in records} == {1}


def test_percent_decoded_utf8_paths(server: TestHttpServer, session: requests.Session):
    url = server.url + "/media/d%C3%A9j%C3%A0/caf%C3%A9%20%2B%25.txt"
    assert session.put(url, data=b"u", timeout=TIMEOUT).status_code == 201
    assert server.files() == {"d\u00e9j\u00e0/caf\u00e9 +%.txt": b"u"}
    assert server.requests[-1].path == "/media/d\u00e9j\u00e0/caf\u00e9 +%.txt"
    assert session.get(url, timeout=TIMEOUT).content == b"u"


def test_query_string_is_ignored_but_logged(server: TestHttpServer, session: requests.Session):
    response = session.put(server.url + "/media/q.txt?x=1", data=b"q", timeout=TIMEOUT)
    assert response.status_code == 201
    assert server.files() == {"q.txt": b"q"}
    assert (server.requests[-1].path, server.requests[-1].query) == ("/media/q.txt", "x=1")


@pytest.mark.parametrize(
    "path",
    [
        "/media/../escape.txt",
        "/media/a/../../escape.txt",
        "/media/%2e%2e/escape.txt",
        "/media/%2E%2E/%2e%2e/escape.txt",
        "/media/./x.txt",
        "/media/%ff.txt",  # not UTF-8
        "/media/nul%00.txt",
    ],
)
def test_bad_paths_are_400(server: TestHttpServer, path: str):
    status, _, _ = raw(server, "PUT", path, body=b"evil")
    assert status == 400
    status, _, _ = raw(server, "GET", path)
    assert status == 400
    assert server.files() == {}
    assert not (server.root.parent / "escape.txt").exists()


def test_symlink_out_of_root_is_forbidden(server: TestHttpServer, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (server.root / "link").symlink_to(outside)
    assert raw(server, "GET", "/media/link/secret")[0] == 403
    assert raw(server, "PUT", "/media/link/new", body=b"x")[0] == 403
    assert not (outside / "new").exists()


def test_base_path(server: TestHttpServer, session: requests.Session):
    assert session.put(server.url + "/other/x.txt", data=b"x", timeout=TIMEOUT).status_code == 404
    assert session.put(server.url + "/x.txt", data=b"x", timeout=TIMEOUT).status_code == 404
    assert session.get(server.url + "/media", timeout=TIMEOUT).status_code == 404
    assert session.put(server.url + "/mediax/y", data=b"x", timeout=TIMEOUT).status_code == 404
    assert session.put(server.url + "/media/x.txt", data=b"x", timeout=TIMEOUT).status_code == 201
    assert server.files() == {"x.txt": b"x"}


def test_default_base_path_is_root():
    with TestHttpServer() as server:
        assert server.base_path == "/"
        assert requests.put(server.url + "/m/x", data=b"x", timeout=TIMEOUT).status_code == 201
        assert server.files() == {"m/x": b"x"}


def test_put_is_atomic_for_readers(server: TestHttpServer, session: requests.Session):
    server.write("big.bin", b"old")
    new = os.urandom(1_000_000)
    server.hang(methods="PUT")
    results: list[int] = []
    thread = threading.Thread(
        target=lambda: results.append(
            requests.put(server.url + "/media/big.bin", data=new, timeout=TIMEOUT).status_code
        )
    )
    thread.start()
    try:
        assert server.wait_until_hanging(1)
        # The whole body has arrived (it sits in a hidden temporary file), yet readers
        # still see the old file, and the helpers do not list the temporary file.
        temps = [p for p in server.root.iterdir() if p.name.startswith(TEMP_PREFIX)]
        assert len(temps) == 1
        assert temps[0].stat().st_size == len(new)
        assert session.get(server.url + "/media/big.bin", timeout=TIMEOUT).content == b"old"
        assert server.files() == {"big.bin": b"old"}
        listing = session.get(server.url + "/_resto/list/", timeout=TIMEOUT).json()
        assert [entry["name"] for entry in listing] == ["big.bin"]
    finally:
        server.release()
        thread.join(TIMEOUT)
    assert results == [204]
    assert server.read("big.bin") == new
    assert [p.name for p in server.root.iterdir()] == ["big.bin"]


def test_parallel_puts(server: TestHttpServer):
    def put(index: int) -> int:
        url = f"{server.url}/media/p/{index % 5}/{index}.txt"
        return requests.put(url, data=str(index).encode(), timeout=TIMEOUT).status_code

    threads = []
    statuses: list[int] = []
    for index in range(40):
        thread = threading.Thread(target=lambda i=index: statuses.append(put(i)))
        threads.append(thread)
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert statuses == [201] * 40
    assert server.files() == {f"p/{i % 5}/{i}.txt": str(i).encode() for i in range(40)}
    assert len(server.requests) == 40


# -- listing -----------------------------------------------------------------------------


def nginx_entry(path: Path, name: str) -> str:
    st = path.stat()
    mtime = email.utils.formatdate(st.st_mtime, usegmt=True)
    if path.is_dir():
        return f'{{ "name":"{name}", "type":"directory", "mtime":"{mtime}" }}'
    return f'{{ "name":"{name}", "type":"file", "mtime":"{mtime}", "size":{st.st_size} }}'


def test_listing_exact_nginx_format(server: TestHttpServer, session: requests.Session):
    for name in ("x.jpg", "B", "_", "a", 'q"uote'):
        server.write(f"uploads/{name}", b"12345"[: len(name)])
    server.write("uploads/.hidden", b"h")
    for name in ("sub", "Zdir"):
        (server.root / "uploads" / name).mkdir()
    response = session.get(server.url + "/_resto/list/uploads/", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Content-Length"] == str(len(response.content))
    up = server.root / "uploads"
    expected = (
        "[\r\n"
        + nginx_entry(up / "Zdir", "Zdir") + ",\r\n"
        + nginx_entry(up / "sub", "sub") + ",\r\n"
        + nginx_entry(up / "B", "B") + ",\r\n"
        + nginx_entry(up / "_", "_") + ",\r\n"
        + nginx_entry(up / "a", "a") + ",\r\n"
        + nginx_entry(up / 'q"uote', 'q\\"uote') + ",\r\n"
        + nginx_entry(up / "x.jpg", "x.jpg") + "\r\n"
        + "]"
    )  # fmt: skip
    assert response.content.decode() == expected
    parsed = json.loads(response.content)
    assert [entry["name"] for entry in parsed] == ["Zdir", "sub", "B", "_", "a", 'q"uote', "x.jpg"]
    assert parsed[-1]["size"] == 5
    assert "size" not in parsed[0]


def test_listing_utf8_names_root_and_empty(server: TestHttpServer, session: requests.Session):
    server.write("caf\u00e9\n.txt", b"xy")
    (server.root / "empty").mkdir()
    root = session.get(server.url + "/_resto/list/", timeout=TIMEOUT)
    assert root.status_code == 200
    assert '"name":"caf\u00e9\\n.txt"'.encode() in root.content  # UTF-8 kept, \n escaped
    assert [e["name"] for e in root.json()] == ["empty", "caf\u00e9\n.txt"]
    empty = session.get(server.url + "/_resto/list/empty/", timeout=TIMEOUT)
    assert empty.content == b"[\r\n]"
    assert empty.json() == []
    head = session.head(server.url + "/_resto/list/empty/", timeout=TIMEOUT)
    assert (head.status_code, head.headers["Content-Length"], head.content) == (200, "4", b"")


def test_listing_errors(server: TestHttpServer, session: requests.Session):
    server.write("d/f.txt", b"f")
    assert session.get(server.url + "/_resto/list/missing/", timeout=TIMEOUT).status_code == 404
    redirect = session.get(server.url + "/_resto/list/d", allow_redirects=False, timeout=TIMEOUT)
    assert redirect.status_code == 301
    assert redirect.headers["Location"] == server.url + "/_resto/list/d/"
    # Like nginx's alias, a file below the prefix is served.
    assert session.get(server.url + "/_resto/list/d/f.txt", timeout=TIMEOUT).content == b"f"
    put = session.put(server.url + "/_resto/list/d/g.txt", data=b"g", timeout=TIMEOUT)
    assert put.status_code == 405
    assert not server.exists("d/g.txt")


def test_no_listing_in_strict_mode_or_when_disabled(strict: TestHttpServer):
    strict.write("f.txt", b"f")
    assert strict.listing_prefix is None
    assert requests.get(strict.url + "/_resto/list/", timeout=TIMEOUT).status_code == 404
    with TestHttpServer(base_path="/media/", listing_prefix=None) as server:
        assert server.listing_prefix is None
        assert requests.get(server.url + "/_resto/list/", timeout=TIMEOUT).status_code == 404


def test_custom_listing_prefix_and_base_path_root():
    with TestHttpServer(listing_prefix="/_list") as server:
        server.write("a/b.txt", b"b")
        assert server.listing_prefix == "/_list/"
        listing = requests.get(server.url + "/_list/a/", timeout=TIMEOUT)
        assert [e["name"] for e in listing.json()] == ["b.txt"]
        # The listing prefix wins over base_path "/": it is not a media path.
        assert requests.put(server.url + "/_list/x", data=b"x", timeout=TIMEOUT).status_code == 405


# -- credentials -------------------------------------------------------------------------


def test_credentials(session: requests.Session):
    with TestHttpServer(base_path="/media/", credentials=("user", "pw")) as server:
        url = server.url + "/media/f.txt"
        assert server.credentials == ("user", "pw")
        denied = session.put(url, data=b"x", timeout=TIMEOUT)
        assert denied.status_code == 401
        assert denied.headers["WWW-Authenticate"] == 'Basic realm="django_resto"'
        assert session.put(url, data=b"x", auth=("user", "bad"), timeout=TIMEOUT).status_code == 401
        assert session.put(url, data=b"x", auth=("bad", "pw"), timeout=TIMEOUT).status_code == 401
        bogus = {"Authorization": "Basic !!!"}
        assert session.put(url, data=b"x", headers=bogus, timeout=TIMEOUT).status_code == 401
        bearer = {"Authorization": "Bearer token"}
        assert session.put(url, data=b"x", headers=bearer, timeout=TIMEOUT).status_code == 401
        assert server.files() == {}
        assert session.put(url, data=b"x", auth=("user", "pw"), timeout=TIMEOUT).status_code == 201
        # Reading media needs no credentials; listing and deleting do.
        assert session.get(url, timeout=TIMEOUT).status_code == 200
        assert session.head(url, timeout=TIMEOUT).status_code == 200
        listing = server.url + "/_resto/list/"
        assert session.get(listing, timeout=TIMEOUT).status_code == 401
        assert session.get(listing, auth=("user", "pw"), timeout=TIMEOUT).status_code == 200
        assert session.delete(url, timeout=TIMEOUT).status_code == 401
        assert session.delete(url, auth=("user", "pw"), timeout=TIMEOUT).status_code == 204


def test_credentials_strict_webdav_methods(session: requests.Session):
    with TestHttpServer(base_path="/media/", strict=True, credentials=("u", "p")) as server:
        base = server.url + "/media/"
        assert dav(session, "MKCOL", base + "c/").status_code == 401
        assert dav(session, "MKCOL", base + "c/", auth=("u", "p")).status_code == 201
        assert dav(session, "PROPFIND", base, headers={"Depth": "1"}).status_code == 401
        found = dav(session, "PROPFIND", base, headers={"Depth": "1"}, auth=("u", "p"))
        assert found.status_code == 207


def test_password_with_colon_and_utf8(session: requests.Session):
    with TestHttpServer(credentials=("us\u00e9r", "p:w\u00e9")) as server:
        url = server.url + "/x"
        auth = ("us\u00e9r".encode(), "p:w\u00e9".encode())
        assert session.put(url, data=b"x", auth=auth, timeout=TIMEOUT).status_code == 201


# -- faults ------------------------------------------------------------------------------


def test_fail_next(server: TestHttpServer, session: requests.Session):
    url = server.url + "/media/f.txt"
    server.fail_next(503)
    assert session.put(url, data=b"x", timeout=TIMEOUT).status_code == 503
    assert server.files() == {}  # nothing was written for the failed request
    assert session.put(url, data=b"x", timeout=TIMEOUT).status_code == 201
    server.fail_next(500, count=2, methods=["PUT"])
    assert session.get(url, timeout=TIMEOUT).status_code == 200  # GET is not concerned
    assert session.put(url, data=b"y", timeout=TIMEOUT).status_code == 500
    assert session.put(url, data=b"y", timeout=TIMEOUT).status_code == 500
    assert session.put(url, data=b"y", timeout=TIMEOUT).status_code == 204
    # Rules queue up in order.
    server.fail_next(502)
    server.fail_next(504)
    assert session.get(url, timeout=TIMEOUT).status_code == 502
    assert session.get(url, timeout=TIMEOUT).status_code == 504
    assert session.get(url, timeout=TIMEOUT).status_code == 200
    with pytest.raises(ValueError):
        server.fail_next(500, count=0)


def test_fail_next_applies_before_every_other_check(session: requests.Session):
    with TestHttpServer(base_path="/media/", credentials=("u", "p")) as server:
        server.fail_next(507, count=2)
        assert session.put(server.url + "/outside", data=b"x", timeout=TIMEOUT).status_code == 507
        assert session.put(server.url + "/media/a", data=b"x", timeout=TIMEOUT).status_code == 507
        assert session.put(server.url + "/media/a", data=b"x", timeout=TIMEOUT).status_code == 401


def test_force_status(server: TestHttpServer, session: requests.Session):
    url = server.url + "/media/f.txt"
    server.force_status(500, methods="DELETE")
    server.write("f.txt", b"f")
    for _ in range(3):
        assert session.delete(url, timeout=TIMEOUT).status_code == 500
    assert server.exists("f.txt")
    assert session.get(url, timeout=TIMEOUT).status_code == 200
    server.fail_next(418, methods="DELETE")  # queued rules win over the forced status
    assert session.delete(url, timeout=TIMEOUT).status_code == 418
    assert session.delete(url, timeout=TIMEOUT).status_code == 500
    server.force_status(None)
    assert session.delete(url, timeout=TIMEOUT).status_code == 204


def test_forced_status_on_head_has_no_body(server: TestHttpServer):
    server.force_status(500)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        for method in ("HEAD", "GET", "HEAD"):
            connection.request(method, "/media/x")
            response = connection.getresponse()
            body = response.read()
            assert response.status == 500
            assert int(response.getheader("Content-Length")) == len(b"500 Internal Server Error\n")
            assert body == (b"" if method == "HEAD" else b"500 Internal Server Error\n")
    finally:
        connection.close()


def test_read_only(server: TestHttpServer, session: requests.Session):
    server.write("f.txt", b"f")
    server.read_only = True
    assert server.read_only is True
    assert session.put(server.url + "/media/g.txt", data=b"g", timeout=TIMEOUT).status_code == 403
    assert session.delete(server.url + "/media/f.txt", timeout=TIMEOUT).status_code == 403
    assert session.get(server.url + "/media/f.txt", timeout=TIMEOUT).status_code == 200
    assert server.files() == {"f.txt": b"f"}
    server.read_only = False
    assert session.put(server.url + "/media/g.txt", data=b"g", timeout=TIMEOUT).status_code == 201


def test_read_only_strict_mkcol(strict: TestHttpServer, session: requests.Session):
    strict.read_only = True
    assert dav(session, "MKCOL", strict.url + "/media/c/").status_code == 403
    assert not strict.exists("c")


def test_delay(server: TestHttpServer, session: requests.Session):
    server.delay(0.3, methods="PUT")
    started = time.monotonic()
    assert session.put(server.url + "/media/d.txt", data=b"d", timeout=TIMEOUT).status_code == 201
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert session.get(server.url + "/media/d.txt", timeout=TIMEOUT).status_code == 200
    assert time.monotonic() - started < 0.3
    server.delay(0)
    with pytest.raises(ValueError):
        server.delay(-1)


def test_delay_makes_client_time_out_before_any_change(
    server: TestHttpServer, session: requests.Session
):
    server.delay(0.6)
    with pytest.raises(requests.ReadTimeout):
        session.put(server.url + "/media/late.txt", data=b"late", timeout=(TIMEOUT, 0.2))
    assert server.files() == {}
    assert server.names() == []
    assert server.wait_for_requests(1, timeout=TIMEOUT)  # the server finishes eventually
    assert server.read("late.txt") == b"late"


def test_hang_and_release(server: TestHttpServer):
    server.hang()
    statuses: list[int] = []

    def put(name: str) -> None:
        url = f"{server.url}/media/{name}"
        statuses.append(requests.put(url, data=b"h", timeout=TIMEOUT).status_code)

    threads = [threading.Thread(target=put, args=(f"{i}.txt",)) for i in range(3)]
    for thread in threads:
        thread.start()
    assert server.wait_until_hanging(3)
    assert server.hanging == 3
    assert server.files() == {}
    assert server.requests == []
    server.release()
    for thread in threads:
        thread.join(TIMEOUT)
    assert statuses == [201, 201, 201]
    assert server.hanging == 0
    assert server.names() == ["0.txt", "1.txt", "2.txt"]
    # After release(), requests are answered at once again.
    assert requests.get(server.url + "/media/0.txt", timeout=TIMEOUT).status_code == 200


def test_hang_only_some_methods(server: TestHttpServer, session: requests.Session):
    server.write("f.txt", b"f")
    server.hang(methods=["DELETE"])
    assert session.get(server.url + "/media/f.txt", timeout=TIMEOUT).status_code == 200
    with pytest.raises(requests.ReadTimeout):
        session.delete(server.url + "/media/f.txt", timeout=(TIMEOUT, 0.2))
    assert server.exists("f.txt")
    server.release()


def test_stop_does_not_block_on_hung_handlers():
    server = TestHttpServer()
    server.start()
    server.hang()
    errors: list[BaseException] = []

    def put() -> None:
        try:
            requests.put(server.url + "/x", data=b"x", timeout=TIMEOUT)
        except requests.RequestException as error:
            errors.append(error)

    thread = threading.Thread(target=put)
    thread.start()
    assert server.wait_until_hanging(1)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    thread.join(TIMEOUT)
    assert len(errors) == 1
    assert isinstance(errors[0], requests.ConnectionError)
    assert server.requests[-1].status is None


def test_stop_interrupts_a_long_delay():
    server = TestHttpServer()
    server.start()
    server.delay(60)
    errors: list[BaseException] = []

    def get() -> None:
        try:
            requests.get(server.url + "/x", timeout=TIMEOUT)
        except requests.RequestException as error:
            errors.append(error)

    thread = threading.Thread(target=get)
    thread.start()
    time.sleep(0.3)  # let the request reach the delay
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], requests.ConnectionError)


def test_stop_closes_idle_keep_alive_connections():
    server = TestHttpServer()
    server.start()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    connection.request("GET", "/missing")
    assert connection.getresponse().read() == b"404 Not Found\n"
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    assert connection.sock.recv(1) == b""  # closed by the server
    connection.close()


def test_drop_connections(server: TestHttpServer, session: requests.Session):
    server.drop_connections(True)
    with pytest.raises(requests.ConnectionError):
        session.put(server.url + "/media/x.txt", data=b"x", timeout=TIMEOUT)
    with pytest.raises(requests.ConnectionError):
        session.get(server.url + "/media/x.txt", timeout=TIMEOUT)
    assert server.files() == {}
    assert [(r.method, r.status) for r in server.requests] == [("PUT", None), ("GET", None)]
    server.drop_connections(False)
    assert session.put(server.url + "/media/x.txt", data=b"x", timeout=TIMEOUT).status_code == 201


def test_drop_connections_for_some_methods(server: TestHttpServer, session: requests.Session):
    server.write("x.txt", b"x")
    server.drop_connections(methods="PUT")
    assert session.get(server.url + "/media/x.txt", timeout=TIMEOUT).status_code == 200
    with pytest.raises(requests.ConnectionError):
        session.put(server.url + "/media/x.txt", data=b"y", timeout=TIMEOUT)
    assert server.read("x.txt") == b"x"


def test_drop_next(server: TestHttpServer, session: requests.Session):
    server.drop_next(count=2, methods="PUT")
    for _ in range(2):
        with pytest.raises(requests.ConnectionError):
            session.put(server.url + "/media/x.txt", data=b"x", timeout=TIMEOUT)
    assert session.put(server.url + "/media/x.txt", data=b"x", timeout=TIMEOUT).status_code == 201
    with pytest.raises(ValueError):
        server.drop_next(count=0)


def test_reset_faults(server: TestHttpServer, session: requests.Session):
    server.fail_next(500, count=5)
    server.force_status(502)
    server.drop_connections(methods="DELETE")
    server.read_only = True
    server.delay(30, methods="GET")
    server.hang(methods="HEAD")
    statuses: list[int] = []
    thread = threading.Thread(
        target=lambda: statuses.append(
            requests.head(server.url + "/media/x.txt", timeout=TIMEOUT).status_code
        )
    )
    thread.start()
    assert server.wait_until_hanging(1)
    server.reset_faults()
    thread.join(TIMEOUT)
    assert statuses == [500]  # it had been given its (queued) status before hanging
    assert server.hanging == 0
    assert not server.read_only
    url = server.url + "/media/x.txt"
    assert session.put(url, data=b"x", timeout=TIMEOUT).status_code == 201
    assert session.get(url, timeout=TIMEOUT).status_code == 200
    assert session.head(url, timeout=TIMEOUT).status_code == 200
    assert session.delete(url, timeout=TIMEOUT).status_code == 204


# -- request log -------------------------------------------------------------------------


def test_request_log(server: TestHttpServer, session: requests.Session):
    session.put(server.url + "/media/a%20b.txt", data=b"12345", timeout=TIMEOUT)
    session.get(server.url + "/media/missing", timeout=TIMEOUT)
    server.fail_next(503)
    session.delete(server.url + "/media/a%20b.txt", timeout=TIMEOUT)
    records = server.requests
    assert [(r.method, r.path, r.body_length, r.status) for r in records] == [
        ("PUT", "/media/a b.txt", 5, 201),
        ("GET", "/media/missing", 0, 404),
        ("DELETE", "/media/a b.txt", 0, 503),
    ]
    assert isinstance(records[0], RequestRecord)
    assert records[0].headers["Content-Length"] == "5"
    assert records[0].headers["Host"] == server.host
    records.clear()  # a snapshot: the server's log is untouched
    assert len(server.requests) == 3
    server.clear_log()
    assert server.requests == []
    assert server.wait_for_requests(1, timeout=0.05) is False


def test_request_log_keeps_raw_path_when_undecodable(server: TestHttpServer):
    assert raw(server, "GET", "/media/%ff")[0] == 400
    assert server.requests[-1].path == "/media/%ff"
    assert server.requests[-1].status == 400


def test_request_log_is_thread_safe(server: TestHttpServer):
    def work(index: int) -> None:
        with requests.Session() as sess:
            for j in range(10):
                sess.get(f"{server.url}/media/{index}-{j}", timeout=TIMEOUT)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert server.wait_for_requests(80, timeout=TIMEOUT)
    records = server.requests
    assert len(records) == 80
    assert sorted(r.path for r in records) == sorted(
        f"/media/{i}-{j}" for i in range(8) for j in range(10)
    )
    assert {r.status for r in records} == {404}
