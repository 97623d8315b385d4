# The fixture media_server_factory is imported from tests.servers, and pytest passes it
# back as an argument of the same name, which pyflakes reads as a redefinition.
# ruff: noqa: F811
"""Listing a media server's tree: PROPFIND, nginx's JSON autoindex, and the HEAD fallback.

Against real nginx and lighttpd on loopback, and TestHttpServer where a fault or a
request count is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from django_resto import listing
from django_resto.listing import (
    AUTOINDEX,
    HEAD,
    PROPFIND,
    Entry,
    ListingError,
    detect_method,
    list_host,
)
from django_resto.settings import parse_host
from django_resto.transport import HostTransport
from tests.servers import MediaServer, media_server_factory  # noqa: F401 - fixture

Factory = Callable[..., MediaServer]
CREDENTIALS = ("resto", "s3cret")

TREE = {
    "top.txt": b"top",
    "uploads/2026/11/photo.jpg": b"\xff\xd8jpeg",
    "uploads/2026/11/caf\u00e9 cr\u00e8me.txt": "cr\u00e8me".encode(),
    "uploads/\u65e5\u672c/\u6587\u5b57 #1?.png": b"png" * 100,
    "uploads/per%20cent & plus+.bin": b"",
    "deep/a/b/c/d/e/f.txt": b"deep",
}
KIND_METHODS = {
    "nginx": AUTOINDEX,
    "lighttpd": PROPFIND,
    "test": AUTOINDEX,
    "test-strict": PROPFIND,
}


@pytest.fixture(autouse=True)
def fresh_detection() -> Iterator[None]:
    """Detections are remembered per process; each test starts from none."""
    listing.forget_methods()
    yield
    listing.forget_methods()


def transport_for(server: MediaServer, auth: tuple[str, str] | None = CREDENTIALS):
    return HostTransport(parse_host(server.host), "/media/", timeout=5, auth=auth)


def seed(server: MediaServer, tree: dict[str, bytes] = TREE) -> None:
    for name, data in tree.items():
        server.write(name, data)


@pytest.mark.real_server
@pytest.mark.parametrize("kind", list(KIND_METHODS))
def test_lists_nested_unicode_names_with_sizes(media_server_factory: Factory, kind: str):
    server = media_server_factory(kind, credentials=CREDENTIALS)
    seed(server)
    (server.root / "empty" / "dir").mkdir(parents=True)
    transport = transport_for(server)
    result = list_host(transport, mtimes=True)
    assert result.method == KIND_METHODS[kind]
    assert result.complete is True
    assert result.failed == {}
    assert result.notes == []
    assert {name: entry.size for name, entry in result.files.items()} == {
        name: len(data) for name, data in TREE.items()
    }
    assert all(entry.mtime is not None for entry in result.files.values())
    # One request per directory: ., top-level dirs, and every level below them.
    directories = {""} | {
        "/".join(name.split("/")[:depth]) + "/"
        for name in TREE
        for depth in range(1, name.count("/") + 1)
    }
    directories |= {"empty/", "empty/dir/"}
    assert result.requests == len(directories)
    transport.close()


@pytest.mark.real_server
@pytest.mark.parametrize("kind", ["nginx", "lighttpd"])
def test_detection_is_remembered(media_server_factory: Factory, kind: str):
    server = media_server_factory(kind, credentials=CREDENTIALS)
    transport = transport_for(server)
    assert detect_method(transport) == KIND_METHODS[kind]
    lines = len(server.access_log.read_text().splitlines())
    assert detect_method(transport) == KIND_METHODS[kind]
    assert len(server.access_log.read_text().splitlines()) == lines  # no new probe


def test_detection_asks_propfind_then_json_and_remembers(media_server_factory: Factory):
    server = media_server_factory("test")
    transport = transport_for(server, auth=None)
    assert detect_method(transport) == AUTOINDEX
    assert [(r.method, r.path, r.status) for r in server.requests] == [
        ("PROPFIND", "/media/", 405),
        ("GET", "/_resto/list/", 200),
    ]
    server.clear_log()
    result = list_host(transport)
    assert result.method == AUTOINDEX
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/_resto/list/")]


@pytest.mark.real_server
@pytest.mark.parametrize("kind", ["nginx", "lighttpd"])
def test_listing_sends_the_storage_credentials(media_server_factory: Factory, kind: str):
    server = media_server_factory(kind, credentials=CREDENTIALS)
    seed(server, {"a/b.txt": b"b", "c.txt": b"cc"})
    # Without credentials the listing is refused: detection falls back to HEAD, says
    # why, and the result admits it cannot see extra files.
    anonymous = list_host(transport_for(server, auth=None), expected=["a/b.txt", "gone.txt"])
    assert anonymous.method == HEAD
    assert anonymous.complete is False
    assert anonymous.files == {"a/b.txt": Entry(1)}
    assert len(anonymous.notes) == 1
    assert "answered 401" in anonymous.notes[0]
    assert "extra files cannot be detected" in anonymous.notes[0]
    # The same server with the storage's credentials lists everything.
    authorized = list_host(transport_for(server), expected=["a/b.txt", "gone.txt"])
    assert authorized.method == KIND_METHODS[kind]
    assert authorized.complete is True
    assert authorized.files == {"a/b.txt": Entry(1), "c.txt": Entry(2)}


def test_head_fallback_probes_each_expected_name(media_server_factory: Factory):
    # A permissive server without JSON listing: neither PROPFIND nor autoindex.
    server = media_server_factory("test", listing_prefix=None)
    seed(server, {"x/y.txt": b"xy", "z.txt": b"z", "extra.txt": b"?"})
    result = list_host(transport_for(server), expected=["x/y.txt", "z.txt", "missing.txt"])
    assert result.method == HEAD
    assert result.complete is False
    assert result.files == {"x/y.txt": Entry(2), "z.txt": Entry(1)}
    assert "extra.txt" not in result.files  # what HEAD cannot know about
    heads = sorted(r.path for r in server.requests if r.method == HEAD.upper())
    assert heads == ["/media/missing.txt", "/media/x/y.txt", "/media/z.txt"]
    assert result.requests == 3


@pytest.mark.real_server
def test_forced_head_on_nginx(media_server_factory: Factory):
    server = media_server_factory("nginx")
    seed(server, {"\u00e9t\u00e9/ok.txt": b"ok"})
    result = list_host(
        transport_for(server), expected=["\u00e9t\u00e9/ok.txt", "no.txt"], method=HEAD
    )
    assert (result.method, result.complete) == (HEAD, False)
    assert result.files == {"\u00e9t\u00e9/ok.txt": Entry(2)}
    assert result.notes == []


def test_head_fallback_records_odd_statuses_as_unknown(media_server_factory: Factory):
    server = media_server_factory("test", listing_prefix=None)
    seed(server, {"a.txt": b"a", "b.txt": b"b"})
    transport = transport_for(server)
    server.fail_next(500, methods="HEAD")
    result = list_host(transport, expected=["a.txt"], method=HEAD)
    assert result.failed == {"a.txt": "HEAD answered 500"}
    assert result.files == {}


@pytest.mark.real_server
def test_nginx_dot_files_are_checked_with_head(media_server_factory: Factory):
    server = media_server_factory("nginx", credentials=CREDENTIALS)
    seed(server, {".htaccess": b"x", "a/.cache/k": b"kk", "a/v.txt": b"v", ".extra": b"e"})
    result = list_host(transport_for(server), expected=[".htaccess", "a/.cache/k", "a/v.txt"])
    assert result.method == AUTOINDEX
    assert result.files == {".htaccess": Entry(1), "a/.cache/k": Entry(2), "a/v.txt": Entry(1)}
    assert result.notes == [
        "2 name(s) with a dot-file segment checked with HEAD (nginx's autoindex hides "
        "them); extra dot-files cannot be detected."
    ]


@pytest.mark.real_server
def test_lighttpd_lists_dot_files(media_server_factory: Factory):
    server = media_server_factory("lighttpd")
    seed(server, {".htaccess": b"x", "a/.cache/k": b"kk"})
    result = list_host(transport_for(server))
    assert result.files == {".htaccess": Entry(1), "a/.cache/k": Entry(2)}


@pytest.mark.real_server
@pytest.mark.parametrize("kind", ["nginx", "lighttpd"])
def test_empty_host(media_server_factory: Factory, kind: str):
    server = media_server_factory(kind)
    result = list_host(transport_for(server))
    assert (result.method, result.files, result.complete) == (KIND_METHODS[kind], {}, True)


@pytest.mark.real_server
def test_stopped_server_raises_listing_error(media_server_factory: Factory):
    server = media_server_factory("nginx")
    transport = transport_for(server)
    server.stop()
    with pytest.raises(ListingError) as caught:
        list_host(transport, expected=["a"])
    assert caught.value.host == server.host
    assert "ConnectionError" in str(caught.value)


def test_root_that_cannot_be_listed_raises(media_server_factory: Factory):
    server = media_server_factory("test")
    transport = transport_for(server)
    assert detect_method(transport) == AUTOINDEX
    server.fail_next(500, methods="GET")
    with pytest.raises(ListingError, match="answered 500"):
        list_host(transport)


def test_a_directory_that_fails_is_probed_with_head(
    media_server_factory: Factory, monkeypatch: pytest.MonkeyPatch
):
    server = media_server_factory("test")
    seed(server, {"ok/a.txt": b"a", "bad/b.txt": b"bb", "bad/extra.txt": b"?"})
    real = listing._read_autoindex

    def flaky(transport, prefix, directory, mtimes):
        if directory == "bad/":
            raise listing._BadDirectory("GET /_resto/list/bad/ answered 502")
        return real(transport, prefix, directory, mtimes)

    monkeypatch.setattr(listing, "_read_autoindex", flaky)
    result = list_host(transport_for(server), expected=["ok/a.txt", "bad/b.txt", "bad/gone.txt"])
    assert result.complete is False
    assert result.files == {"ok/a.txt": Entry(1), "bad/b.txt": Entry(2)}
    assert result.notes == ["Could not list bad/: GET /_resto/list/bad/ answered 502"]


def test_timeout_is_bounded(media_server_factory: Factory):
    server = media_server_factory("test")
    transport = HostTransport(parse_host(server.host), "/media/", timeout=0.3)
    server.hang()
    with pytest.raises(ListingError, match="Timeout"):
        list_host(transport)
    server.release()


class _Response:
    """Just enough of wire.Response for the PROPFIND parser."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def read(self) -> bytes:
        return self.body

    def close(self) -> None:
        pass


def test_propfind_parser_accepts_absolute_hrefs_and_skips_foreign_ones(
    monkeypatch: pytest.MonkeyPatch,
):
    body = b"""<?xml version="1.0"?>
<multistatus xmlns="DAV:">
 <response><href>http://media.example/media/d/</href>
  <propstat><prop><resourcetype><collection/></resourcetype></prop>
  <status>HTTP/1.1 200 OK</status></propstat></response>
 <response><href>http://media.example/media/d/%E2%82%AC%20x.txt</href>
  <propstat><prop><resourcetype/><getcontentlength>42</getcontentlength></prop>
  <status>HTTP/1.1 200 OK</status></propstat>
  <propstat><prop><getlastmodified/></prop><status>HTTP/1.1 404 Not Found</status></propstat>
 </response>
 <response><href>/media/d/sub</href>
  <propstat><prop><resourcetype><collection/></resourcetype></prop>
  <status>HTTP/1.1 200 OK</status></propstat></response>
 <response><href>/elsewhere/x</href>
  <propstat><prop><resourcetype/></prop><status>HTTP/1.1 200 OK</status></propstat></response>
 <response><href>/media/d/%FF</href>
  <propstat><prop><resourcetype/></prop><status>HTTP/1.1 200 OK</status></propstat></response>
</multistatus>"""
    monkeypatch.setattr(listing, "_propfind", lambda transport, directory: _Response(207, body))
    transport = HostTransport(parse_host("127.0.0.1:9"), "/media/", timeout=1)
    files, mtimes, subdirs, bad = listing._read_propfind(transport, "d/", mtimes=True)
    assert files == {"d/\u20ac x.txt": 42}
    assert mtimes == {"d/\u20ac x.txt": None}
    assert subdirs == ["d/sub/"]
    assert bad == ["/media/d/%FF"]


def test_propfind_parser_refuses_entities(monkeypatch: pytest.MonkeyPatch):
    body = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><multistatus xmlns="DAV:"/>'
    monkeypatch.setattr(listing, "_propfind", lambda transport, directory: _Response(207, body))
    transport = HostTransport(parse_host("127.0.0.1:9"), "/media/", timeout=1)
    with pytest.raises(listing._BadDirectory, match="DTD"):
        listing._read_propfind(transport, "", mtimes=False)


def test_listing_prefix_setting(settings):
    assert listing.listing_prefix() == "/_resto/list/"
    settings.RESTO_LISTING_PREFIX = "internal/ls"
    assert listing.listing_prefix() == "/internal/ls/"


def test_custom_listing_prefix(media_server_factory: Factory):
    server = media_server_factory("test", listing_prefix="/internal/ls/")
    seed(server, {"a/b": b"b"})
    result = list_host(transport_for(server), prefix="/internal/ls/")
    assert (result.method, result.files) == (AUTOINDEX, {"a/b": Entry(1)})


def test_unknown_method_is_refused(media_server_factory: Factory):
    server = media_server_factory("test")
    with pytest.raises(ValueError, match="Unknown listing method 'ftp'"):
        list_host(transport_for(server), method="ftp")


def test_transport_errors_do_not_escape_probe(media_server_factory: Factory):
    server = media_server_factory("test", listing_prefix=None)
    seed(server, {"a": b"a"})
    server.drop_connections(True, methods="HEAD")
    with pytest.raises(ListingError) as caught:
        list_host(transport_for(server), expected=["a", "b", "c"], method=HEAD)
    assert isinstance(caught.value.__cause__, ConnectionError)
