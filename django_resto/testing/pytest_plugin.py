"""The ``media_server`` fixture: a started TestHttpServer for one test.

pytest loads this module by itself once django_resto is installed (the
``pytest11`` entry point in pyproject.toml); without pytest it is never imported.
It imports neither Django nor the storages (only the breaker, plain Python), so it
costs a project that does not use the fixture nothing, and works before Django is
configured.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..breaker import forget
from .http_server import TestHttpServer

__all__ = ["media_server"]


def _media_url_path() -> str:
    """The path of MEDIA_URL when Django is configured (where hosts keep files), else /media/."""
    try:
        from django.conf import settings

        media_url = settings.MEDIA_URL if settings.configured else ""
    except ImportError:  # pragma: no cover - Django is a dependency
        media_url = ""
    path = "/" + str(media_url or "/media/").split("://", 1)[-1].split("/", 1)[-1]
    return path if path.endswith("/") else path + "/"


@pytest.fixture
def media_server(request: pytest.FixtureRequest) -> Iterator[TestHttpServer]:
    """A media server on a free loopback port, serving MEDIA_URL's path; stopped after the test.

    Mark a test ``@pytest.mark.media_server(strict=True)`` for the strict WebDAV
    (lighttpd-like) mode, or pass any other TestHttpServer keyword the same way.
    """
    marker = request.node.get_closest_marker("media_server")
    options = dict(marker.kwargs) if marker is not None else {}
    options.setdefault("base_path", _media_url_path())
    with TestHttpServer(**options) as server:
        # A port an earlier test's dead server had: this process's breaker may hold it.
        forget(server.url)
        yield server


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "media_server(**options): TestHttpServer options for the media_server fixture"
    )
