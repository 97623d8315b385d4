"""Fixtures for the example site's tests: a master copy per test and real media servers.

The media servers come from the project's own launchers (tests/servers.py): a real nginx
and a real lighttpd on loopback, as in production, and the in-process TestHttpServer when
a test needs to inject a failure. Like the library's suite, a missing nginx or lighttpd
binary fails the tests rather than skipping them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.servers import MediaServer, MediaServerPool

CREDENTIALS = ("resto", "example-secret")


@pytest.fixture(autouse=True)
def media_root(tmp_path, settings):
    """Every test gets its own master copy."""
    root = tmp_path / "master"
    root.mkdir()
    settings.MEDIA_ROOT = str(root)
    return root


@pytest.fixture
def start_media_server(tmp_path_factory) -> Iterator[Callable[..., MediaServer]]:
    """``start_media_server(kind, **options)``: a started nginx, lighttpd or TestHttpServer.

    ``kind`` is "nginx", "lighttpd", "test" (nginx-like) or "test-strict" (lighttpd-like);
    every server is stopped at teardown.
    """
    pool = MediaServerPool(tmp_path_factory)
    try:
        yield pool.make
    finally:
        pool.stop_all()


@pytest.fixture
def use_media_servers(settings) -> Callable[..., None]:
    """Point the default storage at ``servers``, as RESTO_MEDIA_HOSTS would.

    Changing STORAGES makes Django build a new default storage, so the FileField of
    ``Upload`` uses these hosts from the next save on.
    """

    def use(servers: list[MediaServer], **options: object) -> None:
        default = settings.STORAGES["default"]
        new_options = {**default["OPTIONS"], "hosts": [server.host for server in servers]}
        if any(server.credentials for server in servers):
            new_options["auth"] = CREDENTIALS
        new_options.update(options)
        settings.STORAGES = {**settings.STORAGES, "default": {**default, "OPTIONS": new_options}}

    return use


@pytest.fixture
def real_servers(start_media_server, use_media_servers) -> list[MediaServer]:
    """A real nginx and a real lighttpd, with write credentials, used by the site."""
    servers = [
        start_media_server("nginx", credentials=CREDENTIALS),
        start_media_server("lighttpd", credentials=CREDENTIALS),
    ]
    use_media_servers(servers)
    return servers
