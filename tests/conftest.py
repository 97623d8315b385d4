"""Fixtures shared by the suite: the database server, a temporary MEDIA_ROOT, media servers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from django_resto import breaker
from django_resto.testing import TestHttpServer
from tests.pg import PostgresCluster


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None,
) -> Iterator[None]:
    """With RESTO_TEST_DB=postgresql, point the database at a cluster of the session's own.

    pytest-django calls this before it creates the test databases, and tears it down after
    it drops them. The dict is changed in place: Django's connection objects hold it.
    """
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.postgresql":
        yield
        return
    cluster = PostgresCluster().start()
    try:
        database.update(
            HOST=cluster.host, PORT=str(cluster.port), USER=cluster.user, NAME=cluster.database
        )
        yield
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def media_root(tmp_path, settings):
    """Every test gets its own master copy directory."""
    root = tmp_path / "master"
    root.mkdir()
    settings.MEDIA_ROOT = str(root)
    settings.MEDIA_URL = "/media/"
    return root


@pytest.fixture
def test_servers() -> Iterator[Callable[..., list[TestHttpServer]]]:
    """Start N in-process media servers: ``test_servers(3, strict=True)``."""
    started: list[TestHttpServer] = []

    def start(count: int = 1, **kwargs: Any) -> list[TestHttpServer]:
        kwargs.setdefault("base_path", "/media/")
        servers = [TestHttpServer(**kwargs).start() for _ in range(count)]
        started.extend(servers)
        return servers

    yield start
    for server in started:
        server.stop()


@pytest.fixture(autouse=True)
def _fresh_breakers():
    """Breakers are per process and keyed by origin: a port reused by a later test's
    server must not find the breaker an earlier test's dead server opened."""
    breaker.reset_all()
    yield
    breaker.reset_all()


@pytest.fixture
def resto_log(caplog):
    """Records of the django_resto logger, at every level."""
    caplog.set_level(logging.DEBUG, logger="django_resto")
    return caplog


from tests.seaweed import buckets, seaweed  # noqa: E402, F401 - a real S3 (tests/seaweed.py)

# Real nginx / lighttpd processes and the generic factory (see tests/servers.py), and the
# throwaway CA and 127.0.0.1 certificate that make an HTTPS nginx (tests/test_tls.py).
from tests.servers import (  # noqa: E402, F401
    lighttpd_dav,
    media_server_factory,
    nginx_dav,
    resto_test_server,
    tls_files,
)
